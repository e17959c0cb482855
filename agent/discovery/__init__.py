"""The discovery room: targets found, relabeled and indexed by the pid or container they profile.

The Docker and Kubernetes components and their HTTP client are imported from their own
modules (``agent.discovery.docker``, ``agent.discovery.kubernetes``), only by the
configurations that use them.
"""

from agent.discovery.containers import (
    CgroupInfo,
    ContainerIdCache,
    only_unified_cgroups,
    parse_cgroup,
    parse_container_id,
)
from agent.discovery.process import DiscoverConfig, ProcessDiscovery
from agent.discovery.relabel import RelabelComponent, Rule, Rules, relabel
from agent.discovery.targets import Target, TargetSet, build_targets

__all__ = [
    "CgroupInfo",
    "ContainerIdCache",
    "DiscoverConfig",
    "ProcessDiscovery",
    "RelabelComponent",
    "Rule",
    "Rules",
    "Target",
    "TargetSet",
    "build_targets",
    "only_unified_cgroups",
    "parse_cgroup",
    "parse_container_id",
    "relabel",
]
