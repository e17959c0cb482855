"""Go ``regexp`` (RE2) syntax, parsed as Go parses it and rewritten for Python's ``re``.

Every pattern Go rejects is rejected; what RE2 has and ``re`` lacks is translated: ``(?<n>…)``,
``\\Q…\\E``, ``\\z``, octal escapes, POSIX and Unicode-category classes, ASCII-only
``\\d \\w \\s \\b``, inline flags anywhere, the ``U`` flag and ``{,n}`` as literal text.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass, replace

__all__ = ["Re2Error", "translate"]

_WORD = "0-9A-Za-z_"
_PERL_CLASSES = {"d": "0-9", "s": "\\t\\n\\f\\r ", "w": _WORD}
_POSIX_CLASSES = {
    "alnum": "0-9A-Za-z",
    "alpha": "A-Za-z",
    "ascii": "\\x00-\\x7f",
    "blank": "\\t ",
    "cntrl": "\\x00-\\x1f\\x7f",
    "digit": "0-9",
    "graph": "!-~",
    "lower": "a-z",
    "print": " -~",
    "punct": "!-/:-@\\[-`{-~",
    "space": "\\t\\n\\v\\f\\r ",
    "upper": "A-Z",
    "word": _WORD,
    "xdigit": "0-9A-Fa-f",
}
_C_ESCAPES = {"a": "\a", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_WORD_BOUNDARY = f"(?:(?<=[{_WORD}])(?![{_WORD}])|(?<![{_WORD}])(?=[{_WORD}]))"
_NOT_WORD_BOUNDARY = f"(?:(?<=[{_WORD}])(?=[{_WORD}])|(?<![{_WORD}])(?![{_WORD}]))"
_MAX_REPEAT = 1000
_ANY = "(?s:.)"


class Re2Error(ValueError):
    """The pattern is not valid RE2, or uses RE2 syntax Python cannot express."""


def translate(source: str) -> tuple[str, tuple[str, ...]]:
    """Python ``re`` syntax for a Go pattern, and each group's Go name ("" when unnamed)."""
    translator = _Translator(source)
    return translator.translate(), tuple(translator.names)


@dataclass(slots=True)
class _Flags:
    fold: bool = False  # i
    multiline: bool = False  # m
    dot_nl: bool = False  # s
    ungreedy: bool = False  # U


