"""The Python processes being profiled: found, handed to the kernel, named.

A process is checked when it becomes profiled and again after exec. One whose
interpreter has not initialised its thread-state key yet is retried on each
poll for a while; one that cannot be unwound (an unknown version, musl) is
profiled natively and the reason is kept for debug info.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from agent.ebpf import PythonStack, Session
from agent.errors import ProcessError, PythonError
from agent.python.interpreter import Interpreter, InterpreterFinder, InterpreterNotReady
from agent.python.kernel import kernel_config
from agent.python.merge import merge_stacks
from agent.python.symbols import PythonSymbolizer
from agent.symbols import Frame

__all__ = ["PythonProcesses"]

log = logging.getLogger(__name__)

# How long a process may take to initialise its interpreter before we give up.
_READY_WITHIN_S = 10.0
# How long a process that shows no interpreter is looked at again: right after
# exec, the dynamic loader has not mapped libpython yet.
_LOADED_WITHIN_S = 2.0
_RETRY_EVERY_S = 0.2


class PythonProcesses:
    """Which profiled processes run CPython, and the naming of their frames."""

    def __init__(self, session: Session, symbols_cache_size: int, proc_root: str = "/proc"):
        self._session = session
        self._finder = InterpreterFinder(proc_root)
        self.symbolizer = PythonSymbolizer(
            session.read_python_symbol, symbols_cache_size, proc_root
        )
        self._interpreters: dict[int, Interpreter] = {}
        self._waiting: dict[int, float] = {}  # pid -> until when to try again
        self._refused: dict[int, str] = {}  # pid -> why its Python frames are not walked
        self._retried_at = float("-inf")

    def add(self, pid: int) -> None:
        """Walk the Python frames of ``pid`` if it runs a CPython we know."""
        if pid in self._interpreters:
            return
        try:
            interpreter = self._finder.find(pid)
        except InterpreterNotReady:
            self._waiting.setdefault(pid, time.monotonic() + _READY_WITHIN_S)
            return
        except PythonError as exc:
            self._refuse(pid, str(exc))
            return
        except ProcessError as exc:
            log.debug("pid %d: not checked for Python: %s", pid, exc.reason)
            self._waiting.pop(pid, None)
            return
        if interpreter is None:
            self._waiting.setdefault(pid, time.monotonic() + _LOADED_WITHIN_S)
            return
        self._waiting.pop(pid, None)
        self._session.set_python(pid, kernel_config(interpreter))
        self.symbolizer.add_process(pid, interpreter.offsets)
        self._interpreters[pid] = interpreter
        log.debug("pid %d: CPython %s at %s", pid, interpreter.version, interpreter.path)

    def retry(self) -> None:
        """Try again the processes whose interpreter was still starting, every
        _RETRY_EVERY_S at most: pid events wake the caller far more often."""
        now = time.monotonic()
        if now - self._retried_at < _RETRY_EVERY_S:
            return
        self._retried_at = now
        for pid, until in list(self._waiting.items()):
            if now < until:
                self.add(pid)
            else:
                del self._waiting[pid]

    def keep_line_tables(self) -> None:
        """Keep the line tables the kernel sent since: the processes may be
        gone by the time their frames are named."""
        self.symbolizer.keep(self._session.take_line_tables())

    def forget(self, pid: int) -> None:
        """The process exited or exec'd: nothing about it holds any more."""
        self._interpreters.pop(pid, None)
        self._waiting.pop(pid, None)
        self._refused.pop(pid, None)
        self.symbolizer.forget(pid)

    def merge(self, pid: int, native: Sequence[Frame], stack: PythonStack) -> list[Frame]:
        """The sample's user stack with its Python frames in place."""
        interpreter = self._interpreters.get(pid)
        path = interpreter.path if interpreter else None
        return merge_stacks(
            native,
            self.symbolizer.resolve(pid, stack),
            lambda frame: frame.mapping is not None and frame.mapping.path == path,
        )

    def counters(self, symbols_in_map: int) -> dict[str, int]:
        """The kernel's Python walk counters, evictions and unnamed frames.

        ``symbols_in_map`` is the number of entries in ``py_symbols`` now.
        """
        counters = self._session.read_python_stats()
        # userspace never deletes from the LRU map: what is not there was evicted
        counters["symbols_evicted"] = max(counters["symbols_new"] - symbols_in_map, 0)
        counters["unnamed_frames"] = self.symbolizer.unnamed_frames
        counters["lines_unknown"] = self.symbolizer.lines_unknown
        return counters

    def debug_info(self) -> dict[str, object]:
        return {
            "processes": {
                str(pid): {"version": ".".join(map(str, i.version)), "path": i.path}
                for pid, i in self._interpreters.items()
            },
            "not_unwound": {str(pid): reason for pid, reason in self._refused.items()},
            "code_objects": self.symbolizer.stats(),
        }

    def _refuse(self, pid: int, reason: str) -> None:
        if pid not in self._refused:
            log.info("pid %d: Python frames not walked: %s", pid, reason)
        self._refused[pid] = reason
