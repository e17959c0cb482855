"""Expressions to Python values, and the component references they contain.

Values are ``str`` (``Secret`` for secrets), ``int``, ``float``, ``bool``,
``None``, ``list``, ``dict`` and capsules: any other object a component
exports. A reference such as ``discovery.relabel.local_pods.output`` names the
export ``output`` of the component ``discovery.relabel.local_pods``: the
shortest dotted prefix that is a component id wins (Alloy's ``ResolveTraversal``),
and only then is the first name looked up in the standard library.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from agent.config.component import Secret
from agent.config.lexer import Position, error_at
from agent.config.parser import (
    Access,
    Binary,
    Call,
    Expr,
    Identifier,
    Index,
    ListExpr,
    Literal,
    ObjectExpr,
    Unary,
)
from agent.config.stdlib import CallError, Function, build_identifiers, type_name

__all__ = ["UNKNOWN", "Reference", "Scope", "evaluate", "is_unknown", "references", "unknown"]


class _Unknown:
    """A value that depends on exports not known yet (while a configuration is only checked).

    ``type`` is its Alloy type (``"capsule"``, ``"array"``, ...) when the exporting
    kind declares it, so that a value of the wrong type is rejected before anything runs.
    """

    __slots__ = ("type",)

    def __init__(self, type_: str | None = None) -> None:
        self.type = type_

    def __repr__(self) -> str:
        return "UNKNOWN" if self.type is None else f"UNKNOWN({self.type})"


UNKNOWN: Any = _Unknown()


def unknown(type_: str | None) -> Any:
    """A value not known yet, of Alloy type ``type_`` (None: of any type)."""
    return UNKNOWN if type_ is None else _Unknown(type_)


def is_unknown(value: Any) -> bool:
    return isinstance(value, _Unknown)


@dataclass(frozen=True, slots=True)
class Reference:
    """``component_id`` followed by the export ``fields`` read from it."""

    component_id: str
    fields: tuple[str, ...]
    pos: Position


class Scope:
    """What expressions can see: each component's exports by id, and the standard library.

    A component whose exports are not known yet maps to ``UNKNOWN``; everything
    computed from it is ``UNKNOWN`` too. ``environ`` is what ``sys.env`` reads.
    """

    def __init__(
        self,
        exports: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.exports: Mapping[str, Any] = exports or {}
        self.identifiers = build_identifiers(environ or {})


def references(expr: Expr, component_ids: Collection[str]) -> list[Reference]:
    """The component references in ``expr``, found without evaluating it.

    Raises ConfigError for a name that is neither a component nor in the
    standard library.
    """
    found: list[Reference] = []
    pending = [expr]
    while pending:
        node = pending.pop()
        chain = _chain(node)
        if chain is None:
            pending.extend(reversed(list(_children(node))))  # visit in source order
            continue
        reference = _resolve(chain, component_ids)
        if reference is not None:
            found.append(reference)
        elif chain[0][0] not in _stdlib_names():
            dotted = ".".join(name for name, _ in chain)
            raise error_at(chain[0][1], f'component "{dotted}" does not exist or is out of scope')
    return found


def evaluate(expr: Expr, scope: Scope) -> Any:
    """The value of ``expr``; raise ConfigError positioned at the faulty part."""
    return _EVALUATORS[type(expr)](expr, scope)


@functools.cache
def _stdlib_names() -> frozenset[str]:
    return frozenset(build_identifiers({}))


def _chain(expr: Expr) -> list[tuple[str, Position]] | None:
    """``a.b.c`` as [(a, pos), (b, pos), (c, pos)], or None if ``expr`` is not such a chain."""
    names: list[tuple[str, Position]] = []
    while isinstance(expr, Access):
        names.append((expr.name, expr.name_pos))
        expr = expr.value
    if not isinstance(expr, Identifier):
        return None
    names.append((expr.name, expr.pos))
    return names[::-1]


def _resolve(chain: list[tuple[str, Position]], ids: Collection[str]) -> Reference | None:
    names = [name for name, _ in chain]
    for length in range(1, len(names) + 1):
        prefix = ".".join(names[:length])
        if prefix in ids:
            return Reference(prefix, tuple(names[length:]), chain[0][1])
    return None


def _children(expr: Expr) -> Iterator[Expr]:
    if isinstance(expr, Access):
        yield expr.value
    elif isinstance(expr, Index):
        yield from (expr.value, expr.index)
    elif isinstance(expr, Call):
        yield from (expr.function, *expr.args)
    elif isinstance(expr, ListExpr):
        yield from expr.items
    elif isinstance(expr, ObjectExpr):
        yield from (field.value for field in expr.fields)
    elif isinstance(expr, Unary):
        yield expr.operand
    elif isinstance(expr, Binary):
        yield from (expr.left, expr.right)


def _eval_chain(expr: Identifier | Access, scope: Scope) -> Any:
    chain = _chain(expr)
    if chain is None:  # an access on something computed: f(x).name
        assert isinstance(expr, Access)
        return _access(evaluate(expr.value, scope), expr.name, expr.name_pos)
    reference = _resolve(chain, scope.exports.keys())
    if reference is not None:
        value, rest = (
            scope.exports[reference.component_id],
            chain[len(chain) - len(reference.fields) :],
        )
    elif chain[0][0] in scope.identifiers:
        value, rest = scope.identifiers[chain[0][0]], chain[1:]
    else:
        raise error_at(chain[0][1], f'identifier "{chain[0][0]}" does not exist')
    for name, pos in rest:
        value = _access(value, name, pos)
    return value


def _access(value: Any, name: str, pos: Position) -> Any:
    if is_unknown(value):
        return UNKNOWN
    if not isinstance(value, dict):
        raise error_at(pos, f'cannot access field "{name}" on value of type {type_name(value)}')
    if name not in value:
        raise error_at(pos, f'field "{name}" does not exist')
    return value[name]


def _eval_index(expr: Index, scope: Scope) -> Any:
    value, index = evaluate(expr.value, scope), evaluate(expr.index, scope)
    if is_unknown(value) or is_unknown(index):
        return UNKNOWN
    if isinstance(value, list):
        if not _is_number(index):
            raise error_at(expr.index.pos, f"expected number, got {type_name(index)}")
        if not 0 <= int(index) < len(value):
            message = f"index {int(index)} is out of range of array with length {len(value)}"
            raise error_at(expr.index.pos, message)
        return value[int(index)]
    if isinstance(value, dict):
        if not isinstance(index, str):
            raise error_at(expr.index.pos, f"expected string, got {type_name(index)}")
        return value.get(index)  # like Alloy, a missing key read with [] is null
    raise error_at(expr.value.pos, f"expected object or array, got {type_name(value)}")


def _eval_call(expr: Call, scope: Scope) -> Any:
    function = evaluate(expr.function, scope)
    if not isinstance(function, Function):
        raise error_at(expr.function.pos, f"expected function, got {type_name(function)}")
    args = [evaluate(arg, scope) for arg in expr.args]
    if any(is_unknown(arg) for arg in args):
        return UNKNOWN
    try:
        return function.call(args)
    except CallError as exc:
        at = expr.args[exc.argument].pos if exc.argument is not None else expr.pos
        raise error_at(at, f"{function.name}: {exc}") from exc


def _eval_unary(expr: Unary, scope: Scope) -> Any:
    value = evaluate(expr.operand, scope)
    if is_unknown(value):
        return UNKNOWN
    if expr.op == "!":
        if not isinstance(value, bool):
            raise error_at(expr.operand.pos, f"expected bool, got {type_name(value)}")
        return not value
    if not _is_number(value):
        raise error_at(expr.operand.pos, f"expected number, got {type_name(value)}")
    return -value


def _eval_binary(expr: Binary, scope: Scope) -> Any:
    left, right = evaluate(expr.left, scope), evaluate(expr.right, scope)
    if is_unknown(left) or is_unknown(right):
        return UNKNOWN
    if expr.op in ("==", "!="):
        return _equal(left, right) == (expr.op == "==")
    allowed, operate = _BINARY[expr.op]
    for operand, node in ((left, expr.left), (right, expr.right)):
        if type_name(operand) not in allowed:
            expected = " or ".join(allowed)
            raise error_at(node.pos, f"expected {expected}, got {type_name(operand)}")
    if _kind(left) != _kind(right):
        raise error_at(expr.right.pos, f"expected {type_name(left)}, got {type_name(right)}")
    if expr.op in ("/", "%") and right == 0:
        raise error_at(expr.right.pos, "divide by zero error")
    return operate(left, right)


def _kind(value: Any) -> str:
    """Strings and secrets mix (the result is a secret); every other pair must match."""
    name = type_name(value)
    return "string" if name == "secret" else name


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(left: Any, right: Any) -> bool:
    if type_name(left) != type_name(right):
        return False
    if isinstance(left, list):
        return len(left) == len(right) and all(map(_equal, left, right))
    if isinstance(left, dict):
        return left.keys() == right.keys() and all(_equal(left[k], right[k]) for k in left)
    return bool(left == right)


def _add(left: Any, right: Any) -> Any:
    if isinstance(left, Secret) or isinstance(right, Secret):
        return Secret(left + right)
    return left + right


def _divide(left: Any, right: Any) -> Any:
    """Go semantics: integer division truncates toward zero."""
    if isinstance(left, int) and isinstance(right, int):
        quotient = abs(left) // abs(right)
        return quotient if (left < 0) == (right < 0) else -quotient
    return left / right


def _modulo(left: Any, right: Any) -> Any:
    if isinstance(left, int) and isinstance(right, int):
        return left - right * _divide(left, right)
    return math.fmod(left, right)


def _power(left: Any, right: Any) -> Any:
    if isinstance(left, int) and isinstance(right, int) and right >= 0:
        return left**right
    return math.pow(left, right)


_NUMBER, _ORDERED, _BOOL = ("number",), ("number", "string"), ("bool",)
_BINARY: dict[str, tuple[tuple[str, ...], Callable[[Any, Any], Any]]] = {
    "||": (_BOOL, lambda a, b: a or b),
    "&&": (_BOOL, lambda a, b: a and b),
    "+": (("number", "string", "secret"), _add),
    "-": (_NUMBER, lambda a, b: a - b),
    "*": (_NUMBER, lambda a, b: a * b),
    "/": (_NUMBER, _divide),
    "%": (_NUMBER, _modulo),
    "^": (_NUMBER, _power),
    "<": (_ORDERED, lambda a, b: a < b),
    "<=": (_ORDERED, lambda a, b: a <= b),
    ">": (_ORDERED, lambda a, b: a > b),
    ">=": (_ORDERED, lambda a, b: a >= b),
}

_EVALUATORS: dict[type, Callable[[Any, Scope], Any]] = {
    Literal: lambda expr, scope: expr.value,
    Identifier: _eval_chain,
    Access: _eval_chain,
    Index: _eval_index,
    Call: _eval_call,
    ListExpr: lambda expr, scope: [evaluate(item, scope) for item in expr.items],
    ObjectExpr: lambda expr, scope: {f.key: evaluate(f.value, scope) for f in expr.fields},
    Unary: _eval_unary,
    Binary: _eval_binary,
}
