"""C++ (Itanium) and Rust legacy names, demangled by libstdc++'s ``__cxa_demangle``.

Modes, as the legacy agent's ``demangle`` option: ``none`` keeps the symbol,
``full`` gives the whole signature, ``templates`` drops parameter lists and
the return type, ``simplified`` also drops template arguments.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import re
from functools import cache
from typing import Any

from agent.symbols.cache import LruCache

__all__ = ["DEMANGLE_MODES", "Demangler", "simplify_name"]

log = logging.getLogger(__name__)

DEMANGLE_MODES = ("none", "simplified", "templates", "full")

_RUST_HASH = re.compile(r"::h[0-9a-f]{16}$")
# rustc's legacy escapes ($LT$ for <, $u20$ for a space) and ".." for "::".
_RUST_ESCAPES = {"SP": "@", "BP": "*", "RF": "&", "LT": "<", "GT": ">", "LP": "(", "RP": ")"}
_RUST_ESCAPE = re.compile(r"\$(SP|BP|RF|LT|GT|LP|RP|C|u[0-9a-f]{2,6})\$")
_THUNKS = ("non-virtual thunk to ", "virtual thunk to ", "covariant return thunk to ")
# Longest first, so "operator<<=" is not read as "operator<".
_OPERATORS = sorted(
    "() [] <=> << >> <<= >>= <= >= < > -> ->* == != && || ++ -- += -= *= /= %= &= |= ^= "
    "+ - * / % & | ^ ~ ! = ,".split(),
    key=len,
    reverse=True,
)
_OPENERS = {"(": ")", "<": ">", "[": "]", "{": "}"}
_ANONYMOUS = "(anonymous namespace)"


class Demangler:
    """Demangles symbol names in one mode and remembers the results.

    >>> Demangler("simplified").demangle("_ZN2ns3BoxIiE3putERKi")
    'ns::Box::put'

    Names that are not mangled (C, Go, already demangled) come back unchanged.
    """

    def __init__(self, mode: str = "none", cache_size: int = 65536) -> None:
        if mode not in DEMANGLE_MODES:
            raise ValueError(
                f"demangle mode must be one of {', '.join(DEMANGLE_MODES)}, not {mode!r}"
            )
        self.mode = mode
        self._cache: LruCache[str, str] = LruCache(cache_size)

    def demangle(self, name: str) -> str:
        if self.mode == "none" or not name.startswith("_Z"):
            return name
        found = self._cache.get(name)
        if found is None:
            found = self._demangle(name)
            self._cache.put(name, found)
        return found

    def _demangle(self, name: str) -> str:
        full = _cxa_demangle(name)
        if full is None:
            return name
        rust = _RUST_HASH.search(full) is not None
        if rust:
            full = _unescape_rust(_RUST_HASH.sub("", full))
        if self.mode == "full" or rust:
            return full
        return simplify_name(full, keep_templates=self.mode == "templates")


def simplify_name(full: str, keep_templates: bool) -> str:
    """A demangled signature without return type, parameter lists and qualifiers after them.

    Template argument lists are kept when ``keep_templates``. The scanner
    skips bracketed groups whole, so ``operator()``, ``operator<``,
    ``(anonymous namespace)``, lambdas and function pointer types inside
    template arguments are left intact.
    """
    for thunk in _THUNKS:
        if full.startswith(thunk):
            return thunk + simplify_name(full[len(thunk) :], keep_templates)
    out: list[str] = []
    index = 0
    while index < len(full):
        char = full[index]
        if _is_operator(full, index):
            end = _operator_end(full, index + len("operator"))
            out.append(full[index:end])
        elif full.startswith(_ANONYMOUS, index):
            end = index + len(_ANONYMOUS)
            out.append(_ANONYMOUS)
        elif char == "(":
            # A parameter list: of this function, or of one enclosing a local name.
            end = _skip_to_scope(full, _group_end(full, index))
        elif char in _OPENERS:
            end = _group_end(full, index)
            if char != "<" or keep_templates:
                out.append(full[index:end])
        elif char == " ":
            out.clear()  # what came before was the return type
            end = index + 1
        else:
            end = index + 1
            out.append(char)
        index = end
    return "".join(out)


def _is_operator(text: str, index: int) -> bool:
    """Whether the word ``operator`` starts at ``index`` (not ``my_operator``, ``operators``)."""
    end = index + len("operator")
    if not text.startswith("operator", index):
        return False
    before = text[index - 1] if index else " "
    after = text[end] if end < len(text) else " "
    return not (_is_word(before) or _is_word(after))


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def _operator_end(text: str, index: int) -> int:
    """Past an operator's name: a symbol, or a word like ``new`` or a conversion type."""
    for symbol in _OPERATORS:
        if text.startswith(symbol, index):
            return index + len(symbol)
    end = index
    while end < len(text) and text[end] != "(":
        end = _group_end(text, end) if text[end] in "<[" else end + 1
    return end


def _group_end(text: str, index: int) -> int:
    """Past the bracket group opened at ``index``, nested groups of any kind included."""
    closers = [_OPENERS[text[index]]]
    index += 1
    while index < len(text) and closers:
        char = text[index]
        if char == closers[-1]:
            closers.pop()
        elif char in _OPENERS and not (char == "<" and closers[-1] == ")"):
            closers.append(_OPENERS[char])
        index += 1
    return index


def _skip_to_scope(text: str, index: int) -> int:
    """Past what follows a parameter list (``const``, ``&&``, ``[clone .cold]``) up to ``::``."""
    while index < len(text) and not text.startswith("::", index):
        index = _group_end(text, index) if text[index] in _OPENERS else index + 1
    return index


def _unescape_rust(name: str) -> str:
    def replace(match: re.Match[str]) -> str:
        code = match.group(1)
        if code == "C":
            return ","
        return _RUST_ESCAPES.get(code) or chr(int(code[1:], 16))

    return _RUST_ESCAPE.sub(replace, name.replace("..", "::"))


def _cxa_demangle(name: str) -> str | None:
    """libstdc++'s demangler; None when the name is not a valid mangled name."""
    functions = _bind()
    if functions is None:
        return None
    demangle, free = functions
    status = ctypes.c_int(0)
    pointer = demangle(name.encode("utf-8", "surrogateescape"), None, None, ctypes.byref(status))
    if not pointer:
        return None
    try:
        return ctypes.string_at(pointer).decode("utf-8", "replace")
    finally:
        free(pointer)


@cache
def _bind() -> tuple[Any, Any] | None:
    """Load libstdc++ once, on first use; without it names stay mangled."""
    path = ctypes.util.find_library("stdc++") or "libstdc++.so.6"
    try:
        libstdcxx = ctypes.CDLL(path)
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError as exc:
        log.warning("cannot load %s, C++ names stay mangled: %s", path, exc)
        return None
    demangle = libstdcxx.__cxa_demangle
    demangle.argtypes = [
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_int),
    ]
    demangle.restype = ctypes.c_void_p
    free = libc.free
    free.argtypes = [ctypes.c_void_p]
    free.restype = None
    return demangle, free
