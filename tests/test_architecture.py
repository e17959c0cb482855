"""docs/ARCHITECTURE.md names every room and module of the tree, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAP = (REPO / "docs" / "ARCHITECTURE.md").read_text()


def documented_rooms() -> dict[str, set[str]]:
    """Room folder -> the modules its row of the rooms table lists."""
    rooms = {}
    for line in MAP.splitlines():
        match = re.fullmatch(r"\| `(agent/\w+)/` \| [^|]+ \| (.+) \|", line)
        if match:
            rooms[match.group(1)] = set(re.findall(r"`([\w.]+\.py)`", match.group(2)))
    return rooms


def test_every_room_of_the_tree_is_on_the_map_with_exactly_its_modules():
    rooms = documented_rooms()
    on_disk = {
        str(folder.relative_to(REPO)): {
            path.name
            for path in folder.glob("*.py")
            if path.name != "__init__.py" and not path.name.endswith("_pb2.py")
        }
        for folder in sorted((REPO / "agent").iterdir())
        if (folder / "__init__.py").exists()
    }
    assert rooms == on_disk


def test_every_module_beside_the_rooms_is_on_the_map():
    beside = {path.name for path in (REPO / "agent").glob("*.py") if path.name != "__init__.py"}
    listed = set(re.findall(r"\| `agent/(\w+\.py)` \|", MAP))
    assert listed == beside


def test_the_bpf_files_it_names_exist():
    for name in re.findall(r"`(bpf/[\w.]+)`", MAP):
        assert (REPO / name).exists(), name
