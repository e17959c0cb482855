"""The symbols room: sampled addresses in, named frames out."""

from agent.symbols.demangle import DEMANGLE_MODES
from agent.symbols.elf import ElfInfo, LoadSegment, SymbolTable, read_build_id, read_elf
from agent.symbols.frames import Frame, MappedFile
from agent.symbols.kallsyms import KernelSymbols, read_kallsyms
from agent.symbols.procmaps import MapEntry, parse_maps, read_maps
from agent.symbols.resolver import Symbolizer

__all__ = [
    "DEMANGLE_MODES",
    "ElfInfo",
    "Frame",
    "KernelSymbols",
    "LoadSegment",
    "MapEntry",
    "MappedFile",
    "SymbolTable",
    "Symbolizer",
    "parse_maps",
    "read_build_id",
    "read_elf",
    "read_kallsyms",
    "read_maps",
]
