"""Expressions: operators, references to component exports, the standard library, errors."""

from __future__ import annotations

import socket

import pytest

from agent.config import Secret
from agent.config.evaluate import UNKNOWN, Reference, Scope, evaluate, references
from agent.config.lexer import Position
from agent.config.parser import MAX_DEPTH, parse
from agent.errors import ConfigError

EXPORTS = {
    "discovery.relabel.local_pods": {"output": [{"service_name": "web"}], "rules": []},
    "pyroscope.write.endpoint": {"receiver": object()},
    "local.single": {"value": 7},
}


def expr(source: str):
    (statement,) = parse(f"a = {source}", "t.alloy").body
    return statement.value


def value(source: str, exports=EXPORTS, environ=None):
    return evaluate(expr(source), Scope(exports, environ or {"HOSTNAME": "node-1"}))


@pytest.mark.parametrize(
    ("source", "result"),
    [
        ('"spec.nodeName=" + "x"', "spec.nodeName=x"),
        ("1 + 2", 3),
        ("1 + 2.5", 3.5),
        ("7 - 10", -3),
        ("3 * 4", 12),
        ("7 / 2", 3),
        ("-7 / 2", -3),
        ("7.0 / 2", 3.5),
        ("7 % 3", 1),
        ("-7 % 3", -1),
        ("7.5 % 2", 1.5),
        ("2 ^ 10", 1024),
        ("2 ^ 3 ^ 2", 512),
        ("-(3)", -3),
        ("!true", False),
        ("true && false", False),
        ("true || false", True),
        ("1 == 1.0", True),
        ('1 == "1"', False),
        ("true == 1", False),
        ("[1, [2]] == [1, [2]]", True),
        ("{a = 1} != {a = 2}", True),
        ("null == null", True),
        ("1 < 2", True),
        ('"a" < "b"', True),
        ("2 <= 2", True),
        ("3 > 4", False),
        ("3 >= 4", False),
        ("(1 + 2) * 3", 9),
        ('[1, "a", null, true]', [1, "a", None, True]),
        ('{ "env" = "testing", key = 1, }', {"env": "testing", "key": 1}),
        ("[10, 20][1]", 20),
        ('{a = 1}["a"]', 1),
        ('{a = 1}["missing"]', None),
        ("{a = {b = 2}}.a.b", 2),
    ],
)
def test_operators_and_literals(source, result):
    got = value(source)
    assert got == result
    assert type(got) is type(result)


def test_references_read_component_exports():
    assert value("discovery.relabel.local_pods.output") == [{"service_name": "web"}]
    assert value("discovery.relabel.local_pods.output[0].service_name") == "web"
    receiver = EXPORTS["pyroscope.write.endpoint"]["receiver"]
    assert value("[pyroscope.write.endpoint.receiver]") == [receiver]
    assert value("local.single") == {"value": 7}


def test_unknown_exports_make_unknown_values():
    scope = Scope({"discovery.relabel.local_pods": UNKNOWN})
    for source in (
        "discovery.relabel.local_pods.output",
        "discovery.relabel.local_pods.output[0]",
        '"x" + discovery.relabel.local_pods.name',
        "-discovery.relabel.local_pods.n",
        "string.to_upper(discovery.relabel.local_pods.name)",
    ):
        assert evaluate(expr(source), scope) is UNKNOWN, source
    assert evaluate(expr("[discovery.relabel.local_pods.output]"), scope) == [UNKNOWN]


def test_references_are_listed_before_evaluation_in_source_order():
    ids = {"discovery.relabel.local_pods", "pyroscope.write.endpoint", "discovery.relabel"}
    source = (
        'concat([pyroscope.write.endpoint.receiver], [sys.env("X")])[0]'
        " == discovery.relabel.local_pods.output[0]"
    )
    assert references(expr(source), ids) == [
        Reference("pyroscope.write.endpoint", ("receiver",), Position("t.alloy", 1, 13)),
        Reference("discovery.relabel", ("local_pods", "output"), Position("t.alloy", 1, 71)),
    ]


def test_a_reference_to_nothing_is_an_error_at_the_reference():
    with pytest.raises(ConfigError) as caught:
        references(expr("[1, discovery.kubernetes.pods.targets]"), {"discovery.relabel.x"})
    component = "discovery.kubernetes.pods.targets"
    message = f't.alloy:1:9: component "{component}" does not exist or is out of scope'
    assert str(caught.value) == message


