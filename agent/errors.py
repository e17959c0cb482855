"""The exception tree of Emberscope.

    EmberscopeError
     ├── ConfigError      bad arguments or configuration
     ├── BpfError         a bpf(), perf_event_open() or libbpf call failed (carries errno)
     ├── SymbolError      a file could not be read for symbols (carries the path)
     ├── ProcessError     a process could not be inspected through /proc (carries the pid)
     ├── PythonError      a CPython process cannot be unwound (unknown version, musl, ...)
     ├── UnwindError      a file's call-frame information cannot become an unwind table
     ├── DiscoveryError   a discovery source (Docker, the Kubernetes API) could not be read
     └── OutputError      a profile could not be written
          └── PushError   one push to a Pyroscope endpoint failed (carries status, retryable)

Each room raises the most specific class, chaining the library error it
translates with ``raise ... from exc``. Only ``agent.cli`` turns them into advice.
"""

from __future__ import annotations

import errno as _errno
import os

__all__ = [
    "BpfError",
    "ConfigError",
    "DiscoveryError",
    "EmberscopeError",
    "OutputError",
    "ProcessError",
    "PushError",
    "PythonError",
    "SymbolError",
    "UnwindError",
]


class EmberscopeError(Exception):
    """Base class of every error Emberscope raises on purpose."""


class ConfigError(EmberscopeError):
    """An argument or configuration value is invalid."""


class BpfError(EmberscopeError):
    """A kernel call for BPF or perf events failed.

    ``call`` names the failing function, ``errno`` is the positive errno.
    """

    def __init__(self, call: str, errno: int, detail: str = "") -> None:
        self.call = call
        self.errno = errno
        text = os.strerror(errno) if errno else "unknown error"
        name = _errno.errorcode.get(errno, str(errno))
        message = f"{call} failed: {text} ({name})"
        if detail:
            message += f": {detail}"
        super().__init__(message)


class SymbolError(EmberscopeError):
    """A file could not be read for symbols."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class ProcessError(EmberscopeError):
    """A process could not be inspected through /proc."""

    def __init__(self, pid: int, reason: str) -> None:
        self.pid = pid
        self.reason = reason
        super().__init__(f"pid {pid}: {reason}")


class PythonError(EmberscopeError):
    """A Python interpreter was found but cannot be unwound: the message says why."""


class DiscoveryError(EmberscopeError):
    """A discovery source could not be reached or gave an unusable answer.

    ``source`` names it (the Docker host, the API server URL).
    """

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class OutputError(EmberscopeError):
    """A profile could not be written."""


class PushError(OutputError):
    """One push attempt failed; ``retryable`` says whether another attempt may succeed.

    ``status`` is the HTTP status, 0 when no answer came (connection error, timeout).
    """

    def __init__(self, reason: str, *, retryable: bool, status: int = 0) -> None:
        self.reason = reason
        self.retryable = retryable
        self.status = status
        super().__init__(reason)


class UnwindError(EmberscopeError):
    """Call-frame information could not be read or turned into an unwind table.

    ``path`` names the file when known.
    """

    def __init__(self, reason: str, path: str = "") -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)
