"""`emberscope run` scraped by a real Prometheus on loopback: the metrics arrive with
Alloy's names and ``component_id``, and the agent's API answers while it runs."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agent import free_port, run_agent, wait_for

pytestmark = pytest.mark.usefixtures("bpf_ready")

CONFIG = """
discovery.process "local" {{
}}

discovery.relabel "workload" {{
  targets = discovery.process.local.targets
  rule {{
    source_labels = ["__meta_process_exe"]
    regex         = "{folder}/.*"
    action        = "keep"
  }}
}}

pyroscope.ebpf "telemetry" {{
  targets          = discovery.relabel.workload.output
  forward_to       = [pyroscope.file.out.receiver]
  collect_interval = "1s"
}}

pyroscope.file "out" {{
  directory = "{output}"
}}
"""
PROMETHEUS = """
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: emberscope
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_prometheus(folder: Path, port: int) -> subprocess.Popen:
    """Debian's Prometheus on ``folder``'s prometheus.yml, its data under ``folder``."""
    return subprocess.Popen(
        [
            "prometheus",
            f"--config.file={folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={folder / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def running(build_workload, tmp_path_factory) -> Iterator[dict]:
    """The agent profiling a workload, and Prometheus scraping the agent every second."""
    if shutil.which("prometheus") is None:
        pytest.skip("Debian's prometheus package is not installed: run 'make install-test'")
    workload = build_workload("three_leaves")
    tmp = tmp_path_factory.mktemp("telemetry")
    config = CONFIG.format(folder=workload.parent, output=tmp / "out")
    prometheus_port = free_port()
    workload_process = subprocess.Popen([str(workload), "60"])
    try:
        with run_agent(config, tmp) as agent:
            (tmp / "prometheus.yml").write_text(PROMETHEUS.format(port=agent.port))
            prometheus = start_prometheus(tmp, prometheus_port)
            try:
                yield {
                    "agent": f"http://127.0.0.1:{agent.port}",
                    "prometheus": f"http://127.0.0.1:{prometheus_port}",
                }
            finally:
                stop(prometheus)
    finally:
        stop(workload_process)


def query(prometheus: str, expression: str) -> list[dict]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expression}).json()
    return [r for r in answer["data"]["result"] if float(r["value"][1]) > 0]


def test_prometheus_scrapes_the_pprofs_with_the_component_id(running):
    found = wait_for(lambda: query(running["prometheus"], "pyroscope_ebpf_pprofs_total"), 40)
    assert found[0]["metric"]["component_id"] == "pyroscope.ebpf.telemetry"
    assert found[0]["metric"]["job"] == "emberscope"
    for name in (
        "pyroscope_ebpf_profiling_sessions_total",
        "pyroscope_ebpf_active_targets",
        "pyroscope_fanout_latency_count",
        "emberscope_ebpf_samples_total",
        "process_resident_memory_bytes",
    ):
        assert wait_for(lambda name=name: query(running["prometheus"], name), 10), name


def test_the_running_agent_is_healthy_ready_and_shows_its_targets(running):
    agent = running["agent"]
    wait_for(lambda: httpx.get(f"{agent}/-/healthy").status_code == 200, 20)
    assert httpx.get(f"{agent}/-/ready").status_code == 200
    listed = httpx.get(f"{agent}/api/v0/web/components").json()
    assert {c["localID"] for c in listed} == {
        "discovery.process.local",
        "discovery.relabel.workload",
        "pyroscope.ebpf.telemetry",
        "pyroscope.file.out",
    }
    detail = httpx.get(f"{agent}/api/v0/web/components/pyroscope.ebpf.telemetry").json()
    assert detail["arguments"]["collect_interval"] == "1s"
    assert detail["arguments"]["forward_to"] == ["FileReceiver"]
    profiled = [t for t in detail["debugInfo"]["targets"] if t["profiled"]]
    assert profiled and "three_leaves" in profiled[0]["labels"]["__meta_process_exe"]
    assert detail["debugInfo"]["pid_cache"]["entries"]
