"""The example configurations of Alloy's ``pyroscope.ebpf`` page pass our checks.

``discovery.kubernetes``, ``discovery.docker`` and ``pyroscope.write`` use their
real argument classes; ``discovery.relabel`` and ``pyroscope.ebpf`` use local
copies of Alloy's arguments, since their real classes live elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agent.config import ArgumentError, Capsule, Duration, Graph, block, check_config
from agent.discovery.docker import DockerArguments
from agent.discovery.kubernetes import KubernetesArguments, SelectorConfig
from agent.errors import ConfigError
from agent.write.pyroscope import PyroscopeWriteArguments

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s.alloy"
DOCKER = REPO / "examples" / "docker.alloy"


@dataclass(frozen=True)
class RelabelRule:
    source_labels: list[str] = field(default_factory=list)
    separator: str = ";"
    regex: str = "(.*)"
    modulus: int = 0
    target_label: str = ""
    replacement: str = "$1"
    action: str = "replace"


@dataclass(frozen=True)
class RelabelArguments:
    targets: list[dict[str, str]]
    rule: list[RelabelRule] = block(default_factory=list)


@dataclass(frozen=True)
class EbpfArguments:
    targets: list[dict[str, str]]
    forward_to: list[Capsule]
    collect_interval: Duration = Duration(15)
    sample_rate: int = 97
    demangle: str = "none"
    python_enabled: bool = True

    def __post_init__(self) -> None:
        if self.collect_interval <= 0:
            raise ArgumentError("collect_interval", "must be greater than 0")


@dataclass(frozen=True)
class TargetsExports:
    targets: list[dict[str, str]]


@dataclass(frozen=True)
class RelabelExports:
    output: list[dict[str, str]]
    rules: list[RelabelRule]


@dataclass(frozen=True)
class ReceiverExports:
    receiver: Capsule


@dataclass(frozen=True)
class NoExports:
    pass


def double(arguments: type, exports: type) -> type:
    return type(f"Double{arguments.__name__}", (), {"Arguments": arguments, "Exports": exports})


KINDS = {
    "discovery.kubernetes": double(KubernetesArguments, TargetsExports),
    "discovery.docker": double(DockerArguments, TargetsExports),
    "discovery.relabel": double(RelabelArguments, RelabelExports),
    "pyroscope.write": double(PyroscopeWriteArguments, ReceiverExports),
    "pyroscope.ebpf": double(EbpfArguments, NoExports),
}


@pytest.mark.parametrize("path", [K8S, DOCKER], ids=["k8s", "docker"])
def test_example_passes_check_config(path):
    check_config(path, KINDS)


def test_kubernetes_example_decodes_as_alloy_reads_it():
    graph = Graph.load(K8S, KINDS, environ={"HOSTNAME": "node-1"})
    assert graph.order == [
        "discovery.kubernetes.all_pods",
        "discovery.relabel.local_pods",
        "pyroscope.write.endpoint",
        "pyroscope.ebpf.local_pods",
    ]
    kubernetes = graph.arguments("discovery.kubernetes.all_pods")
    assert kubernetes.role == "pod"
    assert kubernetes.selectors == [SelectorConfig(role="pod", field="spec.nodeName=node-1")]
    rules = graph.arguments("discovery.relabel.local_pods").rule
    assert [rule.action for rule in rules] == ["drop", "replace", "labelmap"] + ["replace"] * 4
    assert rules[1].replacement == "ebpf/${1}/${2}" and rules[1].separator == "@"
    write = graph.arguments("pyroscope.write.endpoint")
    assert [endpoint.url for endpoint in write.endpoint] == ["http://pyroscope:4040"]
    assert write.endpoint[0].remote_timeout == 10


def test_docker_example_decodes_as_alloy_reads_it():
    graph = Graph.load(DOCKER, KINDS, environ={})
    assert graph.order[0] == "discovery.docker.linux"
    assert graph.order[-1] == "pyroscope.ebpf.default"
    docker = graph.arguments("discovery.docker.linux")
    assert docker.host == "unix:///var/run/docker.sock"
    assert (docker.port, docker.refresh_interval, docker.match_first_network) == (80, 60, True)


def test_a_broken_copy_of_an_example_is_rejected(tmp_path):
    broken = tmp_path / "k8s.alloy"
    broken.write_text(K8S.read_text().replace('role = "pod"', 'role = "pods"', 1))
    with pytest.raises(ConfigError, match=r"k8s.alloy:4:3: role: must be one of pod, node"):
        check_config(broken, KINDS)
