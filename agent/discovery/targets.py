"""The target registry: final label sets indexed by the pid or container they profile.

Rules as in Alloy (``pyroscope/ebpf/discovery/target.go`` and
the legacy ``ebpf/sd/target.go``): the first usable key wins, a pid target is matched before
any container target, and a repeated key is won by the last target.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["Target", "TargetSet", "build_targets", "container_id_of"]

log = logging.getLogger(__name__)

LABEL_PID = "__process_pid__"
LABEL_CONTAINER_ID = "__container_id__"
LABEL_SERVICE_NAME = "service_name"
LABEL_NAME = "__name__"
DEFAULT_NAME = "process_cpu"
UNSPECIFIED = "unspecified"

_K8S_CONTAINER_ID = "__meta_kubernetes_pod_container_id"
_K8S_PREFIXES = ("docker://", "containerd://", "cri-o://")
# Taken as they are, after __container_id__ and the Kubernetes label (§7 items 4 and 5).
_PLAIN_CONTAINER_IDS = ("__meta_docker_container_id", "__meta_dockerswarm_task_container_id")
_UINT32_MAX = 2**32 - 1


@dataclass(frozen=True, slots=True)
class Target:
    """One profiling target: sorted labels and the pid or container ID it matches.

    ``labels`` keeps every label the target came with (``__meta_*`` included, so
    per-target options stay readable) plus ``service_name``, ``__name__`` and the key.
    """

    labels: tuple[tuple[str, str], ...]
    pid: int | None = None
    container_id: str | None = None

    @property
    def key(self) -> tuple[str, int | str]:
        """``("pid", 42)`` or ``("container", "<64 hex>")``."""
        if self.pid is not None:
            return ("pid", self.pid)
        return ("container", self.container_id or "")

    @property
    def service_name(self) -> str:
        return self.get(LABEL_SERVICE_NAME)

    def get(self, name: str, default: str = "") -> str:
        return next((value for key, value in self.labels if key == name), default)

    def public_labels(self) -> tuple[tuple[str, str], ...]:
        """The labels that leave the agent: no ``__`` names except ``__name__``."""
        return tuple(
            (name, value)
            for name, value in self.labels
            if not name.startswith("__") or name == LABEL_NAME
        )


@dataclass(frozen=True, slots=True)
class TargetSet:
    """Targets by pid and by container ID, and how many label sets had no usable key."""

    by_pid: Mapping[int, Target] = field(default_factory=lambda: MappingProxyType({}))
    by_container: Mapping[str, Target] = field(default_factory=lambda: MappingProxyType({}))
    skipped: int = 0

    def match(self, pid: int, container_id: str | None) -> Target | None:
        """The target for a process: its pid target first (legacy fix #2761), then its
        container's."""
        target = self.by_pid.get(pid)
        if target is None and container_id:
            target = self.by_container.get(container_id)
        return target

    def __iter__(self) -> Iterator[Target]:
        yield from self.by_pid.values()
        yield from self.by_container.values()

    def __len__(self) -> int:
        return len(self.by_pid) + len(self.by_container)


def build_targets(target_label_sets: Iterable[Mapping[str, str]]) -> TargetSet:
    """Index final targets (after relabeling); label sets with no key are counted, skipped."""
    by_pid: dict[int, Target] = {}
    by_container: dict[str, Target] = {}
    skipped = 0
    for raw in target_label_sets:
        labels = {name: value for name, value in raw.items() if value != ""}
        pid = _pid_of(labels)
        container_id = None if pid is not None else container_id_of(labels)
        if pid is None and container_id is None:
            skipped += 1
            continue
        target = _build_target(labels, pid, container_id)
        if pid is not None:
            by_pid[pid] = target
        else:
            by_container[container_id] = target
    if skipped:
        log.debug("%d targets have no pid or container ID and match nothing", skipped)
    return TargetSet(MappingProxyType(by_pid), MappingProxyType(by_container), skipped)


def _build_target(labels: dict[str, str], pid: int | None, container_id: str | None) -> Target:
    labels = dict(labels)
    if not labels.get(LABEL_SERVICE_NAME):
        labels[LABEL_SERVICE_NAME] = _infer_service_name(labels)
    labels.setdefault(LABEL_NAME, DEFAULT_NAME)
    if container_id is not None:
        labels[LABEL_CONTAINER_ID] = container_id
    return Target(tuple(sorted(labels.items())), pid, container_id)


def _pid_of(labels: Mapping[str, str]) -> int | None:
    """``__process_pid__`` as a non-zero uint32; anything else falls through to containers."""
    text = labels.get(LABEL_PID, "")
    if not (text.isascii() and text.isdigit()):
        return None
    pid = int(text)
    return pid if 0 < pid <= _UINT32_MAX else None


def container_id_of(labels: Mapping[str, str]) -> str | None:
    """The first container key present; a Kubernetes ID with an unknown scheme ends the
    search with no ID, as in Alloy."""
    if labels.get(LABEL_CONTAINER_ID):
        return labels[LABEL_CONTAINER_ID]
    k8s = labels.get(_K8S_CONTAINER_ID)
    if k8s:
        return next((k8s[len(p) :] or None for p in _K8S_PREFIXES if k8s.startswith(p)), None)
    return next((labels[name] for name in _PLAIN_CONTAINER_IDS if labels.get(name)), None)


def _infer_service_name(labels: Mapping[str, str]) -> str:
    """§8: annotation, ``ebpf/<namespace>/<container>``, Docker name, swarm service names,
    else ``unspecified``. Unlike Alloy, the Docker name loses its leading ``/``."""
    annotation = labels.get("__meta_kubernetes_pod_annotation_pyroscope_io_service_name")
    if annotation:
        return annotation
    namespace = labels.get("__meta_kubernetes_namespace")
    container = labels.get("__meta_kubernetes_pod_container_name")
    if namespace and container:
        return f"ebpf/{namespace}/{container}"
    candidates = (
        labels.get("__meta_docker_container_name", "").removeprefix("/"),
        labels.get("__meta_dockerswarm_container_label_service_name"),
        labels.get("__meta_dockerswarm_service_name"),
    )
    return next((name for name in candidates if name), UNSPECIFIED)
