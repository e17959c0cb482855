"""``/proc/kallsyms``: kernel and module text symbols, searched by address."""

from __future__ import annotations

from array import array
from bisect import bisect_right
from typing import TextIO

from agent.errors import SymbolError

__all__ = ["KernelSymbols", "read_kallsyms"]

_TEXT_TYPES = frozenset("tTwW")
_KERNEL = "kernel"


class KernelSymbols:
    """Kernel text symbols sorted by address.

    kallsyms has no sizes, so a symbol covers up to the next one. The last
    symbol of the kernel or of a module covers only its own address: past it
    lies something kallsyms does not describe.

    About 100,000 symbols are kept in arrays and one blob of names, not as
    Python objects: a few MB instead of about 30.

    >>> with open("/proc/kallsyms") as stream:
    ...     kernel = read_kallsyms(stream)
    >>> kernel.lookup(address)   # ("do_sys_openat2", "kernel"), or None
    """

    __slots__ = ("_starts", "_names", "_name_ends", "_modules", "_module_names", "_region_last")

    def __init__(
        self,
        starts: array,
        names: bytes,
        name_ends: array,
        modules: array,
        module_names: list[str],
    ) -> None:
        """Symbol ``i`` starts at ``starts[i]`` (sorted, unique), is named
        ``names[name_ends[i - 1]:name_ends[i]]`` and lies in
        ``module_names[modules[i]]``."""
        self._starts = starts
        self._names = names
        self._name_ends = name_ends
        self._modules = modules
        self._module_names = module_names
        # 1 where the next symbol belongs to another region (or there is none).
        count = len(starts)
        self._region_last = bytearray(
            index + 1 == count or modules[index + 1] != modules[index] for index in range(count)
        )

    def __len__(self) -> int:
        return len(self._starts)

    def lookup(self, address: int) -> tuple[str, str] | None:
        """(symbol name, module name or ``"kernel"``) covering ``address``."""
        index = bisect_right(self._starts, address) - 1
        if index < 0:
            return None
        if self._region_last[index] and address != self._starts[index]:
            return None
        start = self._name_ends[index - 1] if index else 0
        name = self._names[start : self._name_ends[index]].decode(errors="replace")
        return name, self._module_names[self._modules[index]]


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
        self.name_ends = array("L")
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
        starts, names, name_ends, modules = array("Q"), bytearray(), array("L"), array("H")
        for index in order:
            address = self.starts[index]
            if starts and starts[-1] == address:
                continue
            start = self.name_ends[index - 1] if index else 0
            starts.append(address)
            names += self.names[start : self.name_ends[index]]
            name_ends.append(len(names))
            modules.append(self.modules[index])
        return KernelSymbols(starts, bytes(names), name_ends, modules, list(self.module_ids))
