"""`emberscope run` end to end on the real kernel: discovery.process → discovery.relabel
→ pyroscope.ebpf → pyroscope.file, on workloads the test starts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.pprof import read_profile, top_functions

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("bpf_ready")

INTERVAL_S = 2
CONFIG = """
discovery.process "local" {{
}}

discovery.relabel "workloads" {{
  targets = discovery.process.local.targets
  rule {{
    source_labels = ["__meta_process_exe"]
    regex         = "{folder}/.*"
    action        = "keep"
  }}
  rule {{
    source_labels = ["__meta_process_exe"]
    regex         = ".*/([^/]+)"
    target_label  = "service_name"
  }}
  rule {{
    target_label = "env"
    replacement  = "test"
  }}
}}

pyroscope.ebpf "default" {{
  targets          = discovery.relabel.workloads.output
  forward_to       = [pyroscope.file.out.receiver]
  collect_interval = "{interval}s"
}}

pyroscope.file "out" {{
  directory = "{output}"
}}
"""


def loaded_programs() -> set[int]:
    shown = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True)
    return {p["id"] for p in json.loads(shown.stdout or "[]") if p.get("name") == "do_sample"}


def profiles_of(output: Path, service: str) -> list[tuple[dict, object]]:
    found = []
    for path in sorted((output / service).glob("*.pb.gz")):
        labels = json.loads(path.with_name(path.name.replace(".pb.gz", ".labels.json")).read_text())
        found.append((labels, read_profile(path.read_bytes())))
    return found


@pytest.fixture(scope="module")
def agent_run(build_workload, tmp_path_factory):
    """Run the agent for about four intervals; a second workload starts midway."""
    early = build_workload("three_leaves")
    late = build_workload("syscalls")
    output = tmp_path_factory.mktemp("agent-out")
    config = tmp_path_factory.mktemp("agent-config") / "agent.alloy"
    config.write_text(CONFIG.format(folder=early.parent, interval=INTERVAL_S, output=output))
    before = loaded_programs()
    first = subprocess.Popen([str(early), "30"])
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent.cli", "run", str(config)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.5 * INTERVAL_S)
        second_started = time.time_ns()
        second = subprocess.Popen([str(late), "30"])
        time.sleep(2.5 * INTERVAL_S)
        while_running = loaded_programs() - before
        agent.send_signal(signal.SIGTERM)
        _, log = agent.communicate(timeout=30)
    finally:
        agent.kill()
        for process in (first, second):
            process.kill()
            process.wait()
    return {
        "output": output,
        "log": log,
        "returncode": agent.returncode,
        "early": early.name,
        "late": late.name,
        "second_started": second_started,
        "while_running": while_running,
        "after": loaded_programs() - before,
    }


def test_sigterm_stops_it_cleanly_with_the_bpf_program_unloaded(agent_run):
    assert agent_run["returncode"] == 0, agent_run["log"]
    assert "agent stopped" in agent_run["log"]
    assert len(agent_run["while_running"]) == 1
    assert agent_run["after"] == set()


def test_one_profile_per_target_per_interval_with_the_target_labels(agent_run):
    profiles = profiles_of(agent_run["output"], agent_run["early"])
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
    profiles = profiles_of(agent_run["output"], agent_run["early"])
    for _, profile in profiles[1:-1]:  # whole intervals
        samples = sum(s.value[0] for s in profile.sample) // profile.period
        # one busy thread at 97 Hz; the machine has other busy processes too
        assert 0.6 * 97 * INTERVAL_S <= samples <= 1.1 * 97 * INTERVAL_S
        assert profile.duration_nanos == pytest.approx(INTERVAL_S * 1e9, rel=0.2)
        names = {row.name for row in top_functions(profile, 20)}
        assert {"leaf_a", "leaf_b", "leaf_c", "main"} <= names


def test_a_process_started_after_the_agent_is_profiled_from_its_first_interval(agent_run):
    profiles = profiles_of(agent_run["output"], agent_run["late"])
    assert profiles
    first = profiles[0][1]
    started = agent_run["second_started"]
    assert first.time_nanos <= started <= first.time_nanos + first.duration_nanos
    names = {row.name for _, profile in profiles for row in top_functions(profile, 50)}
    assert "write_loop" in names
