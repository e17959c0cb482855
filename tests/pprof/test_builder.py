from __future__ import annotations

import gzip
import re

import pytest

import agent.pprof
from agent.pprof import ProfileBuilder, read_profile
from agent.pprof.profile_pb2 import Profile
from agent.symbols.frames import Frame, MappedFile

APP = MappedFile(
    start=0x400000, limit=0x480000, offset=0x1000, path="/usr/bin/app", build_id="ab12"
)
LIBC = MappedFile(start=0x7F0000000000, limit=0x7F0000200000, offset=0, path="/usr/lib/libc.so.6")

MAIN = Frame("main", 0x401000, APP, "app.c", 10)
WORK = Frame("work", 0x402000, APP, "app.c", 20)
MEMCPY = Frame("memcpy", 0x7F0000001000, LIBC)
SCHEDULE = Frame("schedule", 0xFFFFFFFF81000000)
PY_FUNC = Frame("handle", 0, None, "server.py", 42)


def build(*stacks: tuple[list[Frame], int], rate: int = 97) -> Profile:
    builder = ProfileBuilder(sample_rate=rate, time_nanos=1_700_000_000_000_000_000)
    for frames, count in stacks:
        builder.add_sample(frames, count)
    return read_profile(builder.encode())


def names_of(profile: Profile, sample_index: int) -> list[str]:
    locations = {location.id: location for location in profile.location}
    functions = {function.id: function for function in profile.function}
    return [
        profile.string_table[functions[locations[loc].line[0].function_id].name]
        for loc in profile.sample[sample_index].location_id
    ]


def test_all_is_the_sorted_public_surface():
    assert agent.pprof.__all__ == [
        "FunctionShare",
        "ProfileBuilder",
        "encode_profile",
        "format_table",
        "merge_profiles",
        "read_profile",
        "top_functions",
        "value_index",
    ]


def test_string_table_starts_empty_and_has_no_duplicates():
    profile = build(([WORK, MAIN], 1), ([MEMCPY, WORK, MAIN], 2))
    assert profile.string_table[0] == ""
    assert len(set(profile.string_table)) == len(profile.string_table)


def test_sample_and_period_types_are_cpu_nanoseconds():
    profile = build(([MAIN], 1))
    strings = profile.string_table
    assert [(strings[t.type], strings[t.unit]) for t in profile.sample_type] == [
        ("cpu", "nanoseconds")
    ]
    assert (strings[profile.period_type.type], strings[profile.period_type.unit]) == (
        "cpu",
        "nanoseconds",
    )


@pytest.mark.parametrize(("rate", "period"), [(97, 10_309_278), (19, 52_631_578), (100, 10**7)])
def test_period_is_a_second_divided_by_the_rate(rate, period):
    assert build(([MAIN], 1), rate=rate).period == period


def test_value_is_count_times_period():
    profile = build(([WORK, MAIN], 7), ([MAIN], 1))
    assert [list(sample.value) for sample in profile.sample] == [[7 * 10_309_278], [10_309_278]]


def test_time_and_duration_are_kept():
    builder = ProfileBuilder(sample_rate=97, time_nanos=123, duration_nanos=15_000_000_000)
    profile = builder.build()
    assert (profile.time_nanos, profile.duration_nanos) == (123, 15_000_000_000)


def test_every_id_is_nonzero_and_every_reference_resolves():
    profile = build(([MEMCPY, WORK, MAIN], 3), ([SCHEDULE, WORK, MAIN], 1), ([PY_FUNC, MAIN], 2))
    location_ids = {location.id for location in profile.location}
    mapping_ids = {mapping.id for mapping in profile.mapping}
    function_ids = {function.id for function in profile.function}
    assert 0 not in location_ids | mapping_ids | function_ids
    assert len(location_ids) == len(profile.location) == 5
    for sample in profile.sample:
        assert set(sample.location_id) <= location_ids
    for location in profile.location:
        assert location.mapping_id == 0 or location.mapping_id in mapping_ids
        assert [line.function_id for line in location.line][0] in function_ids
        assert len(location.line) == 1
    for function in profile.function:
        assert 0 < function.name < len(profile.string_table)


def test_stacks_are_leaf_first():
    profile = build(([MEMCPY, WORK, MAIN], 1))
    assert names_of(profile, 0) == ["memcpy", "work", "main"]


def test_identical_stacks_are_merged_into_one_sample():
    builder = ProfileBuilder(sample_rate=97, time_nanos=1)
    builder.add_sample([WORK, MAIN], 2)
    builder.add_sample([Frame("work", 0x402000, APP, "app.c", 20), MAIN], 3)
    builder.add_sample([MAIN], 1)
    profile = builder.build()
    assert len(builder) == len(profile.sample) == 2
    assert builder.sample_count == 6
    assert list(profile.sample[0].value) == [5 * 10_309_278]


