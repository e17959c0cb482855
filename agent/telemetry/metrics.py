"""The agent's metrics, declared together against one injected registry.

Components keep Alloy's exact ``pyroscope_*`` names, labelled with
``component_id`` as Alloy does. The agent's own cost and health share the
``emberscope_`` prefix and are read at scrape time from state that already
exists (the BPF maps, the kernel's program stats, the symbolizer's caches):

    registry = new_registry()
    metrics = EbpfMetrics(registry).bound("pyroscope.ebpf.default")
    metrics.sessions.inc()
    SamplerCollector(sampler.reading, registry=registry)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

__all__ = [
    "BoundEbpfMetrics",
    "EbpfMetrics",
    "HttpMetrics",
    "ProgramStats",
    "SamplerCollector",
    "SamplerReading",
    "find_program_fd",
    "new_registry",
    "read_program_stats",
]

_CACHE_COUNTERS = ("hits", "misses", "evictions")
_PYTHON_COUNTERS = {
    "samples": "Samples of Python processes for which the kernel looked for Python frames.",
    "no_thread_state": "Samples of Python processes whose thread ran no Python code.",
    "truncated": "Python stacks deeper than the kernel walks, cut at a marker frame.",
    "symbols_new": "Code object names copied into the kernel's symbols map.",
    "symbols_evicted": "Names evicted from the full symbols map (symbols_map_size) "
    "to make room; their frames are named from process memory instead.",
    "unnamed_frames": "Python frames that could not be named (evicted and the process gone).",
    "lines_lost": "Line tables of new code objects the kernel could not read or send "
    "(its ring full); they are read from process memory instead.",
    "lines_unknown": "Python frame locations given their function's first line: "
    "its line table could not be had (or was cut before them) and the process was gone.",
}


def new_registry() -> CollectorRegistry:
    """A registry with the process (CPU, RSS, fds) and platform collectors, nothing else."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


@dataclass(frozen=True, slots=True)
class BoundEbpfMetrics:
    """The metrics of one ``pyroscope.ebpf`` component (its ``component_id`` filled in)."""

    component_id: str
    active_targets: Gauge
    sessions: Counter
    sessions_failing: Counter
    fanout_latency: Histogram
    pprofs: Counter

    def count_pprof(self, service_name: str) -> None:
        self.pprofs.labels(self.component_id, service_name).inc()


class EbpfMetrics:
    """The five metrics of Alloy's ``pyroscope.ebpf`` page; one instance per registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["component_id"]
        self.active_targets = Gauge(
            "pyroscope_ebpf_active_targets",
            "Targets the component profiles.",
            labels,
            registry=registry,
        )
        self.sessions = Counter(
            "pyroscope_ebpf_profiling_sessions_total",
            "Collection rounds the component started.",
            labels,
            registry=registry,
        )
        self.sessions_failing = Counter(
            "pyroscope_ebpf_profiling_sessions_failing_total",
            "Collection rounds that failed.",
            labels,
            registry=registry,
        )
        self.fanout_latency = Histogram(
            "pyroscope_fanout_latency",
            "Seconds taken to hand one profile to every forward_to receiver.",
            labels,
            registry=registry,
        )
        self.pprofs = Counter(
            "pyroscope_ebpf_pprofs_total",
            "Profiles the component produced, by service name.",
            [*labels, "service_name"],
            registry=registry,
        )

    def bound(self, component_id: str) -> BoundEbpfMetrics:
        return BoundEbpfMetrics(
            component_id,
            self.active_targets.labels(component_id),
            self.sessions.labels(component_id),
            self.sessions_failing.labels(component_id),
            self.fanout_latency.labels(component_id),
            self.pprofs,
        )


class ConfigMetrics:
    """The outcome of the last configuration reload, as Alloy's ``alloy_config_last_load_*``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.last_reload_successful = Gauge(
            "emberscope_config_last_reload_successful",
            "1 if the last load or reload of the configuration succeeded, else 0.",
            registry=registry,
        )
        self.last_reload_success_time = Gauge(
            "emberscope_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful load or reload of the configuration.",
            registry=registry,
        )

    def loaded(self, ok: bool) -> None:
        self.last_reload_successful.set(1 if ok else 0)
        if ok:
            self.last_reload_success_time.set_to_current_time()


