"""The records the symbolizer hands to the pprof builder."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Frame", "MappedFile"]


@dataclass(frozen=True, slots=True)
class MappedFile:
    """One file mapped into a process, as a pprof ``Mapping`` describes it.

    ``start``/``limit`` are runtime addresses of the mapping and ``offset`` the
    file offset mapped at ``start``, so a server can re-symbolize an address.
    """

    start: int
    limit: int
    offset: int
    path: str
    build_id: str = ""


@dataclass(frozen=True, slots=True)
class Frame:
    """One resolved stack frame.

    ``name`` is the function name, or ``module+0xoffset`` when no symbol
    covers the address; a frame is never dropped for lack of a name.
    ``address`` is the runtime address sampled (0 when there is none) and
    ``mapping`` the file it falls in (``None`` for kernel frames and others
    without a file).
    """

    name: str
    address: int = 0
    mapping: MappedFile | None = None
    filename: str = ""
    line: int = 0
