"""The kernel's process events connector: fork, exec and exit of every process, as they happen.

A netlink socket (``NETLINK_CONNECTOR``) joined to the ``CN_IDX_PROC`` group, subscribed with
``PROC_CN_MCAST_LISTEN``; each datagram holds a ``struct cn_msg`` and a ``struct proc_event``.
"""

from __future__ import annotations

import enum
import errno
import os
import socket
import struct
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from agent.errors import DiscoveryError

__all__ = [
    "EventSocket",
    "ProcEvent",
    "ProcEventKind",
    "ProcEvents",
    "open_proc_events",
    "parse_datagram",
]

_SOURCE = "process events connector"

_NETLINK_CONNECTOR = 11
_CN_IDX_PROC = 1
_CN_VAL_PROC = 1
_NLMSG_DONE = 3
_PROC_CN_MCAST_LISTEN = 1
_PROC_CN_MCAST_IGNORE = 2
_SO_RCVBUFFORCE = 33  # Linux's value; Python's socket module lacks the name

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # id.idx, id.val, seq, ack, len, flags
_EVENT_HEADER = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_FORK = struct.Struct("=iiii")  # parent_pid, parent_tgid, child_pid, child_tgid
_PID_TGID = struct.Struct("=ii")  # exec and exit begin with process_pid, process_tgid
_ACK = struct.Struct("=I")  # err
_OP = struct.Struct("=I")

_WHAT_NONE = 0x00000000  # the acknowledgement of a subscription
_WHAT_FORK = 0x00000001
_WHAT_EXEC = 0x00000002
_WHAT_EXIT = 0x80000000
# uid, gid, sid, ptrace, comm, coredump: reported, not needed by discovery
_WHAT_UNUSED = frozenset({0x4, 0x40, 0x80, 0x100, 0x200, 0x40000000})

# A burst of process starts must fit while the reader is busy reading /proc: the
# kernel doubles the size asked, and each event takes some 830 bytes of it, so this
# holds about 10,000 events (measured: 157 in 128 KiB).
_RECEIVE_BUFFER = 4 << 20
_RECEIVE_SIZE = 8192  # one datagram; a proc connector message is under 100 bytes
_ACK_TIMEOUT = 1.0  # seconds to wait for the kernel to confirm the subscription
_MAX_BATCH = 512  # datagrams per read, so the caller's timers still run in a storm


class ProcEventKind(enum.Enum):
    FORK = "fork"
    EXEC = "exec"
    EXIT = "exit"
    OVERRUN = "overrun"  # the socket's buffer overflowed: events were lost


@dataclass(frozen=True, slots=True)
class ProcEvent:
    """One process (thread group) event: ``pid`` is the process; ``parent`` is set for forks."""

    kind: ProcEventKind
    pid: int = 0
    parent: int = 0


OVERRUN = ProcEvent(ProcEventKind.OVERRUN)


class EventSocket(Protocol):
    """What ``ProcEvents`` needs of its socket: tests hand it a fake one."""

    def settimeout(self, value: float | None) -> None: ...

    def recv(self, bufsize: int) -> bytes: ...

    def sendto(self, data: bytes, address: tuple[int, int]) -> int: ...

    def close(self) -> None: ...


class ProcEvents:
    """A subscribed connector socket. ``counts`` tallies what was read, by kind and by
    what was skipped (``thread``, ``unused``, ``unknown``, ``malformed``, ``foreign``).

    Example::

        events = open_proc_events()
        try:
            for event in events.read(timeout=0.5):
                ...
        finally:
            events.close()
    """

    def __init__(self, sock: EventSocket) -> None:
        self._sock = sock
        self.counts: Counter[str] = Counter()

    def read(self, timeout: float) -> list[ProcEvent]:
        """Wait up to ``timeout`` seconds for the first datagram, then take those queued.

        An overflowed buffer (``ENOBUFS``) becomes an ``OVERRUN`` event in its place in
        the stream; any other socket error is raised as ``DiscoveryError``.
        """
        events: list[ProcEvent] = []
        try:
            self._sock.settimeout(max(timeout, 0.0))
            for _ in range(_MAX_BATCH):
                received = self._receive()
                if received is None:
                    break
                events.extend(received)
                self._sock.settimeout(0.0)  # the rest: only what is already queued
        except OSError as exc:
            raise DiscoveryError(_SOURCE, f"receive failed: {exc.strerror or exc}") from exc
        return events

    def close(self) -> None:
        """Unsubscribe (the kernel stops building events when nobody listens) and close."""
        try:
            _send_op(self._sock, _PROC_CN_MCAST_IGNORE, 0)
        except OSError:
            pass  # closing anyway
        self._sock.close()

    def _receive(self) -> list[ProcEvent] | None:
        """The events of one datagram, ``[OVERRUN]``, or None when nothing is queued."""
        try:
            data = self._sock.recv(_RECEIVE_SIZE)
        except (BlockingIOError, TimeoutError):
            return None
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:
                raise
            self.counts["overrun"] += 1
            return [OVERRUN]
        return parse_datagram(data, self.counts)


def open_proc_events(receive_buffer: int = _RECEIVE_BUFFER) -> ProcEvents:
    """Open, join and subscribe; raises ``DiscoveryError`` saying why it is unavailable.

    The kernel acknowledges a subscription only when it takes it, so a requester it ignores
    (outside the initial PID or user namespace) is told apart from a quiet host.
    """
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_CONNECTOR)
    except OSError as exc:  # EPROTONOSUPPORT: no connector in this network namespace
        raise DiscoveryError(_SOURCE, f"cannot open: {exc.strerror or exc}") from exc
    try:
        _set_receive_buffer(sock, receive_buffer)
        _subscribe(sock)
    except BaseException:
        sock.close()
        raise
    return ProcEvents(sock)


