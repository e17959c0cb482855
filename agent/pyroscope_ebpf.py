"""The ``pyroscope.ebpf`` component: one profile per target every interval.

Every ``pyroscope.ebpf`` component of an agent shares one :class:`Sampler`:
one loaded BPF program, one symbolizer, one container-ID cache. Each
component routes the processes that match its targets to a profile per
target, and every ``collect_interval`` sends those profiles to its
``forward_to`` receivers.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from agent.config.component import ArgumentError, Capsule, ComponentOptions, Duration, Health
from agent.discovery import (
    ContainerIdCache,
    Target,
    TargetSet,
    build_targets,
    only_unified_cgroups,
)
from agent.discovery.containers import parse_container_id
from agent.ebpf import PidEvent
from agent.errors import ConfigError, EmberscopeError
from agent.memory import release_free_memory
from agent.pprof import ProfileBuilder
from agent.sampling import CoreOptions, SamplingCore
from agent.supervise import SupervisedThread
from agent.symbols import DEMANGLE_MODES, Frame
from agent.telemetry import (
    BoundEbpfMetrics,
    EbpfMetrics,
    SamplerCollector,
    SamplerReading,
    find_program_fd,
    read_program_stats,
)
from agent.unwind import DEFAULT_CACHE_DIRECTORY
from agent.write import RECENT_PROFILES_KEY, Fanout, LabeledProfile

__all__ = ["EbpfComponent", "Sampler"]

log = logging.getLogger(__name__)

_SHARED_KEY = "pyroscope.ebpf.sampler"
_SETTINGS_KEY = "pyroscope.ebpf.settings"  # component id -> its sampler settings
# The arguments the one sampler of an agent is built from: every pyroscope.ebpf
# of the agent must give them the same values. collect_interval, targets,
# forward_to and collect_*_profile are each component's own.
SAMPLER_ARGUMENTS = (
    "sample_rate",
    "pid_map_size",
    "pid_cache_size",
    "build_id_cache_size",
    "same_file_cache_size",
    "container_id_cache_size",
    "demangle",
    "python_enabled",
    "symbols_map_size",
    "unwind_tables",
    "unwind_table_size",
    "unwind_cache_directory",
)
_METRICS_KEY = "pyroscope.ebpf.metrics"
_POLL_MS = 200
_ELF_CACHES = ("build_id_cache", "same_file_cache")
# How late past two intervals a collection may be before health says it stalled.
_STALL_GRACE_S = 10.0


@dataclass(frozen=True)
class EbpfArguments:
    """The arguments of ``pyroscope.ebpf``, with Alloy's names and defaults."""

    targets: list[dict[str, str]]
    forward_to: list[Capsule]
    collect_interval: Duration = Duration(15)
    sample_rate: int = 97
    pid_cache_size: int = 32
    build_id_cache_size: int = 64
    same_file_cache_size: int = 8
    container_id_cache_size: int = 1024
    collect_user_profile: bool = True
    collect_kernel_profile: bool = True
    demangle: str = "none"
    python_enabled: bool = True
    symbols_map_size: int = 16384
    pid_map_size: int = 2048
    # ours, not Alloy's: native stacks without frame pointers (.eh_frame tables)
    unwind_tables: bool = True
    unwind_table_size: int = 1 << 20  # rows of 8 bytes the kernel holds: 8 MiB
    unwind_cache_directory: str = DEFAULT_CACHE_DIRECTORY  # "" keeps no disk cache

    def __post_init__(self) -> None:
        if self.collect_interval <= 0:
            raise ArgumentError("collect_interval", "must be greater than 0")
        if not 1 <= self.sample_rate <= 1000:
            raise ArgumentError("sample_rate", f"must be within 1..1000, not {self.sample_rate}")
        for name in (
            "pid_cache_size",
            "build_id_cache_size",
            "same_file_cache_size",
            "container_id_cache_size",
            "symbols_map_size",
            "pid_map_size",
            "unwind_table_size",
        ):
            if getattr(self, name) <= 0:
                raise ArgumentError(name, f"must be greater than 0, not {getattr(self, name)}")
        if self.demangle not in DEMANGLE_MODES:
            raise ArgumentError(
                "demangle", f"must be one of {', '.join(DEMANGLE_MODES)}, not {self.demangle!r}"
            )


