"""The pprof files a flame graph is drawn from: files named one by one, or the
directories ``pyroscope.file`` writes (``<service_name>/<unix-time>.pb.gz`` with
its labels beside it in ``<unix-time>.labels.json``).

A file that cannot be read is skipped and named in ``skipped`` with the reason;
the others are still read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agent.pprof import profile_pb2, read_profile

__all__ = ["ProfileFile", "Selection", "select_profiles"]

_SUFFIX = ".pb.gz"
_LABELS_SUFFIX = ".labels.json"
_MAX_FILE_BYTES = 256 << 20  # far past any profile the agent writes


@dataclass(frozen=True, slots=True)
class ProfileFile:
    """One profile read, with the series labels written beside it (empty if none)."""

    path: Path
    labels: dict[str, str]
    profile: profile_pb2.Profile


@dataclass(slots=True)
class Selection:
    """The profiles that matched, and ``"path: reason"`` for each file skipped."""

    profiles: list[ProfileFile] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def select_profiles(
    paths: Iterable[Path], *, since_nanos: int | None = None, service: str | None = None
) -> Selection:
    """The profiles under ``paths`` whose interval ends at ``since_nanos`` (Unix time) or
    later, and whose ``service_name`` label is ``service``; None: any.

    A directory is searched through its subdirectories for ``*.pb.gz``. A file
    last written before ``since_nanos`` is left without being read: it was
    written after its interval ended.
    """
    selection = Selection()
    for path in paths:
        for candidate in _candidates(path, selection):
            _select(candidate, since_nanos, service, selection)
    return selection


def _candidates(path: Path, selection: Selection) -> list[Path]:
    if path.is_dir():
        return sorted(
            found for found in path.rglob(f"*{_SUFFIX}") if not found.name.startswith(".")
        )
    if not path.exists():
        selection.skipped.append(f"{path}: no such file or directory")
        return []
    return [path]


def _select(path: Path, since_nanos: int | None, service: str | None, into: Selection) -> None:
    try:
        if since_nanos is not None and os.stat(path).st_mtime_ns < since_nanos:
            return
        labels = _read_labels(path)
        if service is not None and labels.get("service_name") != service:
            return
        with open(path, "rb") as stream:
            data = stream.read(_MAX_FILE_BYTES + 1)
        if len(data) > _MAX_FILE_BYTES:
            raise ValueError(f"larger than {_MAX_FILE_BYTES >> 20} MiB")
        profile = read_profile(data)
    except OSError as exc:
        into.skipped.append(f"{path}: {exc.strerror or exc}")
        return
    except ValueError as exc:
        into.skipped.append(f"{path}: {exc}")
        return
    if since_nanos is not None and profile.time_nanos + profile.duration_nanos < since_nanos:
        return
    into.profiles.append(ProfileFile(path, labels, profile))


def _read_labels(path: Path) -> dict[str, str]:
    """The labels written beside ``path``; {} when there is no such file."""
    if not path.name.endswith(_SUFFIX):
        return {}
    beside = path.with_name(path.name[: -len(_SUFFIX)] + _LABELS_SUFFIX)
    try:
        text = beside.read_text()
    except FileNotFoundError:
        return {}
    try:
        labels = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{beside.name} is not JSON ({exc})") from None
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise ValueError(f"{beside.name} is not an object of string labels")
    return labels
