"""The CFI sections of an x86-64 ELF file: .eh_frame (through PT_GNU_EH_FRAME and
.eh_frame_hdr when section headers are gone) and .debug_frame, compressed or not."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

from agent.errors import SymbolError
from agent.symbols.elf import open_elf, translated_errors
from agent.unwind.cfi import UnwindError, parse_eh_frame_hdr

__all__ = ["CfiSection", "read_cfi_sections"]

_CHDR = struct.Struct("<IIQQ")  # Elf64_Chdr of a SHF_COMPRESSED section
_SHF_COMPRESSED = 0x800
_ELFCOMPRESS_ZLIB = 1


@dataclass(frozen=True, slots=True)
class CfiSection:
    """The CFI bytes of a file: which section, its bytes and its virtual address."""

    name: str  # ".eh_frame" or ".debug_frame"
    data: bytes
    address: int


def read_cfi_sections(stream: BinaryIO, path: str = "") -> list[CfiSection]:
    """The CFI sections of an x86-64 ELF file: .eh_frame (found through
    PT_GNU_EH_FRAME when section headers are gone) and .debug_frame, each if present.

    Malformed files raise UnwindError naming ``path``.
    """
    path = path or str(getattr(stream, "name", "<stream>"))
    found = []
    with _translated(path):
        elf, sections = open_elf(stream, path)
        if elf.elfclass != 64 or not elf.little_endian or elf["e_machine"] != "EM_X86_64":
            raise UnwindError("not an x86-64 ELF file", path)
        by_name = {section.name: section for section in sections}
        for name in (".eh_frame", ".debug_frame"):
            section = by_name.get(name)
            if section is not None and section["sh_type"] != "SHT_NOBITS" and section["sh_size"]:
                address = section["sh_addr"] if name == ".eh_frame" else 0
                found.append(CfiSection(name, _section_bytes(stream, section, path), address))
        if not sections:
            eh_frame = _eh_frame_from_segments(stream, elf, path)
            if eh_frame is not None:
                found.append(eh_frame)
    return found


@contextmanager
def _translated(path: str) -> Iterator[None]:
    """ELF errors (already SymbolError) and our own become UnwindError naming the file."""
    try:
        with translated_errors(path):
            yield
    except SymbolError as exc:
        raise UnwindError(exc.reason, path) from exc
    except UnwindError as exc:
        if exc.path:
            raise
        raise UnwindError(exc.reason, path) from exc


def _section_bytes(stream: BinaryIO, section: Any, path: str) -> bytes:
    stream.seek(section["sh_offset"])
    data = stream.read(section["sh_size"])
    if not section["sh_flags"] & _SHF_COMPRESSED:
        return data
    if len(data) < _CHDR.size:
        raise UnwindError(f"{section.name}: compression header truncated", path)
    kind, _, size, _ = _CHDR.unpack_from(data)
    if kind != _ELFCOMPRESS_ZLIB:
        raise UnwindError(f"{section.name}: compression type {kind} not supported", path)
    try:
        inflated = zlib.decompress(data[_CHDR.size :])
    except zlib.error as exc:
        raise UnwindError(f"{section.name}: {exc}", path) from exc
    if len(inflated) != size:
        raise UnwindError(f"{section.name}: inflates to {len(inflated)} bytes, not {size}", path)
    return inflated


def _eh_frame_from_segments(stream: BinaryIO, elf: Any, path: str) -> CfiSection | None:
    """.eh_frame of a file without section headers: PT_GNU_EH_FRAME gives .eh_frame_hdr,
    whose pointer gives .eh_frame; it runs to its terminator, within its PT_LOAD."""
    segments = list(elf.iter_segments())
    header = next((s for s in segments if s["p_type"] == "PT_GNU_EH_FRAME"), None)
    if header is None:
        return None
    hdr = parse_eh_frame_hdr(
        _segment_bytes(stream, header, header["p_vaddr"], path), header["p_vaddr"]
    )
    for segment in segments:
        if segment["p_type"] != "PT_LOAD":
            continue
        start = segment["p_vaddr"]
        if start <= hdr.eh_frame_address < start + segment["p_filesz"]:
            data = _segment_bytes(stream, segment, hdr.eh_frame_address, path)
            return CfiSection(".eh_frame", data, hdr.eh_frame_address)
    raise UnwindError(f".eh_frame at {hdr.eh_frame_address:#x} lies in no PT_LOAD segment", path)


def _segment_bytes(stream: BinaryIO, segment: Any, vaddr: int, path: str) -> bytes:
    """The file bytes of ``segment`` from virtual address ``vaddr`` to its end."""
    skip = vaddr - segment["p_vaddr"]
    start = segment["p_offset"] + skip
    length = segment["p_filesz"] - skip
    if not 0 <= skip <= segment["p_filesz"] or start + length > stream.seek(0, os.SEEK_END):
        raise UnwindError(f"segment at {segment['p_vaddr']:#x} runs past the end of the file", path)
    stream.seek(start)
    return stream.read(length)
