"""The process events connector: the real kernel's reports, and datagrams it never sends."""

from __future__ import annotations

import errno
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from agent.discovery.procevents import (
    ProcEvent,
    ProcEventKind,
    ProcEvents,
    open_proc_events,
    parse_datagram,
)
from agent.errors import DiscoveryError

FORK, EXEC, EXIT = 0x1, 0x2, 0x80000000

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="joining the connector needs root")


def message(what: int, data: bytes, *, idx: int = 1, val: int = 1, pad: int = 0) -> bytes:
    """One datagram as the kernel builds it: nlmsghdr, cn_msg, proc_event."""
    event = struct.pack("=IIQ", what, 0, 123) + data + b"\0" * pad
    connector = struct.pack("=IIIIHH", idx, val, 7, 0, len(event), 0) + event
    return struct.pack("=IHHII", 16 + len(connector), 3, 0, 7, 0) + connector


def fork(parent: int, child: int, child_tgid: int | None = None) -> bytes:
    tgid = child if child_tgid is None else child_tgid
    return message(FORK, struct.pack("=iiii", parent, parent, child, tgid))


def exec_(pid: int) -> bytes:
    return message(EXEC, struct.pack("=ii", pid, pid), pad=16)


def exit_(pid: int, tgid: int | None = None) -> bytes:
    return message(EXIT, struct.pack("=iiIIii", pid, pid if tgid is None else tgid, 0, 17, 1, 1))


class FakeSocket:
    """Hands out queued datagrams, or raises queued errors, as the connector socket would."""

    def __init__(self, *items: bytes | OSError) -> None:
        self.items = list(items)
        self.sent: list[bytes] = []
        self.closed = False

    def settimeout(self, value: float | None) -> None:
        pass

    def recv(self, bufsize: int) -> bytes:
        if not self.items:
            raise BlockingIOError(errno.EAGAIN, "empty")
        item = self.items.pop(0)
        if isinstance(item, OSError):
            raise item
        return item[:bufsize]

    def sendto(self, data: bytes, address: tuple[int, int]) -> int:
        self.sent.append(data)
        return len(data)

    def close(self) -> None:
        self.closed = True


