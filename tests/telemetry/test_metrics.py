"""Every metric of the telemetry room moves, each against a fresh registry."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from agent.config import ComponentOptions
from agent.pprof import ProfileBuilder
from agent.pyroscope_ebpf import EbpfComponent
from agent.symbols import Frame
from agent.telemetry import (
    ProgramStats,
    SamplerCollector,
    SamplerReading,
    find_program_fd,
    new_registry,
    read_program_stats,
)

ID = "pyroscope.ebpf.default"
TARGETS = [
    {"__process_pid__": "101", "service_name": "api"},
    {"__process_pid__": "102", "service_name": "db"},
]


class Receiver:
    def __init__(self) -> None:
        self.profiles: list = []

    def append(self, profile: object) -> None:
        self.profiles.append(profile)


class FakeSampler:
    """Stands in for the shared BPF sampler: hands out the profiles it is given."""

    processes = 2

    def __init__(self, profiles: dict | None = None, error: Exception | None = None) -> None:
        self.profiles = profiles or {}
        self.error = error

    def collect(self, component: EbpfComponent) -> dict:
        if self.error is not None:
            raise self.error
        return self.profiles


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def component(registry: CollectorRegistry, receiver: Receiver) -> EbpfComponent:
    options = ComponentOptions(ID, lambda _: None, {}, threading.Lock(), registry)
    arguments = EbpfComponent.Arguments(targets=TARGETS, forward_to=[receiver])
    return EbpfComponent(options, arguments)


def builder() -> ProfileBuilder:
    profile = ProfileBuilder(97, time.time_ns())
    profile.add_sample([Frame(name="main", address=0x1000)], 3)
    return profile


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"component_id": ID, **labels})


def test_active_targets_follow_the_arguments(registry):
    ebpf = component(registry, Receiver())
    assert value(registry, "pyroscope_ebpf_active_targets") == 2
    ebpf.update(EbpfComponent.Arguments(targets=TARGETS[:1], forward_to=[]))
    assert value(registry, "pyroscope_ebpf_active_targets") == 1


def test_a_round_counts_a_session_each_pprof_and_the_fanout_latency(registry):
    receiver = Receiver()
    ebpf = component(registry, receiver)
    targets = {target.service_name: target for target in ebpf._targets}
    sampler = FakeSampler({targets["api"]: builder(), targets["db"]: builder()})
    ebpf._collect_round(sampler)
    ebpf._collect_round(FakeSampler({targets["api"]: builder()}))
    assert len(receiver.profiles) == 3
    assert value(registry, "pyroscope_ebpf_profiling_sessions_total") == 2
    assert value(registry, "pyroscope_ebpf_pprofs_total", service_name="api") == 2
    assert value(registry, "pyroscope_ebpf_pprofs_total", service_name="db") == 1
    assert value(registry, "pyroscope_fanout_latency_count") == 3
    assert value(registry, "pyroscope_fanout_latency_sum") > 0
    assert value(registry, "pyroscope_ebpf_profiling_sessions_failing_total") == 0


def test_a_failed_round_is_counted_shown_in_health_and_the_next_one_recovers(registry):
    ebpf = component(registry, Receiver())
    ebpf._collect_round(FakeSampler(error=OSError("map gone")))
    assert value(registry, "pyroscope_ebpf_profiling_sessions_failing_total") == 1
    assert ebpf.health().state == "unhealthy"
    assert "map gone" in ebpf.health().message
    ebpf._collect_round(FakeSampler())
    assert ebpf.health().state == "healthy"
    assert value(registry, "pyroscope_ebpf_profiling_sessions_total") == 2


def test_two_components_share_the_metrics_with_their_own_component_id(registry):
    shared: dict = {}
    lock = threading.Lock()
    for label, targets in (("a", TARGETS), ("b", TARGETS[:1])):
        options = ComponentOptions(
            f"pyroscope.ebpf.{label}", lambda _: None, shared, lock, registry
        )
        EbpfComponent(options, EbpfComponent.Arguments(targets=targets, forward_to=[]))
    gauge = "pyroscope_ebpf_active_targets"
    assert registry.get_sample_value(gauge, {"component_id": "pyroscope.ebpf.a"}) == 2
    assert registry.get_sample_value(gauge, {"component_id": "pyroscope.ebpf.b"}) == 1


def test_the_agent_registry_has_the_process_and_platform_collectors():
    registry = new_registry()
    assert registry.get_sample_value("process_cpu_seconds_total") >= 0
    assert registry.get_sample_value("process_resident_memory_bytes") > 0
    names = {metric.name for metric in registry.collect()}
    assert "python_info" in names


def reading(**changes: object) -> SamplerReading:
    fields = {
        "program": ProgramStats(run_time_ns=2_500_000_000, run_count=40),
        "samples": 1000,
        "drops": {"user_stack_missing": 3, "pid_map_full": 1},
        "profiled_processes": 5,
        "maps": {"pids": (7, 2048), "counts": (100, 16384)},
        "symbolization_errors": {"file_unopened": 2},
        "caches": {"pid_cache": {"size": 32, "len": 5, "hits": 7, "misses": 5, "evictions": 1}},
        "map_memory": {"stacks_0": 263040},
        "unattributed": {"no_target": 4},
        "thread_restarts": {"ebpf-events": 2},
        "unwind": {"frames_table": 30, "frames_fp": 2, "end_outermost": 5, "end_depth": 1},
        "unwind_tables": {"rows": 100, "capacity_rows": 1000, "files": 2, "build_ms": 1500},
    }
    return SamplerReading(**(fields | changes))


def test_the_sampler_collector_reads_at_each_scrape(registry):
    current = [reading(samples=10)]
    SamplerCollector(lambda: current[0], registry=registry)
    assert registry.get_sample_value("emberscope_ebpf_samples_total") == 10
    current[0] = reading()
    get = registry.get_sample_value
    assert get("emberscope_ebpf_samples_total") == 1000
    assert get("emberscope_bpf_program_run_time_seconds_total") == 2.5
    assert get("emberscope_bpf_program_runs_total") == 40
    assert get("emberscope_ebpf_samples_dropped_total", {"reason": "user_stack_missing"}) == 3
    assert get("emberscope_ebpf_samples_dropped_total", {"reason": "pid_map_full"}) == 1
    assert get("emberscope_ebpf_profiled_processes") == 5
    assert get("emberscope_ebpf_map_entries", {"map": "pids"}) == 7
    assert get("emberscope_ebpf_map_max_entries", {"map": "pids"}) == 2048
    assert get("emberscope_ebpf_map_entries", {"map": "counts"}) == 100
    assert get("emberscope_ebpf_map_memory_bytes", {"map": "stacks_0"}) == 263040
    assert get("emberscope_samples_unattributed_total", {"reason": "no_target"}) == 4
    assert get("emberscope_thread_restarts_total", {"thread": "ebpf-events"}) == 2
    assert get("emberscope_unwind_frames_total", {"method": "table"}) == 30
    assert get("emberscope_unwind_frames_total", {"method": "frame_pointer"}) == 2
    assert get("emberscope_unwind_stacks_ended_total", {"reason": "outermost"}) == 5
    assert get("emberscope_unwind_stacks_ended_total", {"reason": "depth"}) == 1
    assert get("emberscope_unwind_table_rows") == 100
    assert get("emberscope_unwind_table_max_rows") == 1000
    assert get("emberscope_unwind_table_files") == 2
    assert get("emberscope_unwind_build_seconds_total") == 1.5
    assert get("emberscope_symbolization_errors_total", {"reason": "file_unopened"}) == 2
    cache = {"cache": "pid_cache"}
    assert get("emberscope_symbol_cache_entries", cache) == 5
    assert get("emberscope_symbol_cache_max_entries", cache) == 32
    assert get("emberscope_symbol_cache_hits_total", cache) == 7
    assert get("emberscope_symbol_cache_misses_total", cache) == 5
    assert get("emberscope_symbol_cache_evictions_total", cache) == 1


def test_a_closed_sampler_yields_nothing_and_no_program_stats_means_no_series(registry):
    current: list = [None]
    SamplerCollector(lambda: current[0], registry=registry)
    assert registry.get_sample_value("emberscope_ebpf_samples_total") is None
    current[0] = reading(program=None)
    assert registry.get_sample_value("emberscope_ebpf_samples_total") == 1000
    assert registry.get_sample_value("emberscope_bpf_program_runs_total") is None


def test_program_stats_come_from_the_fdinfo_of_the_program(tmp_path):
    fdinfo = tmp_path / "self" / "fdinfo"
    fdinfo.mkdir(parents=True)
    (fdinfo / "3").write_text("pos:\t0\nflags:\t02000002\nmap_id:\t9\n")
    (fdinfo / "7").write_text("prog_type:\t7\nprog_id:\t42\nrun_time_ns:\t1234\nrun_cnt:\t5\n")
    assert find_program_fd(42, str(tmp_path)) == 7
    assert find_program_fd(43, str(tmp_path)) is None
    assert read_program_stats(7, str(tmp_path)) == ProgramStats(1234, 5)
    assert read_program_stats(3, str(tmp_path)) is None
    assert read_program_stats(99, str(tmp_path)) is None
