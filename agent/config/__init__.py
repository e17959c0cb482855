"""Configuration: values and their parsing."""

from agent.config.duration import format_duration, parse_duration

__all__ = ["format_duration", "parse_duration"]
