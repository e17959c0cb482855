"""The scanner of the Alloy configuration syntax: text to tokens with positions.

Follows grafana/alloy ``syntax/scanner/scanner.go``: Go-style automatic
terminators, ``//`` and ``/* */`` comments, double-quoted strings with Go
escapes, backquoted raw strings, and Alloy's error messages.
"""

from __future__ import annotations

import bisect
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from agent.errors import ConfigError

__all__ = ["Position", "Token", "decode_source", "error_at", "is_identifier", "scan"]

# Kinds of tokens that are not operators; operators are their own text ("{", "+", "==" ...).
IDENT, NUMBER, FLOAT, STRING, BOOL, NULL = "IDENT", "NUMBER", "FLOAT", "STRING", "BOOL", "NULL"
EOF, TERMINATOR = "EOF", "TERMINATOR"

# A newline after one of these ends the statement (scanner.go: insertTerm).
_ENDS_STATEMENT = {IDENT, NUMBER, FLOAT, STRING, BOOL, NULL, ")", "]", "}"}
_TWO_CHAR = {"==", "!=", "<=", ">=", "||", "&&"}
_ONE_CHAR = set("!=<>+-*/%^{}()[],.")
_SIMPLE_ESCAPES = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "\\": "\\", '"': '"',
}  # fmt: skip
_NUMERIC_ESCAPES = {"x": (2, 16, 0xFF), "u": (4, 16, 0x10FFFF), "U": (8, 16, 0x10FFFF)}
_BOM = "\ufeff"
_BAD_CHARACTERS = (("\0", "illegal character NUL"), (_BOM, "illegal byte order mark"))


@dataclass(frozen=True, slots=True)
class Position:
    """Where a token or node starts: 1-based line and byte column, as Alloy counts."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # IDENT, STRING, ... or the operator's text
    text: str  # the source text (a STRING keeps its quotes)
    pos: Position
    value: object = None  # decoded value of STRING, NUMBER, FLOAT, BOOL

    def __str__(self) -> str:
        return self.kind


def error_at(pos: Position, message: str) -> ConfigError:
    """The one shape of every configuration error: ``file:line:col: message``."""
    return ConfigError(f"{pos}: {message}")


def decode_source(data: bytes, filename: str) -> str:
    """Decode a configuration file, reporting invalid UTF-8 where it is."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        prefix = data[: exc.start]
        line = prefix.count(b"\n") + 1
        col = len(prefix) - (prefix.rfind(b"\n") + 1) + 1
        raise error_at(Position(filename, line, col), "illegal UTF-8 encoding") from exc


def is_identifier(text: str) -> bool:
    """True if ``text`` scans as exactly one identifier (block labels must)."""
    if text in ("true", "false", "null"):
        return False
    return bool(text) and _is_letter(text[0]) and all(_is_ident_char(c) for c in text)


def scan(text: str, filename: str) -> Iterator[Token]:
    """Yield the tokens of ``text``, ending with EOF; raise ConfigError at the first fault."""
    return _Scanner(text, filename).tokens()


def _is_letter(ch: str) -> bool:
    return ch == "_" or ch.isalpha()


def _is_ident_char(ch: str) -> bool:
    return _is_letter(ch) or unicodedata.category(ch) == "Nd"


def _digit_value(ch: str) -> int:
    """The value of a hexadecimal digit, or 16 for anything else."""
    return int(ch, 16) if ch in "0123456789abcdefABCDEF" else 16


def _char_name(ch: str) -> str:
    """Go's ``%#U``: ``U+0023 '#'``, without the glyph when it is not printable."""
    code = f"U+{ord(ch):04X}"
    return f"{code} '{ch}'" if ch.isprintable() else code