def read_until(
    events: ProcEvents, pid: int, kind: ProcEventKind, timeout: float
) -> list[ProcEvent]:
    """The events of ``pid`` until one of ``kind``; fails after ``timeout``."""
    seen: list[ProcEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += [event for event in events.read(0.2) if event.pid == pid]
        if any(event.kind is kind for event in seen):
            return seen
    raise AssertionError(f"no {kind} of pid {pid} within {timeout} s: {seen}")


# ---- the real kernel ---------------------------------------------------------------------


@needs_root
def test_a_child_is_reported_at_fork_exec_and_exit():
    events = open_proc_events()
    try:
        child = subprocess.Popen(["sh", "-c", "exec /bin/true"])
        child.wait()
        seen = read_until(events, child.pid, ProcEventKind.EXIT, 5)
    finally:
        events.close()
    assert [event.kind for event in seen] == [
        ProcEventKind.FORK,
        ProcEventKind.EXEC,  # sh
        ProcEventKind.EXEC,  # true
        ProcEventKind.EXIT,
    ]
    assert seen[0].parent == os.getpid()


@needs_root
def test_threads_are_counted_not_reported():
    events = open_proc_events()
    tids: list[int] = []
    try:
        thread = threading.Thread(target=lambda: tids.append(threading.get_native_id()))
        thread.start()
        thread.join()
        deadline = time.monotonic() + 2
        seen: list[ProcEvent] = []
        while time.monotonic() < deadline and events.counts["thread"] < 2:
            seen += events.read(0.2)
    finally:
        events.close()
    assert events.counts["thread"] >= 2  # its start and its end
    assert all(event.pid != tids[0] for event in seen)


@needs_root
def test_an_overflowed_buffer_is_an_overrun_event_then_reading_goes_on():
    events = open_proc_events(receive_buffer=0)  # the kernel's minimum: a handful of events
    try:
        for _ in range(30):
            subprocess.run(["/bin/true"], check=True)
        first = events.read(0.5)
        assert first[0].kind is ProcEventKind.OVERRUN
        assert events.counts["overrun"] == 1
        child = subprocess.Popen(["/bin/true"])
        child.wait()
        # so small a buffer may overflow again on a busy host: its fork is enough
        seen = read_until(events, child.pid, ProcEventKind.FORK, 5)
    finally:
        events.close()
    assert seen[0] == ProcEvent(ProcEventKind.FORK, child.pid, os.getpid())


@needs_root
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_without_cap_net_admin_it_is_unavailable_with_the_reason():
    code = (
        "from agent.discovery.procevents import open_proc_events\n"
        "try:\n    open_proc_events()\nexcept Exception as exc:\n    print(type(exc).__name__, exc)"
    )
    command = ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin"]
    done = subprocess.run(
        [*command, sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert done.stdout.strip() == (
        "DiscoveryError process events connector: "
        "cannot join the process events group: Operation not permitted"
    ), done.stderr


# ---- datagrams ---------------------------------------------------------------------------


def test_fork_exec_and_exit_of_processes_are_parsed():
    counts: Counter[str] = Counter()
    events = [e for d in (fork(10, 11), exec_(11), exit_(11)) for e in parse_datagram(d, counts)]
    assert events == [
        ProcEvent(ProcEventKind.FORK, 11, 10),
        ProcEvent(ProcEventKind.EXEC, 11),
        ProcEvent(ProcEventKind.EXIT, 11),
    ]
    assert counts == {"fork": 1, "exec": 1, "exit": 1}


def test_bad_datagrams_are_counted_and_skipped():
    counts: Counter[str] = Counter()
    bad = [
        fork(10, 11)[:30],  # cut inside cn_msg: the netlink length overruns the datagram
        fork(10, 11)[:-4],  # cut inside the fork data
        message(FORK, b"\1\0\0\0"),  # a fork too short for its pids
        message(EXEC, b""),  # an exec without pids
        message(0x12345, b"\0" * 24),  # an event type the kernel does not define
        message(0x200, b"\0" * 24),  # comm: known, not used
        message(FORK, b"\0" * 16, idx=4),  # another connector's message
        fork(10, 12, child_tgid=10),  # a thread
        exit_(12, tgid=10),  # the thread ends
        fork(10, 0),  # pid 0
        b"\x03\0\0",  # shorter than a netlink header
        b"",
    ]
    for datagram in bad:
        assert parse_datagram(datagram, counts) == []
    assert counts == {"malformed": 6, "unknown": 1, "unused": 1, "foreign": 1, "thread": 2}


def test_two_messages_in_one_datagram_are_both_read():
    counts: Counter[str] = Counter()
    events = parse_datagram(fork(10, 11) + exec_(11), counts)
    assert [event.kind for event in events] == [ProcEventKind.FORK, ProcEventKind.EXEC]


def test_enobufs_becomes_an_overrun_event_in_its_place():
    overrun = OSError(errno.ENOBUFS, "No buffer space available")
    events = ProcEvents(FakeSocket(fork(1, 20), overrun, exec_(21), b"\0" * 7))
    assert events.read(0.0) == [
        ProcEvent(ProcEventKind.FORK, 20, 1),
        ProcEvent(ProcEventKind.OVERRUN),
        ProcEvent(ProcEventKind.EXEC, 21),
    ]
    assert events.counts == {"fork": 1, "exec": 1, "overrun": 1, "malformed": 1}
    assert events.read(0.0) == []


def test_another_socket_error_is_a_discovery_error():
    events = ProcEvents(FakeSocket(OSError(errno.EBADF, "Bad file descriptor")))
    with pytest.raises(DiscoveryError, match="receive failed: Bad file descriptor"):
        events.read(0.0)


def test_close_unsubscribes_then_closes():
    sock = FakeSocket()
    ProcEvents(sock).close()
    assert sock.closed
    assert struct.unpack_from("=I", sock.sent[0], 36) == (2,)  # PROC_CN_MCAST_IGNORE
