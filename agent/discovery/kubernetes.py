"""The ``discovery.kubernetes`` component: targets from the Kubernetes API.

For now its arguments, with Alloy's names, defaults and checks
(``relabel-and-discovery.md`` §9.4–9.5)::

    discovery.kubernetes "all_pods" {
      role = "pod"
      selectors {
        role  = "pod"
        field = "spec.nodeName=" + sys.env("HOSTNAME")
      }
    }

Every role Alloy knows is accepted here; only ``pod`` is discovered at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.config.component import ArgumentError, block
from agent.config.httpclient import HTTPClientArguments

__all__ = ["AttachMetadata", "KubernetesArguments", "NamespaceDiscovery", "SelectorConfig"]

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
