"""The example configurations of Alloy's ``pyroscope.ebpf`` page pass our checks.

They are checked against the agent's real table of component kinds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.config import Graph
from agent.discovery.kubernetes import SelectorConfig
from agent.errors import ConfigError
from agent.pipeline import KINDS, check

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s.alloy"
DOCKER = REPO / "examples" / "docker.alloy"


@pytest.mark.parametrize("path", [K8S, DOCKER], ids=["k8s", "docker"])
def test_example_passes_check_config(path):
    check(path, os.environ)


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
        check(broken, os.environ)
