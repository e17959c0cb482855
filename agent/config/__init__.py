"""Configuration: values and their parsing."""

from agent.config.duration import parse_duration

__all__ = ["parse_duration"]
