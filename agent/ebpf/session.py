"""One loaded profile.bpf.o: load, attach, pid config, drain, teardown.

Reads like libbpf-tools' ``main()``: :meth:`Session.open` is one linear setup
and :meth:`Session.close` undoes it in reverse order.

    with Session(SessionOptions(sample_rate=97)) as session:
        session.set_pid(1234, PidState.PROFILE)
        time.sleep(10)
        for sample in session.drain():
            ...
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import logging
import mmap
import os
import select
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.ebpf import perf, tracefs
from agent.ebpf.layout import (
    MAX_PY_FRAMES,
    PY_FRAME_ENTRY,
    PY_STACK_TRUNCATED,
    Control,
    DropReason,
    NativeMode,
    PidConfig,
    PidEventRecord,
    PidEventType,
    PidState,
    ProfileConfig,
    PyGil,
    PyProc,
    PyStack,
    PyStat,
    PySymbol,
    PySymbolKey,
    SampleKey,
    StackTrace,
    UnwindMapping,
    UnwindMappingKey,
    UnwindRow,
    UnwindStat,
)
from agent.ebpf.libbpf import BpfLink, BpfMap, BpfObject, RingBuffer, RingBufferCallback, library
from agent.errors import BpfError, ProcessError
from agent.symbols.procmaps import read_stat_fields

__all__ = [
    "DEFAULT_OBJECT_PATH",
    "PidEvent",
    "PythonFrameRecord",
    "PythonLineTable",
    "PythonStack",
    "RawSample",
    "Session",
    "SessionOptions",
]

log = logging.getLogger(__name__)

# Built by bpf/Makefile and copied here by the top Makefile; package data.
DEFAULT_OBJECT_PATH = Path(__file__).resolve().with_name("profile.bpf.o")
_MAPS = (
    "control", "pids", "counts_0", "counts_1", "stacks_0", "stacks_1",
    "events", "drops", "sample_total", "buffer_sync", "sync_inner",
    "py_procs", "py_symbols", "py_stacks_0", "py_stacks_1", "py_stats", "py_lines", "programs",
    "unwind_rows", "unwind_mappings", "unwind_stats",
)  # fmt: skip
_PROGRAM_SLOTS = {"walk_python": 0, "walk_native": 1}  # PROG_WALK_* in profile.bpf.c
_PY_STACKS_SIZE = 4096  # unique Python stacks per buffer (2 KiB each)
_PY_FRAME = struct.Struct("<QIi")  # struct py_frame: code, first_line, lasti
_PY_LINES_BYTES = 256 * 1024  # the line tables ring: at most 1 KiB per new code object
# struct py_code_lines up to its table: pid, first_line, code, table_len, copied
_PY_LINES_HEADER = struct.Struct("<IIQII")
_BATCH_SIZE = 256  # entries per bpf_map_lookup_and_delete_batch call
_BPF_ANY, _BPF_EXIST = 0, 2  # bpf_map_update_elem flags
_BPF_F_NO_PREALLOC = 1
# Stack maps the object allocates entry by entry: mostly empty, 1 KiB a value.
# Before Linux 6.1 a perf_event program may use preallocated hash maps only.
_ON_DEMAND_MAPS = ("stacks_0", "stacks_1", "py_stacks_0", "py_stacks_1")


@dataclass(frozen=True, slots=True)
class SessionOptions:
    sample_rate: int = 97
    pid_map_size: int = 2048
    collect_user: bool = True
    collect_kernel: bool = True
    discover_new: bool = False
    """Report processes the kernel has not been told about, and count their
    samples as pending until userspace classifies them."""
    python_enabled: bool = False
    """Load the Python unwinder; without it its maps take no memory."""
    symbols_map_size: int = 16384
    native_unwinding: bool = False
    """Load the table-driven native walker; without it its maps take no memory."""
    unwind_table_rows: int = 1 << 20
    """Rows of unwind tables the kernel holds, 8 bytes each (mmapped, preallocated)."""
    unwind_mappings: int = 65536
    """Address ranges of profiled processes' mappings (allocated as used)."""
    object_path: Path = DEFAULT_OBJECT_PATH


