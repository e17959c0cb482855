"""The telemetry room: the agent's metrics, health and debug info over HTTP, and its log lines."""

from agent.telemetry.logs import LOG_FORMATS, LOG_LEVELS, LogFormatter, LoggingArguments
from agent.telemetry.metrics import (
    BoundEbpfMetrics,
    ConfigMetrics,
    EbpfMetrics,
    HttpMetrics,
    ProgramStats,
    SamplerCollector,
    SamplerReading,
    find_program_fd,
    new_registry,
    read_program_stats,
)
from agent.telemetry.profiles import PROFILES_PATH, ProfilesPage
from agent.telemetry.server import ComponentGraph, TelemetryServer, parse_listen_addr, to_json

__all__ = [
    "BoundEbpfMetrics",
    "ComponentGraph",
    "ConfigMetrics",
    "EbpfMetrics",
    "HttpMetrics",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "LogFormatter",
    "LoggingArguments",
    "PROFILES_PATH",
    "ProfilesPage",
    "ProgramStats",
    "SamplerCollector",
    "SamplerReading",
    "TelemetryServer",
    "find_program_fd",
    "new_registry",
    "parse_listen_addr",
    "read_program_stats",
    "to_json",
]
