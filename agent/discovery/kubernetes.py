"""The ``discovery.kubernetes`` component: targets from the Kubernetes API.

Arguments with Alloy's names, defaults and checks::

    discovery.kubernetes "all_pods" {
      role = "pod"
      selectors {
        role  = "pod"
        field = "spec.nodeName=" + sys.env("HOSTNAME")
      }
    }

Every role Alloy knows is accepted here; only ``pod`` is discovered at run time, through a
list+watch of our own (``agent/discovery/kubeapi.py``) rather than kopf:
kopf's ``on.event`` handlers never learn that a relist ended, so a pod deleted while the watch
was away would keep its targets, and kopf retries API outages internally, leaving no way to
report them as unhealthy. The selectors are sent with every list and watch request.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any

from agent.config.component import ArgumentError, ComponentOptions, Health, block
from agent.config.httpclient import HTTPClientArguments
from agent.discovery.exports import PublishedTargets, TargetsExports
from agent.discovery.kubeapi import KubernetesError, find_api_server
from agent.discovery.kubepods import PodWatcher, Timings

__all__ = [
    "AttachMetadata",
    "KubernetesArguments",
    "KubernetesDiscovery",
    "KubernetesError",
    "NamespaceDiscovery",
    "SelectorConfig",
    "Timings",
]

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_SUPERVISE_INTERVAL = 0.5  # seconds between checks for new arguments

ROLES = ("pod", "node", "service", "endpoints", "endpointslice", "ingress")

# Which selector roles each role accepts (prometheus discovery/kubernetes SDConfig.Validate).
_ALLOWED_SELECTORS = {
    "pod": ("pod",),
    "node": ("node",),
    "service": ("service",),
    "endpoints": ("pod", "service", "endpoints"),
    "endpointslice": ("pod", "service", "endpointslice"),
    "ingress": ("ingress",),
}
_NODE_METADATA_ROLES = ("pod", "endpoints", "endpointslice")


def _check_role(argument: str, role: str) -> None:
    if role not in ROLES:
        raise ArgumentError(argument, f"must be one of {', '.join(ROLES)}, not {role!r}")


@dataclass(frozen=True, kw_only=True)
class NamespaceDiscovery:
    """``namespaces``: without the block every namespace is watched."""

    own_namespace: bool = False
    names: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class SelectorConfig:
    """``selectors``: label and field selectors passed to the API's list and watch calls."""

    role: str
    label: str = ""
    field: str = ""

    def __post_init__(self) -> None:
        _check_role("role", self.role)


@dataclass(frozen=True, kw_only=True)
class AttachMetadata:
    """``attach_metadata``: add the node's (or namespace's) labels and annotations."""

    node: bool = False
    namespace: bool = False


@dataclass(frozen=True, kw_only=True)
class KubernetesArguments(HTTPClientArguments):
    """The arguments of ``discovery.kubernetes``.

    With neither ``api_server`` nor ``kubeconfig_file`` the in-cluster
    service account is used.
    """

    role: str
    api_server: str = ""
    kubeconfig_file: str = ""
    namespaces: NamespaceDiscovery | None = block(default=None)
    selectors: list[SelectorConfig] = block(default_factory=list)
    attach_metadata: AttachMetadata = block(default_factory=AttachMetadata)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_role("role", self.role)
        if self.api_server and self.kubeconfig_file:
            raise ArgumentError("kubeconfig_file", "cannot be set together with api_server")
        self._check_selectors()

    def _check_selectors(self) -> None:
        allowed = _ALLOWED_SELECTORS[self.role]
        if self.attach_metadata.node and self.role in _NODE_METADATA_ROLES:
            allowed = (*allowed, "node")
        seen: set[str] = set()
        for selector in self.selectors:
            if selector.role in seen:
                raise ArgumentError("selectors", f"duplicated selector role: {selector.role}")
            seen.add(selector.role)
            if selector.role not in allowed:
                message = f"{self.role} role supports only {', '.join(allowed)} selectors"
                raise ArgumentError("selectors", message)


