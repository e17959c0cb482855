"""The Alloy standard-library functions and constants that Emberscope supports.

Only the simple members of Alloy's standard library are here, under
their namespaced names (``string.format``) and their deprecated top-level
spellings (``format``). Semantics follow Go's ``strings`` and ``fmt``.
"""

from __future__ import annotations

import json
import platform
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import agent
from agent.config.component import Secret
from agent.config.parser import MAX_DEPTH

__all__ = ["CallError", "Function", "build_identifiers", "type_name"]


class CallError(Exception):
    """A function call failed; ``argument`` is the index of the faulty argument, if any."""

    def __init__(self, message: str, argument: int | None = None) -> None:
        super().__init__(message)
        self.argument = argument


@dataclass(frozen=True)
class Function:
    """A standard-library function: ``min_args`` required, up to ``max_args`` (None: any)."""

    name: str
    impl: Callable[..., Any]
    min_args: int
    max_args: int | None

    def call(self, args: list[Any]) -> Any:
        count = len(args)
        if self.max_args is None and count < self.min_args:
            raise CallError(f"expected at least {self.min_args} args, got {count}")
        if self.max_args is not None and not self.min_args <= count <= self.max_args:
            raise CallError(f"expected {self.max_args} args, got {count}")
        return self.impl(*args)


def type_name(value: Any) -> str:
    """The Alloy type of a Python value, as error messages name it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, Secret):
        return "secret"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, Function):
        return "function"
    return "capsule"


def build_identifiers(environ: Mapping[str, str]) -> dict[str, Any]:
    """The top-level names of the standard library, reading ``sys.env`` from ``environ``."""
    env = Function("sys.env", lambda name: environ.get(_text(name, 0), ""), 1, 1)
    strings = {name: Function(f"string.{name}", *spec) for name, spec in _STRING_FUNCTIONS.items()}
    concat = Function("array.concat", _concat, 0, None)
    from_json = Function("encoding.from_json", _from_json, 1, 1)
    nonsensitive = Function("convert.nonsensitive", _nonsensitive, 1, 1)
    identifiers: dict[str, Any] = {
        "sys": {"env": env},
        "env": env,
        "coalesce": Function("coalesce", _coalesce, 0, None),
        "constants": _constants(),
        "string": strings,
        "array": {"concat": concat},
        "encoding": {"from_json": from_json},
        "convert": {"nonsensitive": nonsensitive},
        "concat": concat,
        "json_decode": from_json,
        "nonsensitive": nonsensitive,
    }
    identifiers.update(strings)  # deprecated top-level spellings: format, join, ...
    return identifiers


def _constants() -> dict[str, str]:
    machine = platform.machine().lower()
    return {
        "hostname": socket.gethostname(),
        "os": platform.system().lower(),
        "arch": _GOARCH.get(machine, machine),
        "version": f"v{agent.__version__}",
    }


_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "armv7l": "arm"}


def _text(value: Any, index: int) -> str:
    """A plain string argument; a secret must pass through ``nonsensitive`` first."""
    if not isinstance(value, str) or isinstance(value, Secret):
        raise CallError(f"expected string, got {type_name(value)}", index)
    return value


def _array(value: Any, index: int) -> list[Any]:
    if not isinstance(value, list):
        raise CallError(f"expected array, got {type_name(value)}", index)
    return value


def _concat(*arrays: Any) -> list[Any]:
    return [item for index, array in enumerate(arrays) for item in _array(array, index)]


def _coalesce(*values: Any) -> Any:
    """The first value that is not null, zero, false, "" or an empty array or object."""
    for value in values:
        if value is not None and value != 0 and value not in ("", [], {}):
            return value
    return values[-1] if values else None


def _from_json(text: Any) -> Any:
    try:
        value = json.loads(_text(text, 0))
    except json.JSONDecodeError as exc:
        raise CallError(f"invalid JSON: {exc}", 0) from exc
    except RecursionError as exc:  # the decoder recurses once per level too
        raise CallError(f"JSON nested more than {MAX_DEPTH} levels deep", 0) from exc
    if _depth_exceeds(value, MAX_DEPTH):
        raise CallError(f"JSON nested more than {MAX_DEPTH} levels deep", 0)
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    """True if arrays and objects nest deeper than ``limit``; without recursion."""
    pending = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, list | dict):
            if depth == limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            pending.extend((child, depth + 1) for child in children)
    return False


def _nonsensitive(value: Any) -> str:
    if not isinstance(value, str):
        raise CallError(f"expected secret, got {type_name(value)}", 0)
    return str(value)


def _join(items: Any, separator: Any) -> str:
    array = _array(items, 0)
    return _text(separator, 1).join(_text(item, 0) for item in array)


def _split(text: Any, separator: Any) -> list[str]:
    value, sep = _text(text, 0), _text(separator, 1)
    return list(value) if sep == "" else value.split(sep)


def _string_op(op: Callable[..., str]) -> Callable[..., str]:
    """Wrap a ``str`` method so that every argument must be a string."""
    return lambda *args: op(*(_text(arg, i) for i, arg in enumerate(args)))


# Go fmt verbs → Python %-format conversions, for string.format.
_VERB = re.compile(r"%([-+# 0]*)(\d*)(?:\.(\d+))?([a-zA-Z%])")
_NUMERIC_VERBS = {"d": "d", "f": "f", "F": "F", "e": "e", "E": "E", "g": "g", "G": "G",
                  "x": "x", "X": "X", "o": "o", "b": "b"}  # fmt: skip


def _format(template: Any, *args: Any) -> str:
    """``fmt.Sprintf`` for the verbs configurations use: %s %v %q %d %f %e %g %x %o %b %t %%."""
    values = list(args)

    def substitute(match: re.Match[str]) -> str:
        flags, width, precision, verb = match.groups()
        if verb == "%":
            return "%"
        if not values:
            return f"%!{verb}(MISSING)"
        value = values.pop(0)
        spec = f"{flags}{width}" + (f".{precision}" if precision else "")
        return _format_one(value, verb, spec)

    return _VERB.sub(substitute, _text(template, 0))


def _format_one(value: Any, verb: str, spec: str) -> str:
    if verb in _NUMERIC_VERBS and isinstance(value, int | float) and not isinstance(value, bool):
        number = int(value) if verb in "dxXob" else float(value)
        return format(number, spec.replace("#", "") + _NUMERIC_VERBS[verb])
    if verb == "q":
        return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)
    if verb in "sv":
        return format(_go_text(value), spec.replace("-", "<"))
    if verb == "t" and isinstance(value, bool):
        return _go_text(value)
    return f"%!{verb}({type_name(value)}={_go_text(value)})"


def _go_text(value: Any) -> str:
    if isinstance(value, Secret):
        return "(secret)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    return str(value)


_STRING_FUNCTIONS: dict[str, tuple[Callable[..., Any], int, int | None]] = {
    "format": (_format, 1, None),
    "join": (_join, 2, 2),
    "replace": (_string_op(str.replace), 3, 3),
    "split": (_split, 2, 2),
    "to_lower": (_string_op(str.lower), 1, 1),
    "to_upper": (_string_op(str.upper), 1, 1),
    "trim": (_string_op(str.strip), 2, 2),
    "trim_prefix": (_string_op(str.removeprefix), 2, 2),
    "trim_suffix": (_string_op(str.removesuffix), 2, 2),
    "trim_space": (_string_op(str.strip), 1, 1),
}
