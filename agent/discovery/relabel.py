"""Prometheus relabeling as Alloy applies it, and the ``discovery.relabel`` component.

Semantics follow ``grafana/alloy:internal/component/common/relabel/relabel.go`` (a copy of
``prometheus/prometheus:model/relabel/relabel.go``) and Alloy's target builder: a missing
label reads as ``""`` and setting a label to ``""`` deletes it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.config.component import ArgumentError, Capsule, ComponentOptions, Health, block
from agent.discovery.re2 import Re2Error, Re2Pattern, compile_anchored

__all__ = ["RelabelComponent", "Rule", "Rules", "relabel"]

log = logging.getLogger(__name__)

_DEFAULT_REGEX = "(.*)"
_DEFAULT_REPLACEMENT = "$1"
_DEFAULT_SEPARATOR = ";"
_NEEDS_TARGET = {"replace", "hashmod", "lowercase", "uppercase", "keepequal", "dropequal"}
_NO_REPLACEMENT = {"lowercase", "uppercase", "keepequal", "dropequal"}
_DEFAULTS: dict[str, object] = {
    "source_labels": [],
    "separator": _DEFAULT_SEPARATOR,
    "regex": _DEFAULT_REGEX,
    "modulus": 0,
    "target_label": "",
    "replacement": _DEFAULT_REPLACEMENT,
}
_ONLY_REGEX = ("source_labels", "target_label", "modulus", "separator", "replacement")
_ONLY_SOURCE_AND_TARGET = ("regex", "modulus", "separator", "replacement")


@dataclass(frozen=True)
class Rule:
    """One ``rule`` block; validated and its regex compiled when constructed.

    Example::

        Rule(source_labels=["__meta_kubernetes_namespace"], target_label="namespace")
        Rule(action="keep", source_labels=["__meta_process_exe"], regex=".*/python3.*")
    """

    source_labels: list[str] = field(default_factory=list)
    separator: str = _DEFAULT_SEPARATOR
    regex: str = _DEFAULT_REGEX
    modulus: int = 0
    target_label: str = ""
    replacement: str = _DEFAULT_REPLACEMENT
    action: str = "replace"

    def __post_init__(self) -> None:
        try:
            pattern = compile_anchored(self.regex)
        except Re2Error as exc:
            raise ArgumentError("regex", str(exc)) from exc
        _validate(self)
        # Not a dataclass field, so decoders, equality and repr never see it.
        object.__setattr__(self, "_pattern", pattern)

    @property
    def pattern(self) -> Re2Pattern:
        """The compiled, anchored regex."""
        return self._pattern  # type: ignore[attr-defined]


def _validate(rule: Rule) -> None:
    """The checks of Alloy's ``Config.Validate``, in its order (§2.4 of the reference)."""
    action = rule.action
    if action == "":
        raise ArgumentError("action", "relabel action cannot be empty")
    if action not in _ACTIONS:
        raise ArgumentError("action", f"unrecognized action type {action!r}")
    if rule.modulus < 0:
        raise ArgumentError("modulus", "must not be negative")
    if action == "hashmod" and rule.modulus == 0:
        raise ArgumentError(
            "modulus", "relabel configuration for hashmod requires non-zero modulus"
        )
    if action in _NEEDS_TARGET and rule.target_label == "":
        raise ArgumentError(
            "target_label",
            f"relabel configuration for {action} action requires 'target_label' value",
        )
    if action in _NEEDS_TARGET and not _is_valid_target(rule.target_label, action):
        raise ArgumentError(
            "target_label", f"{rule.target_label!r} is invalid 'target_label' for {action} action"
        )
    if action in _NO_REPLACEMENT and rule.replacement != _DEFAULT_REPLACEMENT:
        raise ArgumentError("replacement", f"'replacement' can not be set for {action} action")
    if action == "labelmap" and not _is_valid_template_name(rule.replacement):
        raise ArgumentError(
            "replacement", f"{rule.replacement!r} is invalid 'replacement' for {action} action"
        )
    if action in ("labeldrop", "labelkeep"):
        _require_defaults(rule, _ONLY_REGEX, f"{action} action requires only 'regex'")
    if action in ("keepequal", "dropequal"):
        message = f"{action} action requires only 'source_labels' and 'target_label'"
        _require_defaults(rule, _ONLY_SOURCE_AND_TARGET, message)


