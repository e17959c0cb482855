"""The running agent's lifecycle: SIGTERM delivers the last window; SIGHUP and
``POST /-/reload`` apply a new configuration, or keep the old one on a bad one."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agent import RunningAgent, programs_held_by, run_agent, wait_for
from tests.write.test_outage import CONFIG, RestartableReceiver
from tests.write.test_pyroscope import series

pytestmark = pytest.mark.usefixtures("bpf_ready")

_COLLECTED = re.compile(r"collected component=\S+ .* profiles=(\d+)")


def collected(log: str) -> list[int]:
    """The profiles of each collection round the agent logged, in order."""
    return [int(count) for count in _COLLECTED.findall(log)]


def delivered_services(receiver: RestartableReceiver) -> list[str]:
    return [series(request)["service_name"] for request in list(receiver.receiver.requests)]


@pytest.fixture
def pyroscope() -> Iterator[RestartableReceiver]:
    receiver = RestartableReceiver()
    receiver.start()
    yield receiver
    receiver.stop()


@pytest.fixture
def busy(build_workload) -> Iterator[Path]:
    workload = build_workload("three_leaves")
    process = subprocess.Popen([str(workload), "120"])
    yield workload
    process.kill()
    process.wait()


def stop_and_count(agent: RunningAgent, receiver: RestartableReceiver) -> tuple[int, int]:
    """SIGTERM the agent; (profiles it collected, profiles the receiver got)."""
    assert agent.stop() == 0, agent.log
    return sum(collected(agent.log)), len(receiver.receiver.requests)


def test_sigterm_delivers_the_last_partial_interval(pyroscope, busy, tmp_path):
    config = CONFIG.format(folder=busy.parent, url=pyroscope.receiver.url)
    config = config.replace('collect_interval = "500ms"', 'collect_interval = "3s"')
    with run_agent(config, tmp_path) as agent:
        agent.wait_for_sampling()
        wait_for(lambda: collected(agent.log), 30, "a first collection")
        time.sleep(1.5)  # mid-interval: the last round holds about half an interval
        made, received = stop_and_count(agent, pyroscope)
    rounds = collected(agent.log)
    assert rounds[-1] >= 1, agent.log  # the last, partial interval had a profile
    assert received == made, agent.log
    assert "agent stopped" in agent.log


def reload_with_signal(agent: RunningAgent) -> None:
    agent.process.send_signal(signal.SIGHUP)


def reload_with_post(agent: RunningAgent) -> None:
    httpx.post(f"http://127.0.0.1:{agent.port}/-/reload", timeout=10)


@pytest.mark.parametrize("reload", [reload_with_signal, reload_with_post])
def test_a_reload_applies_a_good_config_in_place_and_keeps_the_old_on_a_bad_one(
    reload, pyroscope, busy, tmp_path
):
    config = CONFIG.format(folder=busy.parent, url=pyroscope.receiver.url)
    path = tmp_path / "agent.alloy"
    with run_agent(config, tmp_path) as agent:
        agent.wait_for_sampling()
        wait_for(lambda: delivered_services(pyroscope), 30, "a first profile")
        programs = programs_held_by(agent.process.pid)
        assert agent.metric("emberscope_config_last_reload_successful") == 1

        # A bad configuration: the old one keeps running, and says so.
        path.write_text(config.replace("discovery.relabel", "discovery.relable"))
        reload(agent)
        wait_for(lambda: "reload failed" in agent.log, 10, "the failure logged")
        assert agent.metric("emberscope_config_last_reload_successful") == 0
        ready = agent.get("/-/ready")
        assert ready.status_code == 503
        assert "last reload failed" in ready.text and "discovery.relable" in ready.text
        before = len(pyroscope.receiver.requests)
        wait_for(lambda: len(pyroscope.receiver.requests) >= before + 2, 10, "more profiles")

        # A good one: a new service name, the same BPF programs, nothing lost.
        path.write_text(config.replace('"outage-workload"', '"reloaded-workload"'))
        reload(agent)
        wait_for(lambda: "configuration reloaded" in agent.log, 10, "the reload logged")
        wait_for(
            lambda: delivered_services(pyroscope)[-1:] == ["reloaded-workload"],
            10,
            "profiles under the new name",
        )
        assert agent.metric("emberscope_config_last_reload_successful") == 1
        assert agent.get("/-/ready").status_code == 200
        assert programs_held_by(agent.process.pid) == programs
        made, received = stop_and_count(agent, pyroscope)
    assert received == made
    services = delivered_services(pyroscope)
    switched = services.index("reloaded-workload")
    assert set(services[:switched]) == {"outage-workload"}
    assert set(services[switched:]) == {"reloaded-workload"}
    assert "Traceback" not in agent.log


def test_a_post_answers_the_outcome_of_the_reload(pyroscope, busy, tmp_path):
    config = CONFIG.format(folder=busy.parent, url=pyroscope.receiver.url)
    path = tmp_path / "agent.alloy"
    with run_agent(config, tmp_path) as agent:
        agent.wait_for_sampling()
        url = f"http://127.0.0.1:{agent.port}/-/reload"
        path.write_text(config.replace("max_backoff_retries = 2", "max_backoff_retries = -1"))
        bad = httpx.post(url, timeout=10)
        assert bad.status_code == 400
        assert "max_backoff_retries" in bad.text
        path.write_text(config)
        assert httpx.post(url, timeout=10).status_code == 200
        assert agent.get("/-/reload").status_code == 404  # a GET changes nothing


def test_a_reload_changing_a_sampler_argument_loads_the_bpf_program_again(
    pyroscope, busy, tmp_path
):
    config = CONFIG.format(folder=busy.parent, url=pyroscope.receiver.url)
    path = tmp_path / "agent.alloy"
    with run_agent(config, tmp_path) as agent:
        agent.wait_for_sampling()
        wait_for(lambda: delivered_services(pyroscope), 30, "a first profile")
        programs = programs_held_by(agent.process.pid)
        path.write_text(
            config.replace(
                'collect_interval = "500ms"', 'sample_rate = 49\n  collect_interval = "500ms"'
            )
        )
        reload_with_signal(agent)
        wait_for(lambda: "configuration reloaded" in agent.log, 20, "the reload logged")
        wait_for(
            lambda: programs_held_by(agent.process.pid) - programs,
            10,
            "a new BPF program",
        )
        assert not programs_held_by(agent.process.pid) & programs
        before = len(pyroscope.receiver.requests)
        wait_for(lambda: len(pyroscope.receiver.requests) >= before + 2, 10, "more profiles")
        made, received = stop_and_count(agent, pyroscope)
    assert received == made
    assert "Traceback" not in agent.log
