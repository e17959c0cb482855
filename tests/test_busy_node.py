"""The agent on a busy node: thousands of process exits, a full pid map, a
crashing background thread, processes that live 30–200 ms. Real kernel,
real processes, the real ``emberscope run``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from agent.config.component import ComponentOptions
from agent.pprof.read import location_frames
from agent.pyroscope_ebpf import _SHARED_KEY, EbpfComponent
from tests.agent import held_bpf_ids, profiles_in, run_agent, wait_for, workload_config
from tests.discovery.test_containers import Cgroups, cgroup2_root

pytestmark = pytest.mark.usefixtures("bpf_ready")


def process_config(
    folder: Path, output: Path, rate: int, pid_map_size: int, interval: str = "1s"
) -> str:
    arguments = (
        f'  collect_interval = "{interval}"\n  sample_rate = {rate}\n'
        f"  pid_map_size = {pid_map_size}\n"
    )
    return workload_config(folder, output, ebpf=arguments)


def pid_map_keys(agent_pid: int) -> list[int]:
    """The pids in the agent's pid map, read with bpftool."""
    for map_id in held_bpf_ids(agent_pid, "map"):
        shown = json.loads(
            subprocess.run(
                ["bpftool", "-j", "map", "show", "id", str(map_id)], capture_output=True, text=True
            ).stdout
            or "{}"
        )
        if shown.get("name") == "pids":
            dumped = subprocess.run(
                ["bpftool", "-j", "map", "dump", "id", str(map_id)], capture_output=True, text=True
            )
            entries = json.loads(dumped.stdout)
            return [int.from_bytes(bytes(int(b, 16) for b in e["key"]), "little") for e in entries]
    raise AssertionError("the agent holds no map named pids")


def churn(binary: Path, *args: object) -> subprocess.Popen:
    return subprocess.Popen([str(binary), *map(str, args)], stdout=subprocess.PIPE, text=True)


def children_cpu_s(process: subprocess.Popen) -> float:
    out, _ = process.communicate(timeout=300)
    return int(out.split("cpu_us=")[1]) / 1e6


def samples_of(output: Path, service: str, since_ns: int = 0) -> int:
    """Samples in the profiles written for ``service`` (values are CPU time: count × period)."""
    return sum(
        sum(sample.value[0] for sample in profile.sample) // profile.period
        for labels, profile in profiles_in(output, service)
        if profile.time_nanos >= since_ns
    )


@pytest.mark.slow
def test_5000_exits_leave_only_live_pids_in_a_256_entry_map(build_workload, tmp_path):
    churner, busy = build_workload("churn"), build_workload("three_leaves")
    output = tmp_path / "out"
    config = process_config(churner.parent, output, rate=1000, pid_map_size=256)
    with run_agent(config, tmp_path) as agent:
        agent.wait_for_sampling()
        # 2-3 ms of CPU each: at 1000 Hz nearly every child is sampled, so tracked
        spawned = churn(churner, 5000, 2000, 3000, 2)
        children_cpu_s(spawned)
        # past the 5 s a never-classified process stays pending
        time.sleep(7)
        keys = pid_map_keys(agent.process.pid)
        time.sleep(1)
        dead = [pid for pid in keys if not os.path.exists(f"/proc/{pid}")]
        assert len(keys) < 128, f"{len(keys)} entries of 256, {len(dead)} of them dead"
        assert dead == [] or set(dead).isdisjoint(pid_map_keys(agent.process.pid))
        started = time.time_ns()
        worker = subprocess.Popen([str(busy), "4"])
        worker.wait()
        assert wait_for(lambda: samples_of(output, busy.name, started) > 0, 5)
        assert agent.component("pyroscope.ebpf.default")["health"]["state"] == "healthy"
    assert "Traceback" not in agent.log, agent.log[-3000:]
    assert samples_of(output, churner.name) > 1000


@pytest.mark.slow
def test_a_full_pid_map_counts_its_drops_and_heals_when_processes_exit(build_workload, tmp_path):
    churner, busy = build_workload("churn"), build_workload("three_leaves")
    output = tmp_path / "out"
    config = process_config(churner.parent, output, rate=1000, pid_map_size=64)
    with run_agent(config, tmp_path) as agent:
        agent.wait_for_sampling()
        sleepers = churn(churner, 300, 3000, 4000, 300, 8)
        time.sleep(3)
        worker = subprocess.Popen([str(busy), "12"])
        try:
            assert wait_for(
                lambda: agent.metric(
                    "emberscope_ebpf_samples_dropped_total", reason="pid_map_full"
                ),
                5,
            )
            # shown from the next collection on (collect_interval 1 s)
            health = wait_for(
                lambda: (
                    (h := agent.component("pyroscope.ebpf.default")["health"])["state"]
                    == "unhealthy"
                    and h
                ),
                3,
                "unhealthy",
            )
            assert "pid_map_size" in health["message"]
            children_cpu_s(sleepers)  # the sleepers exit
            healed = time.time_ns() + 1_000_000_000
            assert wait_for(lambda: samples_of(output, busy.name, healed) > 100, 8)
            assert wait_for(
                lambda: agent.component("pyroscope.ebpf.default")["health"]["state"] == "healthy", 5
            )
        finally:
            worker.kill()
            worker.wait()
    log = agent.log
    assert log.count("raise pid_map_size") == 1, log[-3000:]
    assert "Traceback" not in log


