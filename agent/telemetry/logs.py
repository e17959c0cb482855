"""The agent's log lines, as Alloy writes them: logfmt or JSON, one line per record,
timestamps in RFC 3339 (UTC, milliseconds), levels ``debug``, ``info``, ``warn``, ``error``.

    handler.setFormatter(LogFormatter("json"))

A traceback goes into the line's ``err`` field, so a record is always one line.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from agent.config.component import ArgumentError

__all__ = ["LOG_FORMATS", "LOG_LEVELS", "LogFormatter", "LoggingArguments"]

LOG_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "error": logging.ERROR,
}
LOG_FORMATS = ("logfmt", "json")

_NAMES = {number: name for name, number in LOG_LEVELS.items()} | {logging.CRITICAL: "error"}
# A logfmt value is written bare only when it holds none of these: space, '=', '"',
# a control character; anything else (and the empty string) is quoted and escaped.
_NEEDS_QUOTES = re.compile(r'[\s="\\\x00-\x1f\x7f]')
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


@dataclass(frozen=True)
class LoggingArguments:
    """The configuration's ``logging`` block (Alloy's; ``write_to`` is not supported)."""

    level: str = "info"
    format: str = "logfmt"

    def __post_init__(self) -> None:
        if self.level not in LOG_LEVELS:
            raise ArgumentError("level", f"must be one of {', '.join(LOG_LEVELS)}")
        if self.format not in LOG_FORMATS:
            raise ArgumentError("format", f"must be one of {', '.join(LOG_FORMATS)}")


class LogFormatter(logging.Formatter):
    """Formats a record as one logfmt line (``format="logfmt"``) or one JSON object."""

    def __init__(self, format: str = "logfmt") -> None:
        if format not in LOG_FORMATS:
            raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {format!r}")
        super().__init__()
        self.log_format = format

    def format(self, record: logging.LogRecord) -> str:
        fields = self._fields(record)
        if self.log_format == "json":
            return json.dumps(fields, ensure_ascii=False)
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields.items())

    def _fields(self, record: logging.LogRecord) -> dict[str, str]:
        created = datetime.fromtimestamp(record.created, UTC)
        fields = {
            "ts": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": _NAMES.get(record.levelno, record.levelname.lower()),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            fields["err"] = self.formatException(record.exc_info)
        return fields


def _logfmt_value(value: str) -> str:
    if value and not _NEEDS_QUOTES.search(value):
        return value
    escaped = "".join(_ESCAPES.get(c, f"\\u{ord(c):04x}" if c < " " else c) for c in value)
    return f'"{escaped}"'
