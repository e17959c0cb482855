"""Configuration: the Alloy syntax, the component contract and the component graph."""

from agent.config.component import (
    URL,
    ArgumentError,
    Capsule,
    Component,
    ComponentOptions,
    Duration,
    Health,
    Secret,
    block,
)
from agent.config.duration import parse_duration
from agent.config.graph import Graph

__all__ = [
    "ArgumentError",
    "Capsule",
    "Component",
    "ComponentOptions",
    "Duration",
    "Graph",
    "Health",
    "Secret",
    "URL",
    "block",
    "parse_duration",
]
