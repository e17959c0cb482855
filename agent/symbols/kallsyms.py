"""``/proc/kallsyms``: kernel and module text symbols, searched by address."""

from __future__ import annotations

import zlib
from array import array
from bisect import bisect_right
from typing import TextIO

from agent.errors import SymbolError
from agent.symbols.cache import LruCache

__all__ = ["KernelSymbols", "read_kallsyms"]

_TEXT_TYPES = frozenset("tTwW")
_KERNEL = "kernel"
_BLOCK = 16  # names compressed together: 3 times smaller, a 2-3 µs decompression per miss
_RECENT_NAMES = 4096  # the kernel functions of a profile: a few hundred to a few thousand


class KernelSymbols:
    """Kernel text symbols sorted by address.

    kallsyms has no sizes, so a symbol covers up to the next one. The last
    symbol of the kernel or of a module covers only its own address: past it
    lies something kallsyms does not describe.

    About 120,000 symbols are kept in arrays and compressed blocks of names, not
    as Python objects: about 2.5 MB instead of about 30. Addresses are 4-byte
    offsets from the lowest one where the kernel's and its modules' text span
    less than 4 GB (x86-64); names are zlib-compressed ``_BLOCK`` at a time (a
    third of their size), and the names looked up last are kept decoded.

    >>> with open("/proc/kallsyms") as stream:
    ...     kernel = read_kallsyms(stream)
    >>> kernel.lookup(address)   # ("do_sys_openat2", "kernel"), or None
    """

    __slots__ = (
        "_base",
        "_offsets",
        "_blocks",
        "_block_ends",
        "_modules",
        "_module_names",
        "_region_last",
        "_recent",
    )

    def __init__(
        self,
        starts: array,
        blocks: bytes,
        block_ends: array,
        modules: array,
        module_names: list[str],
    ) -> None:
        """Symbol ``i`` starts at ``starts[i]`` (sorted, unique), is named in block
        ``i // _BLOCK`` (``blocks[block_ends[b - 1]:block_ends[b]]``, zlib-compressed names
        joined by NUL) and lies in ``module_names[modules[i]]``."""
        self._base = starts[0] if starts else 0
        narrow = not starts or starts[-1] - self._base < 1 << 32
        self._offsets = array("I" if narrow else "Q", (start - self._base for start in starts))
        self._blocks = blocks
        self._block_ends = block_ends
        self._modules = modules
        self._module_names = module_names
        # 1 where the next symbol belongs to another region (or there is none).
        count = len(starts)
        self._region_last = bytearray(
            index + 1 == count or modules[index + 1] != modules[index] for index in range(count)
        )
        self._recent: LruCache[int, str] = LruCache(_RECENT_NAMES)

    def __len__(self) -> int:
        return len(self._offsets)

    def lookup(self, address: int) -> tuple[str, str] | None:
        """(symbol name, module name or ``"kernel"``) covering ``address``."""
        offset = address - self._base
        index = bisect_right(self._offsets, offset) - 1
        if index < 0:
            return None
        if self._region_last[index] and offset != self._offsets[index]:
            return None
        return self._name(index), self._module_names[self._modules[index]]

    def _name(self, index: int) -> str:
        name = self._recent.get(index)
        if name is None:
            block, position = divmod(index, _BLOCK)
            start = self._block_ends[block - 1] if block else 0
            names = zlib.decompress(self._blocks[start : self._block_ends[block]])
            name = names.split(b"\0")[position].decode(errors="replace")
            self._recent.put(index, name)
        return name


def read_kallsyms(stream: TextIO, path: str = "/proc/kallsyms") -> KernelSymbols:
    """Read the text symbols (types t, T, w, W) of a kallsyms stream.

    Raises SymbolError naming ``path`` for a malformed line, for no text
    symbols, and for all-zero addresses, which is how the kernel hides them
    from readers without CAP_SYSLOG (kptr_restrict).
    """
    table = _Table()
    text_symbols = 0
    for lineno, line in enumerate(stream, 1):
        fields = line.split()
        if len(fields) < 3:
            if fields:
                raise SymbolError(path, f"line {lineno}: expected 'address type name': {line!r}")
            continue
        if fields[1] not in _TEXT_TYPES:
            continue
        try:
            address = int(fields[0], 16)
        except ValueError as exc:
            raise SymbolError(path, f"line {lineno}: bad address {fields[0]!r}") from exc
        if not 0 <= address < 1 << 64:
            raise SymbolError(path, f"line {lineno}: address {fields[0]!r} is not 64-bit")
        text_symbols += 1
        if address == 0:
            continue
        table.add(address, fields[2], fields[3][1:-1] if len(fields) > 3 else _KERNEL)
    if not table.starts:
        if text_symbols:
            raise SymbolError(path, "addresses are hidden (kptr_restrict); run as root")
        raise SymbolError(path, "no kernel text symbols")
    return table.sorted_symbols()


class _Table:
    """Symbols as read, in compact columns, before sorting."""

    def __init__(self) -> None:
        self.starts = array("Q")
        self.names = bytearray()
        self.name_ends = array("I")
        self.modules = array("H")
        self.module_ids: dict[str, int] = {}

    def add(self, address: int, name: str, module: str) -> None:
        self.starts.append(address)
        self.names += name.encode()
        self.name_ends.append(len(self.names))
        self.modules.append(self.module_ids.setdefault(module, len(self.module_ids)))

    def sorted_symbols(self) -> KernelSymbols:
        """Sorted by address, keeping the first-listed symbol at each address."""
        order = sorted(range(len(self.starts)), key=self.starts.__getitem__)  # stable
        starts, modules, kept = array("Q"), array("H"), array("I")
        for index in order:
            address = self.starts[index]
            if starts and starts[-1] == address:
                continue
            starts.append(address)
            modules.append(self.modules[index])
            kept.append(index)
        blocks, block_ends = bytearray(), array("I")
        for first in range(0, len(kept), _BLOCK):
            names = [self.name(index) for index in kept[first : first + _BLOCK]]
            blocks += zlib.compress(b"\0".join(names))
            block_ends.append(len(blocks))
        regions = list(self.module_ids)
        return KernelSymbols(starts, bytes(blocks), block_ends, modules, regions)

    def name(self, index: int) -> bytes:
        start = self.name_ends[index - 1] if index else 0
        return self.names[start : self.name_ends[index]]
