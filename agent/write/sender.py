"""One endpoint's bounded queue and the thread that pushes from it, with retries.

Each endpoint of ``pyroscope.write`` gets its own sender, so a slow or dead
endpoint only ever fills, and drops from, its own queue. With a spool, what
would be dropped for want of the endpoint (a full queue, still queued at stop)
goes to disk instead, and a push that fails for the endpoint is not retried
from memory: the thread moves it, and everything queued behind it, to disk at
once, where a crash of the agent cannot take it. The spool is replayed, oldest
first and one probe at a time with backoff, when the queue is empty.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent.errors import PushError
from agent.supervise import SupervisedThread
from agent.write.spool import Spool, SpooledItem

__all__ = ["Backoff", "EndpointSender", "PushError", "WriteMetrics"]

log = logging.getLogger(__name__)


class WriteMetrics:
    """The metrics of ``pyroscope.write``, with Alloy's names, labelled by endpoint URL;
    drops also by ``reason``, one of DROP_REASONS."""

    DROP_REASONS = (
        "queue_full",  # the oldest queued profile, to make room for a new one
        "invalid_labels",  # labels Pyroscope would refuse: never sent
        "too_large",  # refused for its size (HTTP 413, or Pyroscope's max_profile_size)
        "rejected",  # any other answer that is not worth retrying (400, 401, ...)
        "retries_exhausted",  # retryable failures (no answer, 5xx) past max_backoff_retries
        "stopped",  # still queued, or waiting to retry, when the endpoint was closed
        "spool_full",  # the oldest spooled profile, to keep the spool within its cap
        "torn",  # a spool file a crash left incomplete: never sent
        "spool_error",  # the disk refused to spool it
    )

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, documentation: str, by_reason: bool = False) -> Counter:
            labels = ["endpoint", "reason"] if by_reason else ["endpoint"]
            return Counter(name, documentation, labels, registry=registry)

        self.sent_bytes = counter(
            "pyroscope_write_sent_bytes_total", "Compressed pprof bytes sent to Pyroscope."
        )
        self.sent_profiles = counter(
            "pyroscope_write_sent_profiles_total", "Profiles sent to Pyroscope."
        )
        self.dropped_bytes = counter(
            "pyroscope_write_dropped_bytes_total",
            "Compressed pprof bytes dropped, by reason.",
            by_reason=True,
        )
        self.dropped_profiles = counter(
            "pyroscope_write_dropped_profiles_total",
            "Profiles dropped, by reason: queue_full, invalid_labels, too_large, rejected, "
            "retries_exhausted, stopped.",
            by_reason=True,
        )
        self.retries = counter(
            "pyroscope_write_retries_total", "Push attempts repeated after a retryable failure."
        )
        self.spooled = counter(
            "emberscope_write_spooled_profiles_total",
            "Profiles written to the spool for want of the endpoint.",
        )
        self.replayed = counter(
            "emberscope_write_replayed_profiles_total",
            "Spooled profiles delivered (also counted in pyroscope_write_sent_profiles_total).",
        )
        self.spool_bytes = Gauge(
            "emberscope_write_spool_bytes",
            "Bytes of the files in the endpoint's spool.",
            ["endpoint"],
            registry=registry,
        )
        self.spool_profiles = Gauge(
            "emberscope_write_spool_profiles",
            "Profiles waiting in the endpoint's spool.",
            ["endpoint"],
            registry=registry,
        )
        self.latency = Histogram(
            "pyroscope_write_latency",
            "Seconds to push one profile to one endpoint, retries included.",
            ["endpoint", "type"],
            registry=registry,
        )

    def count_dropped(self, endpoint: str, size: int, reason: str) -> None:
        self.dropped_profiles.labels(endpoint, reason).inc()
        self.dropped_bytes.labels(endpoint, reason).inc(size)


@dataclass(frozen=True, slots=True)
class Backoff:
    """dskit's backoff: the first wait is drawn from ``[minimum, 2·minimum)``, then both
    bounds double, capped at ``maximum``. ``attempts`` counts the first try too; 0 means
    no limit, so ``attempts=10`` gives at most 9 waits (``backoff/backoff.go``)."""

    minimum: float
    maximum: float
    attempts: int

    def delays(self) -> Iterator[float]:
        low, high = self.minimum, min(2 * self.minimum, self.maximum)
        waits = 0
        while self.attempts == 0 or waits < self.attempts - 1:
            waits += 1
            yield random.uniform(low, high)
            low, high = min(2 * low, self.maximum), min(2 * high, self.maximum)


@dataclass(frozen=True, slots=True)
class _Queued:
    body: bytes  # the serialized PushRequest
    size: int  # compressed pprof bytes, as the metrics count them
    made_ns: int  # when it was handed over: its place in the spool


_SPOOLED_REASONS = ("queue_full", "retries_exhausted", "stopped")  # the endpoint's fault


class EndpointSender:
    """Queues push bodies for one endpoint and sends them, oldest first, on its own thread.

    A push that fails without a retry is dropped with the reason ``drop_reason``
    gives for its error (``rejected`` when none is given).

    >>> sender = EndpointSender("http://pyroscope:4040", push, backoff, metrics, queue_size=256)
    >>> sender.start()
    >>> sender.enqueue(body, size)    # never blocks; drops the oldest when full
    >>> sender.close()                 # or stop() several, then close() each
    """

    def __init__(
        self,
        endpoint: str,
        push: Callable[[bytes], None],
        backoff: Backoff,
        metrics: WriteMetrics,
        *,
        queue_size: int,
        drop_reason: Callable[[PushError], str] = lambda _: "rejected",
        spool: Spool | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._spool = spool
        # Replay waits while the endpoint fails: until a push succeeds, or a backoff.
        self._replay_backoff = Backoff(backoff.minimum, backoff.maximum, 0)
        self._replay_delays = self._replay_backoff.delays()
        self._replay_at = 0.0
        self._push = push
        self._drop_reason = drop_reason
        self._backoff = backoff
        self._metrics = metrics
        self._queue: collections.deque[_Queued] = collections.deque()
        self._queue_size = queue_size
        self._ready = threading.Condition()
        self._closing = threading.Event()
        self._thread = SupervisedThread(
            f"push {endpoint}", self._run, on_crash=self._crashed, stop=self._closing
        )
        self._in_flight = False  # the thread holds an item it has not delivered yet
        self.failure = ""  # the last error while pushes keep failing, else ""
        self.failure_since = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end after the push in flight, without waiting for it."""
        self._closing.set()
        with self._ready:
            self._ready.notify_all()

    def wait_idle(self, deadline: float) -> bool:
        """Wait until nothing is queued or being pushed, or ``deadline`` (monotonic)
        passes; return whether it is idle. With a spool, while the endpoint fails,
        there is nothing to wait for: what is left goes to disk at close."""
        if self._spool is not None and self.failure:
            return False
        with self._ready:
            return self._ready.wait_for(
                lambda: not self._queue and not self._in_flight,
                max(0.0, deadline - time.monotonic()),
            )

    def close(self, timeout: float = 5.0) -> None:
        """Stop, wait up to ``timeout`` for the thread; what is still queued is dropped
        and counted."""
        self.stop()
        self._thread.join(timeout)
        with self._ready:
            left, self._queue = list(self._queue), collections.deque()
        for item in left:
            self._give_up_on(item, "stopped")

    def enqueue(self, body: bytes, size: int) -> None:
        """Never blocks on the endpoint, nor on the disk: the sender's thread spools."""
        oldest = None
        with self._ready:
            if len(self._queue) >= self._queue_size:
                oldest = self._queue.popleft()
                log.debug("queue for %s is full: its oldest profile leaves it", self.endpoint)
            self._queue.append(_Queued(body, size, time.time_ns()))
            self._ready.notify_all()
        if oldest is not None:
            self._give_up_on(oldest, "queue_full")

    def _give_up_on(self, item: _Queued, reason: str) -> None:
        """Spool ``item`` when there is a spool and the endpoint is to blame, else drop it."""
        if self._spool is None or reason not in _SPOOLED_REASONS:
            self._metrics.count_dropped(self.endpoint, item.size, reason)
            return
        try:
            if self._spool.put(item.body, item.size, item.made_ns):
                self._metrics.spooled.labels(self.endpoint).inc()
        except OSError as exc:
            log.warning("cannot spool a profile for %s: %s", self.endpoint, exc)
            self._metrics.count_dropped(self.endpoint, item.size, "spool_error")
        self._show_spool()

    def _show_spool(self) -> None:
        if self._spool is not None:
            self._metrics.spool_bytes.labels(self.endpoint).set(self._spool.bytes)
            self._metrics.spool_profiles.labels(self.endpoint).set(self._spool.count)

    def _run(self, _stop: threading.Event) -> None:
        self._show_spool()
        while not self._closing.is_set():
            item = self._next()
            if isinstance(item, SpooledItem):
                self._replay(item)
            elif item is not None and self._spool is not None and self.failure:
                self._give_up_on(item, "retries_exhausted")  # the endpoint fails: to disk
            elif item is not None:
                self._deliver(item)

    def _crashed(self, exc: BaseException) -> None:
        """A bug while sending: shown as the endpoint's failure until the restart."""
        self.failure = f"sender failed: {exc}"
        self.failure_since = self.failure_since or time.time()

    def _next(self) -> _Queued | SpooledItem | None:
        """The next queued item; when none, the oldest spooled one once replay is due
        (read outside the lock, so ``enqueue`` never waits on the disk). None at close,
        or when the spool had nothing whole after all."""
        with self._ready:
            self._in_flight = False
            self._ready.notify_all()
            while True:
                if self._closing.is_set():
                    return None
                if self._queue:
                    self._in_flight = True
                    return self._queue.popleft()
                spooled = self._spool is not None and self._spool.count > 0
                wait = self._replay_at - time.monotonic()
                if spooled and wait <= 0:
                    break
                self._ready.wait(wait if spooled else None)
        item = self._spool.oldest()
        self._show_spool()
        return item

    def _replay(self, item: SpooledItem) -> None:
        """One attempt: delivered or refused, it leaves the spool; a retryable failure
        leaves it there and pauses replay."""
        try:
            self._push(item.body)
        except PushError as exc:
            self._note_failure(exc)
            if exc.retryable:
                self._replay_at = time.monotonic() + next(self._replay_delays)
                return
            self._metrics.count_dropped(self.endpoint, item.size, self._drop_reason(exc))
        else:
            self._count_sent(item.size)
            self._metrics.replayed.labels(self.endpoint).inc()
        self._spool.remove(item)
        self._show_spool()

    def _deliver(self, item: _Queued) -> None:
        """Push one body, retrying retryable failures with backoff (with a spool, the
        first one sends it to disk); count the outcome."""
        started = time.monotonic()
        delays = self._backoff.delays()
        while True:
            try:
                self._push(item.body)
            except PushError as exc:
                self._note_failure(exc)
                reason = self._give_up(exc, delays)
                if reason:
                    log.debug("gave up a profile for %s (%s): %s", self.endpoint, reason, exc)
                    self._replay_at = time.monotonic() + next(self._replay_delays)
                    self._give_up_on(item, reason)
                    return
                self._metrics.retries.labels(self.endpoint).inc()
                continue
            break
        self._count_sent(item.size)
        elapsed = time.monotonic() - started
        self._metrics.latency.labels(self.endpoint, "push_endpoint").observe(elapsed)

    def _count_sent(self, size: int) -> None:
        self._metrics.sent_profiles.labels(self.endpoint).inc()
        self._metrics.sent_bytes.labels(self.endpoint).inc(size)
        self._replay_at = 0.0
        self._replay_delays = self._replay_backoff.delays()
        if self.failure:
            log.info("pushes to %s succeed again", self.endpoint)
            self.failure = ""

    def _give_up(self, exc: PushError, delays: Iterator[float]) -> str:
        """The reason to drop (or spool) after ``exc``, or "" once the backoff has been
        waited."""
        if not exc.retryable:
            return self._drop_reason(exc)
        if self._spool is not None:
            return "retries_exhausted"  # replay retries it from disk
        delay = next(delays, None)
        if delay is None:
            return "retries_exhausted"
        if self._closing.wait(delay):
            return "stopped"
        return ""

    def _note_failure(self, exc: PushError) -> None:
        """Warn once when an endpoint starts failing; repeats only update the health text."""
        if not self.failure:
            self.failure_since = time.time()
            log.warning("push to %s failed: %s", self.endpoint, exc)
        self.failure = f"push to {self.endpoint} failed: {exc}"