def core_options(arguments: EbpfArguments) -> CoreOptions:
    """The sampling core of pyroscope.ebpf's arguments: SAMPLER_ARGUMENTS (the
    container-ID cache is the Sampler's own), and the first component's
    collect_*_profile as the default of processes not decided yet."""
    shared = {name: getattr(arguments, name) for name in SAMPLER_ARGUMENTS}
    del shared["container_id_cache_size"]
    return CoreOptions(
        **shared,
        collect_user=arguments.collect_user_profile,
        collect_kernel=arguments.collect_kernel_profile,
        discover_new=True,
    )


class Sampler:
    """The one BPF session, symbolizer and container-ID cache of an agent.

    Its own thread reads pid events; components call :meth:`collect`. All
    access to the sampling core goes through one lock, which telemetry never
    takes: it reads the kernel's counters and a copy of userspace's.
    """

    def __init__(self, arguments: EbpfArguments, registry: CollectorRegistry | None = None) -> None:
        self.arguments = arguments
        self._registry = registry
        self._collector: SamplerCollector | None = None
        self._program_fd: int | None = None
        self._components: list[EbpfComponent] = []
        self._lock = threading.Lock()
        self._containers = ContainerIdCache(arguments.container_id_cache_size)
        self._unified_cgroups = only_unified_cgroups()
        self._core = SamplingCore(core_options(arguments), self._classify)
        self._session = self._core.session
        self._symbolizer = self._core.symbolizer
        self._python = self._core.python
        self._profiler = self._core.profiler
        self._events_thread = SupervisedThread("ebpf-events", self._poll)
        self._closed = False
        self._pid_map_full = 0  # the kernel's count when last collected
        self.pid_map_full_recently = False
        self._polled = time.monotonic()  # when the events thread last took its turn
        self._userspace: dict[str, Any] = {}  # see _take_snapshot

    def open(self) -> None:
        self._core.open()
        with self._lock:
            self._take_snapshot()
        self._events_thread.start()
        if self._registry is not None:
            self._program_fd = find_program_fd(self._session.program_id)
            self._collector = SamplerCollector(self.reading, self._registry)

    def close(self) -> None:
        if self._collector is not None:
            self._registry.unregister(self._collector)
        self._closed = True
        self._events_thread.stop()
        with self._lock:
            self._core.close()

    def register(self, component: EbpfComponent) -> None:
        with self._lock:
            self._components.append(component)
            self._profiler.reclassify()

    def unregister(self, component: EbpfComponent) -> int:
        """Remove ``component``; return how many components remain."""
        with self._lock:
            self._components.remove(component)
            self._profiler.reclassify()
            return len(self._components)

    def targets_changed(self) -> None:
        with self._lock:
            self._profiler.reclassify()

    def collect(self, component: EbpfComponent) -> dict[Target, ProfileBuilder]:
        """Drain the kernel into every component; return ``component``'s profiles."""
        with self._lock:
            self._profiler.collect()
            self._check_pid_map()
            self._take_snapshot()
            return component.take_profiles()

    def _check_pid_map(self) -> None:
        """Note new processes the full pid map could not take; warn the first time."""
        full = self._session.read_drops()["pid_map_full"]
        self.pid_map_full_recently = full > self._pid_map_full
        if self.pid_map_full_recently and self._pid_map_full == 0:
            log.warning(
                "the pid map is full (pid_map_size = %d): samples of new processes are dropped "
                "until tracked processes exit; raise pid_map_size",
                self.arguments.pid_map_size,
            )
        self._pid_map_full = full

    def problem(self) -> str:
        """Why profiling is not fully working now, or "" when it is."""
        thread = self._events_thread
        if not thread.running and not self._closed:
            return f"the pid events thread is down ({thread.last_error}); restarting"
        if self.pid_map_full_recently:
            return (
                f"the pid map is full (pid_map_size = {self.arguments.pid_map_size}): "
                "new processes are not profiled; raise pid_map_size"
            )
        return ""

    def liveness_problem(self, window: float) -> str:
        """Why the sampler makes no progress (its events thread has taken no turn
        for ``window`` seconds: blocked, or crashing), or "" while it does."""
        idle = time.monotonic() - self._polled
        if idle > window:
            return f"the pid events thread has taken no turn for {idle:.0f} s"
        return ""

    @property
    def processes(self) -> int:
        return self._userspace.get("profiled_processes", 0)

    def reading(self) -> SamplerReading | None:
        """The counters for a scrape; None once closed.

        It never waits for the sampling lock, so a scrape is not held up by a
        collection: the kernel's counters are read now, userspace's as they
        were at the end of the last collection.
        """
        if self._closed:
            return None
        program = None if self._program_fd is None else read_program_stats(self._program_fd)
        maps = self._session.read_map_fill()
        python = self._python
        unwind = self._session.read_unwind_stats() if self._core.unwinder is not None else {}
        userspace = self._userspace
        return SamplerReading(
            program=program,
            samples=self._session.read_sample_total(),
            drops=self._session.read_drops(),
            profiled_processes=userspace.get("profiled_processes", 0),
            maps=maps,
            map_memory=self._session.read_map_memory(),
            symbolization_errors=userspace.get("symbolization_errors", {}),
            caches=userspace.get("caches", {}),
            python=python.counters(symbols_in_map=maps["py_symbols"][0]) if python else {},
            thread_restarts={self._events_thread.name: self._events_thread.crashes},
            unattributed=userspace.get("unattributed", {}),
            unwind=unwind,
            unwind_tables=userspace.get("unwind_tables", {}),
        )

    def debug_info(self) -> dict[str, Any]:
        """The symbolizer's caches (``pid_cache``, ``elf_cache`` by build ID and by
        file), the Python processes and the unwind tables, as of the last collection."""
        return self._userspace.get("debug_info", {})

    def _take_snapshot(self) -> None:
        """Copy what telemetry reads of userspace; called under the sampling lock."""
        symbols = self._symbolizer.debug_info()
        caches = {
            name: {key: value for key, value in info.items() if isinstance(value, int)}
            for name, info in symbols.items()
        }
        caches["user_stack_cache"] = self._profiler.user_stack_cache_stats()
        unwinder = self._core.unwinder
        self._userspace = {
            "profiled_processes": len(self._profiler.profiled),
            "symbolization_errors": dict(self._symbolizer.errors),
            "caches": caches,
            "unattributed": dict(self._profiler.unattributed),
            "unwind_tables": unwinder.stats() if unwinder is not None else {},
            "debug_info": {
                "pid_cache": symbols["pid_cache"],
                "elf_cache": {
                    name: symbols[name] for name in ("build_id_cache", "same_file_cache")
                },
                **self._core.debug_info(),
            },
        }

    def _poll(self, stop: threading.Event) -> None:
        """Handle pid events as they come: a new process is classified (and
        its files opened) while it is most likely still alive."""
        while not stop.is_set():
            self._session.wait_for_events(_POLL_MS / 1000)
            with self._lock:
                self._profiler.poll(0)
            self._polled = time.monotonic()

    def _classify(self, process: PidEvent) -> list[_TargetProfile]:
        pid = process.pid
        # The v2 cgroup the kernel saw at its first sample or last exec: no /proc
        # read, and a process already gone still has it. Where v1 hierarchies are
        # mounted too, a container may show in them alone: /proc says more then.
        container_id = None
        if process.cgroup_name:
            container_id = parse_container_id(f"0::/{process.cgroup_name}")
        if container_id is None and not self._unified_cgroups:
            container_id = self._containers.lookup(pid)
        routes = []
        for component in self._components:
            route = component.route(pid, container_id)
            if route is not None:
                routes.append(route)
        return routes


