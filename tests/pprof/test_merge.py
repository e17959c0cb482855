"""Merging pprof profiles: samples summed across files, tables shared."""

from __future__ import annotations

import pytest

from agent.pprof import ProfileBuilder, merge_profiles, read_profile, top_functions
from agent.symbols.frames import Frame, MappedFile

APP = MappedFile(0x400000, 0x480000, 0, "/usr/bin/app", "ab12")
MAIN = Frame("main", 0x401000, APP)
WORK = Frame("work", 0x402000, APP)
HANDLE = Frame("handle", 0, None, "server.py", 42)


def profile_of(rate, start, duration, *stacks):
    builder = ProfileBuilder(sample_rate=rate, time_nanos=start, duration_nanos=duration)
    for frames, count, labels in stacks:
        builder.add_sample(frames, count, labels)
    return read_profile(builder.encode())


def test_equal_stacks_of_two_profiles_become_one_sample_summed():
    first = profile_of(100, 1_000, 10, ([WORK, MAIN], 3, {"pid": "1"}))
    second = profile_of(100, 2_000, 10, ([WORK, MAIN], 2, {"pid": "1"}), ([HANDLE], 1, None))
    merged = merge_profiles([first, second])
    assert [sample.value[0] for sample in merged.sample] == [5 * 10_000_000, 10_000_000]
    assert (merged.time_nanos, merged.duration_nanos) == (1_000, 1_010)
    assert len(merged.mapping) == 1 and len(merged.function) == 3
    strings = merged.string_table
    assert {strings[label.key]: strings[label.str] for label in merged.sample[0].label} == {
        "pid": "1"
    }
    rows = {row.name: row.self_fraction for row in top_functions(merged, 10)}
    assert rows == pytest.approx({"work": 5 / 6, "handle": 1 / 6, "main": 0})


def test_values_of_another_period_are_converted_to_the_first_one():
    merged = merge_profiles(
        [profile_of(100, 0, 0, ([MAIN], 1, None)), profile_of(50, 0, 0, ([MAIN], 1, None))]
    )
    assert merged.period == 10_000_000
    assert merged.sample[0].value[0] == 3 * 10_000_000  # 20 ms at 50 Hz is two 100 Hz samples


def test_nothing_to_merge_is_an_error():
    with pytest.raises(ValueError, match="no profiles to merge"):
        merge_profiles([])
