"""Merge pprof profiles of one sample type into one, as ``pprof -proto a b`` does.

Each sample is turned back into frames and added to a ``ProfileBuilder``, so
equal functions, mappings and stacks from different files become one.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.pprof import profile_pb2
from agent.pprof.builder import ProfileBuilder
from agent.pprof.summary import value_index
from agent.symbols.frames import Frame, MappedFile

__all__ = ["merge_profiles"]

_NANOS_PER_SECOND = 1_000_000_000


def merge_profiles(profiles: Iterable[profile_pb2.Profile]) -> profile_pb2.Profile:
    """One CPU profile holding every sample of ``profiles``, spanning them all in time.

    The period (and so the sample rate) is the first profile's; the values of
    the others are converted to it. ValueError if ``profiles`` is empty or one
    of them refers to a missing table entry.
    """
    profiles = list(profiles)
    if not profiles:
        raise ValueError("no profiles to merge")
    period = profiles[0].period or 1
    start = min(p.time_nanos for p in profiles)
    end = max(p.time_nanos + p.duration_nanos for p in profiles)
    builder = ProfileBuilder(max(_NANOS_PER_SECOND // period, 1), start, end - start)
    for profile in profiles:
        _add_samples(builder, profile, period)
    return builder.build()


def _add_samples(builder: ProfileBuilder, profile: profile_pb2.Profile, period: int) -> None:
    index = value_index(profile)
    frames = _location_frames(profile)
    strings = profile.string_table
    for sample in profile.sample:
        count = round(sample.value[index] / period)
        if count <= 0:
            continue
        try:
            stack = [frame for location_id in sample.location_id for frame in frames[location_id]]
            labels = {strings[label.key]: strings[label.str] for label in sample.label if label.str}
        except (KeyError, IndexError) as exc:
            raise ValueError(f"a sample refers to a missing location or string ({exc})") from None
        builder.add_sample(stack, count, labels)


def _location_frames(profile: profile_pb2.Profile) -> dict[int, list[Frame]]:
    """Each location as frames, leaf first (a location's lines are innermost first)."""
    strings = profile.string_table
    try:
        functions = {f.id: (strings[f.name], strings[f.filename]) for f in profile.function}
        mappings = {
            m.id: MappedFile(
                m.memory_start,
                m.memory_limit,
                m.file_offset,
                strings[m.filename],
                strings[m.build_id],
            )
            for m in profile.mapping
        }
        return {
            location.id: [
                Frame(
                    name=functions[line.function_id][0],
                    address=location.address,
                    mapping=mappings.get(location.mapping_id),
                    filename=functions[line.function_id][1],
                    line=line.line,
                )
                for line in location.line
            ]
            for location in profile.location
        }
    except (IndexError, KeyError) as exc:
        raise ValueError(f"profile refers to a missing function or string ({exc})") from None
