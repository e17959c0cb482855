from __future__ import annotations

import pytest

from agent.config import parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10),
        ("2m", 120),
        ("1h30m", 5400),
        ("1.5s", 1.5),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("100ns", 1e-7),
        ("0", 0),
        (" 3s ", 3),
    ],
)
def test_go_durations_parse(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["10x", "10", "s", "-1s", "1s-", "1 s", "ten seconds"])
def test_bad_durations_name_the_text_and_the_expected_form(text):
    with pytest.raises(ValueError, match=f"invalid duration {text!r}: use a Go-style duration"):
        parse_duration(text)


def test_an_empty_duration_is_refused():
    with pytest.raises(ValueError, match="empty duration"):
        parse_duration("  ")