@dataclass(frozen=True, slots=True)
class PythonFrameRecord:
    """A Python frame as the kernel recorded it: a code object of the
    process and the instruction offset into it (see profile.h py_frame)."""

    code: int
    first_line: int
    lasti: int
    entry: bool
    """The last frame of one run of the C eval loop (toward the root)."""


@dataclass(frozen=True, slots=True)
class PythonLineTable:
    """The line table of a code object the kernel saw for the first time
    (profile.h py_code_lines): ``co_lnotab`` or ``co_linetable``'s bytes,
    only the first PY_LINETABLE_LEN of them when ``cut``."""

    pid: int
    code: int
    first_line: int
    table: bytes
    cut: bool


@dataclass(frozen=True, slots=True, eq=False)
class PythonStack:
    """Python frames leaf first, identified by the kernel's 64-bit hash of
    them: hashing a stack per sample is a dict lookup, not a walk of its frames."""

    key: int
    frames: tuple[PythonFrameRecord, ...]
    truncated: bool

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PythonStack) and other.key == self.key


@dataclass(frozen=True, slots=True)
class RawSample:
    """Samples of one (pid, user stack, kernel stack, Python stack); stacks leaf first."""

    pid: int
    user_stack: tuple[int, ...]
    kernel_stack: tuple[int, ...]
    count: int
    python_stack: PythonStack | None = None
    gil: PyGil = PyGil.UNKNOWN
    """Whether the sampled thread held the GIL (Python samples only)."""


@dataclass(frozen=True, slots=True)
class PidEvent:
    """A process the kernel saw first, exec'd or exited.

    A NEW event carries what the process looked like at its first sample
    (parent, command name, cgroup), read in the kernel: the process may be
    gone before userspace can read ``/proc``. EXEC and EXIT events carry the
    pid alone.
    """

    type: PidEventType
    pid: int
    ppid: int = 0
    comm: str = ""
    cgroup_id: int = 0
    cgroup_name: str = ""