class _Translator:
    """One pass over Go syntax (``regexp/syntax`` with Perl flags), emitting ``re`` syntax."""

    def __init__(self, source: str) -> None:
        self.src = source
        self.pos = 0
        self.names = [""]

    def translate(self) -> str:
        out, _ = self._alternation(_Flags())
        if self.pos < len(self.src):
            raise Re2Error("unexpected )")
        return out

    # Parsing methods return the text with its repeat weight: the product of the counted
    # repetitions nested in it, which Go caps at 1000 (``repeatIsValid``).

    def _alternation(self, flags: _Flags) -> tuple[str, int]:
        branches = [self._concat(flags)]
        while self.src.startswith("|", self.pos):
            self.pos += 1
            branches.append(self._concat(flags))
        return "|".join(text for text, _ in branches), max(weight for _, weight in branches)

    def _concat(self, flags: _Flags) -> tuple[str, int]:
        items: list[tuple[str, int]] = []
        last_was_repeat = False
        while self.pos < len(self.src) and self.src[self.pos] not in "|)":
            repeat = self._repeat(flags)
            if repeat is not None:
                if last_was_repeat:
                    raise Re2Error("invalid nested repetition operator")
                if not items:
                    raise Re2Error("missing argument to repetition operator")
                items[-1] = _repeated(*items[-1], *repeat)
                last_was_repeat = True
                continue
            items.extend(self._atoms(flags))
            last_was_repeat = False
        return "".join(text for text, _ in items), max((w for _, w in items), default=1)

    def _repeat(self, flags: _Flags) -> tuple[str, int | None] | None:
        """The repetition operator at the cursor and its count (None for ``*+?``)."""
        char = self.src[self.pos]
        count = None
        if char in "*+?":
            self.pos += 1
            operator = char
        elif char == "{" and (parsed := _parse_counted(self.src, self.pos)) is not None:
            low, high, self.pos = parsed
            if low > _MAX_REPEAT or high > _MAX_REPEAT or 0 <= high < low:
                raise Re2Error("invalid repeat count")
            operator = f"{{{low}}}" if high == low else f"{{{low},{'' if high < 0 else high}}}"
            count = high if high >= 0 else low
        else:
            return None
        lazy = flags.ungreedy
        if self.src.startswith("?", self.pos):
            self.pos += 1
            lazy = not lazy
        return operator + ("?" if lazy else ""), count

    def _atoms(self, flags: _Flags) -> list[tuple[str, int]]:
        """The atoms at the cursor: none for a flag group, several for ``\\Q…\\E``."""
        char = self.src[self.pos]
        if char == "(":
            return self._group(flags)
        if char == "[":
            texts = [self._class(flags)]
        elif char == "\\":
            texts = self._escape(flags)
        else:
            self.pos += 1
            texts = [_simple_atom(char, flags)]
        return [(text, 1) for text in texts]

    def _group(self, flags: _Flags) -> list[tuple[str, int]]:
        inner = replace(flags)
        if self.src.startswith("(?", self.pos):
            opener = self._group_prefix(inner)
            if opener is None:  # (?flags): applies to the rest of the enclosing group
                flags.fold, flags.multiline = inner.fold, inner.multiline
                flags.dot_nl, flags.ungreedy = inner.dot_nl, inner.ungreedy
                return []
        else:
            self.pos += 1
            self.names.append("")
            opener = "("
        body, weight = self._alternation(inner)
        if not self.src.startswith(")", self.pos):
            raise Re2Error("missing closing )")
        self.pos += 1
        return [(opener + body + ")", weight)]

    def _group_prefix(self, flags: _Flags) -> str | None:
        """Parse ``(?…``: a named group, ``(?flags:`` or ``(?flags)`` (returns None)."""
        rest = self.src[self.pos + 2 :]
        if rest[:1] in ("=", "!") or rest[:2] in ("<=", "<!"):
            raise Re2Error("lookahead and lookbehind assertions are not supported (RE2)")
        if rest.startswith(("P=", "P>")):
            raise Re2Error("backreferences are not supported (RE2)")
        if rest.startswith(("P<", "<")):
            begin = 2 if rest[0] == "P" else 1
            end = rest.find(">")
            name = rest[begin:end] if end >= 0 else ""
            if not name or not all(c.isascii() and (c.isalnum() or c == "_") for c in name):
                raise Re2Error("invalid named capture")
            self.pos += 2 + end + 1
            self.names.append(name)
            return "("
        return self._flag_group(flags)

    def _flag_group(self, flags: _Flags) -> str | None:
        position = self.pos + 2
        negate = saw_flag = False
        while position < len(self.src):
            char = self.src[position]
            position += 1
            if char in "imsU":
                value = not negate
                if char == "i":
                    flags.fold = value
                elif char == "m":
                    flags.multiline = value
                elif char == "s":
                    flags.dot_nl = value
                else:
                    flags.ungreedy = value
                saw_flag = True
            elif char == "-" and not negate:
                negate, saw_flag = True, False
            elif char in ":)" and not (negate and not saw_flag):
                self.pos = position
                return "(?:" if char == ":" else None
            else:
                break
        raise Re2Error("invalid or unsupported Perl syntax")

    def _escape(self, flags: _Flags) -> list[str]:
        code = self.src[self.pos + 1 : self.pos + 2]
        simple = {"A": "\\A", "z": "\\Z", "b": _WORD_BOUNDARY, "B": _NOT_WORD_BOUNDARY}
        if code in simple:
            self.pos += 2
            return [simple[code]]
        if code == "C":
            raise Re2Error("invalid escape sequence: \\C")
        if code == "Q":
            end = self.src.find("\\E", self.pos + 2)
            text = self.src[self.pos + 2 :] if end < 0 else self.src[self.pos + 2 : end]
            self.pos = len(self.src) if end < 0 else end + 2
            return [_literal(char, flags) for char in text]
        items = self._class_escape()
        if items is not None:
            return [_fold(_render_class(*items, negated=False), flags)]
        return [_literal(chr(self._char_escape()), flags)]

    def _class_escape(self) -> tuple[list[str], list[str]] | None:
        """``\\d``-style or ``\\p``-style class at the cursor as (positive, negative) bodies."""
        code = self.src[self.pos + 1 : self.pos + 2]
        if code.lower() in _PERL_CLASSES:
            self.pos += 2
            body = _PERL_CLASSES[code.lower()]
            return ([], [body]) if code.isupper() else ([body], [])
        if code in ("p", "P"):
            return self._unicode_class(negated=code == "P")
        return None

    def _unicode_class(self, negated: bool) -> tuple[list[str], list[str]]:
        start = self.pos
        self.pos += 2
        if self.src.startswith("{", self.pos):
            end = self.src.find("}", self.pos)
            if end < 0:
                raise Re2Error(f"invalid character class range: {self.src[start:]}")
            name, self.pos = self.src[self.pos + 1 : end], end + 1
        else:
            name = self.src[self.pos : self.pos + 1]
            self.pos += len(name)
        if name.startswith("^"):
            negated, name = not negated, name[1:]
        body = _category_class(name)
        if body is None:
            raise Re2Error(
                f"unsupported Unicode class {self.src[start : self.pos]}: Python's re has no "
                "Unicode script tables; use a general category such as \\pL or \\p{Lu}"
            )
        return ([], [body]) if negated else ([body], [])

    def _char_escape(self) -> int:
        """An escape standing for one character (Go's ``parseEscape``); its code point."""
        start = self.pos
        if self.pos + 1 >= len(self.src):
            raise Re2Error("trailing backslash at end of expression")
        char = self.src[self.pos + 1]
        self.pos += 2
        if char in "01234567":
            digits = re.match(r"[0-7]{0,2}", self.src[self.pos :]).group()
            if char != "0" and not digits:
                raise Re2Error(f"invalid escape sequence: \\{char} (backreferences are not RE2)")
            self.pos += len(digits)
            return int(char + digits, 8)
        if char == "x":
            braced = re.match(r"\{([0-9A-Fa-f]+)\}|([0-9A-Fa-f]{2})", self.src[self.pos :])
            if braced and int(braced.group(1) or braced.group(2), 16) <= 0x10FFFF:
                self.pos += braced.end()
                return int(braced.group(1) or braced.group(2), 16)
        elif char in _C_ESCAPES:
            return ord(_C_ESCAPES[char])
        elif char.isascii() and not char.isalnum():
            return ord(char)
        raise Re2Error(f"invalid escape sequence: {self.src[start : self.pos]}")

    def _class(self, flags: _Flags) -> str:
        """A bracketed class (Go's ``parseClass``: ``]`` first is literal, ``-`` anywhere)."""
        self.pos += 1
        negated = self.src.startswith("^", self.pos)
        self.pos += negated
        positive: list[str] = []
        negative: list[str] = []
        first = True
        while first or not self.src.startswith("]", self.pos):
            first = False
            if self.pos >= len(self.src):
                raise Re2Error("missing closing ]")
            if self.src.startswith("[:", self.pos) and self._posix_class(positive, negative):
                continue
            items = self._class_escape()
            if items is not None:
                positive += items[0]
                negative += items[1]
                continue
            low = self._class_char()
            high = low
            if self.src.startswith("-", self.pos) and self.src[self.pos + 1 : self.pos + 2] not in (
                "]",
                "",
            ):
                self.pos += 1
                high = self._class_char()
                if high < low:
                    raise Re2Error("invalid character class range")
            positive.append(_class_char(low) + ("" if high == low else "-" + _class_char(high)))
        self.pos += 1
        return _fold(_render_class(positive, negative, negated=negated), flags)

    def _posix_class(self, positive: list[str], negative: list[str]) -> bool:
        end = self.src.find(":]", self.pos + 2)
        if end < 0:
            return False
        name = self.src[self.pos + 2 : end]
        invert = name.startswith("^")
        body = _POSIX_CLASSES.get(name[1:] if invert else name)
        if body is None:
            raise Re2Error(f"invalid character class range: {self.src[self.pos : end + 2]}")
        (negative if invert else positive).append(body)
        self.pos = end + 2
        return True

    def _class_char(self) -> int:
        if self.pos >= len(self.src):
            raise Re2Error("missing closing ]")
        if self.src[self.pos] == "\\":
            return self._char_escape()
        self.pos += 1
        return ord(self.src[self.pos - 1])