class HttpMetrics:
    """The telemetry server's connections: open now, and those it dropped, by reason."""

    DROP_REASONS = (
        "read_timeout",  # the request not sent within the client timeout
        "write_timeout",  # the answer not taken within the client timeout
        "incomplete",  # the client closed before the end of its request
        "too_large",  # a request line and headers over 16 KiB
        "reset",  # reset by the client
        "broken_pipe",  # the client went away while the answer was written
        "error",  # another socket error
        "evicted",  # still no request when room was needed for a new connection
        "busy",  # answered 503: every open connection had sent its request
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        self.open_connections = Gauge(
            "emberscope_http_open_connections",
            "Connections the telemetry server holds open.",
            registry=registry,
        )
        self.dropped = Counter(
            "emberscope_http_connections_dropped_total",
            "Connections the telemetry server closed before answering, or turned away, by reason.",
            ["reason"],
            registry=registry,
        )
        for reason in self.DROP_REASONS:
            self.dropped.labels(reason)


@dataclass(frozen=True, slots=True)
class ProgramStats:
    """The kernel's run statistics of one BPF program (zero unless bpf stats are enabled)."""

    run_time_ns: int
    run_count: int


@dataclass(frozen=True, slots=True)
class SamplerReading:
    """What the shared sampler reports at one scrape."""

    program: ProgramStats | None
    samples: int
    drops: Mapping[str, int]
    profiled_processes: int
    maps: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # entries, capacity
    symbolization_errors: Mapping[str, int] = field(default_factory=dict)
    caches: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    python: Mapping[str, int] = field(default_factory=dict)
    """Python walk counters (keys of _PYTHON_COUNTERS); empty when Python is disabled."""
    thread_restarts: Mapping[str, int] = field(default_factory=dict)
    """Restarts of the sampler's background threads after a crash, by thread name."""
    unattributed: Mapping[str, int] = field(default_factory=dict)
    """Samples drained but routed to no profile, by reason (no_target)."""
    map_memory: Mapping[str, int] = field(default_factory=dict)
    """Kernel memory of each BPF map, in bytes."""
    unwind: Mapping[str, int] = field(default_factory=dict)
    """The kernel's native walk counters (profile.h unwind_stat, lower case)."""
    unwind_tables: Mapping[str, int] = field(default_factory=dict)
    """NativeUnwinder.stats(): tables held against capacity, files built, failed, evicted."""


def find_program_fd(program_id: int, proc_root: str = "/proc") -> int | None:
    """The descriptor of this process that holds BPF program ``program_id``, if any."""
    folder = f"{proc_root}/self/fdinfo"
    try:
        names = os.listdir(folder)
    except OSError:
        return None
    for name in names:
        if _fdinfo(f"{folder}/{name}").get("prog_id") == str(program_id):
            return int(name)
    return None


def read_program_stats(fd: int, proc_root: str = "/proc") -> ProgramStats | None:
    """``run_time_ns`` and ``run_cnt`` from the fdinfo of a program descriptor.

    Read this way, no ``bpftool`` and no extra capability is needed; the
    kernel counts only while ``kernel.bpf_stats_enabled`` is set.
    """
    fields = _fdinfo(f"{proc_root}/self/fdinfo/{fd}")
    try:
        return ProgramStats(int(fields["run_time_ns"]), int(fields["run_cnt"]))
    except (KeyError, ValueError):
        return None


def _fdinfo(path: str) -> dict[str, str]:
    try:
        with open(path) as stream:
            lines = stream.read().splitlines()
    except OSError:
        return {}
    pairs = (line.split(":", 1) for line in lines if ":" in line)
    return {name.strip(): value.strip() for name, value in pairs}


class SamplerCollector:
    """Reads the shared sampler at scrape time; yields nothing while it has no reading."""

    def __init__(
        self,
        read: Callable[[], SamplerReading | None],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._read = read
        if registry is not None:
            registry.register(self)

    def collect(self) -> Iterator[Metric]:
        reading = self._read()
        if reading is None:
            return
        yield from _program_metrics(reading.program)
        yield from _sampling_metrics(reading)
        yield from _symbol_metrics(reading)
        yield from _python_metrics(reading)
        yield from _unwind_metrics(reading)


def _program_metrics(stats: ProgramStats | None) -> Iterator[Metric]:
    if stats is None:
        return
    yield CounterMetricFamily(
        "emberscope_bpf_program_run_time_seconds",
        "Time the kernel spent running the sampling BPF program, while bpf stats are enabled.",
        value=stats.run_time_ns / 1e9,
    )
    yield CounterMetricFamily(
        "emberscope_bpf_program_runs",
        "Times the kernel ran the sampling BPF program, while bpf stats are enabled.",
        value=stats.run_count,
    )


def _sampling_metrics(reading: SamplerReading) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "emberscope_ebpf_samples",
        "Samples the BPF program recorded since it was loaded.",
        value=reading.samples,
    )
    drops = CounterMetricFamily(
        "emberscope_ebpf_samples_dropped",
        "Samples the BPF program could not record, by reason.",
        labels=["reason"],
    )
    for reason, count in sorted(reading.drops.items()):
        drops.add_metric([reason], count)
    yield drops
    unattributed = CounterMetricFamily(
        "emberscope_samples_unattributed",
        "Samples recorded but routed to no profile, by reason: no_target for processes "
        "that matched no target within the discovery grace period.",
        labels=["reason"],
    )
    for reason, count in sorted(reading.unattributed.items()):
        unattributed.add_metric([reason], count)
    yield unattributed
    restarts = CounterMetricFamily(
        "emberscope_thread_restarts",
        "Times a background thread of the sampler crashed and was restarted, by thread.",
        labels=["thread"],
    )
    for thread, count in sorted(reading.thread_restarts.items()):
        restarts.add_metric([thread], count)
    yield restarts
    yield GaugeMetricFamily(
        "emberscope_ebpf_profiled_processes",
        "Processes the pid map marks as profiled.",
        value=reading.profiled_processes,
    )
    entries = GaugeMetricFamily(
        "emberscope_ebpf_map_entries",
        "Entries in use in a BPF map: the pid map and the count and stack buffers being filled.",
        labels=["map"],
    )
    capacity = GaugeMetricFamily(
        "emberscope_ebpf_map_max_entries",
        "Capacity of a BPF map (pid_map_size for the pid map).",
        labels=["map"],
    )
    for name, (used, size) in sorted(reading.maps.items()):
        entries.add_metric([name], used)
        capacity.add_metric([name], size)
    yield entries
    yield capacity
    memory = GaugeMetricFamily(
        "emberscope_ebpf_map_memory_bytes",
        "Kernel memory a BPF map uses, charged to the agent's memory cgroup beside its RSS.",
        labels=["map"],
    )
    for name, used in sorted(reading.map_memory.items()):
        memory.add_metric([name], used)
    yield memory


def _symbol_metrics(reading: SamplerReading) -> Iterator[Metric]:
    errors = CounterMetricFamily(
        "emberscope_symbolization_errors",
        "Frames or files the symbolizer could not resolve and fell back on, by reason.",
        labels=["reason"],
    )
    for reason, count in sorted(reading.symbolization_errors.items()):
        errors.add_metric([reason], count)
    yield errors
    entries = GaugeMetricFamily(
        "emberscope_symbol_cache_entries", "Entries held by a symbol cache.", labels=["cache"]
    )
    capacity = GaugeMetricFamily(
        "emberscope_symbol_cache_max_entries", "Capacity of a symbol cache.", labels=["cache"]
    )
    counters = {
        name: CounterMetricFamily(
            f"emberscope_symbol_cache_{name}",
            f"Symbol cache {name} since the agent started.",
            labels=["cache"],
        )
        for name in _CACHE_COUNTERS
    }
    for cache, stats in sorted(reading.caches.items()):
        if "len" in stats:
            entries.add_metric([cache], stats["len"])
        if "size" in stats:
            capacity.add_metric([cache], stats["size"])
        for name, family in counters.items():
            if name in stats:
                family.add_metric([cache], stats[name])
    yield entries
    yield capacity
    yield from counters.values()


def _python_metrics(reading: SamplerReading) -> Iterator[Metric]:
    for name, value in sorted(reading.python.items()):
        yield CounterMetricFamily(f"emberscope_python_{name}", _PYTHON_COUNTERS[name], value=value)


_UNWIND_FILE_COUNTERS = {
    "files_built": "Files whose unwind table was built or read from the disk cache.",
    "files_failed": "Files whose unwind table could not be had (their code is walked by frame "
    "pointers).",
    "files_evicted": "Unwind tables evicted from the kernel for room (unused files first).",
    "files_without_room": "Files left without a table: unwind_table_size was full.",
}


def _unwind_metrics(reading: SamplerReading) -> Iterator[Metric]:
    if not reading.unwind:
        return
    frames = CounterMetricFamily(
        "emberscope_unwind_frames",
        "User frames the native walker unwound, by method (table or frame_pointer).",
        labels=["method"],
    )
    frames.add_metric(["table"], reading.unwind.get("frames_table", 0))
    frames.add_metric(["frame_pointer"], reading.unwind.get("frames_fp", 0))
    yield frames
    ended = CounterMetricFamily(
        "emberscope_unwind_stacks_ended",
        "Native walks by why they ended: outermost and fp_chain are whole stacks.",
        labels=["reason"],
    )
    for stat, count in sorted(reading.unwind.items()):
        if stat.startswith("end_"):
            ended.add_metric([stat.removeprefix("end_")], count)
    yield ended
    tables = reading.unwind_tables
    yield GaugeMetricFamily(
        "emberscope_unwind_table_rows",
        "Rows of unwind tables the kernel holds (8 bytes each).",
        value=tables.get("rows", 0),
    )
    yield GaugeMetricFamily(
        "emberscope_unwind_table_max_rows",
        "Rows the kernel's unwind table array can hold (unwind_table_size).",
        value=tables.get("capacity_rows", 0),
    )
    yield GaugeMetricFamily(
        "emberscope_unwind_table_files",
        "Files whose unwind table the kernel holds.",
        value=tables.get("files", 0),
    )
    yield CounterMetricFamily(
        "emberscope_unwind_build_seconds",
        "Time spent building or loading unwind tables.",
        value=tables.get("build_ms", 0) / 1000,
    )
    for name, help_text in _UNWIND_FILE_COUNTERS.items():
        yield CounterMetricFamily(f"emberscope_unwind_{name}", help_text, value=tables.get(name, 0))
