"""RE2 patterns as Go reads them, run by Python's re (anchored as Alloy anchors them)."""

from __future__ import annotations

import re

import pytest

from agent.discovery.re2 import Re2Error, compile_anchored

# (regex, text, whether Go's ^(?s:regex)$ matches)
MATCHES = [
    ("a(?i)b|c", "aB", True),
    ("a(?i)b|c", "C", True),  # flags set inline last to the end of the group, across |
    ("(?i:a)b", "AB", False),
    ("(?i:a)b", "Ab", True),
    ("(?i)straße", "STRAßE", True),
    ("\\141\\x62\\x{63}", "abc", True),  # octal and hex escapes
    ("\\x{263a}", "\u263a", True),
    ("[^\\D]", "5", True),
    ("[^\\D]", "x", False),
    ("[a\\D]", "a", True),
    ("[\\d-z]", "-", True),  # a class escape cannot start a range
    ("a\\b.*", "a\u00e9", True),  # \b is ASCII: é is not a word character
    ("\\w", "\u00e9", False),
    ("\\d", "\u0663", False),
    ("\\s", "\v", False),  # Go's \s has no \v ...
    ("[[:space:]]", "\v", True),  # ... but [[:space:]] has
    ("[[:^alpha:]]", "1", True),
    ("\\PL", "1", True),
    ("\\p{^L}", "a", False),
    ("\\pN", "\u0663", True),
    ("\\p{Lu}+", "AB", True),
    ("\\p{Any}", "\n", True),
    (".", "\n", True),  # the anchor wrapper sets s
    ("(?-s:.)", "\n", False),
    ("(?m:a$)\\n", "a\n", True),
    ("x*", "", True),
    ("^*a", "a", True),  # Go repeats an empty-width assertion
    ("a{2}", "aa", True),
    ("a{2,}", "aaa", True),
    ("a{,2}", "a{,2}", True),  # not a repetition in Go
    ("a{01}", "a{01}", True),
    ("(a{10}|b{100}){10}", "a" * 100, True),  # nested counts multiply to exactly 1000
    ("\\Qa|b\\E", "a|b", True),
    ("[]]", "]", True),
    ("[^]]", "a", True),
    ("[a-]", "-", True),
    ("\\.\\_", "._", True),
    ("a)|(b", "ab", True),  # Go accepts it once wrapped: ^(?s:a)|(b)$ ...
    ("a)|(b", "xb", True),  # ... and then it is no longer anchored at the start
    ("", "", True),
    ("", "x", False),
]


@pytest.mark.parametrize(("regex", "text", "matches"), MATCHES)
def test_match_like_go(regex, text, matches):
    assert (compile_anchored(regex).search(text) is not None) is matches


@pytest.mark.parametrize(
    ("regex", "reason"),
    [
        ("(?=a)", "not supported"),
        ("(?<!a)b", "not supported"),
        ("(a)\\1", "backreference"),
        ("(?P=n)", "backreference"),
        ("(?>a)", "Perl syntax"),
        ("(?#comment)", "Perl syntax"),
        ("(?x)a", "Perl syntax"),
        ("a*+", "nested repetition"),
        ("a**", "nested repetition"),
        ("a{2}{3}", "nested repetition"),
        ("*a", "missing argument"),
        ("(?i)*", "missing argument"),
        ("a{1001}", "repeat count"),
        ("a{3,2}", "repeat count"),
        ("(a{7}){143}", "repeat count"),  # nested counts multiply: 1001 > 1000
        ("[z-a]", "class range"),
        ("[[:alphabet:]]", "class range"),
        ("\\p{Greek}", "Unicode"),
        ("\\pZ\\p{Foo}", "Unicode"),
        ("\\e", "escape"),
        ("\\u0041", "escape"),
        ("\\Z", "escape"),
        ("\\C", "escape"),
        ("[\\b]", "escape"),
        ("\\8", "escape"),
        ("(?P<1-x>a)", "named capture"),
        ("(?<>a)", "named capture"),
        ("(a", "missing closing )"),
        ("a)", "unexpected )"),
        ("[a", "missing closing ]"),
        ("\\Qab", "missing closing )"),  # \Q swallows the wrapper's closing parenthesis
        ("a\\", "missing closing )"),  # so does a trailing backslash
        ("\ud800", "UTF-8"),
    ],
)
def test_rejects_what_go_rejects(regex, reason):
    with pytest.raises(Re2Error, match=re.escape(reason)):
        compile_anchored(regex)


@pytest.mark.parametrize(
    ("regex", "template", "text", "expected"),
    [
        ("(?P<a>x)(?P<b>y)?", "$b$a|${a}${b}", "x", "x|x"),
        ("(?<1x>a)(b)", "$1x/${1}x/$2", "ab", "a/ax/b"),  # Go allows a name starting with a digit
        ("(.)(.)(.)(.)(.)(.)(.)(.)(.)(.)", "$10-${1}0", "abcdefghij", "j-a0"),
        ("(a)", "$$1 $ $- ${1 ${}", "a", "$1 $ $- ${1 ${}"),
        ("(?U)(a+)(a*)", "$1|$2", "aaa", "a|aa"),  # ungreedy swaps the laziness
        ("(?U)(a+?)(a*)", "$1|$2", "aaa", "aaa|"),
    ],
)
def test_expand_like_go(regex, template, text, expected):
    pattern = compile_anchored(regex)
    assert pattern.expand(template, pattern.search(text)) == expected


def test_replace_all_like_go():
    # ^(?s:x)|()$ matches "x" at the start and the empty string at the end.
    assert compile_anchored("x)|(").replace_all("xax", "[$0]") == "[x]ax[]"
    assert compile_anchored("(b.*)").replace_all("b1", "bar_${1}") == "bar_b1"


def test_compiled_patterns_are_cached():
    assert compile_anchored("abc") is compile_anchored("abc")