_COUNTED = re.compile(r"\{(0|[1-9][0-9]*)(?:(,)(0|[1-9][0-9]*)?)?\}")


def _parse_counted(src: str, pos: int) -> tuple[int, int, int] | None:
    """``{n}``, ``{n,}`` or ``{n,m}`` at ``pos`` as (min, max or -1, end).

    None means the ``{`` is a literal, as Go treats ``{,n}``, ``{x}`` and leading zeros.
    """
    match = _COUNTED.match(src, pos)
    if match is None:
        return None
    low = int(match.group(1))
    if match.group(2) is None:
        return low, low, match.end()
    high = -1 if match.group(3) is None else int(match.group(3))
    return low, high, match.end()


def _repeated(text: str, weight: int, operator: str, count: int | None) -> tuple[str, int]:
    if count is not None:
        weight = 0 if count == 0 else weight * count  # Go does not look inside x{0}
        if weight > _MAX_REPEAT:
            raise Re2Error("invalid repeat count: nested repetitions exceed 1000")
    return f"(?:{text}){operator}", weight


def _simple_atom(char: str, flags: _Flags) -> str:
    if char == ".":
        return _ANY if flags.dot_nl else "[^\\n]"
    if char == "^":
        return "(?m:^)" if flags.multiline else "\\A"
    if char == "$":
        return "(?m:$)" if flags.multiline else "\\Z"
    return _literal(char, flags)