def _require_defaults(rule: Rule, names: tuple[str, ...], message: str) -> None:
    for name in names:
        if getattr(rule, name) != _DEFAULTS[name]:
            raise ArgumentError(name, message + ", and no other fields")


def _is_valid_target(target: str, action: str) -> bool:
    """Only ``replace`` expands ``$`` references in ``target_label``."""
    if action == "replace" and "$" in target:
        return _is_valid_template_name(target)
    return _is_valid_label_name(target)


def _is_valid_label_name(name: str) -> bool:
    """prometheus/common's UTF-8 scheme: any non-empty valid UTF-8 string."""
    if not name:
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_valid_template_name(text: str) -> bool:
    """Prometheus's ``^(?:(?:[a-zA-Z_]|\\$(?:\\{\\w+\\}|\\w+))+\\w*)+$``, without its
    exponential backtracking in Python: a letter, ``_`` or ``$`` reference first, then
    ASCII word characters and references."""
    position = 0
    while position < len(text):
        char = text[position]
        if char == "$":
            braced = text.startswith("{", position + 1)
            start = position + 2 if braced else position + 1
            end = start
            while end < len(text) and _is_ascii_word(text[end]):
                end += 1
            if end == start or (braced and not text.startswith("}", end)):
                return False
            position = end + 1 if braced else end
        elif _is_ascii_word(char) and (position > 0 or not char.isdigit()):
            position += 1
        else:
            return False
    return bool(text)


def _is_ascii_word(char: str) -> bool:
    return char.isascii() and (char.isalnum() or char == "_")


class Rules(Capsule):
    """The ``rules`` export: the rule list as an opaque value for other components."""

    __slots__ = ("_rules",)

    def __init__(self, rules: Iterable[Rule]) -> None:
        self._rules = tuple(rules)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def __getitem__(self, index: int) -> Rule:
        return self._rules[index]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rules) and self._rules == other._rules

    __hash__ = None  # type: ignore[assignment]  # rules hold lists

    def __repr__(self) -> str:
        return f"Rules({list(self._rules)!r})"


def relabel(labels: Mapping[str, str], rules: Iterable[Rule]) -> dict[str, str] | None:
    """Apply ``rules`` in order to a copy of ``labels``; None when a rule drops the target.

    Labels with empty values count as absent and are not returned.
    """
    builder = {name: value for name, value in labels.items() if value != ""}
    for rule in rules:
        value = rule.separator.join(builder.get(name, "") for name in rule.source_labels)
        if not _APPLY[rule.action](rule, builder, value):
            return None
    return builder


def _set(labels: dict[str, str], name: str, value: str) -> None:
    if value == "":
        labels.pop(name, None)
    else:
        labels[name] = value


def _drop(rule: Rule, labels: dict[str, str], value: str) -> bool:
    return rule.pattern.search(value) is None


def _keep(rule: Rule, labels: dict[str, str], value: str) -> bool:
    return rule.pattern.search(value) is not None


def _dropequal(rule: Rule, labels: dict[str, str], value: str) -> bool:
    return labels.get(rule.target_label, "") != value


def _keepequal(rule: Rule, labels: dict[str, str], value: str) -> bool:
    return labels.get(rule.target_label, "") == value


def _replace(rule: Rule, labels: dict[str, str], value: str) -> bool:
    match = rule.pattern.search(value)
    if match is None:
        return True
    target = rule.pattern.expand(rule.target_label, match)
    if _is_valid_label_name(target):
        _set(labels, target, rule.pattern.expand(rule.replacement, match))
    return True


def _lowercase(rule: Rule, labels: dict[str, str], value: str) -> bool:
    _set(labels, rule.target_label, "".join(map(_go_lower, value)))
    return True


