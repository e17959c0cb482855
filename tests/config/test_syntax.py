"""The Alloy syntax: every construct parses to the right tree, every fault has Alloy's message."""

from __future__ import annotations

import pytest

from agent.config.lexer import Position, decode_source
from agent.config.parser import (
    MAX_DEPTH,
    Access,
    Attribute,
    Binary,
    Block,
    Call,
    Identifier,
    Index,
    ListExpr,
    Literal,
    ObjectExpr,
    Unary,
    parse,
)
from agent.errors import ConfigError


def pos(line: int, col: int) -> Position:
    return Position("t.alloy", line, col)


def parse_value(source: str):
    """The expression assigned to ``a`` in ``a = <source>``."""
    (statement,) = parse(f"a = {source}", "t.alloy").body
    return statement.value


def test_block_with_dotted_name_label_and_nested_block():
    source = 'pyroscope.write "endpoint" {\n  endpoint {\n    url = "http://x"\n  }\n}\n'
    (block,) = parse(source, "t.alloy").body
    assert block == Block(
        "pyroscope.write",
        "endpoint",
        (
            Block(
                "endpoint",
                None,
                (Attribute("url", Literal("http://x", pos(3, 11)), pos(3, 5)),),
                pos(2, 3),
            ),
        ),
        pos(1, 1),
    )


def test_empty_block_and_empty_file():
    assert parse('discovery.process "local" {\n}\n', "t.alloy").body[0].body == ()
    assert parse("", "t.alloy").body == ()
    assert parse("// only a comment\n", "t.alloy").body == ()


def test_statements_are_separated_by_newlines_and_comments():
    source = "a = 1 // one\n/* block\ncomment */ b = 2 # not\n"
    with pytest.raises(ConfigError, match=r"^t.alloy:3:18: illegal character U\+0023 '#'$"):
        parse(source, "t.alloy")
    body = parse("a = 1 // one\n/* block\ncomment */ b = 2\n", "t.alloy").body
    assert [s.name for s in body] == ["a", "b"]
    assert body[1].pos == pos(3, 12)


@pytest.mark.parametrize(
    ("source", "value"),
    [
        ('"plain"', "plain"),
        (r'"tab\there \"q\" back\\slash"', 'tab\there "q" back\\slash'),
        (r'"\a\b\f\n\r\v"', "\a\b\f\n\r\v"),
        (r'"\101\x41\u00e9\U0001F600"', "AAé\U0001f600"),
        ("`raw \\n\nstring`", "raw \\n\nstring"),
        ("123", 123),
        ("1.5", 1.5),
        (".5", 0.5),
        ("1e3", 1000.0),
        ("2E-3", 0.002),
        ("true", True),
        ("false", False),
        ("null", None),
    ],
)
def test_literals(source, value):
    literal = parse_value(source)
    assert isinstance(literal, Literal)
    assert literal.value == value
    assert type(literal.value) is type(value)


def test_list_and_object_with_trailing_commas_across_lines():
    value = parse_value('[\n  1,\n  "two",\n]')
    assert value == ListExpr((Literal(1, pos(2, 3)), Literal("two", pos(3, 3))), pos(1, 5))
    obj = parse_value('{\n  "env" = "testing",\n  key = 1,\n}')
    assert isinstance(obj, ObjectExpr)
    assert [(f.key, f.value.value, f.pos) for f in obj.fields] == [
        ("env", "testing", pos(2, 3)),
        ("key", 1, pos(3, 3)),
    ]
    assert parse_value("{}") == ObjectExpr((), pos(1, 5))
    assert parse_value("[]") == ListExpr((), pos(1, 5))


def test_references_calls_and_indexing():
    value = parse_value('sys.env("HOSTNAME") + x[0].y')
    assert isinstance(value, Binary) and value.op == "+"
    call = value.left
    assert call == Call(
        Access(Identifier("sys", pos(1, 5)), "env", pos(1, 5), pos(1, 9)),
        (Literal("HOSTNAME", pos(1, 13)),),
        pos(1, 5),
    )
    access = value.right
    assert isinstance(access, Access) and access.name == "y"
    assert access.value == Index(Identifier("x", pos(1, 27)), Literal(0, pos(1, 29)), pos(1, 27))


