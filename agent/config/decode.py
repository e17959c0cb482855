"""A block of the configuration onto a component's ``Arguments`` dataclass.

Field names are the Alloy attribute and block names; field types say how each
value is converted (see ``agent.config.component``). Errors carry the position
of the offending attribute, block or list element, with Alloy's wording, and
never show a value that could be a secret.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import types
import typing
from collections import defaultdict
from typing import Any, TypeVar

from agent.config.component import URL, ArgumentError, Capsule, Duration, Secret
from agent.config.duration import parse_duration
from agent.config.evaluate import UNKNOWN, Scope, evaluate, is_unknown
from agent.config.lexer import Position, error_at
from agent.config.parser import Attribute, Block, Expr, ListExpr, ObjectExpr
from agent.config.stdlib import type_name

__all__ = ["alloy_type", "decode"]

T = TypeVar("T")


def decode(block: Block, arguments_class: type[T], scope: Scope) -> T:
    """Build ``arguments_class`` from the attributes and nested blocks of ``block``.

    Values that depend on exports the scope marks ``UNKNOWN`` take the field's
    default, or an empty value of the field's type, so that everything else in
    the block can still be checked; one whose type is known must fit the field.
    """
    fields = {f.name: f for f in dataclasses.fields(arguments_class) if f.init}
    hints = _hints(arguments_class)
    values: dict[str, Any] = {}
    positions: dict[str, Position] = {}
    blocks: dict[str, list[Block]] = defaultdict(list)
    for statement in block.body:
        field = _field_for(statement, fields)
        if isinstance(statement, Attribute):
            if statement.name in positions:
                message = f'attribute "{statement.name}" may only be provided once'
                raise error_at(statement.pos, message)
            values[statement.name] = _decode_expr(statement.value, hints[field.name], scope)
        else:
            blocks[statement.name].append(statement)
        positions.setdefault(statement.name, statement.pos)
    for name, group in blocks.items():
        values[name] = _decode_blocks(name, group, hints[name], scope)
    _fill_unknowns(values, fields, hints)
    _check_required(block, fields, values)
    try:
        return arguments_class(**values)
    except ArgumentError as exc:
        raise error_at(positions.get(exc.argument, block.pos), str(exc)) from exc


def _field_for(
    statement: Attribute | Block, fields: dict[str, dataclasses.Field[Any]]
) -> dataclasses.Field[Any]:
    name, is_block = statement.name, isinstance(statement, Block)
    field = fields.get(name)
    if field is None:
        kind = "block" if is_block else "attribute"
        raise error_at(statement.pos, f'unrecognized {kind} name "{name}"')
    if _is_block(field) and not is_block:
        raise error_at(statement.pos, f'"{name}" must be a block, but is used as an attribute')
    if is_block and not _is_block(field):
        raise error_at(statement.pos, f'"{name}" must be an attribute, but is used as a block')
    if isinstance(statement, Block) and statement.label is not None:
        message = f'block "{name}" does not support specifying labels'
        raise error_at(statement.pos, message)
    return field


def _decode_blocks(name: str, group: list[Block], hint: Any, scope: Scope) -> Any:
    if typing.get_origin(hint) is list:
        (element,) = typing.get_args(hint)
        return [decode(block, element, scope) for block in group]
    if len(group) > 1:
        raise error_at(group[1].pos, f'block "{name}" may only be specified once')
    return decode(group[0], _without_none(hint), scope)


def _fill_unknowns(
    values: dict[str, Any], fields: dict[str, dataclasses.Field[Any]], hints: dict[str, Any]
) -> None:
    """Replace values not known yet with the default, or an empty value of the type."""
    for name in [name for name, value in values.items() if is_unknown(value)]:
        if _is_required(fields[name]):
            values[name] = _placeholder(hints[name])
        else:
            del values[name]


def _check_required(
    block: Block, fields: dict[str, dataclasses.Field[Any]], values: dict[str, Any]
) -> None:
    for name, field in fields.items():
        if name not in values and _is_required(field):
            kind = "block" if _is_block(field) else "attribute"
            raise error_at(block.pos, f'missing required {kind} "{name}"')


def _decode_expr(expr: Expr, hint: Any, scope: Scope) -> Any:
    """Decode literal lists and objects element by element, so errors point at the element."""
    target = _without_none(hint)
    origin = typing.get_origin(target)
    if isinstance(expr, ListExpr) and origin is list:
        (element,) = typing.get_args(target)
        return [_element(_decode_expr(item, element, scope), element) for item in expr.items]
    if isinstance(expr, ObjectExpr) and origin is dict:
        _, element = typing.get_args(target)
        return {
            f.key: _element(_decode_expr(f.value, element, scope), element) for f in expr.fields
        }
    return _convert(evaluate(expr, scope), hint, expr.pos)


def _convert(value: Any, hint: Any, pos: Position) -> Any:
    """Convert an evaluated value to the field type ``hint`` (UNKNOWN passes through,
    once its type, if known, is checked)."""
    if is_unknown(value):
        _check_unknown(value, hint, pos)
        return UNKNOWN
    if _is_optional(hint):
        return None if value is None else _convert(value, _without_none(hint), pos)
    origin = typing.get_origin(hint)
    if origin is list:
        (element,) = typing.get_args(hint)
        items = _expect(value, list, "array", pos)
        return [_element(_convert(item, element, pos), element) for item in items]
    if origin is dict:
        _, element = typing.get_args(hint)
        mapping = _expect(value, dict, "object", pos)
        return {
            key: _element(_convert(item, element, pos), element) for key, item in mapping.items()
        }
    converter = _SCALARS.get(hint)
    if converter is None:
        raise TypeError(f"unsupported argument type {hint!r}")
    return converter(value, pos)


def _element(value: Any, hint: Any) -> Any:
    return _placeholder(hint) if is_unknown(value) else value


def _check_unknown(value: Any, hint: Any, pos: Position) -> None:
    """A value not known yet whose Alloy type is known must be one the field accepts."""
    target = _without_none(hint)
    expected = alloy_type(target)
    if value.type is None or expected is None:
        return
    accepted = _ACCEPTS.get(typing.get_origin(target) or target, (expected,))
    if value.type not in accepted:
        raise error_at(pos, f"expected {expected}, got {value.type}")


def alloy_type(hint: Any) -> str | None:
    """The Alloy type of values of the field type ``hint``; None for a union (the
    content of ``local.file``: a string or a secret)."""
    if _is_optional(hint):
        return alloy_type(_without_none(hint))
    if _is_union(hint):
        return None
    origin = typing.get_origin(hint) or hint
    return _TYPE_NAMES.get(origin, "capsule")


_TYPE_NAMES = {
    list: "array",
    dict: "object",
    str: "string",
    URL: "string",
    Duration: "string",
    Secret: "secret",
    int: "number",
    float: "number",
    bool: "bool",
}
# The types that the converters below accept beyond their own.
_ACCEPTS = {
    str: ("string", "number"),
    URL: ("string", "number"),
    int: ("number", "string"),
    float: ("number", "string"),
    Secret: ("secret", "string"),
}


def _expect(value: Any, kind: type, name: str, pos: Position) -> Any:
    if not isinstance(value, kind) or (kind is str and isinstance(value, Secret)):
        raise error_at(pos, f"expected {name}, got {type_name(value)}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _to_string(value: Any, pos: Position) -> str:
    """Numbers may be assigned to strings (Alloy converts them)."""
    if _is_number(value):
        return repr(value) if isinstance(value, float) else str(value)
    return str(_expect(value, str, "string", pos))


def _to_url(value: Any, pos: Position) -> URL:
    return URL(_to_string(value, pos))


def _to_secret(value: Any, pos: Position) -> Secret:
    if not isinstance(value, str):
        raise error_at(pos, f"expected secret, got {type_name(value)}")
    return Secret(value)


def _to_float(value: Any, pos: Position) -> float:
    """Numbers, and strings holding a number (Alloy converts them)."""
    if _is_number(value):
        return float(value)
    try:
        return float(_expect(value, str, "number", pos))
    except ValueError:
        raise error_at(pos, "expected number, got string") from None


def _to_int(value: Any, pos: Position) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and not isinstance(value, Secret):
        with contextlib.suppress(ValueError):
            return int(value)
    number = _to_float(value, pos)
    if not number.is_integer():
        raise error_at(pos, f"expected an integer, got {number!r}")
    return int(number)


def _to_duration(value: Any, pos: Position) -> Duration:
    try:
        return Duration(parse_duration(_expect(value, str, "string", pos)))
    except ValueError as exc:
        raise error_at(pos, str(exc)) from exc


def _to_bool(value: Any, pos: Position) -> bool:
    return bool(_expect(value, bool, "bool", pos))


def _to_capsule(value: Any, pos: Position) -> Any:
    if type_name(value) != "capsule":
        raise error_at(pos, f"expected capsule, got {type_name(value)}")
    return value


_SCALARS = {
    str: _to_string,
    Secret: _to_secret,
    URL: _to_url,
    int: _to_int,
    float: _to_float,
    bool: _to_bool,
    Duration: _to_duration,
    Capsule: _to_capsule,
}


def _placeholder(hint: Any) -> Any:
    """An empty value of a type, standing in for a value not known yet."""
    if _is_optional(hint):
        return None
    origin = typing.get_origin(hint)
    if origin in (list, dict):
        return origin()
    if hint in (str, Secret, URL, int, float, bool, Duration):
        return hint()
    return UNKNOWN  # a capsule: the placeholder object itself


def _is_block(field: dataclasses.Field[Any]) -> bool:
    return bool(field.metadata.get("block", False))


def _is_required(field: dataclasses.Field[Any]) -> bool:
    missing = dataclasses.MISSING
    return field.default is missing and field.default_factory is missing


def _is_optional(hint: Any) -> bool:
    return _is_union(hint) and type(None) in typing.get_args(hint)


def _is_union(hint: Any) -> bool:
    return isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union


def _without_none(hint: Any) -> Any:
    """``X`` for ``X | None``; anything else unchanged."""
    if not _is_union(hint):
        return hint
    (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return inner


@functools.cache
def _hints(arguments_class: type) -> dict[str, Any]:
    return typing.get_type_hints(arguments_class)
