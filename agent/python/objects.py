"""Reading CPython objects out of another process's memory (``/proc/<pid>/mem``)."""

from __future__ import annotations

import os
import struct

from agent.errors import ProcessError, PythonError

__all__ = ["ProcessMemory", "decode_str"]

# PyASCIIObject: length at +16, state at +32 (interned:2 kind:3 compact:1 ascii:1).
_STR_HEADER = 40
_STATE_COMPACT = 1 << 5
_STATE_ASCII = 1 << 6
# PyBytesObject: ob_size at +16, ob_sval at +32.
_BYTES_SIZE = 16
_BYTES_DATA = 32
# Names and line tables are small; anything larger is not what we think it is.
_MAX_OBJECT_BYTES = 1 << 20
_ENCODINGS = {1: "latin-1", 2: "utf-16-le", 4: "utf-32-le"}


def decode_str(data: bytes, kind: int) -> str:
    """Text of a str's raw data: ``kind`` bytes per character."""
    try:
        return data.decode(_ENCODINGS[kind], errors="replace")
    except KeyError:
        raise PythonError(f"a str of kind {kind} (expected 1, 2 or 4)") from None


class ProcessMemory:
    """Reads of one process's memory, through one open ``/proc/<pid>/mem``."""

    def __init__(self, pid: int, proc_root: str = "/proc") -> None:
        self.pid = pid
        path = f"{proc_root}/{pid}/mem"
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError) as exc:
            raise ProcessError(pid, "process is gone") from exc
        except OSError as exc:
            raise ProcessError(pid, f"cannot open {path}: {exc.strerror}") from exc

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> ProcessMemory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def read(self, address: int, size: int) -> bytes:
        try:
            data = os.pread(self._fd, size, address)
        except OSError as exc:
            reason = f"cannot read {size} bytes at {address:#x}: {exc.strerror}"
            raise ProcessError(self.pid, reason) from exc
        except OverflowError as exc:  # an address past 2**63: garbage
            raise ProcessError(self.pid, f"cannot read at {address:#x}") from exc
        if len(data) != size:  # the address space is gone: the process exited
            raise ProcessError(self.pid, "process is gone")
        return data

    def read_pointer(self, address: int) -> int:
        return int.from_bytes(self.read(address, 8), "little")

    def read_str(self, address: int, ascii_data: int, compact_data: int) -> str:
        """A compact str object (code object names always are)."""
        header = self.read(address, _STR_HEADER)
        length, state = struct.unpack_from("<Q8xI", header, 16)  # length, hash, state
        kind = (state >> 2) & 7
        if not state & _STATE_COMPACT:
            raise PythonError(f"the str at {address:#x} is not compact")
        size = length * kind
        if size > _MAX_OBJECT_BYTES:
            raise PythonError(f"the str at {address:#x} claims {size} bytes")
        data_offset = ascii_data if state & _STATE_ASCII else compact_data
        return decode_str(self.read(address + data_offset, size), kind)

    def read_bytes_object(self, address: int) -> bytes:
        size = int.from_bytes(self.read(address + _BYTES_SIZE, 8), "little", signed=True)
        if not 0 <= size <= _MAX_OBJECT_BYTES:
            raise PythonError(f"the bytes object at {address:#x} claims {size} bytes")
        return self.read(address + _BYTES_DATA, size)
