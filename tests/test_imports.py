"""A configuration imports what it uses: the Kubernetes client (about 40 MB of RSS) loads
only when a ``discovery.kubernetes`` component reads a ``kubeconfig_file``, never for a host
configuration, ``check-config``, or the in-cluster and ``api_server`` ways of reaching the API
server; the modules of the component kinds (and httpx, which Docker and Kubernetes discovery
and ``pyroscope.write`` use) load only when a configuration names their kind. Each case runs
in a fresh interpreter, whose ``sys.modules`` is the oracle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.agent import free_port
from tests.discovery.apiserver import LoopbackApiServer, make_pod, write_kubeconfig

REPO = Path(__file__).resolve().parents[1]
CLIENT = ("kubernetes", "urllib3")
ON_DEMAND = (
    "httpx",
    "agent.discovery.docker",
    "agent.discovery.kubernetes",
    "agent.write.pyroscope",
)
WATCHED = CLIENT + ON_DEMAND

# Runs `emberscope run` in the main thread (it owns the signal handlers); a second thread
# waits until the agent is ready and, for `until`, a module is imported (or 20 s pass),
# prints which of WATCHED are imported, and stops the agent as SIGTERM would.
RUN = """
import json, os, signal, sys, threading, time, urllib.request
from agent.cli import main

port, until, config = int(sys.argv[1]), sys.argv[2], sys.argv[3]

def ready():
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as answer:
            return answer.status == 200
    except OSError:
        return False

def watch():
    deadline = time.monotonic() + 30
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.1)
    settled = time.monotonic() + (20 if until else 2)
    while until not in sys.modules and time.monotonic() < settled:
        time.sleep(0.1)
    print(json.dumps({"ready": ready(), "imported": [m for m in %r if m in sys.modules]}))
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=watch, daemon=True).start()
sys.exit(main(["run", f"--server.http.listen-addr=127.0.0.1:{port}", config]))
""" % (WATCHED,)

CHECK = """
import json, sys
from pathlib import Path
from agent.pipeline import check

for path in sys.argv[1:]:
    check(Path(path), {"HOSTNAME": "node-1"})
print(json.dumps({"imported": [m for m in %r if m in sys.modules]}))
""" % (WATCHED,)


def run_python(script: str, *args: str, cwd: Path = REPO, timeout: float = 90) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        env=os.environ | {"PYTHONPATH": str(REPO)},  # this tree's agent, whatever the cwd
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_check_config_imports_no_kubernetes_client():
    assert run_python(CHECK, str(REPO / "examples" / "local.alloy")) == {"imported": []}
    kinds = ["httpx", "agent.discovery.kubernetes", "agent.write.pyroscope"]
    assert run_python(CHECK, str(REPO / "deploy" / "k8s.alloy")) == {"imported": kinds}


@pytest.mark.usefixtures("bpf_ready")
def test_a_host_configuration_runs_without_the_kubernetes_client(tmp_path):
    """examples/local.alloy as `make run` runs it: discovery.process, relabel, ebpf, file;
    neither Docker nor Kubernetes discovery, pyroscope.write or httpx."""
    config = str(REPO / "examples" / "local.alloy")
    result = run_python(RUN, str(free_port()), "", config, cwd=tmp_path)
    assert result == {"ready": True, "imported": []}


@pytest.mark.usefixtures("bpf_ready")
@pytest.mark.parametrize(
    ("way", "client"), [("api_server", []), ("kubeconfig_file", ["kubernetes", "urllib3"])]
)
def test_discovery_kubernetes_imports_the_client_only_for_a_kubeconfig(tmp_path, way, client):
    api = LoopbackApiServer()
    api.start()
    try:
        api.apply(make_pod("web-1", namespace="shop", node="node-1"))
        value = api.url
        if way == "kubeconfig_file":
            value = str(tmp_path / "kubeconfig")
            write_kubeconfig(value, api.url)
        config = tmp_path / "k8s.alloy"
        config.write_text(
            f'discovery.kubernetes "pods" {{\n  role = "pod"\n  {way} = "{value}"\n}}\n'
            f'pyroscope.file "out" {{\n  directory = "{tmp_path / "out"}"\n}}\n'
        )
        until = client[0] if client else ""
        result = run_python(RUN, str(free_port()), until, str(config), cwd=tmp_path)
    finally:
        api.stop()
    imported = [*client, "httpx", "agent.discovery.kubernetes"]
    assert result == {"ready": True, "imported": imported}
    assert api.queries("list"), "the component listed pods"
