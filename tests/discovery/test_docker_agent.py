"""`emberscope run` on the Docker example of the pyroscope.ebpf page, end to end: real
podman containers behind its Docker-compatible API on a Unix socket, the real kernel
sampler, and a ``pyroscope.file`` receiver in place of ``pyroscope.write``."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from agent.pprof import read_profile, top_functions
from tests.agent import run_agent, wait_for

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "docker.alloy"
pytestmark = pytest.mark.usefixtures("bpf_ready")

INTERVAL_S = 2
INTERVAL_NS = INTERVAL_S * 1_000_000_000
BUSY = ("/bin/sh", "-c", "while :; do :; done")
FIRST, LATE, AFTER = "emberscope-busy", "emberscope-late", "emberscope-after-outage"


def example_config(rewrite, socket: Path, output: Path) -> str:
    """The example, verbatim except ``host``, the receiver, and a short collect interval."""
    host = ('host = "unix:///var/run/docker.sock"', f'host = "unix://{socket}"')
    return rewrite(EXAMPLE.read_text(), "staging", "local_containers", output, INTERVAL_S, [host])


def profiles(output: Path) -> dict[str, list[tuple[dict, object]]]:
    """Every profile written so far, by its service_name label, in time order."""
    found: dict[str, list[tuple[dict, object]]] = {}
    for path in output.rglob("*.pb.gz"):
        labels = json.loads(path.with_name(path.name.replace(".pb.gz", ".labels.json")).read_text())
        found.setdefault(labels.get("service_name", ""), []).append(
            (labels, read_profile(path.read_bytes()))
        )
    for entries in found.values():
        entries.sort(key=lambda entry: entry[1].time_nanos)
    return found


def started_at(podman, name: str) -> int:
    return int(podman("inspect", "--format={{.State.StartedAt.UnixNano}}", name))


@pytest.fixture(scope="module")
def agent_run(podman, example_to_files, tmp_path_factory):
    """Run the agent on the example; containers come, go, and the socket goes away."""
    output = tmp_path_factory.mktemp("docker-agent-out")
    folder = tmp_path_factory.mktemp("docker-agent")
    config = example_config(example_to_files, podman.socket, output)
    facts: dict = {"output": output}

    podman.run_container(FIRST, command=BUSY)
    with run_agent(config, folder) as agent:

        def seen(name: str, count: int = 1) -> bool:
            assert agent.process.poll() is None, f"the agent exited: {agent.log}"
            return len(profiles(output).get(f"/{name}", [])) >= count

        wait_for(lambda: seen(FIRST, 2), 25, f"two profiles of {FIRST}")

        podman.run_container(LATE, command=BUSY)
        facts["late_started"] = started_at(podman, LATE)
        wait_for(lambda: seen(LATE), 3 * INTERVAL_S, f"a profile of {LATE}")

        podman("stop", "-t", "0", FIRST)
        facts["first_stopped"] = time.time_ns()

        facts["outage_start"] = time.time_ns()
        podman.stop_service()
        try:
            time.sleep(1)
            podman.run_container(AFTER, command=BUSY)  # the CLI needs no service
            facts["after_started"] = started_at(podman, AFTER)
            time.sleep(2)
            facts["alive_in_outage"] = agent.process.poll() is None
            facts["outage_end"] = time.time_ns()
        finally:
            podman.start_service()
        wait_for(lambda: seen(AFTER), 20, f"a profile of {AFTER} once the socket is back")
        time.sleep(INTERVAL_S)

        facts["returncode"] = agent.stop()
    facts["log"] = agent.log
    facts["profiles"] = profiles(output)
    return facts


def test_busy_container_is_named_by_the_examples_relabel_rule(agent_run):
    first = agent_run["profiles"][f"/{FIRST}"]
    # the rule copies __meta_docker_container_name as it is, Docker's leading "/" included
    assert all(
        labels == {"__name__": "process_cpu", "service_name": f"/{FIRST}"} for labels, _ in first
    )
    assert set(agent_run["profiles"]) == {f"/{FIRST}", f"/{LATE}", f"/{AFTER}"}


def test_its_samples_are_in_busybox(agent_run):
    for _, profile in agent_run["profiles"][f"/{FIRST}"][1:-1]:  # whole intervals
        strings = profile.string_table
        busybox = {m.id for m in profile.mapping if strings[m.filename].endswith("/busybox")}
        assert busybox, [strings[m.filename] for m in profile.mapping]
        located = {loc.id: loc.mapping_id for loc in profile.location}
        in_busybox = sum(
            sample.value[0]
            for sample in profile.sample
            if located[sample.location_id[0]] in busybox
        )
        # one spinning shell: most of its samples have their leaf in busybox
        assert in_busybox >= 0.5 * sum(sample.value[0] for sample in profile.sample)
        assert sum(s.value[0] for s in profile.sample) // profile.period >= 0.3 * 97 * INTERVAL_S
        # stripped: the frames are named by module and offset
        assert top_functions(profile, 1)[0].name.startswith("busybox+0x")


def test_a_container_started_later_is_profiled_within_one_interval(agent_run):
    first = agent_run["profiles"][f"/{LATE}"][0][1]
    started = agent_run["late_started"]
    assert started - INTERVAL_NS <= first.time_nanos <= started + INTERVAL_NS
    assert first.time_nanos + first.duration_nanos >= started


def test_a_stopped_container_stops_producing_profiles(agent_run):
    stopped = agent_run["first_stopped"]
    windows = [profile.time_nanos for _, profile in agent_run["profiles"][f"/{FIRST}"]]
    assert all(start < stopped + INTERVAL_NS for start in windows), (stopped, windows)


def test_socket_gone_and_back_crashes_nothing_keeps_sampling_and_recovers(agent_run):
    assert agent_run["alive_in_outage"]
    log = agent_run["log"]
    gone = log.find("discovery.docker.linux unhealthy")
    assert gone >= 0 and "podman.sock" in log[gone:].splitlines()[0], log
    assert "discovery.docker.linux healthy" in log[gone:], log  # back again
    assert "Traceback" not in log, log
    start, end = agent_run["outage_start"], agent_run["outage_end"]
    late = [profile for _, profile in agent_run["profiles"][f"/{LATE}"]]
    # the targets stay as they were while the daemon is away: sampling goes on
    assert any(start <= p.time_nanos < end and p.sample for p in late)
    # a container started while it was away is found once it is back
    first = agent_run["profiles"][f"/{AFTER}"][0][1]
    assert first.time_nanos + first.duration_nanos >= agent_run["after_started"]
    assert first.sample


def test_sigterm_stops_it_with_exit_code_0(agent_run):
    assert agent_run["returncode"] == 0, agent_run["log"]
