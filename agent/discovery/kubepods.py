"""The pod watch of ``discovery.kubernetes`` and the targets of each pod.

``PodWatcher`` is the list+watch loop on an ``ApiClient`` (``agent/discovery/kubeapi.py``).
Targets are those of Prometheus's pod discovery: one target per container and declared port,
one per container without ports, regular containers first and then init containers, no
targets while the pod has no IP. The group-level pod labels are merged into every target, as
Alloy does. Pods are the API's JSON (plain dicts).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from agent.discovery.kubeapi import ApiClient, ApiServer, Gone, KubernetesError, Timeouts
from agent.supervise import SupervisedThread

__all__ = [
    "PodWatcher",
    "Timings",
    "pod_targets",
    "sanitize_label_name",
]

log = logging.getLogger(__name__)

_META = "__meta_kubernetes_"
_POD = _META + "pod_"
_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(frozen=True)
class Timings:
    """How long to wait for the API server; a seam so tests need not wait a minute."""

    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    connect_timeout: float = 10.0
    list_read_timeout: float = 60.0
    # Above the ~60 s bookmark interval, so a healthy quiet watch is never cut (§9.2).
    watch_read_timeout: float = 120.0
    watch_timeout_seconds: int = 300


class PodWatcher:
    """List, then watch from the list's resourceVersion, in a thread of its own (§9.3).

    A 410 relists at once; a dropped, refused or silent connection resumes from the held
    version after a backoff. The pods are kept meanwhile, so targets survive an outage.
    ``selectors`` are the list and watch requests' ``fieldSelector``/``labelSelector``.
    """

    def __init__(
        self,
        server: ApiServer,
        namespace: str | None,
        selectors: dict[str, str],
        on_change: Callable[[], None],
        timings: Timings,
    ) -> None:
        self._api = ApiClient(server)
        self._path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
        self._selectors = selectors
        self._on_change = on_change
        self._timings = timings
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pods: dict[str, list[dict[str, str]]] = {}
        self._version: str | None = None
        self.listed = False
        self.error: str | None = None
        name = f"discovery.kubernetes/{namespace or '*'}"
        self._thread = SupervisedThread(name, self._run, on_crash=self._crashed, stop=self._stop)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Prompt even mid-read: the open watch is interrupted under the reader."""
        self._stop.set()
        self._api.interrupt()
        self._thread.join(timeout=5)
        self._api.close()

    def targets(self) -> list[dict[str, str]]:
        with self._lock:
            return [target for key in sorted(self._pods) for target in self._pods[key]]

    def pod_count(self) -> int:
        with self._lock:
            return len(self._pods)

    def _crashed(self, exc: BaseException) -> None:
        """A bug or an answer of a shape not handled: unhealthy until the restart relists."""
        self.error = f"pod watch failed: {exc}"
        self._version = None
        self._on_change()

    def _run(self, _stop: threading.Event) -> None:
        backoff = self._timings.backoff_initial
        while not self._stop.is_set():
            try:
                if self._version is None:
                    self._list()
                self._watch()
                backoff = self._timings.backoff_initial
            except Gone:
                log.debug("discovery.kubernetes: resourceVersion %s gone, relisting", self._version)
                self._version = None
            except KubernetesError as exc:
                if self._stop.is_set():
                    return
                self.error = str(exc)
                self._on_change()
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self._timings.backoff_max)

    def _list(self) -> None:
        timeouts = Timeouts(self._timings.connect_timeout, self._timings.list_read_timeout)
        body = self._api.get(self._path, self._selectors, timeouts)
        try:
            version = body["metadata"]["resourceVersion"]
        except (KeyError, TypeError) as exc:
            message = "unusable answer from the API server: a list without resourceVersion"
            raise KubernetesError(message) from exc
        pods = {_key(pod): pod_targets(pod) for pod in body.get("items") or []}
        with self._lock:
            self._pods = pods  # a resync replaces everything, deletions included
        self._version = version
        self.listed, self.error = True, None
        log.debug("discovery.kubernetes: listed %d pods at %s", len(pods), self._version)
        self._on_change()

    def _watch(self) -> None:
        """Until the server ends the watch (``timeoutSeconds``) or the stop is set."""
        timeouts = Timeouts(self._timings.connect_timeout, self._timings.watch_read_timeout)
        params = {
            **self._selectors,
            "resourceVersion": self._version or "",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self._timings.watch_timeout_seconds),
        }
        with self._api.watch(self._path, params, timeouts) as events:
            if self.error:
                self.error = None
                self._on_change()
            for event in events:
                if self._stop.is_set():
                    return
                self._handle(event)

    def _handle(self, event: dict[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == HTTPStatus.GONE:
                raise Gone(obj.get("message", "resourceVersion too old"))
            raise KubernetesError(f"watch error {obj.get('code')}: {obj.get('message')}")
        self._version = obj.get("metadata", {}).get("resourceVersion", self._version)
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return  # BOOKMARK: only the version moves
        with self._lock:
            if kind == "DELETED":
                self._pods.pop(_key(obj), None)
            else:
                self._pods[_key(obj)] = pod_targets(obj)
        self._on_change()


def _key(pod: dict[str, Any]) -> str:
    metadata = pod.get("metadata") or {}
    return f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"


def sanitize_label_name(name: str) -> str:
    """Prometheus' ``strutil.SanitizeLabelName``: every character outside ``[a-zA-Z0-9_]``
    becomes ``_``."""
    return _INVALID_LABEL_CHARS.sub("_", name)


def pod_targets(pod: Mapping[str, Any]) -> list[dict[str, str]]:
    """The targets of one pod; empty values are left out, as Prometheus treats them as absent."""
    status = pod.get("status") or {}
    pod_ip = status.get("podIP") or ""
    if not pod_ip:
        return []
    spec = pod.get("spec") or {}
    ids = _container_ids(status)
    common = _pod_labels(pod)
    targets = []
    for init, containers in ((False, spec.get("containers")), (True, spec.get("initContainers"))):
        for container in containers or []:
            labels = {**common, **_container_labels(container, init, ids)}
            ports = container.get("ports") or []
            if not ports:
                targets.append(_without_empty({**labels, "__address__": pod_ip}))
            for port in ports:
                targets.append(_without_empty({**labels, **_port_labels(pod_ip, port)}))
    return targets


def _pod_labels(pod: Mapping[str, Any]) -> dict[str, str]:
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    labels = {
        _META + "namespace": metadata.get("namespace", ""),
        _POD + "name": metadata.get("name", ""),
        _POD + "ip": status.get("podIP", ""),
        _POD + "ready": _ready(status),
        _POD + "phase": status.get("phase", ""),
        _POD + "node_name": spec.get("nodeName", ""),
        _POD + "host_ip": status.get("hostIP", ""),
        _POD + "uid": metadata.get("uid", ""),
    }
    labels.update(_controller_labels(metadata))
    labels.update(_map_labels("label", metadata.get("labels")))
    labels.update(_map_labels("annotation", metadata.get("annotations")))
    return labels


def _ready(status: Mapping[str, Any]) -> str:
    """The PodReady condition lowercased; ``unknown`` when it is missing."""
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            return str(condition.get("status", "Unknown")).lower()
    return "unknown"


def _controller_labels(metadata: Mapping[str, Any]) -> dict[str, str]:
    for owner in metadata.get("ownerReferences") or []:
        if owner.get("controller"):
            return {
                _POD + "controller_kind": owner.get("kind", ""),
                _POD + "controller_name": owner.get("name", ""),
            }
    return {}


def _map_labels(kind: str, values: Mapping[str, str] | None) -> dict[str, str]:
    """``pod_<kind>_<name>`` with the value and ``pod_<kind>present_<name>`` = ``true``."""
    labels = {}
    for key, value in (values or {}).items():
        name = sanitize_label_name(key)
        labels[f"{_POD}{kind}_{name}"] = value
        labels[f"{_POD}{kind}present_{name}"] = "true"
    return labels


def _container_ids(status: Mapping[str, Any]) -> dict[tuple[bool, str], str]:
    """``containerID`` as the API gives it (``containerd://<64 hex>``), by (init, name)."""
    ids = {}
    for init, key in ((False, "containerStatuses"), (True, "initContainerStatuses")):
        for container_status in status.get(key) or []:
            ids[(init, container_status.get("name", ""))] = container_status.get("containerID", "")
    return ids


def _container_labels(
    container: Mapping[str, Any], init: bool, ids: Mapping[tuple[bool, str], str]
) -> dict[str, str]:
    name = container.get("name", "")
    return {
        _POD + "container_name": name,
        _POD + "container_id": ids.get((init, name), ""),
        _POD + "container_image": container.get("image", ""),
        _POD + "container_init": "true" if init else "false",
    }


def _port_labels(pod_ip: str, port: Mapping[str, Any]) -> dict[str, str]:
    number = str(port.get("containerPort", ""))
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    return {
        "__address__": f"{host}:{number}",
        _POD + "container_port_name": port.get("name", ""),
        _POD + "container_port_number": number,
        _POD + "container_port_protocol": port.get("protocol", "TCP"),
    }


def _without_empty(labels: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in labels.items() if value}
