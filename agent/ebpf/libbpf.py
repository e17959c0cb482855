"""ctypes bindings to the system libbpf (libbpf.so.1), only for the calls we make.

Grouped under the header each function comes from. Every call goes through
:func:`_check`, which turns libbpf's error conventions (a negative errno, or
NULL with ``errno`` set) into a :class:`~agent.errors.BpfError` naming the
function. The library is loaded on first use, not at import.
"""

from __future__ import annotations

import ctypes
import errno as errno_codes
import logging
from collections.abc import Callable
from typing import Any

from agent.errors import BpfError

__all__ = [
    "BpfLink",
    "BpfMap",
    "BpfObject",
    "BpfProgram",
    "RingBuffer",
    "RingBufferCallback",
    "library",
]

log = logging.getLogger(__name__)


class BpfObject(ctypes.c_void_p):
    """``struct bpf_object *``"""


class BpfMap(ctypes.c_void_p):
    """``struct bpf_map *``"""


class BpfProgram(ctypes.c_void_p):
    """``struct bpf_program *``"""


class BpfLink(ctypes.c_void_p):
    """``struct bpf_link *``"""


class RingBuffer(ctypes.c_void_p):
    """``struct ring_buffer *``"""


# int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size)
RingBufferCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t
)
# int (*libbpf_print_fn_t)(enum libbpf_print_level level, const char *fmt, va_list ap)
_PrintCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)

_c_int, _c_size_t = ctypes.c_int, ctypes.c_size_t
_c_char_p, _c_void_p = ctypes.c_char_p, ctypes.c_void_p
_c_uint32_p = ctypes.POINTER(ctypes.c_uint32)

# name: (restype, argtypes)
_SIGNATURES: dict[str, tuple[Any, list[Any]]] = {
    # libbpf.h
    "libbpf_set_print": (_c_void_p, [_PrintCallback]),
    "bpf_object__open_file": (BpfObject, [_c_char_p, _c_void_p]),
    "bpf_object__load": (_c_int, [BpfObject]),
    "bpf_object__close": (None, [BpfObject]),
    "bpf_object__find_map_by_name": (BpfMap, [BpfObject, _c_char_p]),
    "bpf_object__find_program_by_name": (BpfProgram, [BpfObject, _c_char_p]),
    "bpf_map__fd": (_c_int, [BpfMap]),
    "bpf_map__set_max_entries": (_c_int, [BpfMap, ctypes.c_uint32]),
    "bpf_map__max_entries": (ctypes.c_uint32, [BpfMap]),
    "bpf_map__set_map_flags": (_c_int, [BpfMap, ctypes.c_uint32]),
    "bpf_map__map_flags": (ctypes.c_uint32, [BpfMap]),
    "bpf_map__set_initial_value": (_c_int, [BpfMap, _c_void_p, _c_size_t]),
    "bpf_program__fd": (_c_int, [BpfProgram]),
    "bpf_program__set_autoload": (_c_int, [BpfProgram, ctypes.c_bool]),
    "bpf_program__attach": (BpfLink, [BpfProgram]),
    "bpf_program__attach_perf_event": (BpfLink, [BpfProgram, _c_int]),
    "bpf_link__destroy": (_c_int, [BpfLink]),
    "ring_buffer__new": (RingBuffer, [_c_int, RingBufferCallback, _c_void_p, _c_void_p]),
    "ring_buffer__add": (_c_int, [RingBuffer, _c_int, RingBufferCallback, _c_void_p]),
    "ring_buffer__poll": (_c_int, [RingBuffer, _c_int]),
    "ring_buffer__epoll_fd": (_c_int, [RingBuffer]),
    "ring_buffer__free": (None, [RingBuffer]),
    # bpf.h
    "bpf_map_update_elem": (_c_int, [_c_int, _c_void_p, _c_void_p, ctypes.c_uint64]),
    "bpf_map_lookup_elem": (_c_int, [_c_int, _c_void_p, _c_void_p]),
    "bpf_map_delete_elem": (_c_int, [_c_int, _c_void_p]),
    "bpf_map_get_next_key": (_c_int, [_c_int, _c_void_p, _c_void_p]),
    "bpf_map_lookup_and_delete_batch": (
        _c_int,
        [_c_int, _c_void_p, _c_void_p, _c_void_p, _c_void_p, _c_uint32_p, _c_void_p],
    ),
}

# Failures that are part of normal control flow, not errors.
_EXPECTED = {
    "bpf_map_lookup_elem": {errno_codes.ENOENT},
    "bpf_map_delete_elem": {errno_codes.ENOENT},
    "bpf_map_get_next_key": {errno_codes.ENOENT},
    "bpf_map_lookup_and_delete_batch": {errno_codes.ENOENT},
    "ring_buffer__poll": {errno_codes.EINTR},
}

LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2


class _Library:
    """The loaded libbpf with checked wrappers, one attribute per function."""

    def __init__(self, cdll: ctypes.CDLL, libc: ctypes.CDLL) -> None:
        self._cdll = cdll
        self._libc = libc
        for name, (restype, argtypes) in _SIGNATURES.items():
            function = getattr(cdll, name)
            function.restype = restype
            function.argtypes = argtypes
            setattr(self, name, _checked(name, function))
        libc.vsnprintf.argtypes = [_c_char_p, _c_size_t, _c_char_p, _c_void_p]
        libc.vsnprintf.restype = _c_int
        # Kept referenced for the life of the process: libbpf holds the pointer.
        self._print_callback = _PrintCallback(self._log_libbpf)
        cdll.libbpf_set_print(self._print_callback)

    def _log_libbpf(self, level: int, fmt: bytes, args: int) -> int:
        """libbpf's own lines, at INFO for its warnings (``-v``) and DEBUG else.

        Its warnings explain a failure that is raised as a BpfError anyway,
        so by default the user sees that one line, not libbpf's several.
        """
        buffer = ctypes.create_string_buffer(1024)
        self._libc.vsnprintf(buffer, len(buffer), fmt, args)
        text = buffer.value.decode(errors="replace").rstrip()
        log.log(logging.INFO if level == LIBBPF_WARN else logging.DEBUG, "%s", text)
        return 0


def _checked(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    expected = _EXPECTED.get(name, set())

    def call(*args: Any) -> Any:
        ctypes.set_errno(0)
        result = function(*args)
        if isinstance(result, ctypes.c_void_p):
            if not result:
                raise BpfError(name, ctypes.get_errno() or errno_codes.EINVAL)
            return result
        if isinstance(result, int) and result < 0:
            code = -result
            if code in expected:
                return result
            raise BpfError(name, code)
        return result

    call.__name__ = name
    return call


_library: _Library | None = None


def library() -> Any:
    """Load libbpf.so.1 once and return its checked functions."""
    global _library
    if _library is None:
        try:
            cdll = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError as exc:
            raise BpfError("dlopen", errno_codes.ENOENT, "libbpf.so.1: install libbpf1") from exc
        _library = _Library(cdll, ctypes.CDLL(None, use_errno=True))
    return _library
