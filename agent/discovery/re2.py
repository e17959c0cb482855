"""Go ``regexp`` patterns run by Python's ``re``: compiled as Alloy anchors them, with Go's
``Expand`` and ``ReplaceAllString`` semantics. The syntax translation is in ``re2syntax``."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from agent.discovery.re2syntax import Re2Error, translate

__all__ = ["Re2Error", "Re2Pattern", "compile_anchored"]


@dataclass(frozen=True, slots=True)
class Re2Pattern:
    """A translated pattern; ``group_names[i]`` is group i's Go name ("" when unnamed)."""

    source: str
    compiled: re.Pattern[str]
    group_names: tuple[str, ...]

    def search(self, text: str, pos: int = 0) -> re.Match[str] | None:
        return self.compiled.search(text, pos)

    def expand(self, template: str, match: re.Match[str]) -> str:
        """Go's ``Regexp.Expand``: ``$1``, ``${1}``, ``$name``, ``$$``; bad refs stay literal."""
        out: list[str] = []
        position = 0
        while (dollar := template.find("$", position)) >= 0:
            out.append(template[position:dollar])
            if template.startswith("$", dollar + 1):
                out.append("$")
                position = dollar + 2
                continue
            reference = _extract_reference(template, dollar + 1)
            if reference is None:
                out.append("$")
                position = dollar + 1
                continue
            name, position = reference
            out.append(self._group_text(match, name))
        out.append(template[position:])
        return "".join(out)

    def replace_all(self, text: str, template: str) -> str:
        """Go's ``ReplaceAllString``, including its rule for empty matches after a match."""
        out: list[str] = []
        last_end = search_pos = 0
        while search_pos <= len(text):
            match = self.compiled.search(text, search_pos)
            if match is None:
                break
            start, end = match.span()
            out.append(text[last_end:start])
            if end > last_end or start == 0:
                out.append(self.expand(template, match))
            last_end = end
            search_pos = max(search_pos + 1, end)
        out.append(text[last_end:])
        return "".join(out)

    def _group_text(self, match: re.Match[str], name: str) -> str:
        number = _group_number(name)
        if number >= 0:
            if number < len(self.group_names) and match.start(number) >= 0:
                return match.group(number)
            return ""
        for index, group_name in enumerate(self.group_names):
            if group_name == name and match.start(index) >= 0:
                return match.group(index)
        return ""


def _extract_reference(template: str, start: int) -> tuple[str, int] | None:
    """The name after a ``$`` and where it ends, or None when the ``$`` is literal."""
    braced = template.startswith("{", start)
    position = start + 1 if braced else start
    end = position
    while end < len(template) and _is_name_char(template[end]):
        end += 1
    if end == position:
        return None
    if braced:
        if not template.startswith("}", end):
            return None
        return template[position:end], end + 1
    return template[position:end], end


def _is_name_char(char: str) -> bool:
    """Go's ``unicode.IsLetter || unicode.IsDigit || '_'`` (categories L and Nd)."""
    return char.isalpha() or char.isdecimal() or char == "_"


def _group_number(name: str) -> int:
    """Go reads a name as a number only for ASCII digits without a leading zero, and stops
    counting (making it a name) once the value reaches 1e8 before the last digit."""
    if not name.isascii() or not name.isdigit() or (len(name) > 1 and name[0] == "0"):
        return -1
    return int(name) if len(name) <= 9 else -1


@functools.lru_cache(maxsize=256)
def compile_anchored(regex: str) -> Re2Pattern:
    """Compile ``regex`` as Alloy does, wrapped as ``^(?s:<regex>)$``; raise Re2Error."""
    try:
        regex.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise Re2Error(f"invalid regex {regex!r}: invalid UTF-8") from exc
    try:
        python_pattern, group_names = translate("^(?s:" + regex + ")$")
    except Re2Error as exc:
        raise Re2Error(f"invalid regex {regex!r}: {exc}") from None
    try:
        compiled = re.compile(python_pattern)
    except re.error as exc:  # a translation gap, not a user error Go would report
        raise Re2Error(f"regex {regex!r} cannot be run by Python's re: {exc}") from exc
    return Re2Pattern(regex, compiled, group_names)