class KubernetesDiscovery:
    """``discovery.kubernetes``: exports ``targets``, one per pod container and port.

    Role ``pod`` only. One list+watch thread per namespace (one in all for every
    namespace) keeps the pods of its selectors; targets are published on change.

    Example::

        discovery = KubernetesDiscovery(options, KubernetesArguments(role="pod"))
        threading.Thread(target=discovery.run, args=(stop,)).start()
    """

    Arguments = KubernetesArguments

    Exports = TargetsExports

    def __init__(
        self,
        options: ComponentOptions,
        arguments: KubernetesArguments,
        *,
        timings: Timings | None = None,
        service_account_dir: str = SERVICE_ACCOUNT_DIR,
    ) -> None:
        self._options = options
        self._timings = timings or Timings()
        self._service_account_dir = service_account_dir
        self._lock = threading.Lock()
        self._args = arguments
        self._restart = threading.Event()
        self._watchers: list[PodWatcher] = []
        self._published = PublishedTargets(options)

    def run(self, stop: threading.Event) -> None:
        """Supervises the watchers; new arguments restart them."""
        while not stop.is_set():
            self._restart.clear()
            with self._lock:
                arguments = self._args
            self._start(arguments, stop)
            while not (stop.wait(_SUPERVISE_INTERVAL) or self._restart.is_set()):
                pass
            self._stop_watchers()

    def update(self, arguments: KubernetesArguments) -> None:
        with self._lock:
            if arguments == self._args:
                return
            self._args = arguments
        self._restart.set()

    def exports(self) -> dict[str, Any]:
        return self._published.exports()

    def health(self) -> Health:
        return self._published.health()

    def _start(self, arguments: KubernetesArguments, stop: threading.Event) -> None:
        if arguments.role != "pod":
            self._published.set_health("unhealthy", f"role {arguments.role} is not supported yet")
            self._publish()
            return
        backoff = self._timings.backoff_initial
        while not (stop.is_set() or self._restart.is_set()):
            try:
                server = find_api_server(arguments, self._service_account_dir)
                namespaces = _namespaces(arguments, self._service_account_dir)
                break
            except KubernetesError as exc:
                self._published.set_health("unhealthy", str(exc))
                stop.wait(backoff)
                backoff = min(backoff * 2, self._timings.backoff_max)
        else:
            return
        selectors = _selector_parameters(arguments.selectors)
        with self._lock:
            self._watchers = [
                PodWatcher(server, namespace, selectors, self._refresh, self._timings)
                for namespace in namespaces
            ]
        for watcher in self._watchers:
            watcher.start()

    def _stop_watchers(self) -> None:
        with self._lock:
            watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.stop()

    def _refresh(self) -> None:
        """Called by a watcher after each change of its pods or of its connection."""
        with self._lock:
            watchers = list(self._watchers)
        errors = [watcher.error for watcher in watchers if watcher.error]
        if errors:
            self._published.set_health("unhealthy", errors[0])
        elif all(watcher.listed for watcher in watchers):
            pods = sum(watcher.pod_count() for watcher in watchers)
            self._published.set_health("healthy", f"{pods} pods")
        self._publish()

    def _publish(self) -> None:
        with self._lock:
            if not all(watcher.listed for watcher in self._watchers):
                return  # keep the previous targets until every namespace is listed
            targets = [t for watcher in self._watchers for t in watcher.targets()]
        self._published.publish(targets)


def _selector_parameters(selectors: list[SelectorConfig]) -> dict[str, str]:
    """The pod selectors, sent to the API server on every list and watch, never applied here."""
    selector = next((s for s in selectors if s.role == "pod"), None)
    parameters = {}
    if selector and selector.field:
        parameters["fieldSelector"] = selector.field
    if selector and selector.label:
        parameters["labelSelector"] = selector.label
    return parameters


def _namespaces(arguments: KubernetesArguments, service_account_dir: str) -> list[str | None]:
    """``None`` stands for every namespace (one cluster-wide watch)."""
    block = arguments.namespaces
    if block is None or not (block.names or block.own_namespace):
        return [None]
    names: list[str | None] = list(dict.fromkeys(block.names))
    if block.own_namespace:
        path = os.path.join(service_account_dir, "namespace")
        try:
            with open(path, encoding="utf-8") as file:
                own = file.read().strip()
        except OSError as exc:
            raise KubernetesError(f"own_namespace: cannot read {path}: {exc}") from exc
        if own not in names:
            names.append(own)
    return names
