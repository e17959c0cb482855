"""The sampling core, assembled in one place for ``emberscope profile`` and
the agent: the BPF session and what turns its samples into frames (the
symbolizer, the Python unwinder, the native unwind tables), with the
profiler that decides which processes go where.

    with SamplingCore(CoreOptions(sample_rate=97), classify) as core:
        core.profiler.poll(200)
        core.profiler.collect()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.ebpf import Session, SessionOptions
from agent.memory import release_free_memory
from agent.profiler import Classifier, Profiler
from agent.python import PythonProcesses
from agent.symbols import Symbolizer
from agent.unwind import DEFAULT_CACHE_DIRECTORY, NativeUnwinder, open_table_cache

__all__ = ["CoreOptions", "SamplingCore"]


@dataclass(frozen=True, slots=True)
class CoreOptions:
    """What the core is built from; pyroscope.ebpf's arguments of the same names."""

    sample_rate: int = 97
    pid_map_size: int = 2048
    collect_user: bool = True
    collect_kernel: bool = True
    discover_new: bool = True
    """Report processes the kernel was not told about (else only given pids are sampled)."""
    python_enabled: bool = True
    symbols_map_size: int = 16384
    pid_cache_size: int = 32
    build_id_cache_size: int = 64
    same_file_cache_size: int = 8
    demangle: str = "none"
    unwind_tables: bool = True
    unwind_table_size: int = 1 << 20
    unwind_cache_directory: str = DEFAULT_CACHE_DIRECTORY


class SamplingCore:
    """Owns the session, the symbolizer, the unwinders and the profiler; opened
    and closed together, in that order and the reverse."""

    def __init__(self, options: CoreOptions, classify: Classifier) -> None:
        self.options = options
        self.session = Session(
            SessionOptions(
                sample_rate=options.sample_rate,
                pid_map_size=options.pid_map_size,
                collect_user=options.collect_user,
                collect_kernel=options.collect_kernel,
                discover_new=options.discover_new,
                python_enabled=options.python_enabled,
                symbols_map_size=options.symbols_map_size,
                native_unwinding=options.unwind_tables,
                unwind_table_rows=options.unwind_table_size,
            )
        )
        self.symbolizer = Symbolizer(
            pid_cache_size=options.pid_cache_size,
            build_id_cache_size=options.build_id_cache_size,
            same_file_cache_size=options.same_file_cache_size,
            demangle=options.demangle,
        )
        self.python = (
            PythonProcesses(self.session, options.symbols_map_size)
            if options.python_enabled
            else None
        )
        self.unwinder: NativeUnwinder | None = None
        self.profiler = Profiler(self.session, self.symbolizer, classify, self.python)

    def __enter__(self) -> SamplingCore:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Load and attach the BPF program; the unwind tables live in its maps."""
        self.session.open()
        release_free_memory()  # libbpf's parse of the kernel's BTF is freed by now
        if self.options.unwind_tables:
            cache = open_table_cache(self.options.unwind_cache_directory)
            self.unwinder = NativeUnwinder(self.session, cache)
            self.profiler.set_unwinder(self.unwinder)
            self.symbolizer.set_function_starts(self.unwinder.function_start)

    def close(self) -> None:
        self.symbolizer.close()
        self.session.close()

    def debug_info(self) -> dict[str, Any]:
        """The Python processes and the unwind tables held."""
        return {
            "python": self.python.debug_info() if self.python is not None else None,
            "unwind_tables": self.unwinder.debug_info() if self.unwinder is not None else None,
        }