def test_labels_separate_samples_and_their_order_does_not_matter():
    builder = ProfileBuilder(sample_rate=97, time_nanos=1)
    builder.add_sample([MAIN], 1, {"pid": "7", "comm": "app"})
    builder.add_sample([MAIN], 2, {"comm": "app", "pid": "7"})
    builder.add_sample([MAIN], 4, {"pid": "8"})
    builder.add_sample([MAIN], 8)
    profile = builder.build()
    strings = profile.string_table
    found = [
        ({strings[lb.key]: strings[lb.str] for lb in sample.label}, sample.value[0] // 10_309_278)
        for sample in profile.sample
    ]
    assert found == [({"comm": "app", "pid": "7"}, 3), ({"pid": "8"}, 4), ({}, 8)]


def test_mappings_are_deduplicated_and_carry_the_file():
    profile = build(([MEMCPY, WORK, MAIN], 1), ([MEMCPY, MAIN], 1))
    strings = profile.string_table
    mappings = [
        (
            m.id,
            strings[m.filename],
            strings[m.build_id],
            m.memory_start,
            m.memory_limit,
            m.file_offset,
            m.has_functions,
        )
        for m in profile.mapping
    ]
    assert mappings == [
        (1, "/usr/lib/libc.so.6", "", 0x7F0000000000, 0x7F0000200000, 0, True),
        (2, "/usr/bin/app", "ab12", 0x400000, 0x480000, 0x1000, True),
    ]


def test_locations_with_a_file_are_keyed_by_mapping_and_address():
    other_address = Frame("work", 0x402010, APP, "app.c", 21)
    profile = build(([WORK, MAIN], 1), ([other_address, MAIN], 1), ([WORK], 1))
    assert len(profile.location) == 3
    assert len(profile.function) == 2
    addresses = sorted(location.address for location in profile.location)
    assert addresses == [0x401000, 0x402000, 0x402010]


def test_locations_without_a_file_are_keyed_by_function_and_line():
    same_line_elsewhere = Frame("schedule", 0xFFFFFFFF81000040)
    other_line = Frame("handle", 0, None, "server.py", 43)
    profile = build(([SCHEDULE, PY_FUNC], 1), ([same_line_elsewhere, other_line], 1))
    rows = sorted((loc.mapping_id, loc.address, loc.line[0].line) for loc in profile.location)
    assert rows == [(0, 0, 42), (0, 0, 43), (0, 0xFFFFFFFF81000000, 0)]
    assert len(profile.function) == 2


def test_functions_are_keyed_by_name_and_filename():
    profile = build(([Frame("init", filename="a.py"), Frame("init", filename="b.py")], 1))
    strings = profile.string_table
    functions = sorted((strings[f.name], strings[f.filename]) for f in profile.function)
    assert functions == [("init", "a.py"), ("init", "b.py")]


def test_encode_is_deterministic_fast_gzip():
    builder = ProfileBuilder(sample_rate=97, time_nanos=1)
    builder.add_sample([WORK, MAIN], 1)
    data = builder.encode()
    assert data[:2] == b"\x1f\x8b"
    assert data[4:8] == b"\0\0\0\0"  # mtime
    assert data[8] == 4  # XFL: fastest compression
    assert data == builder.encode()
    assert Profile.FromString(gzip.decompress(data)) == builder.build()


def test_empty_builder_still_names_its_types():
    builder = ProfileBuilder(sample_rate=97, time_nanos=1)
    profile = builder.build()
    assert (len(builder), builder.sample_count, len(profile.sample)) == (0, 0, 0)
    assert list(profile.string_table[:3]) == ["", "cpu", "nanoseconds"]


@pytest.mark.parametrize("count", [0, -1])
def test_count_must_be_positive(count):
    with pytest.raises(ValueError, match="count must be positive"):
        ProfileBuilder(sample_rate=97, time_nanos=1).add_sample([MAIN], count)


@pytest.mark.parametrize("rate", [0, -97])
def test_sample_rate_must_be_positive(rate):
    with pytest.raises(ValueError, match="sample_rate"):
        ProfileBuilder(sample_rate=rate, time_nanos=1)


def parse_raw(raw: str) -> dict[int, list[str]]:
    """Map each sample value in ``pprof -raw`` output to its stack's names."""
    samples_part, locations_part = raw.split("\nLocations\n")
    names = {
        int(match[1]): match[2]
        for match in map(RAW_LOCATION.match, locations_part.splitlines())
        if match
    }
    return {
        int(match[1]): [names[int(loc)] for loc in match[2].split()]
        for match in map(RAW_SAMPLE.match, samples_part.splitlines())
        if match
    }


RAW_SAMPLE = re.compile(r"^\s*(\d+): ((?:\d+ ?)+)$")
RAW_LOCATION = re.compile(r"^\s*(\d+): 0x[0-9a-f]+(?: M=\d+)? (.+) \S*:\d+ s=\d+")


def test_go_tool_pprof_reads_names_and_values(go_pprof):
    builder = ProfileBuilder(sample_rate=97, time_nanos=1_700_000_000_000_000_000)
    builder.add_sample([MEMCPY, WORK, MAIN], 3)
    builder.add_sample([SCHEDULE, WORK, MAIN], 5, {"pid": "42"})
    builder.add_sample([Frame("std::vector<int>::push_back(int const&)"), PY_FUNC], 11)
    raw = go_pprof(builder.encode(), "-raw")
    assert "PeriodType: cpu nanoseconds" in raw
    assert "Period: 10309278" in raw
    assert parse_raw(raw) == {
        3 * 10_309_278: ["memcpy", "work", "main"],
        5 * 10_309_278: ["schedule", "work", "main"],
        11 * 10_309_278: ["std::vector<int>::push_back(int const&)", "handle"],
    }
    assert "/usr/bin/app ab12" in raw
    assert "pid:[42]" in raw
