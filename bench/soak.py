"""Soak and faults: the real agent pushing to a loopback Pyroscope through churn,
a full pid map, an outage of Pyroscope and a ``kill -9``; one table.

Scenarios (each ``--minutes`` long; the issue asks for 10):

- ``churn``: about 1000 short processes a minute (C burners of 30-200 ms and
  ``/bin/true``): samples of the burners against their CPU time (wait4);
- ``pid_map_full``: 500 long-lived sleepers with ``pid_map_size = 64`` and a
  busy process started before them: drops counted, the busy one still profiled,
  a new busy one profiled once the sleepers exit;
- ``pyroscope_down``: the churn with Pyroscope down for the middle of the run:
  the spool grows within its cap, and all it holds is delivered afterwards;
- ``kill_9``: the churn with Pyroscope down, the agent killed mid-run and
  started again with Pyroscope up: no BPF program or map left behind, the spool
  replayed, nothing sent twice;
- ``api_flapping``: a pod's busy process in a kubelet-style cgroup, found by
  ``discovery.kubernetes`` on a loopback API server that is down 20 s, up 10 s
  in turn: intervals with a profile of the pod, and how long a change of the
  pod takes to show once the server is back.

Prints one row per scenario: RSS start/end/peak, the agent's CPU, samples
expected (CPU time × sample_rate) against profiled, profiles produced (the
agent's log) against delivered (received once) and dropped by reason. Run as
root: ``.venv/bin/python bench/soak.py --minutes 10 [--write-results]``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.pprof import read_profile  # noqa: E402
from bench.churn import CHURN_C, MAX_US, MIN_US, Churn, process_cpu_s, rss_mb  # noqa: E402
from bench.results import describe_machine, write_section  # noqa: E402
from tests.agent import (  # noqa: E402
    RunningAgent,
    held_bpf_ids,
    loaded_programs,
    run_agent,
    wait_for,
    workload_config,
)
from tests.discovery.apiserver import LoopbackApiServer  # noqa: E402
from tests.discovery.test_containers import Cgroups, cgroup2_root  # noqa: E402
from tests.discovery.test_kubernetes_agent import WEB, kubelet_cgroup, pod_object  # noqa: E402
from tests.test_pipeline import collected  # noqa: E402
from tests.write.test_outage import RestartableReceiver  # noqa: E402
from tests.write.test_pyroscope import series  # noqa: E402

RATE = 97
INTERVAL_S = 5
SPOOL_MAX_BYTES = 64 << 20
BUSY_C = ROOT / "tests" / "workloads" / "three_leaves.c"
TRUE_PER_MINUTE = 300  # /bin/true besides the burners: pid map churn without samples

# The churn's own services (tests.agent.workload_config), each process its own
# target (a pid label), pushed through a spool.
EBPF_ARGUMENTS = (
    '  collect_interval = "{interval}s"\n  sample_rate = {rate}\n  pid_map_size = {pid_map_size}\n'
)
PID_RULE = """  rule {
    source_labels = ["__process_pid__"]
    target_label  = "pid"
  }
"""
WRITE = """
pyroscope.write "soak" {{
  endpoint {{
    url                 = "{url}"
    remote_timeout      = "2s"
    min_backoff_period  = "100ms"
    max_backoff_period  = "1s"
    max_backoff_retries = 3
  }}
  spool_directory = "{spool}"
  spool_max_bytes = {spool_max_bytes}
}}
"""


KUBERNETES_CONFIG = """
discovery.kubernetes "pods" {{
  role       = "pod"
  api_server = "{api}"
}}

discovery.relabel "pods" {{
  targets = discovery.kubernetes.pods.targets
  rule {{
    source_labels = ["__meta_kubernetes_pod_label_stage"]
    target_label  = "stage"
  }}
  rule {{
    target_label = "service_name"
    replacement  = "pod"
  }}
}}

pyroscope.ebpf "default" {{
  targets          = discovery.relabel.pods.output
  forward_to       = [pyroscope.write.soak.receiver]
  collect_interval = "{interval}s"
  sample_rate      = {rate}
}}