def test_a_crashed_events_thread_is_restarted_and_health_says_so(monkeypatch):
    options = ComponentOptions(
        "pyroscope.ebpf.crash", lambda _: None, {}, threading.Lock(), CollectorRegistry()
    )
    component = EbpfComponent(
        options, EbpfComponent.Arguments(targets=[], forward_to=[], python_enabled=False)
    )
    stop = threading.Event()
    runner = threading.Thread(target=component.run, args=(stop,))
    runner.start()
    try:
        sampler = wait_for(lambda: options.shared.get(_SHARED_KEY), 10)
        assert wait_for(lambda: component.health().state == "healthy", 10)
        crashes = []

        def crash_once(timeout_ms: int = 0) -> None:
            crashes.append(timeout_ms)
            if len(crashes) == 1:
                raise RuntimeError("injected")

        monkeypatch.setattr(sampler._profiler, "poll", crash_once)
        health = wait_for(lambda: component.health().state == "unhealthy" and component.health(), 5)
        assert health and "events thread" in health.message and "injected" in health.message
        assert wait_for(lambda: len(crashes) > 1, 5), "the thread was not restarted"
        assert wait_for(lambda: component.health().state == "healthy", 5)
        restarts = options.registry.get_sample_value(
            "emberscope_thread_restarts_total", {"thread": "ebpf-events"}
        )
        assert restarts == 1
    finally:
        stop.set()
        runner.join(30)


CONTAINER_CONFIG = """
pyroscope.ebpf "default" {{
  targets          = [{{"__container_id__" = "{container_id}", "service_name" = "burners"}}]
  forward_to       = [pyroscope.file.out.receiver]
  collect_interval = "1s"
}}

pyroscope.file "out" {{
  directory = "{output}"
}}
"""


@pytest.mark.slow
@pytest.mark.parametrize("target", ["container", "process"])
def test_processes_living_30_to_200_ms_keep_their_samples(build_workload, tmp_path, target):
    """Each burner exits before the agent can read its /proc entry: it is
    matched by the cgroup or the discovery the kernel and procevents saw.
    Processes at the default 15 s interval: a collection comes after discovery
    has dropped most of them (10 s after their exit), and after far more of them
    than the pid cache holds (32) have started."""
    churner = build_workload("churn")
    output = tmp_path / "out"
    container_id = os.urandom(32).hex()
    if target == "container":
        config = CONTAINER_CONFIG.format(container_id=container_id, output=output)
        service = "burners"
    else:
        config = process_config(churner.parent, output, rate=97, pid_map_size=2048, interval="15s")
        service = churner.name
    cgroups = Cgroups(cgroup2_root())
    with run_agent(config, tmp_path) as agent:
        agent.wait_for_sampling()
        # parked in a stopped state until moved into its cgroup: its children inherit it
        burners = subprocess.Popen(
            [
                "sh",
                "-c",
                'kill -STOP $$; exec "$0" "$@"',
                str(churner),
                "200",
                "30000",
                "200000",
                "2",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert wait_for(
                lambda: Path(f"/proc/{burners.pid}/stat").read_text().split()[2] == "T", 5
            )
            if target == "container":
                cgroups.move(burners.pid, f"kubepods/besteffort/podx/{container_id}")
            os.kill(burners.pid, signal.SIGCONT)
            cpu_s = children_cpu_s(burners)
            time.sleep(7)  # past pending classification and one more interval
        finally:
            burners.kill()
            cgroups.close([burners.pid])
    samples = samples_of(output, service)
    expected = 97 * cpu_s
    unnamed, whole = stack_quality(output, service, churner.name)
    print(
        f"{target}: {samples} samples for {cpu_s:.1f} CPU s ({samples / expected:.0%}), "
        f"{unnamed} with a user frame not named, {whole} walked to main"
    )
    assert samples >= 0.9 * expected, agent.log[-3000:]
    # their maps were read while they lived: gone when written, still named
    assert unnamed <= 0.1 * samples
    # walked whole from their first samples on: the program's tables are loaded
    assert whole >= 0.7 * samples


def stack_quality(output: Path, service: str, executable: str) -> tuple[int, int]:
    """Samples with a user frame the agent could not name (in no mapping it read,
    "[unknown]", or in the executable but named by its offset), and samples whose
    stack reaches ``main``."""
    unnamed = whole = 0
    for _, profile in profiles_in(output, service):
        frames = location_frames(profile)
        for sample in profile.sample:
            names = [frame.name for id in sample.location_id for frame in frames[id]]
            count = sample.value[0] // profile.period
            if any(n.startswith(("[unknown]", f"{executable}+0x")) for n in names):
                unnamed += count
            if "main" in names:
                whole += count
    return unnamed, whole