def _set_receive_buffer(sock: socket.socket, size: int) -> None:
    """SO_RCVBUFFORCE passes ``net.core.rmem_max`` when privileged; else the capped size."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def _subscribe(sock: socket.socket) -> None:
    try:
        sock.bind((0, _CN_IDX_PROC))
    except OSError as exc:  # EPERM: neither root nor CAP_NET_ADMIN
        reason = f"cannot join the process events group: {exc.strerror or exc}"
        raise DiscoveryError(_SOURCE, reason) from exc
    ack = int.from_bytes(os.urandom(2), "little")  # tells our acknowledgement from others'
    try:
        _send_op(sock, _PROC_CN_MCAST_LISTEN, ack)
        _wait_for_ack(sock, ack + 1)
    except OSError as exc:
        raise DiscoveryError(_SOURCE, f"cannot subscribe: {exc.strerror or exc}") from exc


def _send_op(sock: EventSocket, op: int, ack: int) -> None:
    payload = _OP.pack(op)
    message = _CN_MSG.pack(_CN_IDX_PROC, _CN_VAL_PROC, 0, ack, len(payload), 0) + payload
    header = _NLMSGHDR.pack(_NLMSGHDR.size + len(message), _NLMSG_DONE, 0, 0, 0)
    sock.sendto(header + message, (0, 0))  # to the kernel


def _wait_for_ack(sock: socket.socket, ack: int) -> None:
    """Read until the kernel's answer to our subscription; events before it are dropped
    (the caller scans ``/proc`` once subscribed)."""
    sock.settimeout(_ACK_TIMEOUT)
    while True:
        try:
            data = sock.recv(_RECEIVE_SIZE)
        except TimeoutError:
            reason = "no answer to the subscription (not in the initial PID namespace?)"
            raise DiscoveryError(_SOURCE, reason) from None
        error = _parse_ack(data, ack)
        if error is None:
            continue
        if error:
            raise DiscoveryError(_SOURCE, f"subscription refused: {os.strerror(error)}")
        return


def _parse_ack(data: bytes, ack: int) -> int | None:
    """The error of the acknowledgement numbered ``ack``; None if ``data`` is not it."""
    start = _NLMSGHDR.size
    if len(data) < start + _CN_MSG.size + _EVENT_HEADER.size + _ACK.size:
        return None
    message_ack = _CN_MSG.unpack_from(data, start)[3]
    what = _EVENT_HEADER.unpack_from(data, start + _CN_MSG.size)[0]
    if what != _WHAT_NONE or message_ack != ack:
        return None
    return _ACK.unpack_from(data, start + _CN_MSG.size + _EVENT_HEADER.size)[0]


def parse_datagram(data: bytes, counts: Counter[str]) -> list[ProcEvent]:
    """The process events of one datagram; what is skipped is tallied in ``counts``."""
    events: list[ProcEvent] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length = _NLMSGHDR.unpack_from(data, offset)[0]
        if length < _NLMSGHDR.size or offset + length > len(data):
            counts["malformed"] += 1
            return events
        event = _parse_message(data[offset + _NLMSGHDR.size : offset + length], counts)
        if event is not None:
            events.append(event)
        offset += (length + 3) & ~3  # NLMSG_ALIGN
    if offset < len(data):
        counts["malformed"] += 1  # a trailing piece too short for a header
    return events


def _parse_message(message: bytes, counts: Counter[str]) -> ProcEvent | None:
    """One connector message (``struct cn_msg`` then ``struct proc_event``)."""
    if len(message) < _CN_MSG.size:
        counts["malformed"] += 1
        return None
    idx, val, _, _, length, _ = _CN_MSG.unpack_from(message)
    if (idx, val) != (_CN_IDX_PROC, _CN_VAL_PROC):
        counts["foreign"] += 1
        return None
    body = message[_CN_MSG.size : _CN_MSG.size + length]
    if length < _EVENT_HEADER.size or len(body) < length:
        counts["malformed"] += 1
        return None
    what = _EVENT_HEADER.unpack_from(body)[0]
    return _parse_event(what, body[_EVENT_HEADER.size :], counts)


def _parse_event(what: int, data: bytes, counts: Counter[str]) -> ProcEvent | None:
    """``event_data`` by ``what``: threads are left out, processes kept."""
    if what == _WHAT_FORK:
        if len(data) < _FORK.size:
            counts["malformed"] += 1
            return None
        _, parent_tgid, child_pid, child_tgid = _FORK.unpack_from(data)
        return _process_event(ProcEventKind.FORK, child_pid, child_tgid, parent_tgid, counts)
    if what in (_WHAT_EXEC, _WHAT_EXIT):
        if len(data) < _PID_TGID.size:
            counts["malformed"] += 1
            return None
        pid, tgid = _PID_TGID.unpack_from(data)
        kind = ProcEventKind.EXEC if what == _WHAT_EXEC else ProcEventKind.EXIT
        return _process_event(kind, pid, tgid, 0, counts)
    counts["unused" if what in _WHAT_UNUSED or what == _WHAT_NONE else "unknown"] += 1
    return None


def _process_event(
    kind: ProcEventKind, pid: int, tgid: int, parent: int, counts: Counter[str]
) -> ProcEvent | None:
    if pid != tgid:
        counts["thread"] += 1  # a thread started or ended: the process is unchanged
        return None
    if pid <= 0:
        counts["malformed"] += 1
        return None
    counts[kind.value] += 1
    return ProcEvent(kind, pid, parent)
