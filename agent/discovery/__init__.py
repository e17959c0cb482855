"""The discovery room: targets found, relabeled and indexed by the pid or container they profile."""

from agent.discovery.containers import (
    CgroupInfo,
    ContainerIdCache,
    only_unified_cgroups,
    parse_cgroup,
    parse_container_id,
)
from agent.discovery.docker import DockerArguments, DockerDiscovery
from agent.discovery.kubernetes import KubernetesArguments, KubernetesDiscovery
from agent.discovery.process import DiscoverConfig, ProcessDiscovery
from agent.discovery.relabel import RelabelComponent, Rule, Rules, relabel
from agent.discovery.targets import Target, TargetSet, build_targets

__all__ = [
    "CgroupInfo",
    "ContainerIdCache",
    "DiscoverConfig",
    "DockerArguments",
    "DockerDiscovery",
    "KubernetesArguments",
    "KubernetesDiscovery",
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
