"""Relabel rules as Alloy applies them: each action, its edge cases, validation and RE2."""

from __future__ import annotations

import hashlib
import threading

import pytest

from agent.config.component import ArgumentError, ComponentOptions
from agent.discovery import RelabelComponent, Rule, Rules, relabel


def R(**fields) -> Rule:  # noqa: N802 - reads like the Alloy block it stands for
    return Rule(**fields)


def expected_hashmod(value: str, modulus: int) -> str:
    """Independent of the code under test: MD5, last 8 bytes big-endian, modulo."""
    digest = hashlib.md5(value.encode()).digest()
    return str(int.from_bytes(digest[8:], "big") % modulus)


# (name, input labels, rules, expected labels or None when dropped)
CASES = [
    # Worked examples from prometheus model/relabel/relabel_test.go, also in Alloy's copy.
    (
        "replace with braced references",
        {"a": "foo", "b": "bar", "c": "baz"},
        [R(source_labels=["a"], regex="f(.*)", target_label="d", replacement="ch${1}-ch${1}")],
        {"a": "foo", "b": "bar", "c": "baz", "d": "choo-choo"},
    ),
    (
        "rules see the previous rule's result",
        {"a": "foo", "b": "bar", "c": "baz"},
        [
            R(
                source_labels=["a", "b"],
                regex="f(.*);(.*)r",
                target_label="a",
                replacement="b${1}${2}m",
            ),
            R(
                source_labels=["c", "a"],
                regex="(b).*b(.*)ba(.*)",
                target_label="d",
                replacement="$1$2$2$3",
            ),
        ],
        {"a": "boobam", "b": "bar", "c": "baz", "d": "boooom"},
    ),
    (
        "a dropped target sees no later rule",
        {"a": "foo"},
        [
            R(source_labels=["a"], regex=".*o.*", action="drop"),
            R(target_label="x", replacement="y"),
        ],
        None,
    ),
    (
        "replace without a match changes nothing",
        {"a": "boo"},
        [R(source_labels=["a"], regex="f", target_label="b", replacement="bar")],
        {"a": "boo"},
    ),
    (
        "blank replacement deletes the target label",
        {"a": "foo", "f": "baz"},
        [R(source_labels=["a"], regex="(f).*", target_label="$1", replacement="$2")],
        {"a": "foo"},
    ),
    (
        "target label from a group",
        {"a": "some-name-value"},
        [
            R(
                source_labels=["a"],
                regex="some-([^-]+)-([^,]+)",
                target_label="${1}",
                replacement="${2}",
            )
        ],
        {"a": "some-name-value", "name": "value"},
    ),
    (
        "a target label that expands to nothing is skipped",
        {"a": "some-name-0"},
        [
            R(
                source_labels=["a"],
                regex="some-([^-]+)-([^,]+)",
                target_label="${3}",
                replacement="${1}",
            )
        ],
        {"a": "some-name-0"},
    ),
    (
        "real-life tags",
        {"__meta_sd_tags": "path:/secret,job:some-job,label:foo=bar"},
        [
            R(
                source_labels=["__meta_sd_tags"],
                regex="(?:.+,|^)path:(/[^,]+).*",
                target_label="__metrics_path__",
                replacement="${1}",
            ),
            R(
                source_labels=["__meta_sd_tags"],
                regex="(?:.+,|^)job:([^,]+).*",
                target_label="job",
                replacement="${1}",
            ),
            R(
                source_labels=["__meta_sd_tags"],
                regex="(?:.+,|^)label:([^=]+)=([^,]+).*",
                target_label="${1}",
                replacement="${2}",
            ),
        ],
        {
            "__meta_sd_tags": "path:/secret,job:some-job,label:foo=bar",
            "__metrics_path__": "/secret",
            "job": "some-job",
            "foo": "bar",
        },
    ),
    (
        "prometheus issue 12283: labeldrop, replace, keep",
        {
            "__meta_kubernetes_pod_container_port_name": "foo",
            "__meta_kubernetes_pod_annotation_XXX_metrics_port": "9091",
        },
        [
            R(regex="^__meta_kubernetes_pod_container_port_name$", action="labeldrop"),
            R(
                source_labels=["__meta_kubernetes_pod_annotation_XXX_metrics_port"],
                regex="(.+)",
                target_label="__meta_kubernetes_pod_container_port_name",
                replacement="metrics",
            ),
            R(
                source_labels=["__meta_kubernetes_pod_container_port_name"],
                regex="^metrics$",
                action="keep",
            ),
        ],
        {
            "__meta_kubernetes_pod_annotation_XXX_metrics_port": "9091",
            "__meta_kubernetes_pod_container_port_name": "metrics",
        },
    ),
    # keep / drop and anchoring
    (
        "keep on a whole match",
        {"a": "foo"},
        [R(source_labels=["a"], regex="f.*", action="keep")],
        {"a": "foo"},
    ),
    (
        "keep is anchored: a substring is no match",
        {"a": "foo"},
        [R(source_labels=["a"], regex="o", action="keep")],
        None,
    ),
    (
        "drop is anchored: f|o does not match foo",
        {"a": "foo"},
        [R(source_labels=["a"], regex="f|o", action="drop")],
        {"a": "foo"},
    ),
    (
        "$ is the very end: foo does not match foo plus newline",
        {"a": "foo\n"},
        [R(source_labels=["a"], regex="foo", action="keep")],
        None,
    ),
    (
        "dot matches newline",
        {"a": "foo\nbar"},
        [R(source_labels=["a"], regex="foo.bar", action="keep")],
        {"a": "foo\nbar"},
    ),
    (
        "missing source labels join as empty",
        {"a": "foo", "b": "bar"},
        [R(source_labels=["a", "missing", "b"], regex="foo;;bar", action="keep")],
        {"a": "foo", "b": "bar"},
    ),
    (
        "keep on a missing label matches the empty string",
        {"a": "foo"},
        [R(source_labels=["missing"], regex="", action="keep")],
        {"a": "foo"},
    ),
    (
        "custom separator",
        {"ns": "prod", "c": "web"},
        [
            R(
                source_labels=["ns", "c"],
                separator="@",
                regex="(.*)@(.*)",
                target_label="service_name",
                replacement="ebpf/${1}/${2}",
            )
        ],
        {"ns": "prod", "c": "web", "service_name": "ebpf/prod/web"},
    ),
    # templates: Go Expand rules
    (
        "$1x names a group called 1x: empty, so the label is deleted",
        {"a": "foo", "t": "old"},
        [R(source_labels=["a"], regex="(f)(o+)", target_label="t", replacement="$1x")],
        {"a": "foo"},
    ),
    (
        "${1}x is group 1 then x",
        {"a": "foo"},
        [R(source_labels=["a"], regex="(f)(o+)", target_label="t", replacement="${1}x")],
        {"a": "foo", "t": "fx"},
    ),
    (
        "$$ is a dollar, a bad reference stays literal",
        {"a": "foo"},
        [R(source_labels=["a"], regex="(f)o+", target_label="t", replacement="$$1 ${1 $- end$")],
        {"a": "foo", "t": "$1 ${1 $- end$"},
    ),
    (
        "named groups in both spellings",
        {"a": "foo"},
        [
            R(
                source_labels=["a"],
                regex="(?P<first>f)(?<rest>o+)",
                target_label="t",
                replacement="$rest-${first}",
            )
        ],
        {"a": "foo", "t": "oo-f"},
    ),
    (
        "$01 is a name, not group 1",
        {"a": "foo"},
        [R(source_labels=["a"], regex="(f)oo", target_label="t", replacement="[$01][${0}]")],
        {"a": "foo", "t": "[][foo]"},
    ),
    (
        "a group that took no part expands to nothing",
        {"a": "b"},
        [R(source_labels=["a"], regex="(a)?(b)", target_label="t", replacement="<$1|$2>")],
        {"a": "b", "t": "<|b>"},
    ),
    (
        "default rule copies a label",
        {"a": "foo"},
        [R(source_labels=["a"], target_label="b")],
        {"a": "foo", "b": "foo"},
    ),
    (
        "default rule on a missing label deletes the target",
        {"b": "x"},
        [R(source_labels=["missing"], target_label="b")],
        {},
    ),
    ("an empty input value counts as absent", {"a": "", "b": "x"}, [], {"b": "x"}),
    (
        "a target left with no labels is still emitted",
        {"a": "x"},
        [R(regex="a", action="labeldrop")],
        {},
    ),
    # equality
    (
        "keepequal keeps on equal values",
        {"__tmp_port": "1234", "__port1": "1234"},
        [R(source_labels=["__tmp_port"], target_label="__port1", action="keepequal")],
        {"__tmp_port": "1234", "__port1": "1234"},
    ),
    (
        "keepequal drops on different values",
        {"__tmp_port": "1234", "__port2": "5678"},
        [R(source_labels=["__tmp_port"], target_label="__port2", action="keepequal")],
        None,
    ),
    (
        "dropequal drops on equal values",
        {"__tmp_port": "1234", "__port1": "1234"},
        [R(source_labels=["__tmp_port"], target_label="__port1", action="dropequal")],
        None,
    ),
    (
        "dropequal: a missing target equals a missing source",
        {"a": "x"},
        [R(source_labels=["missing"], target_label="other", action="dropequal")],
        None,
    ),
    # case
    (
        "upper and lower case",
        {"foo": "bAr123Foo"},
        [
            R(source_labels=["foo"], target_label="foo_uppercase", action="uppercase"),
            R(source_labels=["foo"], target_label="foo_lowercase", action="lowercase"),
        ],
        {"foo": "bAr123Foo", "foo_lowercase": "bar123foo", "foo_uppercase": "BAR123FOO"},
    ),
    (
        "lowercase of nothing deletes the target",
        {"t": "x"},
        [R(source_labels=["missing"], target_label="t", action="lowercase")],
        {},
    ),
    (
        "case mapping is Go's one-to-one mapping",
        {"a": "İß\u03a3"},
        [
            R(source_labels=["a"], target_label="lo", action="lowercase"),
            R(source_labels=["a"], target_label="up", action="uppercase"),
        ],
        {"a": "İß\u03a3", "lo": "iß\u03c3", "up": "İß\u03a3"},
    ),
    # label name actions
    (
        "labelmap copies, the original stays",
        {"a": "foo", "b1": "bar", "b2": "baz"},
        [R(regex="(b.*)", replacement="bar_${1}", action="labelmap")],
        {"a": "foo", "b1": "bar", "b2": "baz", "bar_b1": "bar", "bar_b2": "baz"},
    ),
    (
        "labelmap strips a prefix",
        {"a": "foo", "__meta_my_bar": "aaa", "__meta_my_baz": "bbb", "__meta_other": "ccc"},
        [R(regex="__meta_(my.*)", replacement="${1}", action="labelmap")],
        {
            "a": "foo",
            "__meta_my_bar": "aaa",
            "__meta_my_baz": "bbb",
            "__meta_other": "ccc",
            "my_bar": "aaa",
            "my_baz": "bbb",
        },
    ),
    (
        "labelmap works on a snapshot",
        {"x": "1"},
        [R(regex="(x+)", replacement="${1}x", action="labelmap")],
        {"x": "1", "xx": "1"},
    ),
    (
        "labelkeep",
        {"a": "foo", "b1": "bar", "b2": "baz"},
        [R(regex="(b.*)", action="labelkeep")],
        {"b1": "bar", "b2": "baz"},
    ),
    (
        "labeldrop",
        {"a": "foo", "b1": "bar", "b2": "baz"},
        [R(regex="(b.*)", action="labeldrop")],
        {"a": "foo"},
    ),
    (
        "labeldrop is anchored",
        {"ab": "1", "b": "2"},
        [R(regex="b", action="labeldrop")],
        {"ab": "1"},
    ),
    # RE2 features translated for Python
    (
        "\\d is ASCII only",
        {"a": "\u0663"},
        [R(source_labels=["a"], regex="\\d", action="keep")],
        None,
    ),
    (
        "POSIX class",
        {"a": "abc"},
        [R(source_labels=["a"], regex="[[:alpha:]]+", action="keep")],
        {"a": "abc"},
    ),
    (
        "Unicode category",
        {"a": "héllo"},
        [R(source_labels=["a"], regex="\\pL+", action="keep")],
        {"a": "héllo"},
    ),
    (
        "inline flags in the middle",
        {"a": "fooBAR"},
        [R(source_labels=["a"], regex="foo(?i)bar", action="keep")],
        {"a": "fooBAR"},
    ),
    (
        "\\Q...\\E quotes",
        {"a": "a.b*"},
        [R(source_labels=["a"], regex="\\Qa.b*\\E", action="keep")],
        {"a": "a.b*"},
    ),
    (
        "{,2} is literal text in Go",
        {"a": "x{,2}"},
        [R(source_labels=["a"], regex="x{,2}", action="keep")],
        {"a": "x{,2}"},
    ),
]