def _uppercase(rule: Rule, labels: dict[str, str], value: str) -> bool:
    _set(labels, rule.target_label, "".join(map(_go_upper, value)))
    return True


def _go_lower(char: str) -> str:
    """Go's ``unicode.ToLower``: the simple one-to-one mapping (İ → i, never i̇)."""
    lowered = char.lower()
    if len(lowered) == 1:
        return lowered
    return lowered[0] if char == "\u0130" else char


def _go_upper(char: str) -> str:
    """Go's ``unicode.ToUpper``: the simple mapping (ß stays ß; ᾳ → ᾼ, not ΑΙ)."""
    upper = char.upper()
    if len(upper) == 1:
        return upper
    title = char.title()
    return title if len(title) == 1 else char


def _hashmod(rule: Rule, labels: dict[str, str], value: str) -> bool:
    """MD5 of the value; its *last* 8 bytes as a big-endian uint64, modulo ``modulus``."""
    digest = hashlib.md5(value.encode("utf-8"), usedforsecurity=False).digest()
    _set(labels, rule.target_label, str(int.from_bytes(digest[8:], "big") % rule.modulus))
    return True


def _labelmap(rule: Rule, labels: dict[str, str], value: str) -> bool:
    for name, label_value in list(labels.items()):
        if rule.pattern.search(name) is not None:
            new_name = rule.pattern.replace_all(name, rule.replacement)
            if new_name:  # an empty name is no label; Alloy would store it as such
                labels[new_name] = label_value
    return True


def _labeldrop(rule: Rule, labels: dict[str, str], value: str) -> bool:
    for name in list(labels):
        if rule.pattern.search(name) is not None:
            del labels[name]
    return True


def _labelkeep(rule: Rule, labels: dict[str, str], value: str) -> bool:
    for name in list(labels):
        if rule.pattern.search(name) is None:
            del labels[name]
    return True


_APPLY: dict[str, Callable[[Rule, dict[str, str], str], bool]] = {
    "replace": _replace,
    "keep": _keep,
    "drop": _drop,
    "keepequal": _keepequal,
    "dropequal": _dropequal,
    "hashmod": _hashmod,
    "labelmap": _labelmap,
    "labeldrop": _labeldrop,
    "labelkeep": _labelkeep,
    "lowercase": _lowercase,
    "uppercase": _uppercase,
}
_ACTIONS = frozenset(_APPLY)


class RelabelComponent:
    """``discovery.relabel``: rewrites ``targets`` with ``rule`` blocks.

    Exports ``output`` (the relabeled targets, dropped ones removed) and ``rules``.
    """

    @dataclass(frozen=True)
    class Arguments:
        targets: list[dict[str, str]]
        rule: list[Rule] = block(default_factory=list)

    @dataclass(frozen=True)
    class Exports:
        output: list[dict[str, str]]
        rules: Rules

    def __init__(self, options: ComponentOptions, arguments: RelabelComponent.Arguments) -> None:
        self._options = options
        self._lock = threading.Lock()
        self._rules = Rules(arguments.rule)
        self._output = _relabel_targets(arguments.targets, self._rules)
        self._since = time.time()

    def run(self, stop: threading.Event) -> None:
        stop.wait()

    def update(self, arguments: RelabelComponent.Arguments) -> None:
        """Recompute; tell the graph only when ``output`` or ``rules`` changed."""
        rules = Rules(arguments.rule)
        output = _relabel_targets(arguments.targets, rules)
        with self._lock:
            changed = output != self._output or rules != self._rules
            self._rules, self._output = rules, output
        if changed:
            self._options.on_exports(self.exports())

    def exports(self) -> dict[str, Any]:
        with self._lock:
            return {"output": [dict(target) for target in self._output], "rules": self._rules}

    def health(self) -> Health:
        return Health("healthy", updated=self._since)


def _relabel_targets(targets: Iterable[Mapping[str, str]], rules: Rules) -> list[dict[str, str]]:
    output = [result for target in targets if (result := relabel(target, rules)) is not None]
    log.debug("relabeled targets: %d kept", len(output))
    return output