class _Scanner:
    def __init__(self, text: str, filename: str) -> None:
        self.text = text[1:] if text.startswith(_BOM) else text
        self.filename = filename
        self.offset = 0
        self.insert_term = False
        self.line_starts = [0] + [i + 1 for i, ch in enumerate(self.text) if ch == "\n"]
        self.bad_offset, self.bad_message = self._find_bad_character()

    def _find_bad_character(self) -> tuple[int, str]:
        """The first NUL or inner byte-order mark, reported once scanning reaches it."""
        found = [(self.text.find(ch), message) for ch, message in _BAD_CHARACTERS]
        return min(((at, message) for at, message in found if at >= 0), default=(-1, ""))

    def position(self, offset: int) -> Position:
        line = bisect.bisect_right(self.line_starts, offset)
        start = self.line_starts[line - 1]
        col = len(self.text[start:offset].encode("utf-8")) + 1
        return Position(self.filename, line, col)

    def fail(self, offset: int, message: str) -> ConfigError:
        return error_at(self.position(offset), message)

    def raise_bad_character(self, scanned_to: int) -> None:
        if 0 <= self.bad_offset < scanned_to:
            raise self.fail(self.bad_offset, self.bad_message)

    def peek(self, ahead: int = 0) -> str:
        index = self.offset + ahead
        return self.text[index] if index < len(self.text) else ""

    def tokens(self) -> Iterator[Token]:
        while True:
            try:
                token = self.next_token()
            except ConfigError:
                self.raise_bad_character(self.offset + 1)
                raise
            self.raise_bad_character(self.offset)
            self.insert_term = token.kind in _ENDS_STATEMENT
            yield token
            if token.kind == EOF:
                return

    def next_token(self) -> Token:
        while True:
            self.skip_whitespace()
            start, ch = self.offset, self.peek()
            if ch in ("\n", "") and self.insert_term:
                self.offset += 1 if ch else 0
                return Token(TERMINATOR, "\n", self.position(start))
            if ch == "":
                return Token(EOF, "", self.position(start))
            if ch == "/" and self.peek(1) in ("/", "*"):
                if self.insert_term and self.comment_ends_line():
                    return Token(TERMINATOR, "\n", self.position(start))
                self.skip_comment()
                continue
            return self.scan_token(start, ch)

    def skip_whitespace(self) -> None:
        while self.peek() in (" ", "\t", "\r") or (self.peek() == "\n" and not self.insert_term):
            self.offset += 1

    def comment_ends_line(self) -> bool:
        """Whether the comment(s) here run to the end of the line (scanner.go findLineEnd)."""
        saved = self.offset
        try:
            while self.peek() == "/" and self.peek(1) in ("/", "*"):
                if self.peek(1) == "/" or "\n" in self.skip_comment():
                    return True
                while self.peek() in (" ", "\t", "\r"):
                    self.offset += 1
            return self.peek() in ("\n", "")
        finally:
            self.offset = saved

    def skip_comment(self) -> str:
        start = self.offset
        if self.peek(1) == "/":
            end = self.text.find("\n", start)
            self.offset = len(self.text) if end < 0 else end
        else:
            end = self.text.find("*/", start + 2)
            if end < 0:
                raise self.fail(start, "block comment not terminated")
            self.offset = end + 2
        return self.text[start : self.offset]

    def scan_token(self, start: int, ch: str) -> Token:
        if _is_letter(ch):
            return self.scan_identifier(start)
        if "0" <= ch <= "9" or (ch == "." and "0" <= self.peek(1) <= "9"):
            return self.scan_number(start)
        if ch == '"':
            return self.scan_string(start)
        if ch == "`":
            return self.scan_raw_string(start)
        if ch == "'":
            raise self.fail(start, "illegal single-quoted string; use double quotes")
        if ch in "|&" and self.peek(1) != ch:
            raise self.fail(start + 1, f"missing second {ch} in {ch}{ch}")
        pair = self.text[start : start + 2]
        if pair in _TWO_CHAR:
            self.offset += 2
            return Token(pair, pair, self.position(start))
        if ch in _ONE_CHAR:
            self.offset += 1
            return Token(ch, ch, self.position(start))
        raise self.fail(start, f"illegal character {_char_name(ch)}")

    def scan_identifier(self, start: int) -> Token:
        self.offset += 1
        while self.peek() and _is_ident_char(self.peek()):
            self.offset += 1
        word = self.text[start : self.offset]
        pos = self.position(start)
        if word in ("true", "false"):
            return Token(BOOL, word, pos, word == "true")
        if word == "null":
            return Token(NULL, word, pos)
        return Token(IDENT, word, pos)

    def scan_number(self, start: int) -> Token:
        kind = NUMBER
        self.skip_digits()
        if self.peek() == ".":
            kind = FLOAT
            self.offset += 1
            self.skip_digits()
        if self.peek() in ("e", "E"):
            kind = FLOAT
            self.offset += 1
            if self.peek() in ("+", "-"):
                self.offset += 1
            if not self.skip_digits():
                raise self.fail(start, "exponent has no digits")
        text = self.text[start : self.offset]
        value = int(text) if kind == NUMBER else float(text)
        return Token(kind, text, self.position(start), value)

    def skip_digits(self) -> int:
        first = self.offset
        while "0" <= self.peek() <= "9":
            self.offset += 1
        return self.offset - first

    def scan_raw_string(self, start: int) -> Token:
        end = self.text.find("`", start + 1)
        if end < 0:
            raise self.fail(start, "string literal not terminated")
        self.offset = end + 1
        text = self.text[start : self.offset]
        return Token(STRING, text, self.position(start), text[1:-1])

    def scan_string(self, start: int) -> Token:
        self.offset += 1
        parts: list[str] = []
        while True:
            ch = self.peek()
            if ch in ("\n", ""):
                raise self.fail(start, "string literal not terminated")
            self.offset += 1
            if ch == '"':
                break
            parts.append(self.scan_escape() if ch == "\\" else ch)
        text = self.text[start : self.offset]
        return Token(STRING, text, self.position(start), "".join(parts))

    def scan_escape(self) -> str:
        """Decode one escape after its backslash; errors point just past the backslash."""
        start, ch = self.offset, self.peek()
        if ch in _SIMPLE_ESCAPES:
            self.offset += 1
            return _SIMPLE_ESCAPES[ch]
        if "0" <= ch <= "7":
            count, base, limit = 3, 8, 0xFF
        elif ch in _NUMERIC_ESCAPES:
            self.offset += 1
            count, base, limit = _NUMERIC_ESCAPES[ch]
        else:
            message = "escape sequence not terminated" if ch == "" else "unknown escape sequence"
            raise self.fail(start, message)
        code = 0
        for _ in range(count):
            digit = self.peek()
            if digit == "":
                raise self.fail(start, "escape sequence not terminated")
            if _digit_value(digit) >= base:
                raise self.fail(start, f"illegal character {_char_name(digit)} in escape sequence")
            code = code * base + _digit_value(digit)
            self.offset += 1
        if code > limit or 0xD800 <= code < 0xE000:
            raise self.fail(start, "escape sequence is invalid Unicode code point")
        return chr(code)
