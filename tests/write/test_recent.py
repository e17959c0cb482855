"""RecentProfiles: the last intervals of each target, bounded in bytes, in the metrics."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from agent.pprof import ProfileBuilder
from agent.symbols.frames import Frame
from agent.write import LabeledProfile, RecentProfiles, target_id


def profile(service: str, time_nanos: int, count: int = 1) -> LabeledProfile:
    builder = ProfileBuilder(sample_rate=100, time_nanos=time_nanos)
    builder.add_sample([Frame(f"work{time_nanos}"), Frame("main")], count)
    return LabeledProfile({"service_name": service}, builder.encode(), time_nanos)


def size(item: LabeledProfile) -> int:
    return len(item.data) + sum(len(k) + len(v) for k, v in item.labels.items())


def test_each_target_keeps_its_last_intervals():
    registry = CollectorRegistry()
    recent = RecentProfiles(intervals=2, max_bytes=1 << 20, registry=registry)
    made = [profile("a", t) for t in (1, 2, 3)] + [profile("b", 4)]
    for item in made:
        recent.append(item)
    a, b = target_id({"service_name": "a"}), target_id({"service_name": "b"})
    assert recent.targets() == {a: {"service_name": "a"}, b: {"service_name": "b"}}
    assert [p.time_nanos for p in recent.last(a, 5)] == [2, 3]
    assert [p.time_nanos for p in recent.last(a, 1)] == [3]
    assert recent.last("0123456789abcdef", 1) == []
    assert registry.get_sample_value("emberscope_recent_profiles") == 3
    held = sum(size(item) for item in made[1:])
    assert registry.get_sample_value("emberscope_recent_profiles_bytes") == held
    assert registry.get_sample_value("emberscope_recent_evicted_profiles_total") == 0


def test_past_max_bytes_the_oldest_profile_of_any_target_goes_first():
    registry = CollectorRegistry()
    made = [profile("a", 1), profile("b", 2), profile("a", 3)]
    limit = size(made[1]) + size(made[2])  # room for two
    recent = RecentProfiles(intervals=10, max_bytes=limit, registry=registry)
    for item in made:
        recent.append(item)
    assert [p.time_nanos for p in recent.last(target_id({"service_name": "a"}), 10)] == [3]
    assert [p.time_nanos for p in recent.last(target_id({"service_name": "b"}), 10)] == [2]
    assert registry.get_sample_value("emberscope_recent_profiles_bytes") <= limit
    assert registry.get_sample_value("emberscope_recent_evicted_profiles_total") == 1
    assert registry.get_sample_value("emberscope_recent_profiles_max_bytes") == limit


@pytest.mark.parametrize(("intervals", "max_bytes"), [(0, 1), (1, 0)])
def test_limits_below_one_are_refused(intervals, max_bytes):
    with pytest.raises(ValueError, match="must be 1 or more"):
        RecentProfiles(intervals, max_bytes)
