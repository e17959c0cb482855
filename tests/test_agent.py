"""`emberscope run` end to end on the real kernel: discovery.process → discovery.relabel
→ pyroscope.ebpf → pyroscope.file, on workloads the test starts."""

from __future__ import annotations

import subprocess
import time

import pytest

from agent.pprof import top_functions
from tests.agent import (
    cpu_seconds,
    loaded_programs,
    parse_log,
    profiles_in,
    programs_held_by,
    run_agent,
    workload_config,
)

pytestmark = pytest.mark.usefixtures("bpf_ready")

INTERVAL_S = 2
ENV_RULE = """  rule {
    target_label = "env"
    replacement  = "test"
  }
"""


def still_loaded(programs: set[int], timeout: float = 5.0) -> set[int]:
    """Which of ``programs`` are still loaded once the kernel has had ``timeout``
    seconds to free them: it frees a closed program after an RCU grace period."""
    deadline = time.monotonic() + timeout
    while (left := programs & loaded_programs().keys()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.fixture(scope="module")
def agent_run(build_workload, tmp_path_factory):
    """Run the agent for about four intervals; a second workload starts midway."""
    early = build_workload("three_leaves")
    late = build_workload("syscalls")
    output = tmp_path_factory.mktemp("agent-out")
    interval = f'  collect_interval = "{INTERVAL_S}s"\n'
    config = workload_config(early.parent, output, ebpf=interval, rules=ENV_RULE)
    workloads = [subprocess.Popen([str(early), "30"])]
    try:
        with run_agent(config, tmp_path_factory.mktemp("agent")) as agent:
            agent.wait_for_sampling()
            time.sleep(2.5 * INTERVAL_S)
            second_started = time.time_ns()
            workloads.append(subprocess.Popen([str(late), "30"]))
            time.sleep(2.5 * INTERVAL_S)
            held = programs_held_by(agent.process.pid)
            names = sorted(loaded_programs()[program] for program in held)
            late_cpu_s = cpu_seconds(workloads[-1].pid)
            returncode = agent.stop()
    finally:
        for process in workloads:
            process.kill()
            process.wait()
    return {
        "output": output,
        "log": agent.log,
        "returncode": returncode,
        "early": early.name,
        "late": late.name,
        "second_started": second_started,
        "late_cpu_s": late_cpu_s,
        "names": names,
        "left": still_loaded(held),
    }


def test_sigterm_stops_it_cleanly_with_the_bpf_program_unloaded(agent_run):
    assert agent_run["returncode"] == 0, agent_run["log"]
    assert "agent stopped" in agent_run["log"]
    # one sampler, its two tracepoint programs and its two walkers, however many
    # components share it
    assert agent_run["names"] == [
        "do_sample",
        "handle_exec",
        "handle_exit",
        "walk_native",
        "walk_python",
    ]
    assert agent_run["left"] == set()


def test_every_line_it_logs_is_logfmt(agent_run):
    records = parse_log(agent_run["log"])
    messages = [record["msg"] for record in records]
    assert messages[0].startswith("configuration "), messages
    assert "agent started components=4" in messages and "agent stopped" in messages
    assert f"pyroscope.file.out: writing profiles under {agent_run['output']}" in messages


def test_one_profile_per_target_per_interval_with_the_target_labels(agent_run):
    profiles = profiles_in(agent_run["output"], agent_run["early"])
    # about five intervals, the last one partial
    assert 4 <= len(profiles) <= 6, [p[1].time_nanos for p in profiles]
    for labels, _ in profiles:
        assert labels == {
            "__name__": "process_cpu",
            "service_name": agent_run["early"],
            "env": "test",
        }
    services = {path.name for path in agent_run["output"].iterdir()}
    assert services == {agent_run["early"], agent_run["late"]}


def test_each_interval_holds_the_functions_and_the_samples_of_its_time(agent_run):
    profiles = profiles_in(agent_run["output"], agent_run["early"])
    for number, (_, profile) in enumerate(profiles[1:-1], start=1):  # whole intervals
        samples = sum(s.value[0] for s in profile.sample) // profile.period
        # one busy thread at 97 Hz, sharing two cores with the other workload and the test
        assert 0.4 * 97 * INTERVAL_S <= samples
        # The workload started before the agent: the samples it had before
        # discovery saw it are held, then land in the interval being collected,
        # the first or (when the agent starts slowly) the second.
        assert samples <= (1.1 if number > 1 else 1.5) * 97 * INTERVAL_S
        assert profile.duration_nanos == pytest.approx(INTERVAL_S * 1e9, rel=0.2)
        names = {row.name for row in top_functions(profile, 20)}
        assert {"leaf_a", "leaf_b", "leaf_c", "main"} <= names


def test_a_process_started_after_the_agent_is_profiled_from_its_first_interval(agent_run):
    profiles = profiles_in(agent_run["output"], agent_run["late"])
    assert profiles
    first = profiles[0][1]
    started = agent_run["second_started"]
    # Until discovery.process has seen it (within a second or so) its samples
    # are held, then they go to the interval being collected: at most one late.
    assert first.time_nanos <= started + INTERVAL_S * 1e9
    assert started <= first.time_nanos + first.duration_nanos
    # and none is lost meanwhile: every CPU second it used up to SIGTERM is there
    samples = sum(s.value[0] // p.period for _, p in profiles for s in p.sample)
    assert samples >= 0.8 * 97 * agent_run["late_cpu_s"], agent_run["log"][-3000:]
    names = {row.name for _, profile in profiles for row in top_functions(profile, 50)}
    assert "write_loop" in names
