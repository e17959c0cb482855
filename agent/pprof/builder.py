"""Build one pprof CPU profile from symbolized stacks.

Strings, functions, mappings and locations are interned as frames arrive, so
the work per ``add_sample`` is a dict lookup per frame, whatever the profile's
size.
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping, Sequence

from agent.pprof import profile_pb2
from agent.symbols.frames import Frame, MappedFile

__all__ = ["ProfileBuilder", "encode_profile"]

_NANOS_PER_SECOND = 1_000_000_000

_LabelKey = tuple[tuple[int, int], ...]
_StackKey = tuple[tuple[int, ...], _LabelKey]


def encode_profile(profile: profile_pb2.Profile) -> bytes:
    """The profile serialized and gzipped.

    Level 1 matches Alloy's ``gzip.BestSpeed``; mtime 0 makes equal profiles
    encode to equal bytes.
    """
    return gzip.compress(profile.SerializeToString(), compresslevel=1, mtime=0)


class ProfileBuilder:
    """Accumulates stacks of one target and interval into a CPU profile.

    Usage::

        builder = ProfileBuilder(sample_rate=97, time_nanos=time.time_ns())
        builder.add_sample([Frame("leaf"), Frame("main")], count=3)
        payload = builder.encode()
    """

    def __init__(self, sample_rate: int, time_nanos: int, duration_nanos: int = 0) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive number of Hz, not {sample_rate}")
        self._period = _NANOS_PER_SECOND // sample_rate
        self._time_nanos = time_nanos
        self.duration_nanos = duration_nanos
        self._strings: dict[str, int] = {"": 0}
        self._cpu = self._string("cpu")
        self._nanoseconds = self._string("nanoseconds")
        self._functions: dict[tuple[str, str], int] = {}
        self._function_rows: list[tuple[int, int]] = []
        self._mappings: dict[MappedFile, int] = {}
        self._mapping_rows: list[tuple[int, int, int, int, int]] = []
        self._locations: dict[tuple[object, ...], int] = {}
        self._location_rows: list[tuple[int, int, int, int]] = []
        self._frame_locations: dict[Frame, int] = {}
        self._counts: dict[_StackKey, int] = {}
        self._sample_count = 0

    @property
    def sample_count(self) -> int:
        """The number of hits added, summed over all stacks."""
        return self._sample_count

    def __len__(self) -> int:
        return len(self._counts)

    def add_sample(
        self,
        frames: Sequence[Frame],
        count: int,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Add ``count`` hits of a stack given leaf first.

        A stack equal to one already added (same locations, same labels) is
        merged into it: two kernel stack ids can symbolize to the same frames.
        """
        if count <= 0:
            raise ValueError(f"count must be positive, not {count}")
        location_ids = tuple(self._location_id(frame) for frame in frames)
        key = (location_ids, self._label_key(labels))
        self._counts[key] = self._counts.get(key, 0) + count
        self._sample_count += count

    def build(self) -> profile_pb2.Profile:
        """Return the profile of everything added so far."""
        profile = profile_pb2.Profile(
            time_nanos=self._time_nanos,
            duration_nanos=self.duration_nanos,
            period=self._period,
        )
        profile.sample_type.add(type=self._cpu, unit=self._nanoseconds)
        profile.period_type.type = self._cpu
        profile.period_type.unit = self._nanoseconds
        self._fill_samples(profile)
        self._fill_tables(profile)
        profile.string_table.extend(self._strings)
        return profile

    def encode(self) -> bytes:
        """Return the profile serialized and gzipped."""
        return encode_profile(self.build())

    def _fill_samples(self, profile: profile_pb2.Profile) -> None:
        for (location_ids, label_key), count in self._counts.items():
            sample = profile.sample.add(location_id=location_ids, value=[count * self._period])
            for key, value in label_key:
                sample.label.add(key=key, str=value)

    def _fill_tables(self, profile: profile_pb2.Profile) -> None:
        for mapping_id, (start, limit, offset, path, build_id) in enumerate(
            self._mapping_rows, start=1
        ):
            profile.mapping.add(
                id=mapping_id,
                memory_start=start,
                memory_limit=limit,
                file_offset=offset,
                filename=path,
                build_id=build_id,
                has_functions=True,
            )
        for function_id, (name, filename) in enumerate(self._function_rows, start=1):
            profile.function.add(id=function_id, name=name, filename=filename)
        for location_id, (mapping_id, address, function_id, line) in enumerate(
            self._location_rows, start=1
        ):
            location = profile.location.add(id=location_id, mapping_id=mapping_id, address=address)
            location.line.add(function_id=function_id, line=line)

    def _location_id(self, frame: Frame) -> int:
        location_id = self._frame_locations.get(frame)
        if location_id is None:
            location_id = self._intern_location(frame)
            self._frame_locations[frame] = location_id
        return location_id

    def _intern_location(self, frame: Frame) -> int:
        """Return the location of a frame not seen before, creating it if new.

        A frame with a file and an address is identified by them; any other
        (kernel, interpreted) by its function and line, keeping the address
        of the first such frame seen.
        """
        function_id = self._function_id(frame.name, frame.filename)
        if frame.mapping is not None and frame.address:
            key: tuple[object, ...] = (frame.mapping, frame.address)
        else:
            key = (function_id, frame.line)
        location_id = self._locations.get(key)
        if location_id is None:
            mapping_id = 0 if frame.mapping is None else self._mapping_id(frame.mapping)
            self._location_rows.append((mapping_id, frame.address, function_id, frame.line))
            location_id = len(self._location_rows)
            self._locations[key] = location_id
        return location_id

    def _function_id(self, name: str, filename: str) -> int:
        key = (name, filename)
        function_id = self._functions.get(key)
        if function_id is None:
            self._function_rows.append((self._string(name), self._string(filename)))
            function_id = self._functions[key] = len(self._function_rows)
        return function_id

    def _mapping_id(self, mapped: MappedFile) -> int:
        mapping_id = self._mappings.get(mapped)
        if mapping_id is None:
            self._mapping_rows.append(
                (
                    mapped.start,
                    mapped.limit,
                    mapped.offset,
                    self._string(mapped.path),
                    self._string(mapped.build_id),
                )
            )
            mapping_id = self._mappings[mapped] = len(self._mapping_rows)
        return mapping_id

    def _label_key(self, labels: Mapping[str, str] | None) -> _LabelKey:
        if not labels:
            return ()
        return tuple(
            (self._string(key), self._string(value)) for key, value in sorted(labels.items())
        )

    def _string(self, value: str) -> int:
        index = self._strings.get(value)
        if index is None:
            index = self._strings[value] = len(self._strings)
        return index