pyroscope.write "soak" {{
  endpoint {{
    url = "{url}"
  }}
}}
"""
FLAP_DOWN_S, FLAP_UP_S = 20, 10


@dataclass
class Row:
    scenario: str
    minutes: float
    rss_mb: list[float] = field(default_factory=list)  # readings over the run
    cpu_pct: float = 0.0  # of one core, over the run
    expected: float = 0.0  # CPU s of the measured processes × sample_rate
    profiled: int = 0  # their samples in what Pyroscope received
    produced: int = 0  # profiles the agent logged as collected
    delivered: int = 0  # distinct profiles received
    duplicates: int = 0  # received more than once
    dropped: dict[str, float] = field(default_factory=dict)  # by reason
    facts: dict[str, float | str] = field(default_factory=dict)  # the scenario's own

    def cells(self) -> list[str]:
        rss = self.rss_mb or [0.0]
        drops = ", ".join(f"{r} {n:.0f}" for r, n in sorted(self.dropped.items()) if n) or "none"
        ratio = f"{self.profiled / self.expected:.2f}" if self.expected else "-"
        return [
            self.scenario,
            f"{self.minutes:g} min",
            f"{rss[0]:.0f} / {rss[-1]:.0f} / {max(rss):.0f}",
            f"{self.cpu_pct:.1f}",
            f"{self.expected:.0f} / {self.profiled} ({ratio})",
            f"{self.produced} / {self.delivered} (twice {self.duplicates})",
            drops,
            "; ".join(f"{name} {_shown(value)}" for name, value in self.facts.items()),
        ]


def _shown(value: float | str) -> str:
    return f"{value:.0f}" if isinstance(value, float) else str(value)


HEADER = [
    "scenario",
    "duration",
    "RSS MB start / end / peak",
    "agent CPU %",
    "samples expected / profiled",
    "profiles produced / delivered",
    "dropped (reason)",
    "notes",
]


class Watch:
    """Reads the agent's RSS every 2 s and its CPU over the whole watch."""

    def __init__(self, agent: RunningAgent, row: Row) -> None:
        self._pid = agent.process.pid
        self._row = row
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._cpu = process_cpu_s(self._pid)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                self._row.rss_mb.append(rss_mb(self._pid))
            except FileNotFoundError:
                return
            if self._stop.wait(2):
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        with_cpu = process_cpu_s(self._pid) - self._cpu
        self._row.cpu_pct = 100 * with_cpu / (time.monotonic() - self._started)


class TrueSpawner:
    """``/bin/true`` at ``per_minute``: exits the pid map must forget."""

    def __init__(self, per_minute: int) -> None:
        self._every = 60 / per_minute
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TrueSpawner:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            subprocess.run(["/bin/true"], check=False)


@dataclass
class Setup:
    folder: Path
    churn: Path
    busy: Path
    receiver: RestartableReceiver

    def config(self, pid_map_size: int = 2048) -> str:
        ebpf = EBPF_ARGUMENTS.format(interval=INTERVAL_S, rate=RATE, pid_map_size=pid_map_size)
        config = workload_config(
            self.folder / "bin", self.folder / "out", ebpf=ebpf, rules=PID_RULE
        )
        write = WRITE.format(
            url=self.receiver.receiver.url,
            spool=self.folder / "spool",
            spool_max_bytes=SPOOL_MAX_BYTES,
        )
        # pyroscope.file stays declared, and receives nothing
        return (
            config.replace("pyroscope.file.out.receiver", "pyroscope.write.soak.receiver") + write
        )

    def samples(self, service: str, since_ns: int = 0) -> int:
        """Samples received for ``service`` in profiles that began at ``since_ns`` or later."""
        total = 0
        for request in list(self.receiver.receiver.requests):
            if series(request)["service_name"] == service:
                profile = read_profile(request.request.series[0].samples[0].raw_profile)
                if profile.time_nanos >= since_ns:
                    total += sum(s.value[0] for s in profile.sample) // profile.period
        return total

    def count_delivery(self, row: Row, *agents: RunningAgent) -> None:
        # one target per process (a pid label) and interval: each push is unique
        bodies = [r.request.SerializeToString() for r in self.receiver.receiver.requests]
        row.delivered = len(set(bodies))
        row.duplicates = len(bodies) - len(set(bodies))
        row.produced = sum(sum(collected(agent.log)) for agent in agents)