def render(expr) -> str:
    """Fully parenthesised form, to check precedence and associativity."""
    if isinstance(expr, Binary):
        return f"({render(expr.left)} {expr.op} {render(expr.right)})"
    if isinstance(expr, Unary):
        return f"({expr.op}{render(expr.operand)})"
    if isinstance(expr, Identifier):
        return expr.name
    return repr(expr.value)


@pytest.mark.parametrize(
    ("source", "tree"),
    [
        ("a || b && c", "(a || (b && c))"),
        ("a == b + c * d", "(a == (b + (c * d)))"),
        ("a - b - c", "((a - b) - c)"),
        ("a ^ b ^ c", "(a ^ (b ^ c))"),
        ("-a ^ 2", "((-a) ^ 2)"),
        ("!a != b", "((!a) != b)"),
        ("(a + b) * c", "((a + b) * c)"),
        ("a < b <= c > d >= e", "((((a < b) <= c) > d) >= e)"),
        ("a / b % c", "((a / b) % c)"),
    ],
)
def test_operator_precedence(source, tree):
    assert render(parse_value(source)) == tree


def test_positions_count_bytes_like_alloy():
    (statement,) = parse('a = "é" + b', "t.alloy").body
    assert statement.value.right.pos == pos(1, 12)  # "é" is two bytes


@pytest.mark.parametrize(
    ("source", "message"),
    [
        # parser
        ("block {\n  a = 1\n", "3:1: expected }, got EOF"),
        ("a = 1 b = 2", "1:7: expected TERMINATOR, got IDENT"),
        ("a.b = 1", '1:1: attribute names may only consist of a single identifier with no "."'),
        ('a "label" = 1', "1:3: attribute names may not have labels"),
        (
            "block `label` {}",
            '1:7: expected block label to be a double quoted string, but got "`label`"',
        ),
        (
            'block "local-pods" {}',
            '1:7: expected block label to be a valid identifier, but got "local-pods"',
        ),
        ('block "true" {}', '1:7: expected block label to be a valid identifier, but got "true"'),
        ("block 1 {}", "1:7: expected block label, got NUMBER"),
        ("a\n", "1:2: expected block label, got TERMINATOR"),
        ('a ""\n', "1:5: expected attribute assignment or block body, got TERMINATOR"),
        ('a.b "x"\n', "1:8: expected block body, got TERMINATOR"),
        ('a "" = 1', "1:3: attribute names may not have labels"),
        ("= 1", "1:1: expected identifier, got ="),
        ("a. = 1", "1:4: expected identifier, got ="),
        ("a = ", "1:5: expected expression, got EOF"),
        ("a = }", "1:5: expected expression, got }"),
        ("a = [1\n]", "1:7: missing ',' in expression list"),
        ("a = [1 2]", "1:8: missing ',' in expression list"),
        ("a = {x = 1\n}", "1:11: missing ',' in field list"),
        ("a = {1 = 2}", "1:6: expected field name (string or identifier), got NUMBER"),
        ("a = {x 2}", "1:8: expected =, got NUMBER"),
        ("a = f(1", "1:8: missing ',' in expression list"),
        ("a = f(1,", "1:9: expected ), got EOF"),
        ("a = x[1", "1:8: expected ], got TERMINATOR"),
        ("a = x.[", "1:7: expected IDENT, got ["),
        ("a = x.1", "1:6: expected TERMINATOR, got FLOAT"),
        ('a = foo "x" {\n  b = 1\n}', "1:5: cannot use a block as an expression"),
        ("a = foo {}", "1:5: cannot use a block as an expression"),
        ("block {\n", "2:1: expected }, got EOF"),
        # scanner
        ("a = #", "1:5: illegal character U+0023 '#'"),
        ("a = $x", "1:5: illegal character U+0024 '$'"),
        ("a = 'x'", "1:5: illegal single-quoted string; use double quotes"),
        ('a = "abc', "1:5: string literal not terminated"),
        ('a = "abc\n"', "1:5: string literal not terminated"),
        ("a = `abc", "1:5: string literal not terminated"),
        (r'a = "\q"', "1:7: unknown escape sequence"),
        (r'a = "\'"', "1:7: unknown escape sequence"),
        (r'a = "\xZZ"', "1:7: illegal character U+005A 'Z' in escape sequence"),
        (r'a = "\uD800"', "1:7: escape sequence is invalid Unicode code point"),
        (r'a = "\U00110000"', "1:7: escape sequence is invalid Unicode code point"),
        (r'a = "\400"', "1:7: escape sequence is invalid Unicode code point"),
        ("a = 1e", "1:5: exponent has no digits"),
        ("a = 1 /* open", "1:7: block comment not terminated"),
        ("a = b | c", "1:8: missing second | in ||"),
        ("a = b & c", "1:8: missing second & in &&"),
        ("a = 1\0", "1:6: illegal character NUL"),
        ("a = \ufeff1", "1:5: illegal byte order mark"),
    ],
)
def test_errors_are_positioned_with_alloys_messages(source, message):
    with pytest.raises(ConfigError) as caught:
        parse(source, "t.alloy")
    assert str(caught.value) == f"t.alloy:{message}"


