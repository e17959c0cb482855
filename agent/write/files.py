"""The ``pyroscope.file`` component: profiles written under a directory.

Each profile becomes ``<directory>/<service_name>/<unix-time>.pb.gz`` with its
labels beside it in ``<unix-time>.labels.json``. Writes happen on the
component's own thread from a bounded queue; when the queue is full the
oldest profile is dropped and counted. Every profile written or dropped is
counted in ``emberscope_file_*_profiles_total``, drops by reason.
"""

from __future__ import annotations

import collections
import errno
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from agent.config.component import ArgumentError, Capsule, ComponentOptions, Duration, Health
from agent.write.profile import LabeledProfile, shortened

__all__ = ["FileMetrics", "FileReceiver"]

log = logging.getLogger(__name__)

_QUEUE_SIZE = 256
_EXPIRE_EVERY_S = 60.0
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_NAME_MAX = 255  # bytes in one file name, on every Linux file system
_METRICS_KEY = "pyroscope.file.metrics"


class FileMetrics:
    """The metrics of ``pyroscope.file``, labelled by component; one instance per registry."""

    DROP_REASONS = (
        "queue_full",  # the oldest queued profile, to make room for a new one
        "invalid_service_name",  # a service_name no directory can be named after
        "write_failed",  # the file system refused (permissions, no space, ...)
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        self.written = Counter(
            "emberscope_file_written_profiles_total",
            "Profiles pyroscope.file wrote.",
            ["component_id"],
            registry=registry,
        )
        self.dropped = Counter(
            "emberscope_file_dropped_profiles_total",
            "Profiles pyroscope.file dropped, by reason: queue_full, invalid_service_name, "
            "write_failed.",
            ["component_id", "reason"],
            registry=registry,
        )


def _metrics_of(options: ComponentOptions) -> FileMetrics:
    """The agent's (declared once and shared by every ``pyroscope.file``), else a
    registry of the component's own."""
    if options.registry is None:
        return FileMetrics(CollectorRegistry())
    with options.shared_lock:
        metrics = options.shared.get(_METRICS_KEY)
        if metrics is None:
            metrics = options.shared[_METRICS_KEY] = FileMetrics(options.registry)
    return metrics


class _Dropped(Exception):
    """A profile that cannot be written: ``reason`` for the counter, ``detail`` for the log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


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

    def __init__(
        self,
        options: ComponentOptions,
        arguments: FileReceiver.Arguments,
        *,
        metrics: FileMetrics | None = None,
    ) -> None:
        self._options = options
        self._arguments = arguments
        self.metrics = metrics if metrics is not None else _metrics_of(options)
        self._queue: collections.deque[LabeledProfile] = collections.deque(maxlen=_QUEUE_SIZE)
        self._ready = threading.Event()
        self.written = 0
        self.dropped = 0
        self._health = Health("healthy", "", time.time())
        self._next_expiry = 0.0

    def append(self, profile: LabeledProfile) -> None:
        if len(self._queue) == self._queue.maxlen:
            self._count_dropped("queue_full")
        self._queue.append(profile)
        self._ready.set()

    def exports(self) -> dict[str, Any]:
        return {"receiver": self}

    def health(self) -> Health:
        return self._health

    def update(self, arguments: FileReceiver.Arguments) -> None:
        self._arguments = arguments

    def run(self, stop: threading.Event) -> None:
        directory = Path(self._arguments.directory).resolve()
        log.info("%s: writing profiles under %s", self._options.id, directory)
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
            except _Dropped as exc:
                self._count_dropped(exc.reason)
                log.warning("%s: dropped a profile: %s", self._options.id, exc.detail)
                if exc.reason == "write_failed":
                    message = f"cannot write profiles: {exc.detail}"
                    self._health = Health("unhealthy", message, time.time())
            else:
                self.written += 1
                self.metrics.written.labels(self._options.id).inc()
                if self._health.state != "healthy":
                    self._health = Health("healthy", "", time.time())

    def _count_dropped(self, reason: str) -> None:
        self.dropped += 1
        self.metrics.dropped.labels(self._options.id, reason).inc()

    def _write(self, profile: LabeledProfile) -> None:
        """Raises _Dropped, its detail never longer than a log line should be."""
        service_name = profile.labels.get("service_name", "unspecified")
        root = Path(self._arguments.directory)
        folder = service_directory(root, service_name)
        if any(len(part) > _NAME_MAX for part in folder.relative_to(root).parts):  # ASCII
            detail = f"service_name {shortened(service_name, 80)!r} cannot name a directory"
            raise _Dropped("invalid_service_name", detail)
        try:
            self._write_files(folder, profile)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                detail = f"service_name {shortened(service_name, 80)!r} makes too long a path"
                raise _Dropped("invalid_service_name", detail) from exc
            where = shortened(str(exc.filename or folder), 120)
            raise _Dropped("write_failed", f"{where}: {exc.strerror or exc}") from exc

    def _write_files(self, folder: Path, profile: LabeledProfile) -> None:
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
            try:
                if path.suffix in (".gz", ".json") and path.stat().st_mtime < oldest:
                    path.unlink(missing_ok=True)
            except OSError as exc:  # removed meanwhile, or not ours to remove
                log.debug("%s: cannot expire %s: %s", self._options.id, path, exc)