def test_standard_library():
    environ = {"HOSTNAME": "node-1"}
    assert value('sys.env("HOSTNAME")', environ=environ) == "node-1"
    assert value('env("HOSTNAME")', environ=environ) == "node-1"
    assert value('sys.env("UNSET")', environ=environ) == ""
    assert value("constants.hostname") == socket.gethostname()
    assert value("constants.os") == "linux"
    assert value("constants.version").startswith("v")
    assert value("concat([1], [], [2, 3])") == [1, 2, 3]
    assert value("array.concat()") == []
    assert value('json_decode("{\\"a\\": [1, 2.5]}")') == {"a": [1, 2.5]}
    assert value('encoding.from_json("null")') is None
    assert value('coalesce(null, "", 0, [], {}, "x", "y")') == "x"
    assert value('coalesce(null, "")') == ""
    assert value("coalesce()") is None
    assert value('format("%s-%d-%05.1f-%q-%v-%t-%%", "a", 3, 2.5, "q", 1, true)') == (
        'a-3-002.5-"q"-1-true-%'
    )
    assert value('string.format("%d", "x")') == "%!d(string=x)"
    assert value('join(["a", "b"], ",")') == "a,b"
    assert value('split("a,b", ",")') == ["a", "b"]
    assert value('to_lower("AbC")') == "abc"
    assert value('string.to_upper("AbC")') == "ABC"
    assert value('trim("xxhixx", "x")') == "hi"
    assert value('trim_space("  hi \\n")') == "hi"
    assert value('trim_prefix("ebpf/x", "ebpf/")') == "x"
    assert value('trim_suffix("x.alloy", ".alloy")') == "x"
    assert value('string.replace("a-b-c", "-", "/")') == "a/b/c"


def test_secrets_stay_secret_through_concatenation():
    scope = Scope({"remote.secret": {"token": Secret("s3cr3t")}})
    joined = evaluate(expr('"Bearer " + remote.secret.token'), scope)
    assert isinstance(joined, Secret)
    assert evaluate(expr("nonsensitive(remote.secret.token)"), scope) == "s3cr3t"
    with pytest.raises(ConfigError) as caught:
        evaluate(expr("to_upper(remote.secret.token)"), scope)
    assert str(caught.value) == "t.alloy:1:14: string.to_upper: expected string, got secret"
    assert "s3cr3t" not in str(caught.value)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("nothing", '1:5: identifier "nothing" does not exist'),
        ("local.single.missing", '1:18: field "missing" does not exist'),
        ("local.single.value.deeper", '1:24: cannot access field "deeper" on value of type number'),
        ('"a" + 1', "1:11: expected string, got number"),
        ("true + 1", "1:5: expected number or string or secret, got bool"),
        ("1 - true", "1:9: expected number, got bool"),
        ("1 && true", "1:5: expected bool, got number"),
        ("!1", "1:6: expected bool, got number"),
        ('-"a"', "1:6: expected number, got string"),
        ("1 / 0", "1:9: divide by zero error"),
        ("1 % 0", "1:9: divide by zero error"),
        ('[1]["a"]', "1:9: expected number, got string"),
        ("[1][5]", "1:9: index 5 is out of range of array with length 1"),
        ("{a = 1}[0]", "1:13: expected string, got number"),
        ("1[0]", "1:5: expected object or array, got number"),
        ('"x"()', "1:5: expected function, got string"),
        ("sys.env()", "1:5: sys.env: expected 1 args, got 0"),
        ('to_lower("a", "b")', "1:5: string.to_lower: expected 1 args, got 2"),
        ("format()", "1:5: string.format: expected at least 1 args, got 0"),
        ('join(["a", 1], ",")', "1:10: string.join: expected string, got number"),
        ('join(["a"], 2)', "1:17: string.join: expected string, got number"),
        ('concat([1], "x")', "1:17: array.concat: expected array, got string"),
        ('json_decode("{")', "1:17: encoding.from_json: invalid JSON: Expecting property name"),
    ],
)
def test_evaluation_errors_are_positioned(source, message):
    with pytest.raises(ConfigError) as caught:
        value(source)
    assert str(caught.value).startswith(f"t.alloy:{message}")


def test_values_nested_as_deep_as_the_parser_allows_evaluate():
    nested = value("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    for _ in range(MAX_DEPTH - 1):
        (nested,) = nested
    assert nested == []
    assert value("1" + " + 1" * (MAX_DEPTH - 1)) == MAX_DEPTH
    assert value("-" * (MAX_DEPTH - 1) + "1") == -1
    assert references(
        # Two levels of brackets fewer: each access is one level too.
        expr("[" * (MAX_DEPTH - 2) + "local.single.value" + "]" * (MAX_DEPTH - 2)),
        EXPORTS,
    ) == [Reference("local.single", ("value",), Position("t.alloy", 1, 103))]


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
def test_json_nested_deeper_than_the_limit_is_one_positioned_error(depth):
    text = "[" * depth + "]" * depth
    with pytest.raises(ConfigError) as caught:
        value(f'json_decode("{text}")')
    assert str(caught.value) == (
        f"t.alloy:1:17: encoding.from_json: JSON nested more than {MAX_DEPTH} levels deep"
    )
    assert len(value(f'json_decode("{"[" * MAX_DEPTH + "]" * MAX_DEPTH}")')) == 1
