"""``local.file``: the content of a file, exported and read again when it changes.

As in Alloy, the file is read when the component is created (a file that cannot be
read then stops the agent from starting), again on every inotify event in its
directory (``detector = "fsnotify"``) and every ``poll_frequency`` in any case. With
``is_secret`` the content is exported as a secret: never shown in logs, debug info
or the component API, and accepted only by arguments that take secrets.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import stat
import threading
import time
from dataclasses import dataclass
from typing import Any

from agent.config.component import ArgumentError, ComponentOptions, Duration, Health, Secret
from agent.errors import ConfigError

__all__ = ["LocalFile"]

log = logging.getLogger(__name__)

DETECTORS = ("fsnotify", "poll")
# Read at most this much: a token, a password or a CA bundle is far smaller.
_READ_LIMIT = 16 << 20
# After an event, wait this long before reading, so that a write in progress is not
# exported half done (Alloy waits as long).
_SETTLE_S = 0.03
_STOP_POLL_S = 0.25  # longest wait before ``stop`` and new arguments are looked at
# include/uapi/linux/inotify.h: any change of the directory's entries or of a file in it.
_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_DELETE_SELF, _IN_MOVE_SELF = 0x400, 0x800
_WATCH_MASK = (
    _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE
) | (_IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF)


class LocalFile:
    """``local.file``: exports ``content``, the text of ``filename``.

    Example::

        component = LocalFile(options, LocalFile.Arguments(filename="/run/secrets/token",
                                                           is_secret=True))
        threading.Thread(target=component.run, args=(stop,)).start()
    """

    @dataclass(frozen=True)
    class Arguments:
        filename: str
        detector: str = "fsnotify"
        poll_frequency: Duration = Duration(60)
        is_secret: bool = False

        def __post_init__(self) -> None:
            if not self.filename:
                raise ArgumentError("filename", "must not be empty")
            if self.detector not in DETECTORS:
                message = f"must be one of {', '.join(DETECTORS)}, not {self.detector!r}"
                raise ArgumentError("detector", message)
            if self.poll_frequency <= 0:
                raise ArgumentError("poll_frequency", "must be greater than 0")

    @dataclass(frozen=True)
    class Exports:
        content: str | Secret  # a secret when ``is_secret``

    def __init__(self, options: ComponentOptions, arguments: LocalFile.Arguments) -> None:
        self._options = options
        self._lock = threading.Lock()
        self._arguments = arguments
        self._changed = threading.Event()  # new arguments: read and watch again
        try:
            self._content = _read_text(arguments.filename)
        except OSError as exc:
            raise ConfigError(f"{options.id}: {_describe(arguments.filename, exc)}") from exc
        self._health = Health("healthy", "read file", time.time())

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._changed.clear()
            with self._lock:
                arguments = self._arguments
            watch = _Watch.open(arguments.filename) if arguments.detector == "fsnotify" else None
            self._read()  # a change made before the watch began is seen too
            try:
                self._watch_until_changed(arguments, watch, stop)
            finally:
                if watch is not None:
                    watch.close()

    def update(self, arguments: LocalFile.Arguments) -> None:
        with self._lock:
            previous, self._arguments = self._arguments, arguments
        if not self._read() and previous.is_secret != arguments.is_secret:
            self._options.on_exports(self.exports())
        self._changed.set()

    def exports(self) -> dict[str, Any]:
        with self._lock:
            content, is_secret = self._content, self._arguments.is_secret
        return {"content": Secret(content) if is_secret else content}

    def health(self) -> Health:
        with self._lock:
            return self._health

    def _watch_until_changed(
        self, arguments: LocalFile.Arguments, watch: _Watch | None, stop: threading.Event
    ) -> None:
        """Read the file on each event and every ``poll_frequency``, until stopped or
        given new arguments."""
        next_poll = time.monotonic() + arguments.poll_frequency
        while not stop.is_set() and not self._changed.is_set():
            timeout = min(_STOP_POLL_S, max(0.0, next_poll - time.monotonic()))
            if watch is not None and watch.wait(timeout):
                stop.wait(_SETTLE_S)
                watch.drain()
                self._read()
            elif watch is None:
                stop.wait(timeout)
            if time.monotonic() >= next_poll:
                self._read()
                next_poll = time.monotonic() + arguments.poll_frequency

    def _read(self) -> bool:
        """Read the file; export its content if it changed (and say so). A failed read
        keeps the last content and makes the component unhealthy (logged once per cause)."""
        with self._lock:
            filename = self._arguments.filename
        try:
            content = _read_text(filename)
        except OSError as exc:
            self._set_health("unhealthy", f"failed to read file: {_describe(filename, exc)}")
            return False
        with self._lock:
            changed = content != self._content
            self._content = content
        self._set_health("healthy", "read file")
        if changed:
            log.debug("%s: %s changed", self._options.id, filename)
            self._options.on_exports(self.exports())
        return changed

    def _set_health(self, state: str, message: str) -> None:
        with self._lock:
            if (self._health.state, self._health.message) == (state, message):
                return
            self._health = Health(state, message, time.time())
        level = logging.ERROR if state == "unhealthy" else logging.INFO
        log.log(level, "%s %s: %s", self._options.id, state, message)


def _read_text(filename: str) -> str:
    """The text of a regular file, read without blocking and within _READ_LIMIT."""
    fd = os.open(filename, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(0, "not a regular file")
        if info.st_size > _READ_LIMIT:
            raise OSError(0, f"larger than {_READ_LIMIT >> 20} MiB")
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def _describe(filename: str, exc: OSError) -> str:
    return f"cannot read {filename}: {exc.strerror or exc}"


class _Watch:
    """inotify on the file's directory: a Kubernetes secret is replaced by renaming a
    symbolic link there, an editor renames a new copy over the file."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def open(cls, filename: str) -> _Watch | None:
        """None, logged, when inotify cannot watch: the file is then polled alone."""
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        directory = os.path.dirname(os.path.abspath(filename)).encode()
        if fd < 0 or libc.inotify_add_watch(fd, directory, _WATCH_MASK) < 0:
            error = ctypes.get_errno()
            if fd >= 0:
                os.close(fd)
            log.info("cannot watch %s (%s): polled instead", filename, os.strerror(error))
            return None
        return cls(fd)

    def wait(self, timeout: float) -> bool:
        """Whether an event came within ``timeout`` seconds."""
        readable, _, _ = select.select([self._fd], [], [], timeout)
        return bool(readable)

    def drain(self) -> None:
        try:
            while os.read(self._fd, 1 << 16):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self._fd)