def test_leading_byte_order_mark_is_ignored():
    assert parse("\ufeffa = 1", "t.alloy").body[0].pos == pos(1, 1)


def test_invalid_utf8_is_reported_where_it_is():
    with pytest.raises(ConfigError, match=r"^t.alloy:2:6: illegal UTF-8 encoding$"):
        decode_source(b'a = 1\nb = "\xff"\n', "t.alloy")
    assert decode_source("é = 1".encode(), "t.alloy") == "é = 1"


# Nesting: the parser and the evaluator recurse once per level, so a file
# nested deeper than MAX_DEPTH gets one positioned error, not a RecursionError.


def nested_blocks(depth: int) -> str:
    return "".join(f"b{i} {{\n" for i in range(depth)) + "}\n" * depth


@pytest.mark.parametrize(
    ("source", "where"),
    [
        # 101 levels each: the error points at the token that opens the 101st.
        (nested_blocks(101), "101:6"),
        ("a = " + "[" * 101 + "]" * 101, "1:105"),
        ("a = " + "(" * 101 + "1" + ")" * 101, "1:105"),
        ("a = " + "{b = " * 101 + "1" + "}" * 101, "1:505"),
        ("a = " + "-" * 101 + "1", "1:105"),
        ("a = 1" + " + 1" * 101, "1:407"),
        ("a = 2" + " ^ 2" * 101, "1:407"),
        ("a = x" + ".y" * 101, "1:206"),
        ("a = x" + "[0]" * 101, "1:306"),
        ("a = f" + "()" * 101, "1:206"),
    ],
)
def test_nesting_past_max_depth_is_one_positioned_error(source, where):
    with pytest.raises(ConfigError) as caught:
        parse(source, "t.alloy")
    assert str(caught.value) == f"t.alloy:{where}: nested more than {MAX_DEPTH} levels deep"


@pytest.mark.parametrize("depth", [300, 100_000])
def test_a_config_nested_far_deeper_fails_the_same_way(depth):
    with pytest.raises(ConfigError, match=r"^t.alloy:101:6: nested more than 100 levels deep$"):
        parse(nested_blocks(depth), "t.alloy")
    with pytest.raises(ConfigError, match=r"^t.alloy:1:105: nested more than 100 levels deep$"):
        parse("a = " + "[" * depth, "t.alloy")


def test_nesting_up_to_max_depth_parses():
    assert len(parse(nested_blocks(MAX_DEPTH), "t.alloy").body) == 1
    value = parse_value("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    for _ in range(MAX_DEPTH - 1):
        (value,) = value.items
    assert value == ListExpr((), pos(1, 4 + MAX_DEPTH))
    # Siblings do not add up: only what is inside what counts.
    parse_value(" + ".join(["(" * 50 + "1" + ")" * 50] * 40))
