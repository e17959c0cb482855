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

from agent.pprof import profile_pb2
from agent.pprof.read import location_frames, value_index
from agent.symbols.frames import Frame, MappedFile

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
    frames = _location_keys(profile)
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


def _location_keys(profile: profile_pb2.Profile) -> dict[int, list[_Key]]:
    """Each location's frames as (label, kind), outermost first."""
    frames = location_frames(profile)
    go_mappings = {
        frame.mapping
        for location in frames.values()
        for frame in location
        if frame.mapping is not None and frame.name.startswith("runtime.")
    }
    return {
        location_id: [_key(frame, go_mappings) for frame in reversed(location)]
        for location_id, location in frames.items()
    }


def _key(frame: Frame, go_mappings: set[MappedFile]) -> _Key:
    kind = _kind(frame, go_mappings)
    if kind == "python" and frame.filename:
        return f"{frame.name} ({frame.filename}:{frame.line})", kind
    return frame.name, kind


def _kind(frame: Frame, go_mappings: set[MappedFile]) -> str:
    mapping = frame.mapping
    if mapping is None:
        if frame.address == 0:
            return "python"
        return "native" if frame.name.startswith("[unknown]") else "kernel"
    if not mapping.path or mapping.path.startswith("[anon") or "memfd:" in mapping.path:
        return "jit"
    return "go" if mapping in go_mappings else "native"
