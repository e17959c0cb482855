"""The ``pyroscope.file`` component: profiles written under a directory.

Each profile becomes ``<directory>/<service_name>/<unix-time>.pb.gz`` with its
labels beside it in ``<unix-time>.labels.json``. Writes happen on the
component's own thread from a bounded queue; when the queue is full the
oldest profile is dropped and counted.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config.component import ArgumentError, Capsule, ComponentOptions, Duration, Health
from agent.write.profile import LabeledProfile

__all__ = ["FileReceiver"]

log = logging.getLogger(__name__)

_QUEUE_SIZE = 256
_EXPIRE_EVERY_S = 60.0
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def service_directory(root: Path, service_name: str) -> Path:
    """``root/<service_name>``, each ``/``-separated part made safe as a file name."""
    parts = [_UNSAFE.sub("_", part) for part in service_name.split("/")]
    parts = [part if part not in ("", ".", "..") else "_" for part in parts]
    return root.joinpath(*parts)


class FileReceiver:
    """Receives profiles for ``pyroscope.file`` and writes them on ``run``'s thread."""

    @dataclass(frozen=True)
    class Arguments:
        directory: str
        retention: Duration | None = None

        def __post_init__(self) -> None:
            if not self.directory:
                raise ArgumentError("directory", "must not be empty")
            if self.retention is not None and self.retention <= 0:
                raise ArgumentError("retention", "must be greater than 0")

    @dataclass(frozen=True)
    class Exports:
        receiver: Capsule

    def __init__(self, options: ComponentOptions, arguments: FileReceiver.Arguments) -> None:
        self._options = options
        self._arguments = arguments
        self._queue: collections.deque[LabeledProfile] = collections.deque(maxlen=_QUEUE_SIZE)
        self._ready = threading.Event()
        self.written = 0
        self.dropped = 0
        self._health = Health("healthy", "", time.time())
        self._next_expiry = 0.0

    def append(self, profile: LabeledProfile) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(profile)
        self._ready.set()

    def exports(self) -> dict[str, Any]:
        return {"receiver": self}

    def health(self) -> Health:
        return self._health

    def update(self, arguments: FileReceiver.Arguments) -> None:
        self._arguments = arguments

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._ready.wait(timeout=1.0)
            self._ready.clear()
            self._write_queued()
            self._expire()
        self._write_queued()

    def _write_queued(self) -> None:
        while self._queue:
            profile = self._queue.popleft()
            try:
                self._write(profile)
            except OSError as exc:
                self.dropped += 1
                self._health = Health("unhealthy", f"cannot write profiles: {exc}", time.time())
                log.warning("cannot write a profile under %s: %s", self._arguments.directory, exc)
            else:
                self.written += 1
                if self._health.state != "healthy":
                    self._health = Health("healthy", "", time.time())

    def _write(self, profile: LabeledProfile) -> None:
        folder = service_directory(
            Path(self._arguments.directory), profile.labels.get("service_name", "unspecified")
        )
        folder.mkdir(parents=True, exist_ok=True)
        stem = str(profile.time_nanos // 1_000_000_000)
        suffix = 0
        while (folder / f"{stem}.pb.gz").exists():
            suffix += 1
            stem = f"{profile.time_nanos // 1_000_000_000}-{suffix}"
        # Labels first: a reader that finds the profile finds its labels too.
        (folder / f"{stem}.labels.json").write_text(
            json.dumps(dict(profile.labels), sort_keys=True)
        )
        temporary = folder / f".{stem}.pb.gz.tmp"
        temporary.write_bytes(profile.data)
        os.replace(temporary, folder / f"{stem}.pb.gz")

    def _expire(self) -> None:
        retention = self._arguments.retention
        now = time.monotonic()
        if retention is None or now < self._next_expiry:
            return
        self._next_expiry = now + _EXPIRE_EVERY_S
        oldest = time.time() - retention
        for path in Path(self._arguments.directory).rglob("*"):
            if path.suffix in (".gz", ".json") and path.stat().st_mtime < oldest:
                path.unlink(missing_ok=True)