@contextmanager
def setup() -> Iterator[Setup]:
    with tempfile.TemporaryDirectory(prefix="emberscope-soak-") as tmp:
        folder = Path(tmp)
        (folder / "bin").mkdir()
        binaries = []
        for source in (CHURN_C, BUSY_C):
            binary = folder / "bin" / source.stem
            flags = ["-O0", "-fno-omit-frame-pointer"]
            subprocess.run(["gcc", *flags, "-o", str(binary), str(source)], check=True)
            binaries.append(binary)
        receiver = RestartableReceiver()
        receiver.start()
        try:
            yield Setup(folder, binaries[0], binaries[1], receiver)
        finally:
            receiver.stop()


def write_drops(agent: RunningAgent, row: Row) -> None:
    for sample in agent.metrics():
        if sample.name in (
            "pyroscope_write_dropped_profiles_total",
            "emberscope_ebpf_samples_dropped_total",
        ):
            kind = "profiles" if sample.name.startswith("pyroscope") else "samples"
            key = f"{kind} {sample.labels['reason']}"
            row.dropped[key] = row.dropped.get(key, 0) + sample.value


def run_churn(setup: Setup, seconds: float, during: Callable[[float], None] | None = None) -> Churn:
    """The burners and /bin/true for ``seconds``; ``during(elapsed)`` is called every second."""
    churn = Churn(setup.churn, 1000 - TRUE_PER_MINUTE, 4)
    started = time.monotonic()
    with TrueSpawner(TRUE_PER_MINUTE):
        churn.start()
        try:
            while (elapsed := time.monotonic() - started) < seconds:
                if during is not None:
                    during(elapsed)
                time.sleep(1)
        finally:
            churn.stop(finish=True)
    return churn


def churn_scenario(setup: Setup, minutes: float) -> Row:
    row = Row("churn", minutes)
    with run_agent(setup.config(), setup.folder) as agent:
        agent.wait_for_sampling()
        watch = Watch(agent, row)
        churn = run_churn(setup, minutes * 60)
        time.sleep(INTERVAL_S + 1)  # the last burners' samples collected
        watch.close()
        fill = agent.metric("emberscope_ebpf_map_entries", map="pids")
        write_drops(agent, row)
        agent.stop()
    row.expected = churn.children_cpu_s * RATE
    row.profiled = setup.samples(setup.churn.name)
    setup.count_delivery(row, agent)
    row.facts["burners"] = float(churn.children)
    row.facts["pid map entries at end"] = fill
    return row


def pid_map_scenario(setup: Setup, minutes: float) -> Row:
    row = Row("pid_map_full (500 sleepers, pid_map_size 64)", minutes)
    seconds = minutes * 60
    with run_agent(setup.config(pid_map_size=64), setup.folder) as agent:
        agent.wait_for_sampling()
        watch = Watch(agent, row)
        busy = subprocess.Popen([str(setup.busy), str(int(seconds) + 30)])
        time.sleep(INTERVAL_S)
        busy_cpu = process_cpu_s(busy.pid)
        sleepers = subprocess.Popen(
            [str(setup.churn), "500", "3000", "4000", "500", str(int(seconds * 0.7))],
            stdout=subprocess.PIPE,
        )
        full = wait_for(
            lambda: agent.metric("emberscope_ebpf_samples_dropped_total", reason="pid_map_full"),
            60,
            "the pid map full",
        )
        sleepers.communicate()  # they exit
        healed_at = time.time_ns()
        late = subprocess.Popen([str(setup.busy), "10"])
        late.wait()
        time.sleep(INTERVAL_S + 1)
        busy_cpu = process_cpu_s(busy.pid) - busy_cpu
        busy.kill()
        busy.wait()
        watch.close()
        write_drops(agent, row)
        health = agent.component("pyroscope.ebpf.default")["health"]["state"]
        agent.stop()
    row.expected = (busy_cpu + 10 * 0.9) * RATE  # the early busy one, and the late one's ~10 s
    row.profiled = setup.samples(setup.busy.name)
    setup.count_delivery(row, agent)
    row.facts["pid_map_full drops seen first"] = full
    row.facts["busy samples after the sleepers exited"] = float(
        setup.samples(setup.busy.name, healed_at)
    )
    row.facts["health at end"] = health
    return row