class _TargetProfile:
    """The destination for one target's processes within one component."""

    def __init__(self, component: EbpfComponent, target: Target) -> None:
        self.component = component
        self.target = target
        self.collect_user = component.arguments.collect_user_profile
        self.collect_kernel = component.arguments.collect_kernel_profile

    def add(
        self,
        process: PidEvent,
        kernel: Sequence[Frame],
        user: Sequence[Frame],
        count: int,
        labels: Mapping[str, str],
    ) -> None:
        self.component.add(self.target, [*kernel, *user], count, labels)


class EbpfComponent:
    """``pyroscope.ebpf``: profiles the processes of its targets."""

    Arguments = EbpfArguments

    @dataclass(frozen=True)
    class Exports:
        """pyroscope.ebpf exports nothing."""

    @staticmethod
    def check_together(arguments: Mapping[str, EbpfArguments]) -> None:
        """ConfigError if two components of one configuration differ in a sampler
        argument: found at load, so a reload to such a configuration is refused
        while the running one goes on."""
        settings = {name: _sampler_settings(each) for name, each in arguments.items()}
        for (earlier_id, earlier), (ours_id, ours) in itertools.pairwise(settings.items()):
            conflict = _sampler_conflict(ours_id, ours, earlier_id, earlier)
            if conflict:
                raise ConfigError(conflict)

    def __init__(self, options: ComponentOptions, arguments: EbpfArguments) -> None:
        self._options = options
        _claim_sampler_settings(options, arguments)
        self.arguments = arguments
        self._targets: TargetSet = build_targets(arguments.targets)
        self._routes: dict[Target, _TargetProfile] = {}
        self._builders: dict[Target, ProfileBuilder] = {}
        self._interval_start = time.time_ns()
        self._health = Health("unknown", "starting", time.time())
        self._shown_health = self._health
        self._last_collected = time.monotonic()  # a successful collection, or the start
        self._sampler: Sampler | None = None  # while the collection loop runs
        self._last_round = time.monotonic()  # the end of a collection round, or the loop's start
        self.profiles_sent = 0
        self._metrics = _metrics_of(options)
        self._metrics.active_targets.set(len(self._targets))

    # --- the graph's interface ---

    def exports(self) -> dict[str, Any]:
        return {}

    def health(self) -> Health:
        """The last collection's outcome, overruled while collection stalls or
        the shared sampler is not fully working (see Sampler.problem)."""
        health = self._health
        problem = self._problem() if health.state == "healthy" else ""
        if problem:
            health = Health("unhealthy", problem, time.time())
        if (health.state, health.message) != (self._shown_health.state, self._shown_health.message):
            self._shown_health = health
        return self._shown_health

    def _problem(self) -> str:
        stalled = time.monotonic() - self._last_collected
        if stalled > 2 * self.arguments.collect_interval + _STALL_GRACE_S:
            interval = self.arguments.collect_interval
            return f"no collection for {stalled:.0f} s (collect_interval {interval:g} s)"
        sampler = self._options.shared.get(_SHARED_KEY)
        return sampler.problem() if sampler is not None else ""

    def liveness_problem(self) -> str:
        """Why this component is stuck (no collection round has ended, failed or not,
        for two intervals and a grace, or the sampler makes no progress), or "".

        Read by /-/live: only what a restart can fix. A collection that fails
        (Pyroscope or the API server down) still ends its round.
        """
        sampler = self._sampler
        if sampler is None:
            return ""  # not running: readiness says why
        window = 2 * self.arguments.collect_interval + _STALL_GRACE_S
        idle = time.monotonic() - self._last_round
        if idle > window:
            return f"no collection round has ended for {idle:.0f} s"
        return sampler.liveness_problem(window)

    def readiness_problem(self) -> str:
        """Why this component does not profile yet (the sampler is not open), or ""."""
        if self._sampler is not None:
            return ""
        return self._health.message or "starting"

    def restart_needed(self, arguments: EbpfArguments) -> bool:
        """Whether new arguments need a new sampler, so a new BPF object: the graph
        then stops this component (its last interval collected) and creates it again."""
        return any(
            getattr(arguments, name) != getattr(self.arguments, name) for name in SAMPLER_ARGUMENTS
        )

    def update(self, arguments: EbpfArguments) -> None:
        _claim_sampler_settings(self._options, arguments)
        self.arguments = arguments
        self._targets = build_targets(arguments.targets)
        self._metrics.active_targets.set(len(self._targets))
        self._routes = {}
        sampler = self._options.shared.get(_SHARED_KEY)
        if sampler is not None:
            sampler.targets_changed()

    def run(self, stop: threading.Event) -> None:
        try:
            sampler = self._join_sampler()
        except EmberscopeError as exc:
            self._health = Health("unhealthy", str(exc), time.time())
            log.error("pyroscope.ebpf %s cannot start: %s", self._options.id, exc)
            stop.wait()
            return
        self._health = Health("healthy", "", time.time())
        self._last_round = time.monotonic()
        self._sampler = sampler
        try:
            while not stop.wait(self.arguments.collect_interval):
                self._collect_round(sampler)
            self._collect_round(sampler)  # what the last, partial interval holds
        finally:
            self._sampler = None
            self._leave_sampler(sampler)

    def debug_info(self) -> dict[str, Any]:
        """The targets, each marked ``profiled`` once a process of it is, and the caches."""
        targets = [
            {"labels": dict(target.labels), "profiled": target in self._routes}
            for target in self._targets
        ]
        sampler = self._options.shared.get(_SHARED_KEY)
        caches = sampler.debug_info() if sampler is not None else {}
        return {"targets": targets, **caches}

    # --- routing, called under the sampler's lock ---

    def route(self, pid: int, container_id: str | None) -> _TargetProfile | None:
        target = self._targets.match(pid, container_id)
        if target is None:
            return None
        if target not in self._routes:
            self._routes[target] = _TargetProfile(self, target)
        return self._routes[target]

    def add(
        self, target: Target, frames: list[Frame], count: int, labels: Mapping[str, str]
    ) -> None:
        builder = self._builders.get(target)
        if builder is None:
            builder = ProfileBuilder(self.arguments.sample_rate, self._interval_start)
            self._builders[target] = builder
        builder.add_sample(frames, count, labels or None)

    def take_profiles(self) -> dict[Target, ProfileBuilder]:
        """The interval's profiles, leaving empty ones for the next interval."""
        builders, self._builders = self._builders, {}
        return builders

    # --- the collection loop ---

    def _join_sampler(self) -> Sampler:
        with self._options.shared_lock:
            sampler = self._options.shared.get(_SHARED_KEY)
            if sampler is None:
                sampler = Sampler(self.arguments, self._options.registry)
                sampler.open()
                self._options.shared[_SHARED_KEY] = sampler
        sampler.register(self)
        return sampler

    def _leave_sampler(self, sampler: Sampler) -> None:
        with self._options.shared_lock:
            self._options.shared.get(_SETTINGS_KEY, {}).pop(self._options.id, None)
            if sampler.unregister(self) == 0:
                sampler.close()
                del self._options.shared[_SHARED_KEY]

    def _collect_round(self, sampler: Sampler) -> None:
        """One collection; a failed one is counted and shown in health, and the next is tried."""
        self._metrics.sessions.inc()
        try:
            self._collect(sampler)
        except Exception as exc:  # one bad round must not end the profiling of every target
            self._metrics.sessions_failing.inc()
            if self._health.state == "healthy":
                log.exception("pyroscope.ebpf %s: collection failed", self._options.id)
            self._health = Health("unhealthy", f"collection failed: {exc}", time.time())
        else:
            self._last_collected = time.monotonic()
            if self._health.state != "healthy":
                self._health = Health("healthy", "", time.time())
        finally:
            self._last_round = time.monotonic()
        release_free_memory()  # the round's buffers are freed: give their pages back

    def _collect(self, sampler: Sampler) -> None:
        builders = sampler.collect(self)
        now = time.time_ns()
        started, self._interval_start = self._interval_start, now
        recent = self._options.shared.get(RECENT_PROFILES_KEY)  # the agent's page, if served
        fanout = Fanout([*self.arguments.forward_to, *([recent] if recent else [])])
        samples = 0
        for target, builder in builders.items():
            builder.duration_nanos = now - started
            samples += builder.sample_count
            profile = LabeledProfile(dict(target.public_labels()), builder.encode(), started)
            fanned_out = time.perf_counter()
            fanout.append(profile)
            self._metrics.fanout_latency.observe(time.perf_counter() - fanned_out)
            self._metrics.count_pprof(target.service_name)
        self.profiles_sent += len(builders)
        log.info(
            "collected component=%s targets=%d processes=%d samples=%d profiles=%d",
            self._options.id,
            len(self._targets),
            sampler.processes,
            samples,
            len(builders),
        )


