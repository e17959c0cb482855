from __future__ import annotations

import gzip

import pytest

from agent.pprof import FunctionShare, ProfileBuilder, format_table, read_profile, top_functions
from agent.pprof.profile_pb2 import Profile
from agent.symbols.frames import Frame, MappedFile

APP = MappedFile(start=0x400000, limit=0x480000, offset=0, path="/usr/bin/app")


def frame(name: str, address: int = 0) -> Frame:
    return Frame(name, address, APP if address else None)


def builder_of(*stacks: tuple[list[str], int]) -> ProfileBuilder:
    builder = ProfileBuilder(sample_rate=97, time_nanos=1)
    for names, count in stacks:
        builder.add_sample([frame(name) for name in names], count)
    return builder


def shares(profile: Profile, limit: int = 100) -> dict[str, tuple[float, float]]:
    return {
        row.name: (row.self_fraction, row.total_fraction) for row in top_functions(profile, limit)
    }


def test_read_profile_accepts_gzip_and_raw_bytes():
    builder = builder_of((["work", "main"], 2))
    assert read_profile(builder.encode()) == builder.build()
    assert read_profile(builder.build().SerializeToString()) == builder.build()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not a profile", "neither gzip nor a valid Profile"),
        (b"\x1f\x8b\x08\x00garbage", "corrupt gzip"),
        (gzip.compress(b"x" * 100)[:-10], "corrupt gzip"),
        (b"", 'string_table\\[0\\] must be ""'),
        (Profile(string_table=["cpu"]).SerializeToString(), "string_table"),
    ],
)
def test_read_profile_rejects_what_is_not_a_profile(data, reason):
    with pytest.raises(ValueError, match=f"not a pprof profile: {reason}"):
        read_profile(data)


def test_self_counts_the_leaf_and_total_every_stack_holding_the_function():
    profile = builder_of(
        (["memcpy", "work", "main"], 3),
        (["work", "main"], 1),
        (["idle"], 4),
    ).build()
    assert shares(profile) == {
        "idle": (0.5, 0.5),
        "memcpy": (0.375, 0.375),
        "work": (0.125, 0.5),
        "main": (0.0, 0.5),
    }


def test_recursion_counts_once_per_sample():
    profile = builder_of((["fib", "fib", "fib", "main"], 1), (["other"], 1)).build()
    assert shares(profile)["fib"] == (0.5, 0.5)


def test_inlined_functions_count_in_total_and_the_innermost_is_self():
    profile = Profile(
        string_table=["", "cpu", "nanoseconds", "inlined", "caller"],
        sample_type=[{"type": 1, "unit": 2}],
        function=[{"id": 1, "name": 3}, {"id": 2, "name": 4}],
        location=[{"id": 9, "line": [{"function_id": 1}, {"function_id": 2}]}],
        sample=[{"location_id": [9], "value": [10]}],
    )
    assert shares(profile) == {"inlined": (1.0, 1.0), "caller": (0.0, 1.0)}


def test_rows_sort_by_self_then_total_then_name():
    profile = builder_of((["b", "x"], 1), (["a", "x"], 1), (["c"], 1), (["x", "y"], 1)).build()
    assert [row.name for row in top_functions(profile, 10)] == ["x", "a", "b", "c", "y"]
    assert [row.name for row in top_functions(profile, 2)] == ["x", "a"]
    assert top_functions(profile, 0) == []


def test_the_default_sample_type_picks_the_value():
    profile = Profile(
        string_table=["", "samples", "count", "cpu", "nanoseconds", "f", "g"],
        sample_type=[{"type": 1, "unit": 2}, {"type": 3, "unit": 4}],
        function=[{"id": 1, "name": 5}, {"id": 2, "name": 6}],
        location=[{"id": 1, "line": [{"function_id": 1}]}, {"id": 2, "line": [{"function_id": 2}]}],
        sample=[{"location_id": [1], "value": [3, 10]}, {"location_id": [2], "value": [1, 30]}],
    )
    assert shares(profile) == {"g": (0.75, 0.75), "f": (0.25, 0.25)}
    profile.default_sample_type = 1
    assert shares(profile) == {"f": (0.75, 0.75), "g": (0.25, 0.25)}


def test_an_empty_profile_has_no_rows():
    assert top_functions(ProfileBuilder(sample_rate=97, time_nanos=1).build(), 10) == []


def test_a_missing_location_is_a_value_error():
    profile = builder_of((["main"], 1)).build()
    profile.sample[0].location_id.append(99)
    with pytest.raises(ValueError, match="missing location 99"):
        top_functions(profile, 10)


def test_a_negative_limit_is_a_value_error():
    with pytest.raises(ValueError, match="limit"):
        top_functions(builder_of((["main"], 1)).build(), -1)


def test_format_table_aligns_columns():
    rows = [
        FunctionShare("memcpy", 0.375, 0.375),
        FunctionShare("std::sort", 0.0, 1.0),
    ]
    assert format_table(rows).splitlines() == [
        "function   self%  total%",
        "memcpy      37.5    37.5",
        "std::sort    0.0   100.0",
    ]
    assert format_table([]) == "function  self%  total%"


def test_format_table_cuts_long_names_in_the_middle_to_the_width():
    long = (
        "std::vector<std::pair<std::string, int>>::_M_realloc_insert<std::pair<std::string, int>>"
    )
    rows = [FunctionShare(long, 0.5, 0.5), FunctionShare("main", 0.0, 1.0)]
    assert format_table(rows, 40).splitlines() == [
        "function                   self%  total%",
        "std::vector<…tring, int>>   50.0    50.0",
        "main                         0.0   100.0",
    ]
    assert format_table(rows, 200) == format_table(rows)  # room enough: nothing cut
    narrow = format_table(rows, 10).splitlines()[1].split("  ")[0]
    assert len(narrow) == 20  # never narrower than 20 columns: the line wraps instead


def parse_top(text: str) -> dict[str, tuple[float, float]]:
    """Map each function in ``pprof -top`` output to its (flat%, cum%)."""
    rows = text.split("flat%", 1)[1].splitlines()[1:]
    parsed = {}
    for row in rows:
        _flat, flat_pct, _sum, _cum, cum_pct, name = row.split(maxsplit=5)
        parsed[name] = (float(flat_pct.rstrip("%")), float(cum_pct.rstrip("%")))
    return parsed


def test_go_tool_pprof_top_agrees(go_pprof):
    builder = ProfileBuilder(sample_rate=97, time_nanos=1_700_000_000_000_000_000)
    builder.add_sample([frame("memcpy", 0x401000), frame("work", 0x402000), frame("main")], 13)
    builder.add_sample([frame("fib"), frame("fib"), frame("fib"), frame("main")], 7)
    builder.add_sample([frame("std::vector<int>::push_back(int const&)"), frame("main")], 5)
    builder.add_sample([frame("schedule")], 3, {"pid": "1"})
    builder.add_sample([frame("work", 0x402000), frame("main")], 1)
    data = builder.encode()
    top = parse_top(go_pprof(data, "-top", "-nodefraction=0", "-nodecount=1000"))
    ours = {name: (s * 100, t * 100) for name, (s, t) in shares(read_profile(data)).items()}
    assert set(top) == set(ours) and len(top) == 6
    for name, (flat_pct, cum_pct) in top.items():
        assert ours[name] == (pytest.approx(flat_pct, abs=0.006), pytest.approx(cum_pct, abs=0.006))