@pytest.mark.parametrize(
    ("labels", "rules", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_relabel(labels, rules, expected):
    before = dict(labels)
    assert relabel(labels, rules) == expected
    assert labels == before  # pure: the input is never modified


@pytest.mark.parametrize(
    ("value", "modulus", "literal"),
    [
        ("baz", 1000, "976"),  # prometheus relabel_test.go, copied into Alloy's tests
        ("foo\nbar", 1000, "734"),  # idem
    ],
)
def test_hashmod_matches_the_upstream_worked_examples(value, modulus, literal):
    rule = R(source_labels=["a"], target_label="h", modulus=modulus, action="hashmod")
    assert relabel({"a": value}, [rule])["h"] == literal
    assert expected_hashmod(value, modulus) == literal
    first_eight = int.from_bytes(hashlib.md5(value.encode()).digest()[:8], "big") % modulus
    assert str(first_eight) != literal  # the last 8 bytes, not the first


@pytest.mark.parametrize(
    ("values", "modulus"),
    [
        (["10.0.0.1:9100"], 8),
        (["", ""], 3),  # two missing labels join to ";"
        (["pod-a", "web"], 2**64 - 1),
        (["ünïcode"], 97),
        ([], 1),
    ],
)
def test_hashmod_is_md5_last_eight_bytes_modulo(values, modulus):
    labels = {f"l{i}": v for i, v in enumerate(values)}
    rule = R(source_labels=list(labels), target_label="h", modulus=modulus, action="hashmod")
    result = relabel(labels, [rule])
    assert result["h"] == expected_hashmod(";".join(values), modulus)


@pytest.mark.parametrize(
    ("fields", "argument"),
    [
        ({"action": ""}, "action"),
        ({"action": "Replace"}, "action"),  # Alloy's action names are case-sensitive
        ({"action": "hashmod", "target_label": "h"}, "modulus"),
        ({"action": "hashmod", "target_label": "h", "modulus": -1}, "modulus"),
        ({"action": "replace"}, "target_label"),
        ({"action": "lowercase"}, "target_label"),
        ({"action": "keepequal"}, "target_label"),
        ({"target_label": "0${3}"}, "target_label"),
        ({"target_label": "-${3}"}, "target_label"),
        ({"target_label": "${"}, "target_label"),
        ({"action": "uppercase", "target_label": "u", "replacement": "x"}, "replacement"),
        ({"action": "labelmap", "replacement": "-bad"}, "replacement"),
        ({"action": "labeldrop", "source_labels": ["a"]}, "source_labels"),
        ({"action": "labelkeep", "target_label": "t"}, "target_label"),
        ({"action": "labeldrop", "separator": ","}, "separator"),
        ({"action": "dropequal", "target_label": "t", "regex": "a"}, "regex"),
        ({"action": "keepequal", "target_label": "t", "modulus": 2}, "modulus"),
        ({"regex": "(?=lookahead)", "target_label": "t"}, "regex"),
        ({"regex": "(a)\\1", "target_label": "t"}, "regex"),
        ({"regex": "a**", "target_label": "t"}, "regex"),
        ({"regex": "a{1001}", "target_label": "t"}, "regex"),
        ({"regex": "(unclosed", "target_label": "t"}, "regex"),
        ({"regex": "\\p{Greek}", "target_label": "t"}, "regex"),
        ({"regex": "\\Z", "target_label": "t"}, "regex"),
    ],
)
def test_invalid_rules_name_the_argument(fields, argument):
    with pytest.raises(ArgumentError) as error:
        Rule(**fields)
    assert error.value.argument == argument


@pytest.mark.parametrize(
    "fields",
    [
        {"target_label": "foo.bar"},  # UTF-8 label names
        {"target_label": "${1}"},
        {"target_label": "_${1}_"},
        {"target_label": "asd$2asd"},
        {"target_label": "foo${bar}foo"},
        {"action": "lowercase", "target_label": "${3}"},  # legal with UTF-8 names
        {"action": "keepequal", "target_label": "t", "regex": "(.*)"},
        {"action": "labeldrop", "regex": "__tmp.*"},
        {"regex": "a)|(b", "target_label": "t"},  # accepted by Go once wrapped in ^(?s:…)$
    ],
)
def test_valid_rules_are_accepted(fields):
    Rule(**fields)


def test_a_regex_error_says_why():
    with pytest.raises(ArgumentError, match="not supported") as error:
        Rule(regex="(?<=x)y", target_label="t")
    assert "(?<=x)y" in str(error.value)


def test_template_validation_has_no_catastrophic_backtracking():
    with pytest.raises(ArgumentError):
        Rule(target_label="$" + "a$a" * 5000 + "-")


def _options(calls: list) -> ComponentOptions:
    return ComponentOptions("discovery.relabel.test", calls.append, {}, threading.Lock())


def test_component_exports_relabeled_targets_and_rules():
    rules = [R(source_labels=["__meta_env"], regex="dev", action="drop"),
             R(source_labels=["__meta_env"], target_label="env")]  # fmt: skip
    targets = [{"__meta_env": "prod", "a": "1"}, {"__meta_env": "dev"}]
    component = RelabelComponent(_options([]), RelabelComponent.Arguments(targets, rules))
    exports = component.exports()
    assert exports["output"] == [{"__meta_env": "prod", "a": "1", "env": "prod"}]
    assert isinstance(exports["rules"], Rules)
    assert list(exports["rules"]) == rules
    assert component.health().state == "healthy"


def test_component_calls_on_exports_only_when_something_changed():
    calls: list = []
    args = RelabelComponent.Arguments([{"a": "1"}], [R(source_labels=["a"], target_label="b")])
    component = RelabelComponent(_options(calls), args)
    component.update(RelabelComponent.Arguments([{"a": "1"}], list(args.rule)))
    assert calls == []
    component.update(RelabelComponent.Arguments([{"a": "2"}], list(args.rule)))
    assert [call["output"] for call in calls] == [[{"a": "2", "b": "2"}]]
    component.update(RelabelComponent.Arguments([{"a": "2"}], []))
    assert calls[-1]["output"] == [{"a": "2"}]
    assert len(calls[-1]["rules"]) == 0


def test_component_without_rules_passes_targets_through():
    targets = [{"a": "1"}, {"b": "2"}]
    component = RelabelComponent(_options([]), RelabelComponent.Arguments(targets))
    assert component.exports()["output"] == targets


def test_run_returns_when_stopped():
    component = RelabelComponent(_options([]), RelabelComponent.Arguments([]))
    stop = threading.Event()
    thread = threading.Thread(target=component.run, args=(stop,))
    thread.start()
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
