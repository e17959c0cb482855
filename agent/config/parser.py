"""The recursive-descent parser of the Alloy syntax, and the tree it builds.

The grammar and every message follow grafana/alloy ``syntax/parser/internal.go``.
Unlike Alloy, parsing stops at the first error instead of collecting them, and
nesting is limited to MAX_DEPTH levels: the parser and the evaluator recurse
once per level, so a deeper file would exhaust Python's stack.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from agent.config.lexer import (
    BOOL,
    EOF,
    FLOAT,
    IDENT,
    NULL,
    NUMBER,
    STRING,
    TERMINATOR,
    Position,
    Token,
    error_at,
    is_identifier,
    scan,
)
from agent.errors import ConfigError

__all__ = [
    "MAX_DEPTH",
    "Access",
    "Attribute",
    "Binary",
    "Block",
    "Call",
    "Expr",
    "File",
    "Identifier",
    "Index",
    "ListExpr",
    "Literal",
    "ObjectExpr",
    "ObjectField",
    "Statement",
    "Unary",
    "parse",
]

# Binary precedence from syntax/token/token.go; "^" is handled apart (right-associative).
_PRECEDENCE = {
    "||": 1, "&&": 2,
    "==": 3, "!=": 3, "<": 3, "<=": 3, ">": 3, ">=": 3,
    "+": 4, "-": 4, "*": 5, "/": 5, "%": 5,
}  # fmt: skip
_LITERALS = {STRING, NUMBER, FLOAT, BOOL, NULL}

# Levels of blocks in blocks and of expressions in expressions (brackets,
# operands, accesses, calls); real configurations use fewer than ten.
MAX_DEPTH = 100


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any  # str, int, float, bool or None
    pos: Position


@dataclass(frozen=True, slots=True)
class Identifier:
    name: str
    pos: Position


@dataclass(frozen=True, slots=True)
class Access:
    value: Expr
    name: str
    pos: Position  # of the expression's start
    name_pos: Position


@dataclass(frozen=True, slots=True)
class Index:
    value: Expr
    index: Expr
    pos: Position


@dataclass(frozen=True, slots=True)
class Call:
    function: Expr
    args: tuple[Expr, ...]
    pos: Position


@dataclass(frozen=True, slots=True)
class ListExpr:
    items: tuple[Expr, ...]
    pos: Position


@dataclass(frozen=True, slots=True)
class ObjectField:
    key: str
    value: Expr
    pos: Position  # of the key


@dataclass(frozen=True, slots=True)
class ObjectExpr:
    fields: tuple[ObjectField, ...]
    pos: Position


@dataclass(frozen=True, slots=True)
class Unary:
    op: str
    operand: Expr
    pos: Position


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    left: Expr
    right: Expr
    pos: Position  # of the left operand's start, like Alloy's StartPos
    op_pos: Position


Expr = Literal | Identifier | Access | Index | Call | ListExpr | ObjectExpr | Unary | Binary


@dataclass(frozen=True, slots=True)
class Attribute:
    name: str
    value: Expr
    pos: Position


@dataclass(frozen=True, slots=True)
class Block:
    name: str  # dotted: "pyroscope.ebpf"
    label: str | None
    body: tuple[Statement, ...]
    pos: Position


Statement = Attribute | Block


@dataclass(frozen=True, slots=True)
class File:
    name: str
    body: tuple[Statement, ...]


def parse(text: str, filename: str = "<config>") -> File:
    """Parse a configuration; raise ConfigError (``file:line:col: ...``) at the first fault."""
    parser = _Parser(scan(text, filename))
    return File(filename, parser.parse_body(EOF))


class _Parser:
    def __init__(self, tokens: Iterator[Token]) -> None:
        self._tokens = tokens
        self.tok = next(tokens)
        self.depth = 0

    def descend(self, pos: Position) -> None:
        """One level deeper, at ``pos``; each parse function puts back the depth it found."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise error_at(pos, f"nested more than {MAX_DEPTH} levels deep")

    def next(self) -> Token:
        current = self.tok
        if current.kind != EOF:
            self.tok = next(self._tokens)
        return current

    def fail(self, message: str) -> ConfigError:
        return error_at(self.tok.pos, message)

    def expect(self, kind: str) -> Token:
        if self.tok.kind != kind:
            raise self.fail(f"expected {kind}, got {self.tok}")
        return self.next()

    def parse_body(self, until: str) -> tuple[Statement, ...]:
        """Body = [ Statement { terminator Statement } ]"""
        body: list[Statement] = []
        while self.tok.kind not in (until, EOF):
            body.append(self.parse_statement())
            if self.tok.kind == until:
                break
            self.expect(TERMINATOR)
        return tuple(body)

    def parse_statement(self) -> Statement:
        start = self.tok.pos
        names, label, label_pos = self.parse_block_name()
        if self.tok.kind == "=":
            self.next()
            if len(names) != 1:
                msg = 'attribute names may only consist of a single identifier with no "."'
                raise error_at(start, msg)
            if label_pos is not None:
                raise error_at(label_pos, "attribute names may not have labels")
            return Attribute(names[0], self.parse_expression(), start)
        if self.tok.kind == "{":
            self.descend(self.next().pos)
            body = self.parse_body("}")
            self.expect("}")
            self.depth -= 1
            return Block(".".join(names), label, body, start)
        if len(names) == 1 and not label:  # could still become an attribute or a block
            raise self.fail(f"expected attribute assignment or block body, got {self.tok}")
        raise self.fail(f"expected block body, got {self.tok}")

    def parse_block_name(self) -> tuple[list[str], str | None, Position | None]:
        """BlockName = identifier { "." identifier } [ string ]"""
        names = [self.expect_identifier()]
        while self.tok.kind == ".":
            self.next()
            names.append(self.expect_identifier())
        if self.tok.kind in ("=", "{"):
            return names, None, None
        if self.tok.kind != STRING:
            raise self.fail(f"expected block label, got {self.tok}")
        if not self.tok.text.startswith('"'):
            got = _quote(self.tok.text)
            raise self.fail(f"expected block label to be a double quoted string, but got {got}")
        label = self.tok.text[1:-1]
        if label and not is_identifier(label):
            raise self.fail(
                f"expected block label to be a valid identifier, but got {_quote(label)}"
            )
        return names, label, self.next().pos

    def expect_identifier(self) -> str:
        if self.tok.kind != IDENT:
            raise self.fail(f"expected identifier, got {self.tok}")
        return self.next().text

    def parse_expression(self, min_precedence: int = 1) -> Expr:
        """Or/And/Cmp/Add/Mul levels by precedence climbing; all left-associative."""
        depth = self.depth
        left = self.parse_power()
        while _PRECEDENCE.get(self.tok.kind, 0) >= min_precedence:
            op = self.next()
            self.descend(op.pos)  # a chain a + b + c nests to the left
            right = self.parse_expression(_PRECEDENCE[op.kind] + 1)
            left = Binary(op.kind, left, right, left.pos, op.pos)
        self.depth = depth
        return left

    def parse_power(self) -> Expr:
        """Pow = Unary [ "^" Pow ]"""
        left = self.parse_unary()
        if self.tok.kind != "^":
            return left
        op = self.next()
        self.descend(op.pos)
        right = self.parse_power()
        self.depth -= 1
        return Binary("^", left, right, left.pos, op.pos)

    def parse_unary(self) -> Expr:
        depth = self.depth
        if self.tok.kind in ("!", "-"):
            op = self.next()
            self.descend(op.pos)
            operand = self.parse_unary()
            self.depth = depth
            return Unary(op.kind, operand, op.pos)
        expr = self.parse_primary()
        while True:
            if self.tok.kind in (".", "[", "("):
                self.descend(self.tok.pos)  # a chain a.b[c](d) nests to the left
            if self.tok.kind == ".":
                self.next()
                name_pos = self.tok.pos
                expr = Access(expr, self.expect(IDENT).text, expr.pos, name_pos)
            elif self.tok.kind == "[":
                self.next()
                index = self.parse_expression()
                self.expect("]")
                expr = Index(expr, index, expr.pos)
            elif self.tok.kind == "(":
                self.next()
                expr = Call(expr, self.parse_expression_list(")"), expr.pos)
            elif self.tok.kind in (STRING, "{"):
                self.reject_block(expr)
            else:
                self.depth = depth
                return expr

    def reject_block(self, expr: Expr) -> None:
        """A block where an expression should be (``a = foo "x" { ... }``) gets its own message."""
        if self.tok.kind == STRING:
            self.next()
        self.descend(self.expect("{").pos)
        self.parse_body("}")
        self.expect("}")
        raise error_at(expr.pos, "cannot use a block as an expression")

    def parse_primary(self) -> Expr:
        tok = self.tok
        if tok.kind == IDENT:
            self.next()
            return Identifier(tok.text, tok.pos)
        if tok.kind in _LITERALS:
            self.next()
            return Literal(tok.value, tok.pos)
        if tok.kind not in ("(", "[", "{"):
            raise self.fail(f"expected expression, got {tok}")
        self.descend(self.next().pos)
        expr: Expr
        if tok.kind == "(":
            expr = self.parse_expression()
            self.expect(")")
        elif tok.kind == "[":
            expr = ListExpr(self.parse_expression_list("]"), tok.pos)
        else:
            expr = ObjectExpr(self.parse_field_list(), tok.pos)
        self.depth -= 1
        return expr

    def parse_expression_list(self, until: str) -> tuple[Expr, ...]:
        """ExprList = Expr { "," Expr } [ "," ], then the closing token."""
        items: list[Expr] = []
        while self.tok.kind not in (until, EOF):
            items.append(self.parse_expression())
            if self.tok.kind == until:
                break
            if self.tok.kind != ",":
                raise self.fail("missing ',' in expression list")
            self.next()
        self.expect(until)
        return tuple(items)

    def parse_field_list(self) -> tuple[ObjectField, ...]:
        """FieldList = Field { "," Field } [ "," ], then "}"."""
        fields: list[ObjectField] = []
        while self.tok.kind not in ("}", EOF):
            fields.append(self.parse_field())
            if self.tok.kind == "}":
                break
            if self.tok.kind != ",":
                raise self.fail("missing ',' in field list")
            self.next()
        self.expect("}")
        return tuple(fields)

    def parse_field(self) -> ObjectField:
        """Field = ( string | identifier ) "=" Expr"""
        key = self.tok
        if key.kind not in (STRING, IDENT):
            raise self.fail(f"expected field name (string or identifier), got {key}")
        self.next()
        self.expect("=")
        name = key.value if key.kind == STRING else key.text
        return ObjectField(name, self.parse_expression(), key.pos)


def _quote(text: str) -> str:
    """Go's ``%q`` for the texts that appear in messages."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