def _literal(char: str, flags: _Flags) -> str:
    escaped = re.escape(char)
    return f"(?i:{escaped})" if flags.fold and char.lower() != char.upper() else escaped


def _fold(pattern: str, flags: _Flags) -> str:
    return f"(?i:{pattern})" if flags.fold else pattern


def _class_char(code: int) -> str:
    char = chr(code)
    if char.isascii() and char.isalnum():
        return char
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _render_class(positive: list[str], negative: list[str], *, negated: bool) -> str:
    """A class as ``re`` syntax; negated members inside brackets become alternatives."""
    if not negative:
        return "[" + ("^" if negated else "") + "".join(positive) + "]"
    parts = (["[" + "".join(positive) + "]"] if positive else []) + [
        f"[^{body}]" for body in negative
    ]
    union = parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"
    return f"(?:(?!{union}){_ANY})" if negated else union


def _category_class(name: str) -> str | None:
    """Class body for a Go Unicode category name (``L``, ``Lu``, ``Any``), else None."""
    if name == "Any":
        return "\\x00-\\U0010ffff"
    table = _category_tables()
    members = [  # Go's one-letter C has no unassigned (Cn) code points, and no Cn table
        category
        for category in table
        if category != "Cn" and (category == name or (len(name) == 1 and category[0] == name))
    ]
    if not members:
        return None
    merged: list[list[int]] = []
    for low, high in sorted(r for category in members for r in table[category]):
        if merged and low == merged[-1][1] + 1:
            merged[-1][1] = high
        else:
            merged.append([low, high])
    return "".join(
        _class_char(low) + ("" if low == high else "-" + _class_char(high)) for low, high in merged
    )


@functools.cache
def _category_tables() -> dict[str, list[tuple[int, int]]]:
    """Code point ranges per general category, built once (about 0.1 s)."""
    tables: dict[str, list[tuple[int, int]]] = {}
    start, current = 0, unicodedata.category("\x00")
    for code in range(1, 0x110001):
        category = unicodedata.category(chr(code)) if code < 0x110000 else ""
        if category != current:
            tables.setdefault(current, []).append((start, code - 1))
            start, current = code, category
    return tables
