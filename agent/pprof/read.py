"""Read a pprof profile back: decode it, choose the values to read, and turn each
location into the frames it stands for.

Every reader of profiles (the top table, the merge, the flame graph) starts here,
so a profile that refers to a missing table entry is refused the same way.
"""

from __future__ import annotations

import gzip
import zlib

from google.protobuf.message import DecodeError

from agent.pprof import profile_pb2
from agent.symbols.frames import Frame, MappedFile

__all__ = ["location_frames", "read_profile", "value_index"]

_GZIP_MAGIC = b"\x1f\x8b"


def read_profile(data: bytes) -> profile_pb2.Profile:
    """Decode a profile from gzipped or raw pprof bytes."""
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"not a pprof profile: corrupt gzip stream ({exc})") from exc
    try:
        profile = profile_pb2.Profile.FromString(data)
    except DecodeError as exc:
        raise ValueError(
            f"not a pprof profile: neither gzip nor a valid Profile message ({exc})"
        ) from exc
    if not profile.string_table or profile.string_table[0] != "":
        raise ValueError('not a pprof profile: string_table[0] must be ""')
    return profile


def value_index(profile: profile_pb2.Profile) -> int:
    """The index of the values read in each sample: the default sample type's, else the last."""
    if not profile.sample_type:
        raise ValueError("profile has no sample_type")
    if profile.default_sample_type:
        for index, value_type in enumerate(profile.sample_type):
            if value_type.type == profile.default_sample_type:
                return index
    return len(profile.sample_type) - 1


def location_frames(profile: profile_pb2.Profile) -> dict[int, list[Frame]]:
    """Each location id's frames, innermost first as pprof lists inlined lines.
    ValueError if a location refers to a missing function or string."""
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