class Session:
    """Owns the BPF object, its perf events and links, and the event ring."""

    def __init__(self, options: SessionOptions) -> None:
        self.options = options
        self._lib = library()
        self._object: BpfObject | None = None
        self._links: list[BpfLink] = []
        self._ring: RingBuffer | None = None
        self._ring_callback = RingBufferCallback(self._on_ring_record)
        self._lines_callback = RingBufferCallback(self._on_line_table)
        self._events: list[PidEvent] = []
        self._line_tables: list[PythonLineTable] = []
        self._fds: dict[str, int] = {}
        self._max_entries: dict[str, int] = {}
        self._active_buffer = 0
        self._sync_inner_fd = ctypes.c_int(0)
        self.cpus: list[int] = []
        # per-CPU map values come as one slot per possible CPU
        self._possible_cpus = len(perf.read_online_cpus("/sys/devices/system/cpu/possible"))

    def __enter__(self) -> Session:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Open, size, load and attach the program on every online CPU."""
        lib = self._lib
        path = str(self.options.object_path)
        if not Path(path).is_file():
            raise BpfError(
                "bpf_object__open_file", errno_codes.ENOENT, f"{path}: run 'make install'"
            )
        self._object = lib.bpf_object__open_file(path.encode(), None)
        try:
            self._configure()
            lib.bpf_object__load(self._object)
            for name in _MAPS:
                bpf_map = self._find_map(name)
                self._fds[name] = lib.bpf_map__fd(bpf_map)
                self._max_entries[name] = lib.bpf_map__max_entries(bpf_map)
            self._sync_inner_fd.value = self._fds["sync_inner"]
            self._install_tail_calls()
            tracefs.ensure_tracefs()
            self._attach_tracepoints()
            self._ring = lib.ring_buffer__new(self._fds["events"], self._ring_callback, None, None)
            if self.options.python_enabled:
                lib.ring_buffer__add(self._ring, self._fds["py_lines"], self._lines_callback, None)
            self._attach_perf_events()
        except BaseException:
            self.close()
            raise

    def _configure(self) -> None:
        options = self.options
        lib = self._lib
        python = options.python_enabled
        native = options.native_unwinding
        sizes = {
            "pids": options.pid_map_size,
            # one entry is the least a map can have: the unwinder is not loaded
            "py_procs": options.pid_map_size if python else 1,
            "py_symbols": options.symbols_map_size if python else 1,
            "py_stacks_0": _PY_STACKS_SIZE if python else 1,
            "py_stacks_1": _PY_STACKS_SIZE if python else 1,
            "py_lines": _PY_LINES_BYTES if python else mmap.PAGESIZE,
            "unwind_rows": options.unwind_table_rows if native else 1,
            "unwind_mappings": options.unwind_mappings if native else 1,
        }
        for name, size in sizes.items():
            lib.bpf_map__set_max_entries(self._find_map(name), size)
        if not _allocates_on_demand_in_perf_events():
            for name in _ON_DEMAND_MAPS:
                bpf_map = self._find_map(name)
                flags = lib.bpf_map__map_flags(bpf_map) & ~_BPF_F_NO_PREALLOC
                lib.bpf_map__set_map_flags(bpf_map, flags)
        lib.bpf_program__set_autoload(self._find_program("walk_python"), python)
        lib.bpf_program__set_autoload(self._find_program("walk_native"), native)
        config = ProfileConfig(
            discover_new=options.discover_new,
            collect_user=options.collect_user,
            collect_kernel=options.collect_kernel,
            python_enabled=python,
            native_enabled=native,
        )
        rodata = self._find_map(".rodata")
        self._lib.bpf_map__set_initial_value(rodata, ctypes.byref(config), ctypes.sizeof(config))

    def _find_map(self, name: str) -> BpfMap:
        return self._lib.bpf_object__find_map_by_name(self._object, name.encode())

    def _find_program(self, name: str) -> Any:
        return self._lib.bpf_object__find_program_by_name(self._object, name.encode())

    def _install_tail_calls(self) -> None:
        """Put the walkers that are loaded where the others tail-call them (PROG_WALK_*)."""
        loaded = {
            "walk_python": self.options.python_enabled,
            "walk_native": self.options.native_unwinding,
        }
        for name, slot in _PROGRAM_SLOTS.items():
            if not loaded[name]:
                continue
            index = ctypes.c_uint32(slot)
            fd = ctypes.c_uint32(self._lib.bpf_program__fd(self._find_program(name)))
            self._lib.bpf_map_update_elem(
                self._fds["programs"], ctypes.byref(index), ctypes.byref(fd), 0
            )

    def _attach_tracepoints(self) -> None:
        for name in ("handle_exec", "handle_exit"):
            self._links.append(self._lib.bpf_program__attach(self._find_program(name)))

    def _attach_perf_events(self) -> None:
        program = self._find_program("do_sample")
        for cpu in perf.read_online_cpus():
            fd = perf.open_cpu_clock(cpu, self.options.sample_rate)
            if fd is None:
                log.info("CPU %d is offline, not sampled", cpu)
                continue
            try:
                # The link owns the perf fd from here and closes it on destroy.
                self._links.append(self._lib.bpf_program__attach_perf_event(program, fd))
            except BpfError:
                os.close(fd)
                raise
            self.cpus.append(cpu)

    def close(self) -> None:
        """Detach and free everything, in reverse order of creation."""
        lib = self._lib
        for link in reversed(self._links):
            lib.bpf_link__destroy(link)
        self._links.clear()
        if self._ring is not None:
            lib.ring_buffer__free(self._ring)
            self._ring = None
        if self._object is not None:
            lib.bpf_object__close(self._object)
            self._object = None
        self._fds.clear()

    @property
    def program_id(self) -> int:
        """The kernel's id of the sampling program, as bpftool shows it."""
        fd = self._lib.bpf_program__fd(self._find_program("do_sample"))
        with open(f"/proc/self/fdinfo/{fd}") as stream:
            for line in stream:
                if line.startswith("prog_id:"):
                    return int(line.split()[1])
        raise BpfError("bpf_program__fd", errno_codes.ENOENT, "no prog_id in fdinfo")

    # --- pid config -------------------------------------------------------

    def set_pid(
        self,
        pid: int,
        state: PidState,
        collect_user: bool | None = None,
        collect_kernel: bool | None = None,
        *,
        tracked_only: bool = False,
    ) -> bool:
        """Tell the kernel what to do with samples of ``pid``.

        With ``tracked_only`` the entry is changed only while the kernel still
        tracks the pid: a decision about a process that has exited meanwhile
        must not bring its entry back, since nothing would ever remove it.
        Returns False when that happened. A process given to
        :meth:`set_python` stays marked as Python.
        """
        options = self.options
        current = self._pid_config(pid)
        value = PidConfig(
            state=state,
            collect_user=options.collect_user if collect_user is None else collect_user,
            collect_kernel=options.collect_kernel if collect_kernel is None else collect_kernel,
            python=self._is_python(pid),
            native=current.native if current is not None else NativeMode.WAITING,
        )
        return self._update_pid(pid, value, _BPF_EXIST if tracked_only else _BPF_ANY)

    def _pid_config(self, pid: int) -> PidConfig | None:
        key, config = ctypes.c_uint32(pid), PidConfig()
        found = self._lib.bpf_map_lookup_elem(
            self._fds["pids"], ctypes.byref(key), ctypes.byref(config)
        )
        return config if found == 0 else None

    def set_native(self, pid: int, mode: NativeMode = NativeMode.TABLES) -> bool:
        """Walk ``pid``'s user stacks with its unwind tables from now on (or by
        frame pointers, when it can have none), while the kernel tracks it;
        False when it does not (the process is gone)."""
        if not self.options.native_unwinding:
            raise BpfError("set_native", errno_codes.EINVAL, "the native walker is not loaded")
        config = self._pid_config(pid)
        if config is None:
            return False
        config.native = mode
        return self._update_pid(pid, config, _BPF_EXIST)

    # --- unwind tables ----------------------------------------------------

    def unwind_capacity(self) -> int:
        """The rows of unwind tables the kernel's unwind_rows array holds."""
        return self._max_entries["unwind_rows"]

    def write_unwind_rows(self, start: int, rows: bytes) -> None:
        """Write ``rows`` (8 bytes each) into the kernel's unwind_rows array from row ``start``.

        The array is mapped only for the write: kept mapped, the pages written would count in
        this process's RSS although they are the map's memory, charged to the cgroup once.
        """
        first = start * ctypes.sizeof(UnwindRow)
        offset = first - first % mmap.ALLOCATIONGRANULARITY
        with mmap.mmap(self._fds["unwind_rows"], first + len(rows) - offset, offset=offset) as view:
            view[first - offset :] = rows

    def set_unwind_mapping(
        self, pid: int, start: int, end: int, bias: int, table_start: int, table_rows: int
    ) -> int:
        """Point [start, end) of ``pid`` at a table (rows 0: frame pointers); return the
        number of trie entries it took."""
        value = UnwindMapping(
            start=start, end=end, bias=bias, table_start=table_start, table_rows=table_rows
        )
        prefixes = _prefixes(start, end)
        for address, bits in prefixes:
            key = _mapping_key(pid, address, bits)
            self._lib.bpf_map_update_elem(
                self._fds["unwind_mappings"], ctypes.byref(key), ctypes.byref(value), 0
            )
        return len(prefixes)

    def delete_unwind_mapping(self, pid: int, start: int, end: int) -> None:
        for address, bits in _prefixes(start, end):
            key = _mapping_key(pid, address, bits)
            self._lib.bpf_map_delete_elem(self._fds["unwind_mappings"], ctypes.byref(key))

    def read_unwind_stats(self) -> dict[str, int]:
        """Sum the per-CPU native walk counters (names as in profile.h unwind_stat)."""
        return {stat.name.lower(): self._sum_per_cpu("unwind_stats", stat) for stat in UnwindStat}

    def _update_pid(self, pid: int, value: PidConfig, flags: int) -> bool:
        key = ctypes.c_uint32(pid)
        try:
            self._lib.bpf_map_update_elem(
                self._fds["pids"], ctypes.byref(key), ctypes.byref(value), flags
            )
        except BpfError as exc:
            if exc.errno == errno_codes.ENOENT:
                return False
            raise
        return True

    def forget_pid(self, pid: int) -> None:
        key = ctypes.c_uint32(pid)
        self._lib.bpf_map_delete_elem(self._fds["pids"], ctypes.byref(key))
        self._lib.bpf_map_delete_elem(self._fds["py_procs"], ctypes.byref(key))

    def set_python(self, pid: int, proc: PyProc) -> None:
        """Walk the Python frames of ``pid`` with ``proc``'s offsets from now on.

        The kernel forgets it by itself when the process execs or exits.
        """
        if not self.options.python_enabled:
            raise BpfError("set_python", errno_codes.EINVAL, "the Python unwinder is not loaded")
        key = ctypes.c_uint32(pid)
        # py_procs first, then the pid's flag, only while the kernel tracks
        # it: an exit in between removes both, or leaves the flag update
        # failing, and then the py_procs entry is removed here. A pid not
        # tracked yet is about to be added (set_pid marks it Python then),
        # unless it has exited already: its exit no longer removes anything.
        self._lib.bpf_map_update_elem(
            self._fds["py_procs"], ctypes.byref(key), ctypes.byref(proc), 0
        )
        config = self._pid_config(pid)
        if config is None:
            gone = _has_exited(pid)
        else:
            config.python = True
            gone = not self._update_pid(pid, config, _BPF_EXIST)
        if gone:
            self._lib.bpf_map_delete_elem(self._fds["py_procs"], ctypes.byref(key))

    def _is_python(self, pid: int) -> bool:
        if not self.options.python_enabled:
            return False
        key = ctypes.c_uint32(pid)
        proc = PyProc()
        found = self._lib.bpf_map_lookup_elem(
            self._fds["py_procs"], ctypes.byref(key), ctypes.byref(proc)
        )
        return found == 0

    def read_python_symbol(self, pid: int, first_line: int, code: int) -> PySymbol | None:
        """The names the kernel copied for a code object, if it still has them."""
        key = PySymbolKey(pid=pid, first_line=first_line, code=code)
        symbol = PySymbol()
        found = self._lib.bpf_map_lookup_elem(
            self._fds["py_symbols"], ctypes.byref(key), ctypes.byref(symbol)
        )
        return symbol if found == 0 else None

    # --- events -----------------------------------------------------------

    def wait_for_events(self, timeout_s: float) -> bool:
        """Wait, without reading them, until pid events are ready; False on timeout.

        Lets a thread wait for events without holding the lock under which
        another thread reads them with :meth:`poll_events`.
        """
        ready, _, _ = select.select(
            [self._lib.ring_buffer__epoll_fd(self._ring)], [], [], timeout_s
        )
        return bool(ready)

    def poll_events(self, timeout_ms: int = 0) -> list[PidEvent]:
        """Wait up to ``timeout_ms`` for pid events and return those read.

        Line tables read meanwhile wait for :meth:`take_line_tables`.
        """
        self._lib.ring_buffer__poll(self._ring, timeout_ms)
        events, self._events = self._events, []
        return events

    def take_line_tables(self) -> list[PythonLineTable]:
        """The line tables of new code objects read by the last polls."""
        tables, self._line_tables = self._line_tables, []
        return tables

    def _on_line_table(self, _ctx: int, data: int, size: int) -> int:
        record = ctypes.string_at(data, size)
        if size >= _PY_LINES_HEADER.size:
            pid, first_line, code, table_len, copied = _PY_LINES_HEADER.unpack_from(record)
            table = record[_PY_LINES_HEADER.size : _PY_LINES_HEADER.size + copied]
            self._line_tables.append(
                PythonLineTable(pid, code, first_line, table, len(table) < table_len)
            )
        return 0

    def _on_ring_record(self, _ctx: int, data: int, size: int) -> int:
        if size >= ctypes.sizeof(PidEventRecord):
            record = PidEventRecord.from_address(data)
            self._events.append(
                PidEvent(
                    PidEventType(record.type),
                    record.pid,
                    record.ppid,
                    record.comm.decode(errors="replace"),
                    record.cgroup_id,
                    record.cgroup_name.decode(errors="replace"),
                )
            )
        return 0

    # --- draining ---------------------------------------------------------

    def drain(self) -> list[RawSample]:
        """Switch buffers and return every sample counted in the old one.

        The kernel writes into the other buffer meanwhile, so nothing is lost
        or counted twice.
        """
        draining = self._active_buffer
        self._switch_buffer(1 - draining)
        counts = self._take_all(self._fds[f"counts_{draining}"], SampleKey, ctypes.c_uint64)
        stacks = {
            key: _addresses(trace)
            for key, trace in self._take_all(
                self._fds[f"stacks_{draining}"], ctypes.c_uint64, StackTrace
            )
        }
        stacks[0] = ()
        python_stacks = self._take_python_stacks(draining)
        return [
            RawSample(
                key.pid,
                stacks.get(key.user_stack, ()),
                stacks.get(key.kernel_stack, ()),
                count,
                python_stacks.get(key.python_stack),
                PyGil(key.gil),
            )
            for key, count in counts
        ]

    def _take_python_stacks(self, buffer: int) -> dict[int, PythonStack]:
        if not self.options.python_enabled:
            return {}
        taken = self._take_all(self._fds[f"py_stacks_{buffer}"], ctypes.c_uint64, PyStack)
        return {key: _python_stack(key, stack) for key, stack in taken}

    def _switch_buffer(self, buffer: int) -> None:
        zero = ctypes.c_uint32(0)
        control = Control(active_buffer=buffer)
        self._lib.bpf_map_update_elem(
            self._fds["control"], ctypes.byref(zero), ctypes.byref(control), 0
        )
        # Returns after an RCU grace period: see buffer_sync in profile.bpf.c.
        self._lib.bpf_map_update_elem(
            self._fds["buffer_sync"], ctypes.byref(zero), ctypes.byref(self._sync_inner_fd), 0
        )
        self._active_buffer = buffer

    def _take_all(self, fd: int, key_type: type, value_type: type) -> list[tuple[Any, Any]]:
        """Look up and delete every entry of a hash map, a batch at a time.

        Each batch gets fresh arrays, so the returned structs stay valid views.
        """
        token = ctypes.c_uint64(0)
        taken: list[tuple[Any, Any]] = []
        in_batch = None
        while True:
            keys = (key_type * _BATCH_SIZE)()
            values = (value_type * _BATCH_SIZE)()
            count = ctypes.c_uint32(_BATCH_SIZE)
            result = self._lib.bpf_map_lookup_and_delete_batch(
                fd, in_batch, ctypes.byref(token), keys, values, ctypes.byref(count), None
            )
            taken.extend(zip(keys[: count.value], values[: count.value], strict=True))
            if result < 0:  # ENOENT: nothing is left
                return taken
            in_batch = ctypes.byref(token)

    def read_drops(self) -> dict[str, int]:
        """Sum the per-CPU drop counters by reason (names as in profile.h)."""
        return {reason.name.lower(): self._sum_per_cpu("drops", reason) for reason in DropReason}

    def read_map_fill(self) -> dict[str, tuple[int, int]]:
        """(entries in use, capacity) of the pid map and of the buffers being filled.

        Counted by walking the keys: a scrape-time reading, not for the hot path.
        """
        active = self._active_buffer
        maps = {"pids": "pids", "counts": f"counts_{active}", "stacks": f"stacks_{active}"}
        if self.options.python_enabled:
            maps.update(py_symbols="py_symbols", py_stacks=f"py_stacks_{active}")
        if self.options.native_unwinding:
            maps.update(unwind_mappings="unwind_mappings")
        return {
            label: (self._count_entries(self._fds[name]), self._max_entries[name])
            for label, name in maps.items()
        }

    def read_map_memory(self) -> dict[str, int]:
        """The kernel memory each map uses now, in bytes (its fdinfo's ``memlock``:
        what the maps charge to the agent's memory cgroup)."""
        used = {}
        for name, fd in self._fds.items():
            try:
                with open(f"/proc/self/fdinfo/{fd}") as stream:
                    for line in stream:
                        if line.startswith("memlock:"):
                            used[name] = int(line.split()[1])
            except OSError:
                continue
        return used

    def _count_entries(self, fd: int) -> int:
        keys = (ctypes.c_uint8 * 64)(), (ctypes.c_uint8 * 64)()  # room for any key of ours
        count = 0
        previous = None
        while self._lib.bpf_map_get_next_key(fd, previous, keys[count % 2]) == 0:
            previous = keys[count % 2]
            count += 1
        return count

    def read_python_stats(self) -> dict[str, int]:
        """Sum the per-CPU Python walk counters (names as in profile.h py_stat)."""
        return {stat.name.lower(): self._sum_per_cpu("py_stats", stat) for stat in PyStat}

    def read_sample_total(self) -> int:
        """Samples recorded since the program was loaded, drained or not."""
        return self._sum_per_cpu("sample_total", 0)

    def _sum_per_cpu(self, map_name: str, index: int) -> int:
        values = (ctypes.c_uint64 * self._possible_cpus)()
        key = ctypes.c_uint32(index)
        self._lib.bpf_map_lookup_elem(self._fds[map_name], ctypes.byref(key), values)
        return sum(values)


