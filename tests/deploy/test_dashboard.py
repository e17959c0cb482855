"""The Grafana dashboard queries only metrics and labels the agent really exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.telemetry.metrics import (
    EbpfMetrics,
    ProgramStats,
    SamplerCollector,
    SamplerReading,
    new_registry,
)
from agent.write.sender import WriteMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "dashboards" / "emberscope.json"
# Labels the scrape adds (Prometheus job/instance, Kubernetes discovery or external labels).
SCRAPE_LABELS = {"cluster", "namespace", "job", "instance", "pod", "node", "le"}
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}")
NAME = re.compile(r"(?<![\w\"$.])([a-z][a-z0-9]*_[a-z0-9_]+)")
LABEL_VALUES = re.compile(r"^label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?,\s*(\w+)\)$")
FUNCTIONS = {"histogram_quantile"}


def exposed() -> dict[str, set[str]]:
    """Sample names of a fresh registry built as the agent builds it, with their label names."""
    registry = new_registry()
    ebpf = EbpfMetrics(registry).bound("pyroscope.ebpf.default")
    ebpf.count_pprof("ebpf/default/app")
    ebpf.fanout_latency.observe(0.01)
    write = WriteMetrics(registry)
    endpoint = "http://pyroscope:4040"
    for counter in (write.sent_bytes, write.sent_profiles, write.retries):
        counter.labels(endpoint).inc()
    write.count_dropped(endpoint, 10, "queue_full")
    write.latency.labels(endpoint, "push_endpoint").observe(0.1)
    reading = SamplerReading(
        program=ProgramStats(run_time_ns=1000, run_count=10),
        samples=10,
        drops={"pid_map_full": 1},
        profiled_processes=3,
        maps={"pids": (3, 16384)},
        symbolization_errors={"elf_unreadable": 1},
        caches={"elf": {"len": 1, "size": 10, "hits": 1, "misses": 1, "evictions": 0}},
        python={
            "samples": 9,
            "no_thread_state": 1,
            "truncated": 1,
            "symbols_new": 4,
            "symbols_evicted": 0,
            "unnamed_frames": 0,
        },
        unwind={"frames_table": 5, "frames_fp": 1, "end_outermost": 2, "end_no_row": 1},
        unwind_tables={"rows": 10, "capacity_rows": 100, "files": 1, "files_failed": 0},
    )
    SamplerCollector(lambda: reading, registry=registry)
    names: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            names.setdefault(sample.name, set()).update(sample.labels)
    return names


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    found = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append(query["query"])
    return found


def test_dashboard_is_in_alloys_style() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = [variable["name"] for variable in dashboard["templating"]["list"]]
    assert variables[:5] == ["datasource", "cluster", "namespace", "job", "instance"]
    assert "component" in variables and "endpoint" in variables
    assert dashboard["refresh"] == "30s" and dashboard["graphTooltip"] == 1
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def check_selectors(query: str, names: dict[str, set[str]]) -> None:
    selectors = SELECTOR.findall(query)
    assert selectors, f"no metric selector in {query}"
    for metric, matchers in selectors:
        assert metric in names, f"{metric} is not a metric the agent exposes"
        labels = {matcher.split("=")[0].strip() for matcher in matchers.split(",") if matcher}
        assert labels <= names[metric] | SCRAPE_LABELS, (metric, labels - names[metric])


@pytest.mark.parametrize("query", queries())
def test_every_metric_and_label_exists(query: str) -> None:
    names = exposed()
    variable = LABEL_VALUES.match(query)
    if variable:
        metric, _matchers, label = variable.groups()
        assert metric in names, f"{metric} is not a metric the agent exposes"
        assert label in names[metric] | SCRAPE_LABELS, (metric, label)
        if _matchers:
            check_selectors(f"{metric}{_matchers}", names)
        return
    check_selectors(query, names)
    # No metric named without a selector either (e.g. rate(foo[5m])).
    groups = re.findall(r"by \(([^)]*)\)", query)
    grouping = {label.strip() for group in groups for label in group.split(",")}
    bare = set(NAME.findall(SELECTOR.sub("", query))) - FUNCTIONS - grouping
    assert not bare, bare
    for metric, _matchers in SELECTOR.findall(query):
        assert grouping <= names[metric] | SCRAPE_LABELS, (metric, grouping - names[metric])


def test_dashboard_covers_the_required_metrics() -> None:
    text = " ".join(queries())
    for metric in (
        "emberscope_ebpf_samples_total",
        "emberscope_ebpf_samples_dropped_total",
        "pyroscope_ebpf_pprofs_total",
        "pyroscope_write_sent_profiles_total",
        "pyroscope_write_dropped_profiles_total",
        "pyroscope_write_retries_total",
        "emberscope_bpf_program_run_time_seconds_total",
        "emberscope_bpf_program_runs_total",
        "emberscope_python_samples_total",
        "emberscope_unwind_frames_total",
        "emberscope_unwind_stacks_ended_total",
        "emberscope_unwind_table_rows",
        "emberscope_python_symbols_evicted_total",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    ):
        assert metric in text, metric
