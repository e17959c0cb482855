"""Every panel of the Grafana dashboard returns data from a real Prometheus.

``emberscope run`` profiles a busy workload and a copy of it with damaged section
headers (it runs, but cannot be symbolized: the symbolization error counter
exists), and pushes to a loopback Pyroscope receiver (one retried and one rejected
push first, so the retry and drop counters exist). Debian's ``prometheus`` scrapes
it every second on loopback with the ``cluster``/``namespace`` labels the
dashboard's variables select on. The variables are filled the way Grafana fills
them, from their own ``label_values`` queries, and each panel's query must answer
at least one finite value.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agent import free_port, run_agent, wait_for
from tests.telemetry.test_prometheus import start_prometheus, stop
from tests.write.test_pyroscope import Answer, Receiver, serve

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "dashboards" / "emberscope.json"
BPF_STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
CLUSTER, NAMESPACE, JOB = "loopback", "emberscope-test", "integrations/emberscope"
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

pyroscope.ebpf "dashboard" {{
  targets          = discovery.relabel.workload.output
  forward_to       = [pyroscope.file.out.receiver, pyroscope.write.pyroscope.receiver]
  collect_interval = "1s"
}}

pyroscope.file "out" {{
  directory = "{output}"
}}

pyroscope.write "pyroscope" {{
  endpoint {{
    url                = "{url}"
    min_backoff_period = "100ms"
  }}
}}
"""
# cluster and namespace are target labels, as Kubernetes discovery would set them:
# external_labels never show in Prometheus's own query answers.
PROMETHEUS = """
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: {job}
    static_configs:
      - targets: ["127.0.0.1:{port}"]
        labels:
          cluster: {cluster}
          namespace: {namespace}
"""
# What Grafana puts for its built-in variables; 30s holds many 1s scrapes.
BUILTINS = {"__rate_interval": "30s", "__interval": "1s", "__range": "30s"}
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def panels(items: list[dict]) -> Iterator[dict]:
    """Every panel, those inside rows (collapsed or not) included."""
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def targets(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, query) for every Prometheus target of the dashboard."""
    return [
        (panel.get("title", f"panel {panel.get('id')}"), target["expr"])
        for panel in panels(dashboard["panels"])
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def damaged_copy(binary: Path, target: Path) -> Path:
    """``binary`` with its section header offset past the end: the kernel runs it (it
    reads only program headers), the symbolizer counts it as ``file_corrupt``."""
    image = bytearray(binary.read_bytes())
    image[0x28:0x30] = struct.pack("<Q", len(image) * 16)  # e_shoff of an ELF64 header
    target.write_bytes(image)
    target.chmod(0o755)
    return target


def regex_value(value: str) -> str:
    """A value as Grafana writes it into ``label=~"..."``: regex-escaped, then string-escaped."""
    return re.escape(value).replace("\\", "\\\\")


def substitute(query: str, values: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name in BUILTINS:
            return BUILTINS[name]
        if name not in values:
            pytest.fail(f"unknown variable ${name} in {query}")
        return values[name]

    # Ad-hoc filters have no text in a query: Grafana adds them to every selector itself.
    return VARIABLE.sub(replace, query)


def label_values(url: str, selector: str) -> list[str]:
    reply = httpx.get(url, params={"match[]": selector})
    return reply.json()["data"] if reply.status_code == 200 else []


def fill_variables(prometheus: str, dashboard: dict) -> dict[str, str]:
    """Each query variable set to the first value its own label_values query finds."""
    values: dict[str, str] = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        definition = variable["query"]
        definition = definition["query"] if isinstance(definition, dict) else definition
        parsed = LABEL_VALUES.match(definition)
        assert parsed, f"variable {variable['name']}: not a label_values query: {definition}"
        selector = substitute(parsed["selector"], values)
        url = f"{prometheus}/api/v1/label/{parsed['label']}/values"
        found = wait_for(lambda url=url, selector=selector: label_values(url, selector), 20)
        values[variable["name"]] = regex_value(sorted(found)[0])
    return values


def answer(prometheus: str, query: str) -> str | None:
    """Why ``query`` gives no finite value now, or None when it does."""
    reply = httpx.get(f"{prometheus}/api/v1/query", params={"query": query}).json()
    if reply.get("status") != "success":
        return f"{reply.get('errorType')}: {reply.get('error')}"
    result = reply["data"]["result"]
    values = [float(series["value"][1]) for series in result]
    if any(math.isfinite(value) for value in values):
        return None
    return f"no finite value in {result}" if result else "no series"


@pytest.fixture
def bpf_stats() -> Iterator[None]:
    """kernel.bpf_stats_enabled=1 so the BPF run-time counters move; 0 again after.

    Left alone when it already reads 1: the reading is also 1 while any process holds
    a BPF_ENABLE_STATS descriptor, and writing 1 then "restoring" 1 would leave the
    sysctl itself on for good.
    """
    if BPF_STATS.read_text().strip() != "0":
        yield
        return
    BPF_STATS.write_text("1\n")
    try:
        yield
    finally:
        BPF_STATS.write_text("0\n")


@pytest.fixture
def pyroscope() -> Iterator[Receiver]:
    for receiver in serve():
        # One retried push (503, then 200 would follow) and one rejected (400): the
        # retry and drop counters exist as they do on a real agent after a hiccup.
        receiver.answers.extend([Answer(503), Answer(400)])
        yield receiver


@pytest.fixture
def running(build_workload, tmp_path, bpf_stats, pyroscope) -> Iterator[str]:
    """The agent profiling a workload and pushing; Prometheus scraping it every second."""
    if shutil.which("prometheus") is None:
        pytest.skip("Debian's prometheus package is not installed: run 'make install-test'")
    folder = tmp_path / "bin"
    folder.mkdir()
    workload = shutil.copy(build_workload("three_leaves"), folder / "three_leaves")
    damaged = damaged_copy(workload, folder / "damaged")
    config = CONFIG.format(folder=folder, output=tmp_path / "out", url=pyroscope.url)
    prometheus_port = free_port()
    workloads = [subprocess.Popen([str(binary), "60"]) for binary in (workload, damaged)]
    try:
        with run_agent(config, tmp_path) as agent:
            (tmp_path / "prometheus.yml").write_text(
                PROMETHEUS.format(job=JOB, port=agent.port, cluster=CLUSTER, namespace=NAMESPACE)
            )
            prometheus = start_prometheus(tmp_path, prometheus_port)
            try:
                yield f"http://127.0.0.1:{prometheus_port}"
            finally:
                stop(prometheus)
    finally:
        for process in workloads:
            stop(process)


def test_every_panel_query_returns_data(running: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    wait_for(lambda: httpx.get(f"{running}/-/ready").status_code == 200, 20)
    values = fill_variables(running, dashboard)
    assert values["cluster"] == CLUSTER and values["namespace"] == regex_value(NAMESPACE)
    assert values["component"] == regex_value("pyroscope.ebpf.dashboard")
    queries = [(title, substitute(expr, values)) for title, expr in targets(dashboard)]
    assert queries, "the dashboard has no queries"
    # rate() needs two scrapes of every counter; poll until every panel answers.
    deadline = time.monotonic() + 30
    while True:
        failures = [(title, query, answer(running, query)) for title, query in queries]
        failures = [failure for failure in failures if failure[2]]
        if not failures or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not failures, "panels without data:\n" + "\n".join(
        f"- {title!r}: {why}\n    {query}" for title, query, why in failures
    )
