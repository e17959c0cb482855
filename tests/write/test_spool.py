"""The disk spool of pyroscope.write: write, replay, restart, torn files, and a
two-minute outage under the real agent with nothing lost."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agent.config import ComponentOptions, Duration
from agent.write.pyroscope import PyroscopeWrite, encode_push_request, series_labels
from agent.write.spool import Spool
from tests.agent import run_agent, wait_for
from tests.test_pipeline import collected
from tests.write.test_outage import CONFIG, RestartableReceiver
from tests.write.test_pyroscope import (
    closed_port_url,
    drops,
    metric,
    profile,
    series,
    write_to,
)


class Drops:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, size: int, reason: str) -> None:
        self.reasons.append(reason)


def test_items_come_back_oldest_first_and_whole_after_a_restart(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for number in range(5):
        spool.put(f"body {number}".encode(), size=100 + number, made_ns=number)
    again = Spool(tmp_path, max_bytes=1 << 20)  # a new agent on the same directory
    assert again.count == 5
    taken = []
    while (item := again.oldest()) is not None:
        taken.append((item.body, item.size))
        again.remove(item)
    assert taken == [(f"body {n}".encode(), 100 + n) for n in range(5)]
    assert os.listdir(tmp_path) == []


def test_past_the_cap_the_oldest_are_dropped_and_counted(tmp_path):
    dropped = Drops()
    spool = Spool(tmp_path, max_bytes=3 * (17 + 1000), on_drop=dropped)
    for number in range(5):
        spool.put(bytes([number]) * 1000, size=10, made_ns=number)
    assert spool.count == 3
    assert spool.bytes <= spool.max_bytes
    assert dropped.reasons == ["spool_full", "spool_full"]
    assert spool.oldest().body == bytes([2]) * 1000
    assert not spool.put(b"x" * 5000, size=10, made_ns=9)  # larger than the whole spool
    assert dropped.reasons[-1] == "spool_full"


def test_torn_files_are_skipped_counted_and_removed_never_returned(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20)
    for number in range(4):
        spool.put(f"body {number}".encode() * 50, size=1, made_ns=number)
    names = sorted(os.listdir(tmp_path))
    cut = tmp_path / names[0]
    cut.write_bytes(cut.read_bytes()[:-7])  # cut short
    flipped = tmp_path / names[2]
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0xFF  # a changed byte: the CRC tells
    flipped.write_bytes(bytes(data))
    (tmp_path / f".tmp-{names[3]}").write_bytes(b"EMSP")  # a write a crash interrupted

    dropped = Drops()
    again = Spool(tmp_path, max_bytes=1 << 20, on_drop=dropped)
    bodies = []
    while (item := again.oldest()) is not None:
        bodies.append(item.body)
        again.remove(item)
    assert bodies == [b"body 1" * 50, b"body 3" * 50]
    assert dropped.reasons == ["torn", "torn", "torn"]
    assert os.listdir(tmp_path) == []


def start_write(arguments, stop_timeout: float = 0.5):
    options = ComponentOptions(
        "pyroscope.write.spooled", lambda _: None, {}, threading.Lock(), stop_timeout=stop_timeout
    )
    component = PyroscopeWrite(options, arguments)
    stop = threading.Event()
    thread = threading.Thread(target=component.run, args=(stop,), daemon=True)
    thread.start()
    return component, stop, thread


def spooled_write(url: str, directory: Path, **options):
    arguments = write_to(url, **{"max_backoff_retries": 2, **options})
    return dataclasses.replace(arguments, spool_directory=str(directory))


def test_what_the_endpoint_could_not_take_is_replayed_oldest_first_when_it_answers(tmp_path):
    pyroscope = RestartableReceiver()
    pyroscope.start()
    url = pyroscope.receiver.url
    pyroscope.stop()  # down
    component, stop, thread = start_write(spooled_write(url, tmp_path))
    try:
        for number in range(6):
            component.append(profile(number))
        spooled = "emberscope_write_spooled_profiles_total"
        wait_for(lambda: metric(component, spooled, url) == 6, 10, "six profiles spooled")
        assert drops(component, url) == {}
        assert len(os.listdir(tmp_path / spool_name_of(url))) == 6

        component.append(profile(6))  # while the endpoint fails: straight to disk
        wait_for(lambda: metric(component, spooled, url) == 7, 10, "the seventh spooled")
        pyroscope.start()
        wait_for(lambda: len(pyroscope.receiver.requests) == 7, 10, "all seven delivered")
        numbers = [series(request)["n"] for request in pyroscope.receiver.requests]
        assert numbers == [str(n) for n in range(7)]
        component.append(profile(7))  # the endpoint answers again: no disk
        wait_for(lambda: len(pyroscope.receiver.requests) == 8, 10, "the eighth delivered")
        assert metric(component, spooled, url) == 7
        assert metric(component, "emberscope_write_replayed_profiles_total", url) == 7
        assert metric(component, "emberscope_write_spool_profiles", url) == 0
    finally:
        stop.set()
        thread.join(10)
        pyroscope.stop()


def test_what_is_queued_at_stop_is_spooled_and_sent_by_the_next_agent(tmp_path):
    pyroscope = RestartableReceiver()
    pyroscope.start()
    url = pyroscope.receiver.url
    pyroscope.stop()
    # Retrying for long: at stop, one profile waits to retry and the others are queued.
    arguments = spooled_write(
        url,
        tmp_path,
        max_backoff_retries=0,
        min_backoff_period=Duration(30),
        max_backoff_period=Duration(30),
    )
    component, stop, thread = start_write(arguments)
    for number in range(4):
        component.append(profile(number))
    wait_for(lambda: "failed" in component.health().message, 5, "a failed push")
    stop.set()
    thread.join(10)
    assert drops(component, url) == {}
    assert metric(component, "emberscope_write_spooled_profiles_total", url) == 4

    pyroscope.start()
    component, stop, thread = start_write(spooled_write(url, tmp_path))
    try:
        wait_for(lambda: len(pyroscope.receiver.requests) == 4, 10, "the spool replayed")
        assert [series(r)["n"] for r in pyroscope.receiver.requests] == ["0", "1", "2", "3"]
        original = profile(0).data
        assert pyroscope.receiver.requests[0].request.series[0].samples[0].raw_profile == original
    finally:
        stop.set()
        thread.join(10)
        pyroscope.stop()


def test_a_torn_spool_file_is_never_sent(tmp_path):
    pyroscope = RestartableReceiver()
    pyroscope.start()
    url = pyroscope.receiver.url
    directory = tmp_path / re.sub(r"[^A-Za-z0-9._-]", "_", url)
    spool = Spool(directory, max_bytes=1 << 20)
    for number in range(3):
        labeled = profile(number)
        body = encode_push_request(series_labels(labeled.labels, {}), labeled.data)
        spool.put(body, len(labeled.data), made_ns=number)
    torn = directory / sorted(os.listdir(directory))[1]
    torn.write_bytes(torn.read_bytes()[:40])
    component, stop, thread = start_write(spooled_write(url, tmp_path))
    try:
        wait_for(lambda: len(pyroscope.receiver.requests) == 2, 10, "the whole ones")
        time.sleep(0.3)
        assert [series(r)["n"] for r in pyroscope.receiver.requests] == ["0", "2"]
        assert drops(component, url) == {"torn": 1}
    finally:
        stop.set()
        thread.join(10)
        pyroscope.stop()


OUTAGE_S = 120


@pytest.mark.slow  # about 2.5 minutes: a 2-minute outage under the real agent
@pytest.mark.usefixtures("bpf_ready")
def test_a_two_minute_outage_loses_nothing_end_to_end(build_workload, tmp_path):
    workload = build_workload("three_leaves")
    pyroscope = RestartableReceiver()
    pyroscope.start()
    spool = tmp_path / "spool"
    config = CONFIG.format(folder=workload.parent, url=pyroscope.receiver.url)
    config = config.replace(
        'pyroscope.write "receiver" {',
        f'pyroscope.write "receiver" {{\n  spool_directory = "{spool}"',
    )
    busy = subprocess.Popen([str(workload), str(OUTAGE_S + 60)])
    try:
        with run_agent(config, tmp_path) as agent:
            agent.wait_for_sampling()
            wait_for(lambda: pyroscope.receiver.requests, 30, "a first profile")
            pyroscope.stop()
            time.sleep(OUTAGE_S)
            spooled = agent.metric("emberscope_write_spooled_profiles_total")
            pyroscope.start()
            wait_for(
                lambda: agent.metric("emberscope_write_spool_profiles") == 0,
                60,
                "the spool emptied",
            )
            assert agent.stop() == 0, agent.log
    finally:
        busy.kill()
        busy.wait()
        pyroscope.stop()
    made = sum(collected(agent.log))
    received = [r.request.series[0].samples[0].raw_profile for r in pyroscope.receiver.requests]
    print(f"\nprofiles made {made}, received {len(received)}, spooled {spooled:.0f}")
    assert spooled >= 0.5 * OUTAGE_S / 0.5  # most of the outage went through the spool
    assert len(received) == made
    assert len(set(received)) == len(received)  # nothing sent twice
    assert "dropped" not in agent.log


def test_a_stop_while_the_endpoint_fails_spools_at_once(tmp_path):
    url = closed_port_url()
    arguments = spooled_write(
        url, tmp_path, min_backoff_period=Duration(30), max_backoff_period=Duration(30)
    )
    component, stop, thread = start_write(arguments, stop_timeout=20)
    for number in range(3):
        component.append(profile(number))
    wait_for(lambda: "failed" in component.health().message, 5, "a failed push")
    stopped = time.monotonic()
    stop.set()
    thread.join(10)
    assert time.monotonic() - stopped < 2  # not the 20 s of the stop timeout
    assert metric(component, "emberscope_write_spooled_profiles_total", url) == 3


def test_a_new_spool_cap_applies_in_place_keeping_the_endpoint(tmp_path):
    url = closed_port_url()
    arguments = spooled_write(url, tmp_path)
    component, stop, thread = start_write(arguments)
    try:
        senders = [sender for sender, _ in component._state[1]]
        for number in range(3):
            component.append(profile(number))
        spooled = "emberscope_write_spooled_profiles_total"
        wait_for(lambda: metric(component, spooled, url) == 3, 10, "three profiles spooled")
        one_file = os.path.getsize(next((tmp_path / spool_name_of(url)).iterdir()))
        component.update(dataclasses.replace(arguments, spool_max_bytes=one_file + 100))
        assert [sender for sender, _ in component._state[1]] == senders  # not reopened
        component.append(profile(3))
        wait_for(lambda: metric(component, spooled, url) == 4, 10, "the fourth spooled")
        assert drops(component, url) == {"spool_full": 3}  # the new cap: room for one
        assert metric(component, "emberscope_write_spool_profiles", url) == 1
    finally:
        stop.set()
        thread.join(10)


def spool_name_of(url: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", url)
