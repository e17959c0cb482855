"""The sender thread outlives a bug in a push: it is restarted and goes on; with a
spool, a failing endpoint sends what it holds to disk at once, from its own thread."""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry

from agent.errors import PushError
from agent.write.sender import Backoff, EndpointSender, WriteMetrics
from agent.write.spool import Spool
from tests.agent import wait_for


def test_a_push_that_raises_a_bug_does_not_end_the_sender():
    delivered: list[bytes] = []
    pushed = threading.Event()

    def push(body: bytes) -> None:
        if body == b"bug":
            raise KeyError("metadata")  # not a PushError: a bug, not a failed push
        delivered.append(body)
        pushed.set()

    registry = CollectorRegistry()
    sender = EndpointSender(
        "http://127.0.0.1:1", push, Backoff(0.01, 0.02, 2), WriteMetrics(registry), queue_size=8
    )
    sender._thread._backoff_s = 0.05  # restart quickly in the test
    sender.start()
    try:
        sender.enqueue(b"bug", 3)
        deadline = time.monotonic() + 5
        while "sender failed" not in sender.failure and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "sender failed" in sender.failure and "metadata" in sender.failure
        sender.enqueue(b"profile", 7)
        assert pushed.wait(5), "the sender was not restarted"
    finally:
        sender.close()
    assert delivered == [b"profile"]
    assert sender._thread.crashes == 1


class WritingThreads(Spool):
    """A spool that notes which thread writes to it."""

    def put(self, body: bytes, size: int, made_ns: int) -> bool:
        self.writers.add(threading.current_thread().name)
        return super().put(body, size, made_ns)


def test_with_a_spool_a_failing_push_and_all_queued_behind_it_go_to_disk_at_once(tmp_path):
    pushing, refuse = threading.Event(), threading.Event()

    def push(body: bytes) -> None:
        pushing.set()
        refuse.wait(5)
        raise PushError("connection refused", retryable=True)

    spool = WritingThreads(tmp_path, max_bytes=1 << 20)
    spool.writers = set()
    # a backoff of minutes: nothing may wait for it in memory
    sender = EndpointSender(
        "http://127.0.0.1:1",
        push,
        Backoff(300, 300, 10),
        WriteMetrics(CollectorRegistry()),
        queue_size=8,
        spool=spool,
    )
    sender.start()
    try:
        sender.enqueue(b"first", 1)
        assert pushing.wait(5)
        sender.enqueue(b"second", 1)  # queued behind the push in flight
        sender.enqueue(b"third", 1)
        refuse.set()
        wait_for(lambda: spool.count == 3, 5, "all three on disk")
        sender.enqueue(b"fourth", 1)  # while the endpoint fails
        wait_for(lambda: spool.count == 4, 5, "the fourth on disk")
        # a crash now (no close) would lose nothing: read what a new agent would find
        again = Spool(tmp_path, max_bytes=1 << 20)
        bodies = []
        while (item := again.oldest()) is not None:
            bodies.append(item.body)
            again.remove(item)
        assert bodies == [b"first", b"second", b"third", b"fourth"]
        assert spool.writers == {sender._thread.name}  # never the caller of enqueue
    finally:
        sender.close(1)
