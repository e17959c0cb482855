"""Rank a profile's functions, as ``pprof -top`` does, and lay them out as a table."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from agent.pprof import profile_pb2
from agent.pprof.read import location_frames, value_index

__all__ = ["FunctionShare", "format_table", "top_functions"]

_MIN_NAME_WIDTH = 20  # below this a cut name says too little: the line is let wrap


@dataclass(frozen=True, slots=True)
class FunctionShare:
    """One function's share of a profile's total value, as fractions of 1.

    ``self_fraction`` counts samples whose leaf is the function,
    ``total_fraction`` samples that have it anywhere in the stack.
    """

    name: str
    self_fraction: float
    total_fraction: float


def top_functions(profile: profile_pb2.Profile, limit: int) -> list[FunctionShare]:
    """Return up to ``limit`` functions, by self share, then total, then name.

    Values come from the default sample type, or the last one when none is
    named, as ``pprof`` chooses. A recursive function counts once per sample
    in its total.
    """
    if limit < 0:
        raise ValueError(f"limit must be zero or more, not {limit}")
    index = value_index(profile)
    frames = location_frames(profile)
    self_values: Counter[str] = Counter()
    total_values: Counter[str] = Counter()
    grand_total = 0
    for sample in profile.sample:
        if len(sample.value) != len(profile.sample_type):
            raise ValueError("a sample's values do not match the profile's sample types")
        value = sample.value[index]
        grand_total += value
        try:
            stack = [frames[location_id] for location_id in sample.location_id]
        except KeyError as exc:
            raise ValueError(f"sample refers to missing location {exc}") from None
        if stack and stack[0]:
            self_values[stack[0][0].name] += value
        for name in {frame.name for location in stack for frame in location}:
            total_values[name] += value
    if grand_total == 0:
        return []
    rows = [
        FunctionShare(name, self_values[name] / grand_total, total / grand_total)
        for name, total in total_values.items()
    ]
    rows.sort(key=lambda row: (-row.self_fraction, -row.total_fraction, row.name))
    return rows[:limit]


def format_table(rows: Sequence[FunctionShare], width: int | None = None) -> str:
    """Lay rows out as an aligned text table with percentages, one per line.

    With ``width``, names too long for a line of that many columns are cut in
    the middle (``std::vector<…>::push_back``): both ends tell functions apart.
    """
    lines = [("function", "self%", "total%")]
    lines += [
        (row.name, f"{row.self_fraction * 100:.1f}", f"{row.total_fraction * 100:.1f}")
        for row in rows
    ]
    self_width = max(len(line[1]) for line in lines)
    total_width = max(len(line[2]) for line in lines)
    if width is not None:
        room = max(width - self_width - total_width - 4, _MIN_NAME_WIDTH)
        lines = [(_cut_middle(name, room), self_, total) for name, self_, total in lines]
    name_width = max(len(line[0]) for line in lines)
    return "\n".join(
        f"{name:<{name_width}}  {self_:>{self_width}}  {total:>{total_width}}"
        for name, self_, total in lines
    )


def _cut_middle(name: str, width: int) -> str:
    if len(name) <= width:
        return name
    head = (width - 1) // 2
    return f"{name[:head]}…{name[len(name) - (width - 1 - head) :]}"
