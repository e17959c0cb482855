"""Decoding a block onto an Arguments dataclass: each field type, each error, positioned."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from agent.config import ArgumentError, Capsule, Duration, Secret, block
from agent.config.decode import decode
from agent.config.evaluate import UNKNOWN, Scope, unknown
from agent.config.parser import parse
from agent.errors import ConfigError


@dataclass(frozen=True)
class Auth:
    username: str
    password: Secret | None = None

    def __post_init__(self) -> None:
        if self.username == "root":
            raise ArgumentError("username", "must not be root")


@dataclass(frozen=True)
class Rule:
    action: str = "replace"


@dataclass(frozen=True)
class Endpoint:
    url: str


@dataclass(frozen=True)
class Arguments:
    targets: list[dict[str, str]]
    endpoint: Endpoint = block()  # required block
    forward_to: list[Capsule] = field(default_factory=list)
    name: str = ""
    token: Secret | None = None
    count: int = 1
    ratio: float = 0.5
    enabled: bool = True
    interval: Duration = Duration(15)
    timeout: Duration | None = None
    labels: dict[str, str] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=list)
    rule: list[Rule] = block(default_factory=list)
    auth: Auth | None = block(default=None)

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ArgumentError("count", "must not be negative")
        if self.interval > 3600:
            raise ArgumentError("interval", "must be at most 1h")


REQUIRED = 'targets = []\nendpoint {\n  url = "http://x"\n}\n'


def decode_body(body: str, scope: Scope | None = None, cls: type = Arguments):
    (component,) = parse(f'test.component "label" {{\n{body}\n}}\n', "t.alloy").body
    return decode(component, cls, scope or Scope())


def error_of(body: str, scope: Scope | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        decode_body(body, scope)
    return str(caught.value)


def test_defaults_apply_when_only_required_arguments_are_given():
    args = decode_body(REQUIRED)
    assert args == Arguments(targets=[], endpoint=Endpoint("http://x"))


def test_every_field_type_decodes():
    receiver = object()
    scope = Scope({"pyroscope.write.default": {"receiver": receiver}})
    args = decode_body(
        REQUIRED.replace("targets = []", 'targets = [{"__address__" = "a", n = 1}]')
        + "forward_to = [pyroscope.write.default.receiver]\n"
        + 'name = 42\ntoken = "s3cr3t"\ncount = "7"\nratio = 2\nenabled = false\n'
        + 'interval = "1m30s"\ntimeout = null\nlabels = { "env" = "testing", }\n'
        + 'sizes = [1, 2.0, "3"]\nrule {\n}\nrule {\n  action = "drop"\n}\n'
        + 'auth {\n  username = "u"\n  password = "p"\n}',
        scope,
    )
    assert args.targets == [{"__address__": "a", "n": "1"}]
    assert args.forward_to == [receiver]
    assert args.name == "42"
    assert isinstance(args.token, Secret) and args.token == "s3cr3t"
    assert args.count == 7 and type(args.count) is int
    assert args.ratio == 2.0 and type(args.ratio) is float
    assert args.enabled is False
    assert args.interval == 90 and isinstance(args.interval, Duration)
    assert args.timeout is None
    assert args.labels == {"env": "testing"}
    assert args.sizes == [1, 2, 3]
    assert args.rule == [Rule(), Rule("drop")]
    assert args.auth == Auth("u", Secret("p"))
    assert "s3cr3t" not in repr(args)


def test_optional_duration_and_integral_float():
    args = decode_body(REQUIRED + 'timeout = "500ms"\ncount = 1e3')
    assert args.timeout == 0.5
    assert args.count == 1000


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("foo = 1", '6:1: unrecognized attribute name "foo"'),
        ("foo {\n}", '6:1: unrecognized block name "foo"'),
        ('name = "a"\nname = "b"', '7:1: attribute "name" may only be provided once'),
        (
            'auth {\n  username = "a"\n}\nauth {\n  username = "b"\n}',
            '9:1: block "auth" may only be specified once',
        ),
        ("rule = 1", '6:1: "rule" must be a block, but is used as an attribute'),
        ("name {\n}", '6:1: "name" must be an attribute, but is used as a block'),
        ('rule "x" {\n}', '6:1: block "rule" does not support specifying labels'),
        ("name = 1.5 + true", "6:14: expected number or string or secret, got bool"),
        ("name = [1]", "6:8: expected string, got array"),
        ("count = true", "6:9: expected number, got bool"),
        ('count = "x"', "6:9: expected number, got string"),
        ("count = 1.5", "6:9: expected an integer, got 1.5"),
        ("enabled = 1", "6:11: expected bool, got number"),
        ("interval = 15", "6:12: expected string, got number"),
        ('interval = "15 seconds"', "6:12: invalid duration '15 seconds': use a Go-style duration"),
        ("timeout = 1", "6:11: expected string, got number"),
        ('labels = { a = "x", b = 2, c = [] }', "6:32: expected string, got array"),
        ('sizes = [1, "two"]', "6:13: expected number, got string"),
        ('sizes = "1"', "6:9: expected array, got string"),
        ("labels = []", "6:10: expected object, got array"),
        ('forward_to = ["x"]', "6:15: expected capsule, got string"),
        ("token = 1", "6:9: expected secret, got number"),
        ("count = -1", "6:1: count: must not be negative"),
        ('interval = "2h"', "6:1: interval: must be at most 1h"),
        ('auth {\n  username = "root"\n}', "7:3: username: must not be root"),
    ],
)
def test_errors_point_at_the_offending_statement_or_value(body, message):
    assert error_of(REQUIRED + body).startswith(f"t.alloy:{message}")


def test_missing_required_attribute_and_block_point_at_the_header():
    assert (
        error_of('endpoint {\n  url = "u"\n}')
        == 't.alloy:1:1: missing required attribute "targets"'
    )
    assert error_of("targets = []") == 't.alloy:1:1: missing required block "endpoint"'
    nested = error_of("targets = []\nendpoint {\n}")
    assert nested == 't.alloy:3:1: missing required attribute "url"'


def test_argument_error_for_a_defaulted_argument_points_at_the_block_header():
    @dataclass(frozen=True)
    class Strict:
        level: int = 0

        def __post_init__(self) -> None:
            raise ArgumentError("level", "cannot be used yet")

    with pytest.raises(ConfigError, match=r"^t.alloy:1:1: level: cannot be used yet$"):
        decode_body("", cls=Strict)


def test_secret_values_never_appear_in_errors():
    scope = Scope({"remote.vault": {"token": Secret("s3cr3t")}})
    message = error_of(REQUIRED + "name = remote.vault.token", scope)
    assert message == "t.alloy:6:8: expected string, got secret"
    assert "s3cr3t" not in error_of(REQUIRED + "count = remote.vault.token", scope)


def test_unknown_exports_take_defaults_or_empty_values():
    scope = Scope({"discovery.relabel.x": UNKNOWN, "pyroscope.write.w": UNKNOWN})
    body = (
        "targets = discovery.relabel.x.output\n"
        "forward_to = [pyroscope.write.w.receiver]\n"
        "count = discovery.relabel.x.count\n"
        "sizes = [discovery.relabel.x.n, 2]\n"
        "labels = { a = discovery.relabel.x.a }\n"
        'endpoint {\n  url = "http://" + discovery.relabel.x.host\n}'
    )
    args = decode_body(body, scope)
    assert args.targets == []
    assert args.forward_to == [UNKNOWN]
    assert args.count == 1  # the default, not a zero that validation could reject
    assert args.sizes == [0, 2]
    assert args.labels == {"a": ""}
    assert args.endpoint == Endpoint("")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("forward_to = w.receiver", "expected array, got capsule"),
        ("forward_to = [x.output]", "expected capsule, got array"),
        ("targets = w.receiver", "expected array, got capsule"),
        ("targets = [w.receiver]", "expected object, got capsule"),
        ("name = x.output", "expected string, got array"),
        ("name = w.token", "expected string, got secret"),
        ("enabled = x.count", "expected bool, got number"),
        ("interval = x.count", "expected string, got number"),
        ("labels = x.output", "expected object, got array"),
    ],
)
def test_unknown_exports_of_a_known_type_must_fit_the_argument(body, message):
    scope = Scope(
        {
            "x": {"output": unknown("array"), "count": unknown("number")},
            "w": {"receiver": unknown("capsule"), "token": unknown("secret")},
        }
    )
    assert error_of(REQUIRED.replace("targets = []\n", "") + body, scope).endswith(message)


def test_unknown_exports_of_a_fitting_type_are_accepted():
    scope = Scope({"x": {"count": unknown("number"), "token": unknown("string")}})
    body = "count = x.count\nname = x.count\ntoken = x.token\nsizes = [x.count]"
    args = decode_body(REQUIRED + body, scope)
    assert (args.count, args.name, args.token, args.sizes) == (1, "", None, [0])
