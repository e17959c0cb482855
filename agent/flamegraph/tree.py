"""A pprof profile as the tree a flame graph draws: one node per call path.

Emberscope's pprof carries each frame's kind in its shape, so nothing is added
to the format for it (any pprof reader still reads the file):

- ``python``: no mapping and no address (interpreted frames are code objects,
  with their ``file:line`` in the function's filename and the line);
- ``kernel``: no mapping, an address, and not ``[unknown]`` (kallsyms frames);
- ``jit``: a mapping of anonymous memory (named from a perf map, if at all);
- ``go``: a mapping that holds a ``runtime.`` function in the profile (every
  goroutine's stack ends in the Go runtime of its binary);
- ``native``: any other mapped frame, and user addresses outside every mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.pprof import profile_pb2, value_index

__all__ = ["KINDS", "FlameNode", "build_tree"]

KINDS = ("kernel", "native", "python", "go", "jit")

_Key = tuple[str, str]  # (label, kind)


@dataclass(slots=True)
class FlameNode:
    """One call path: ``total`` of the profile's value passed through it, ``self_value``
    ended in it. ``label`` is the function, with ``file:line`` for Python frames."""

    label: str
    kind: str
    total: int = 0
    self_value: int = 0
    children: dict[_Key, FlameNode] = field(default_factory=dict)

    def child(self, label: str, kind: str) -> FlameNode:
        node = self.children.get((label, kind))
        if node is None:
            node = self.children[(label, kind)] = FlameNode(label, kind)
        return node


def build_tree(profile: profile_pb2.Profile) -> FlameNode:
    """The root ``all`` of the profile's samples, root-first stacks merged by frame."""
    index = value_index(profile)
    frames = _location_frames(profile)
    root = FlameNode("all", "")
    for sample in profile.sample:
        value = sample.value[index]
        if value <= 0:
            continue
        try:
            stack = [frames[location_id] for location_id in reversed(sample.location_id)]
        except KeyError as exc:
            raise ValueError(f"sample refers to missing location {exc}") from None
        node = root
        node.total += value
        for location in stack:
            for label, kind in location:
                node = node.child(label, kind)
                node.total += value
        node.self_value += value
    return root


def _location_frames(profile: profile_pb2.Profile) -> dict[int, list[_Key]]:
    """Each location's frames, outermost first (pprof lists inlined lines innermost first)."""
    strings = profile.string_table
    try:
        functions = {f.id: (strings[f.name], strings[f.filename]) for f in profile.function}
        mapping_kinds = _mapping_kinds(profile, functions)
        frames = {}
        for location in profile.location:
            mapping_kind = mapping_kinds.get(location.mapping_id)
            keys = []
            for line in reversed(location.line):
                name, filename = functions[line.function_id]
                kind = mapping_kind or _unmapped_kind(name, location.address)
                python = kind == "python" and filename
                label = f"{name} ({filename}:{line.line})" if python else name
                keys.append((label, kind))
            frames[location.id] = keys
        return frames
    except (IndexError, KeyError) as exc:
        raise ValueError(f"profile refers to a missing function or string ({exc})") from None


def _mapping_kinds(
    profile: profile_pb2.Profile, functions: dict[int, tuple[str, str]]
) -> dict[int, str]:
    strings = profile.string_table
    go_mappings = {
        location.mapping_id
        for location in profile.location
        if any(functions[line.function_id][0].startswith("runtime.") for line in location.line)
    }
    kinds = {}
    for mapping in profile.mapping:
        path = strings[mapping.filename]
        if not path or path.startswith("[anon") or "memfd:" in path:
            kinds[mapping.id] = "jit"
        elif mapping.id in go_mappings:
            kinds[mapping.id] = "go"
        else:
            kinds[mapping.id] = "native"
    return kinds


def _unmapped_kind(name: str, address: int) -> str:
    if address == 0:
        return "python"
    if name.startswith("[unknown]"):
        return "native"
    return "kernel"
