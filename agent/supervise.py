"""Background threads that do not die.

A thread's body runs until its stop event is set. If it raises, the error is
logged, counted and the body started again after a backoff that doubles up
to a ceiling; meanwhile :attr:`SupervisedThread.running` is False, so health
can say the work is not being done rather than pretend it is.

    thread = SupervisedThread("ebpf-events", poll_loop, on_crash=count_restart)
    thread.start()
    ...
    thread.stop()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["SupervisedThread"]

log = logging.getLogger(__name__)


class SupervisedThread:
    """Runs ``body(stop)`` on a daemon thread and restarts it when it raises."""

    def __init__(
        self,
        name: str,
        body: Callable[[threading.Event], None],
        *,
        on_crash: Callable[[BaseException], None] | None = None,
        stop: threading.Event | None = None,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        """``stop``, when given, is shared with other threads; else the thread has its own."""
        self.name = name
        self._body = body
        self._on_crash = on_crash
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._stop = stop or threading.Event()
        self._thread = threading.Thread(target=self._supervise, name=name, daemon=True)
        self._running = False
        self.crashes = 0
        self.last_error = ""

    @property
    def running(self) -> bool:
        """The body runs now: not ended, not waiting to be restarted."""
        return self._running

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the body to stop and wait for the thread (up to ``timeout`` seconds)."""
        self._stop.set()
        self.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _supervise(self) -> None:
        backoff = self._backoff_s
        while not self._stop.is_set():
            self._running = True
            started = time.monotonic()
            try:
                self._body(self._stop)
            except Exception as exc:  # the thread outlives any bug in its body
                self._running = False
                if time.monotonic() - started > self._max_backoff_s:
                    backoff = self._backoff_s  # it had recovered: start again from short waits
                self.crashes += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("thread %s failed; restarting in %.0f s", self.name, backoff)
                if self._on_crash is not None:
                    self._on_crash(exc)
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, self._max_backoff_s)
            else:
                break
        self._running = False
