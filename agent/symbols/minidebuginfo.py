"""MiniDebugInfo: the xz-compressed ELF in ``.gnu_debugdata`` naming local functions.

Fedora and RHEL strip binaries to ``.dynsym`` and embed this small file
(gdb manual, "MiniDebugInfo"; built by find-debuginfo's ``add_minidebug``).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import lzma
import os
from typing import Any, BinaryIO

from elftools.common.exceptions import ELFError
from elftools.construct.core import ConstructError
from elftools.elf.elffile import ELFFile

from agent.errors import SymbolError
from agent.symbols.elf import ElfInfo, SymbolTable, read_elf

__all__ = ["MAX_DECOMPRESSED", "parse_minidebuginfo", "read_minidebuginfo"]

log = logging.getLogger(__name__)

SECTION = ".gnu_debugdata"
# Real tables are a few MiB at most (libxul's is about 4); more is a decompression bomb.
MAX_DECOMPRESSED = 64 << 20

_PARSE_ERRORS = (ELFError, ConstructError, OverflowError)


def read_minidebuginfo(info: ElfInfo, stream: BinaryIO, path: str = "") -> ElfInfo:
    """``info`` with the symbols of the ELF file ``stream``'s ``.gnu_debugdata`` merged in.

    ``info`` is returned as it is when there is no such section. A section
    that lies outside the file, is not valid xz, inflates past
    MAX_DECOMPRESSED or does not hold an ELF file raises SymbolError. The
    result's ``debug_file`` names the section, so callers know it was used.
    """
    path = path or info.path
    data = _section_bytes(stream, path)
    if data is None:
        return info
    symbols = parse_minidebuginfo(data, path)
    log.debug("symbols of %s completed from %s (%d symbols)", path, SECTION, len(symbols))
    # Both tables come from one link, so at a shared address .dynsym's exported name wins.
    return dataclasses.replace(
        info, symbols=info.symbols.merged(symbols), debug_file=f"{path}[{SECTION}]"
    )


def parse_minidebuginfo(data: bytes, path: str = "", limit: int = MAX_DECOMPRESSED) -> SymbolTable:
    """The symbol table of the xz-compressed ELF file ``data``; SymbolError if it is bad.

    Decompression stops after ``limit`` bytes, so a bomb costs at most that
    much memory before it is refused.
    """
    where = f"{path}[{SECTION}]"
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        elf_bytes = decompressor.decompress(data, max_length=limit + 1)
    except lzma.LZMAError as exc:
        raise SymbolError(where, f"not valid xz data: {exc}") from exc
    if len(elf_bytes) > limit:
        raise SymbolError(where, f"decompresses to more than {limit} bytes")
    if not decompressor.eof:
        raise SymbolError(where, "xz data is truncated")
    return read_elf(io.BytesIO(elf_bytes), where).symbols


def _section_bytes(stream: BinaryIO, path: str) -> bytes | None:
    """The raw bytes of ``.gnu_debugdata``, or None when the file has no such section."""
    file_size = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    try:
        section = ELFFile(stream).get_section_by_name(SECTION)
    except _PARSE_ERRORS as exc:
        raise SymbolError(path, f"corrupt ELF file: {exc}") from exc
    if section is None or section["sh_type"] == "SHT_NOBITS":
        return None
    return _read_range(stream, section, file_size, path)


def _read_range(stream: BinaryIO, section: Any, file_size: int, path: str) -> bytes:
    offset, size = section["sh_offset"], section["sh_size"]
    if offset + size > file_size:
        raise SymbolError(
            path,
            f"{SECTION} at {offset:#x}+{size:#x} lies past the end of the file ({file_size:#x})",
        )
    stream.seek(offset)
    return stream.read(size)
