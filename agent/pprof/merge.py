"""Merge pprof profiles of one sample type into one, as ``pprof -proto a b`` does.

Each sample is turned back into frames and added to a ``ProfileBuilder``, so
equal functions, mappings and stacks from different files become one.
"""

from __future__ import annotations

from collections.abc import Iterable

from agent.pprof import profile_pb2
from agent.pprof.builder import ProfileBuilder
from agent.pprof.read import location_frames, value_index

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
    frames = location_frames(profile)
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