def _claim_sampler_settings(options: ComponentOptions, arguments: EbpfArguments) -> None:
    """Record this component's sampler settings; ConfigError if they differ from
    another pyroscope.ebpf's, since all of them share one sampler."""
    settings = _sampler_settings(arguments)
    with options.shared_lock:
        claimed = options.shared.setdefault(_SETTINGS_KEY, {})
        for other, theirs in claimed.items():
            conflict = other != options.id and _sampler_conflict(
                options.id, settings, other, theirs
            )
            if conflict:
                raise ConfigError(conflict)
        claimed[options.id] = settings


def _sampler_settings(arguments: EbpfArguments) -> dict[str, Any]:
    return {name: getattr(arguments, name) for name in SAMPLER_ARGUMENTS}


def _sampler_conflict(
    ours_id: str, ours: Mapping[str, Any], theirs_id: str, theirs: Mapping[str, Any]
) -> str:
    """What two components' sampler settings disagree on, said for the user; "" if nothing."""
    differ = [name for name in SAMPLER_ARGUMENTS if ours[name] != theirs[name]]
    if not differ:
        return ""
    shown = ", ".join(f"{n} = {ours[n]!r}" for n in differ)
    theirs_shown = ", ".join(f"{n} = {theirs[n]!r}" for n in differ)
    return (
        f"{ours_id} has {shown} but {theirs_id} has {theirs_shown}: every "
        "pyroscope.ebpf of an agent shares one BPF program and symbolizer, "
        "so these arguments must be the same in all of them"
    )


def _metrics_of(options: ComponentOptions) -> BoundEbpfMetrics:
    """The metrics are declared once per agent and shared; each component has its series."""
    with options.shared_lock:
        metrics = options.shared.get(_METRICS_KEY)
        if metrics is None:
            metrics = EbpfMetrics(options.registry or CollectorRegistry())
            options.shared[_METRICS_KEY] = metrics
    return metrics.bound(options.id)