def outage_scenario(setup: Setup, minutes: float) -> Row:
    row = Row("pyroscope_down (middle half of the churn)", minutes)
    seconds = minutes * 60
    spool_peak = [0.0]
    with run_agent(setup.config(), setup.folder) as agent:
        agent.wait_for_sampling()
        watch = Watch(agent, row)

        def during(elapsed: float) -> None:
            if seconds / 4 <= elapsed < 3 * seconds / 4:
                setup.receiver.stop()
                spool_peak[0] = max(spool_peak[0], agent.metric("emberscope_write_spool_bytes"))
            elif elapsed >= 3 * seconds / 4 and setup.receiver._server is None:
                setup.receiver.start()

        churn = run_churn(setup, seconds, during)
        if setup.receiver._server is None:
            setup.receiver.start()
        time.sleep(INTERVAL_S + 1)
        wait_for(
            lambda: agent.metric("emberscope_write_spool_profiles") == 0, 120, "the spool empty"
        )
        watch.close()
        spooled = agent.metric("emberscope_write_spooled_profiles_total")
        replayed = agent.metric("emberscope_write_replayed_profiles_total")
        write_drops(agent, row)
        agent.stop()
    row.expected = churn.children_cpu_s * RATE
    row.profiled = setup.samples(setup.churn.name)
    setup.count_delivery(row, agent)
    row.facts["down s"] = seconds / 2
    row.facts["spooled"] = spooled
    row.facts["replayed"] = replayed
    row.facts["spool peak KiB"] = spool_peak[0] / 1024
    return row


def kill_scenario(setup: Setup, minutes: float) -> Row:
    row = Row("kill_9 (Pyroscope down, then kill -9 and restart)", minutes)
    seconds = minutes * 60
    first_folder, second_folder = setup.folder / "first", setup.folder / "second"
    first_folder.mkdir()
    second_folder.mkdir()
    with run_agent(setup.config(), first_folder) as first:
        first.wait_for_sampling()
        watch = Watch(first, row)
        programs = held_bpf_ids(first.process.pid, "prog")
        maps = held_bpf_ids(first.process.pid, "map")
        setup.receiver.stop()
        churn = run_churn(setup, seconds / 2)
        # mid-collection: a moment after a round started
        rounds = len(collected(first.log))
        wait_for(lambda: len(collected(first.log)) > rounds, 2 * INTERVAL_S, "a round")
        # what the round handed over reaches the disk within moments, from the sender's thread
        wait_for(
            lambda: (
                first.metric("emberscope_write_spooled_profiles_total")
                + len(setup.receiver.receiver.requests)
                >= sum(collected(first.log))
            ),
            10,
            "the round spooled",
        )
        spooled = first.metric("emberscope_write_spooled_profiles_total")
        watch.close()
        write_drops(first, row)
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
    left_programs, left_maps = still_loaded(programs, maps)
    setup.receiver.start()
    with run_agent(setup.config(), second_folder) as second:
        second.wait_for_sampling()
        churn_after = run_churn(setup, seconds / 2)
        time.sleep(INTERVAL_S + 1)
        wait_for(
            lambda: second.metric("emberscope_write_spool_profiles") == 0, 120, "the spool empty"
        )
        replayed = second.metric("emberscope_write_replayed_profiles_total")
        write_drops(second, row)
        second.stop()
    row.expected = (churn.children_cpu_s + churn_after.children_cpu_s) * RATE
    row.profiled = setup.samples(setup.churn.name)
    setup.count_delivery(row, first, second)
    row.facts["spooled before the kill"] = spooled
    row.facts["replayed after"] = replayed
    row.facts["BPF programs left"] = float(len(left_programs))
    row.facts["BPF maps left"] = ", ".join(left_maps) or "0"
    return row


