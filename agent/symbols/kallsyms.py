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

    >>> with open("/proc/kallsyms") as stream:
    ...     kernel = read_kallsyms(stream)
    >>> kernel.lookup(address)   # ("do_sys_openat2", "kernel"), or None
    """

    __slots__ = ("_starts", "_names", "_modules", "_region_last")

    def __init__(self, entries: list[tuple[int, str, str]]) -> None:
        """``entries`` are (address, name, module) sorted by address, one per address."""
        self._starts = array("Q", (entry[0] for entry in entries))
        self._names = [entry[1] for entry in entries]
        self._modules = [entry[2] for entry in entries]
        # True where the next symbol belongs to another region (or there is none).
        self._region_last = [
            index + 1 == len(entries) or entries[index + 1][2] != module
            for index, (_, _, module) in enumerate(entries)
        ]

    def __len__(self) -> int:
        return len(self._starts)

    def lookup(self, address: int) -> tuple[str, str] | None:
        """(symbol name, module name or ``"kernel"``) covering ``address``."""
        index = bisect_right(self._starts, address) - 1
        if index < 0:
            return None
        if self._region_last[index] and address != self._starts[index]:
            return None
        return self._names[index], self._modules[index]


def read_kallsyms(stream: TextIO, path: str = "/proc/kallsyms") -> KernelSymbols:
    """Read the text symbols (types t, T, w, W) of a kallsyms stream.

    Raises SymbolError naming ``path`` for a malformed line, for no text
    symbols, and for all-zero addresses, which is how the kernel hides them
    from readers without CAP_SYSLOG (kptr_restrict).
    """
    entries: list[tuple[int, str, str]] = []
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
        module = fields[3][1:-1] if len(fields) > 3 else _KERNEL
        entries.append((address, fields[2], module))
    if not entries:
        if text_symbols:
            raise SymbolError(path, "addresses are hidden (kptr_restrict); run as root")
        raise SymbolError(path, "no kernel text symbols")
    return KernelSymbols(_sorted_unique(entries))


def _sorted_unique(entries: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """Sort by address, keeping the first-listed symbol at each address."""
    entries.sort(key=_address)
    return [e for i, e in enumerate(entries) if i == 0 or e[0] != entries[i - 1][0]]


def _address(entry: tuple[int, str, str]) -> int:
    return entry[0]