def _allocates_on_demand_in_perf_events(release: str | None = None) -> bool:
    """Whether the running kernel (6.1+) lets perf_event programs use hash maps
    that allocate entries on demand."""
    numbers = (release or os.uname().release).split("-")[0].split(".")
    try:
        major, minor = int(numbers[0]), int(numbers[1])
    except (IndexError, ValueError):
        return False
    return (major, minor) >= (6, 1)


def _has_exited(pid: int) -> bool:
    """Whether ``pid`` has run its exit already: gone, or a zombie (state Z or X)."""
    try:
        fields = read_stat_fields(pid)
    except ProcessError:
        return True
    return fields[:1] in ([b"Z"], [b"X"])


def _prefixes(start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) as the fewest aligned blocks: (address, prefix bits) pairs."""
    blocks = []
    while start < end:
        size = start & -start if start else 1 << 64
        while size > end - start:
            size >>= 1
        blocks.append((start, 64 - size.bit_length() + 1))
        start += size
    return blocks


def _mapping_key(pid: int, address: int, bits: int) -> UnwindMappingKey:
    big_endian = int.from_bytes(address.to_bytes(8, "big"), "little")
    return UnwindMappingKey(prefixlen=32 + bits, pid=pid, address=big_endian)


def _addresses(trace: StackTrace) -> tuple[int, ...]:
    """The captured frames of a zero-filled stack."""
    ips = tuple(trace.ips)
    return ips[: ips.index(0)] if 0 in ips else ips


def _python_stack(key: int, stack: PyStack) -> PythonStack:
    # Unpacked from the raw bytes: struct per frame costs less than ctypes fields.
    raw = memoryview(stack).cast("B")
    depth = min(stack.depth, MAX_PY_FRAMES)
    frames_at, flags_at = PyStack.frames.offset, PyStack.frame_flags.offset
    records = _PY_FRAME.iter_unpack(raw[frames_at : frames_at + depth * _PY_FRAME.size])
    flags = raw[flags_at : flags_at + depth]
    frames = tuple(
        PythonFrameRecord(code, first_line, lasti, bool(flag & PY_FRAME_ENTRY))
        for (code, first_line, lasti), flag in zip(records, flags, strict=True)
    )
    return PythonStack(key, frames, bool(stack.flags & PY_STACK_TRUNCATED))