def still_loaded(
    programs: set[int], maps: set[int], timeout: float = 10
) -> tuple[set[int], list[str]]:
    """Which of a killed agent's programs and maps (by name) the kernel still
    has after ``timeout`` s at most: it frees them once their last descriptor is closed
    and a grace period passed."""
    deadline = time.monotonic() + timeout
    while True:
        shown = subprocess.run(["bpftool", "-j", "map", "show"], capture_output=True, text=True)
        left_maps = [
            entry.get("name", str(entry["id"]))
            for entry in json.loads(shown.stdout or "[]")
            if entry["id"] in maps
        ]
        left_programs = programs & loaded_programs().keys()
        if not (left_maps or left_programs) or time.monotonic() > deadline:
            return left_programs, left_maps
        time.sleep(0.2)


def api_scenario(setup: Setup, minutes: float) -> Row:
    row = Row(f"api_flapping (down {FLAP_DOWN_S} s, up {FLAP_UP_S} s)", minutes)
    seconds = minutes * 60
    api = LoopbackApiServer()
    api.start()
    api.apply(pod_object(WEB, labels={"stage": "start"}))
    cgroups = Cgroups(cgroup2_root())
    busy = subprocess.Popen([str(setup.busy), str(int(seconds) + 60)])
    cgroups.move(busy.pid, kubelet_cgroup(WEB))
    config = KUBERNETES_CONFIG.format(
        api=api.url, interval=INTERVAL_S, rate=RATE, url=setup.receiver.receiver.url
    )
    try:
        with run_agent(config, setup.folder) as agent:
            agent.wait_for_sampling()
            wait_for(lambda: setup.samples("pod"), 30, "a first profile of the pod")
            watch = Watch(agent, row)
            started_ns, cpu = time.time_ns(), process_cpu_s(busy.pid)
            end = time.monotonic() + seconds
            while time.monotonic() < end - FLAP_UP_S:
                api.stop()
                time.sleep(min(FLAP_DOWN_S, max(0.0, end - FLAP_UP_S - time.monotonic())))
                api.start()
                time.sleep(FLAP_UP_S)
            changed = time.monotonic()
            api.apply(pod_object(WEB, labels={"stage": "final"}))
            wait_for(lambda: "final" in stages(setup), 6 * INTERVAL_S, "the change")
            row.facts["change shown after s"] = round(time.monotonic() - changed, 1)
            row.expected = (process_cpu_s(busy.pid) - cpu) * RATE
            ended_ns = time.time_ns()
            watch.close()
            write_drops(agent, row)
            agent.stop()
    finally:
        busy.kill()
        busy.wait()
        cgroups.close([busy.pid])
        api.stop()
    row.profiled = setup.samples("pod", started_ns)
    setup.count_delivery(row, agent)
    intervals = (ended_ns - started_ns) / 1e9 / INTERVAL_S
    began = [
        read_profile(r.request.series[0].samples[0].raw_profile).time_nanos
        for r in setup.receiver.receiver.requests
    ]
    covered = {time_ns for time_ns in began if started_ns <= time_ns < ended_ns}
    row.facts["intervals with a profile"] = f"{len(covered)} of {intervals:.0f}"
    return row


def stages(setup: Setup) -> set[str]:
    return {series(r).get("stage", "") for r in list(setup.receiver.receiver.requests)}


SCENARIOS = {
    "churn": churn_scenario,
    "pid_map_full": pid_map_scenario,
    "pyroscope_down": outage_scenario,
    "kill_9": kill_scenario,
    "api_flapping": api_scenario,
}


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="per scenario")
    parser.add_argument("--only", choices=SCENARIOS, action="append", help="repeatable")
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    rows = []
    for name in args.only or SCENARIOS:
        print(f"{name}: {args.minutes:g} min", flush=True)
        with setup() as prepared:
            rows.append(SCENARIOS[name](prepared, args.minutes))
        print(table(rows[-1:]), flush=True)
    result = table(rows)
    print("\n" + result)
    if args.write_results:
        write_section(
            "# Soak: `soak.py`\n\n"
            f"{time.strftime('%Y-%m-%d')}, {describe_machine()}, shared with other test runs; "
            f"`bench/soak.py --minutes {args.minutes:g}` ({args.minutes:g} minutes per "
            f"scenario; burners of {MIN_US // 1000}-{MAX_US // 1000} ms at "
            f"{1000 - TRUE_PER_MINUTE}/min and /bin/true at {TRUE_PER_MINUTE}/min, "
            f"sample_rate {RATE}, collect_interval {INTERVAL_S} s).\n\n{result}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
