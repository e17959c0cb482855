"""The sender thread outlives a bug in a push: it is restarted and goes on."""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry

from agent.write.sender import Backoff, EndpointSender, WriteMetrics


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
