"""The agent imports the modules of the component kinds its configuration names, and no
others: a host-mode configuration keeps the Kubernetes and Docker discovery and the push
client's httpx out of its memory (issue 17's host-mode footprint).

The real ``emberscope run`` is started with ``PYTHONVERBOSE=1``: the interpreter then logs
every module it imports, at any time and by any means, to the agent's stderr.
"""

from __future__ import annotations

import re

import pytest

from tests.agent import REPO, free_port, run_agent

pytestmark = pytest.mark.usefixtures("bpf_ready")

# The modules only the configurations that use them need.
ON_DEMAND = {
    "agent.discovery.docker",
    "agent.discovery.kubernetes",
    "agent.discovery.kubeapi",
    "agent.write.pyroscope",
    "httpx",
}
_IMPORTED = re.compile(r"^import '([\w.]+)' #", re.MULTILINE)


def host_config(tmp_path) -> str:
    text = (REPO / "examples" / "local.alloy").read_text()
    return text.replace('directory = "./profiles"', f'directory = "{tmp_path / "profiles"}"')


def imported(log: str) -> set[str]:
    return set(_IMPORTED.findall(log))


def run_and_list_imports(config: str, tmp_path) -> set[str]:
    """Run the agent until it samples, then stop it; the modules it imported meanwhile."""
    with run_agent(config, tmp_path) as agent:
        agent.wait_for_sampling()
        assert agent.stop() == 0, agent.log
    return imported(agent.log)


def test_a_host_configuration_does_not_import_discovery_it_does_not_use(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONVERBOSE", "1")
    modules = run_and_list_imports(host_config(tmp_path), tmp_path)
    assert {"agent.discovery.process", "agent.pyroscope_ebpf", "agent.write.files"} <= modules
    assert not modules & ON_DEMAND


def test_the_components_a_configuration_names_are_imported(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONVERBOSE", "1")
    closed = f"http://127.0.0.1:{free_port()}"
    config = host_config(tmp_path) + (
        f'\ndiscovery.kubernetes "pods" {{\n  role = "pod"\n  api_server = "{closed}"\n}}\n'
        f'\npyroscope.write "w" {{\n  endpoint {{\n    url = "{closed}"\n  }}\n}}\n'
    )
    modules = run_and_list_imports(config, tmp_path)
    assert {"agent.discovery.kubernetes", "agent.write.pyroscope", "httpx"} <= modules
    assert "agent.discovery.docker" not in modules


def test_an_unknown_kind_is_refused_as_before_and_imports_no_component(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONVERBOSE", "1")
    path = tmp_path / "agent.alloy"
    path.write_text('discovery.process "p" {\n}\n\npyroscope.nope "a" {\n}\n')
    with run_agent(path.read_text(), tmp_path) as agent:
        assert agent.process.wait(30) == 1
    errors = [line for line in agent.log.splitlines() if line.startswith("emberscope:")]
    assert errors == [
        f'emberscope: {path}:4:1: cannot find the definition of component name "pyroscope.nope"'
    ]
    assert not imported(agent.log) & ON_DEMAND
