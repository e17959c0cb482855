"""vDSO frames are named from the agent's own vDSO, as gdb names them in the profiled
process, also after that process exited."""

from __future__ import annotations

import os
import re
import subprocess

from agent.symbols import Symbolizer
from agent.symbols.procmaps import read_maps
from agent.symbols.vdso import VDSO_PATH, read_own_vdso


def vdso_mapping(pid: int) -> tuple[int, int]:
    (entry,) = [m for m in read_maps(pid) if m.path == VDSO_PATH]
    return entry.start, entry.end


def gdb_names(pid: int, addresses: list[int]) -> list[str]:
    """The oracle: gdb's ``info symbol`` in the live process, "" where it names none.
    Asked twice at most: an attach that fails answers nothing."""
    commands = [arg for a in addresses for arg in ("-ex", f"info symbol {a:#x}")]
    for _ in range(2):
        shown = subprocess.run(
            ["gdb", "-nx", "-batch", "-p", str(pid), *commands],
            capture_output=True,
            text=True,
            timeout=60,
        )
        answers = [
            line for line in shown.stdout.splitlines() if " section " in line or "No symbol" in line
        ]
        if len(answers) == len(addresses):
            break
    assert len(answers) == len(addresses), f"{shown.stdout}\n{shown.stderr}"
    return [
        "" if line.startswith("No symbol") else re.split(r" \+ | in section ", line)[0]
        for line in answers
    ]


def alias(name: str) -> str:
    """``__vdso_clock_gettime`` and ``clock_gettime`` are one function."""
    return name.removeprefix("__vdso_")


def test_vdso_frames_are_named_as_gdb_names_them_after_the_process_exited():
    size, _ = read_own_vdso()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        start, end = vdso_mapping(sleeper.pid)
        assert end - start == size  # one image for every process of this kernel
        addresses = list(range(start, end, 16))
        expected = gdb_names(sleeper.pid, addresses)
        with Symbolizer() as symbolizer:
            symbolizer.add_process(sleeper.pid)
            sleeper.kill()
            sleeper.wait()
            assert not os.path.exists(f"/proc/{sleeper.pid}")
            # each a leaf: a caller's address is looked up one byte before
            frames = [symbolizer.resolve_user(sleeper.pid, [a])[0] for a in addresses]
    finally:
        sleeper.kill()
        sleeper.wait()
    named = [(alias(f.name), alias(e)) for f, e in zip(frames, expected, strict=True) if e]
    assert len(named) > 20  # clock_gettime, gettimeofday, time, getcpu, ...
    assert [ours for ours, _ in named] == [theirs for _, theirs in named]
    unnamed = [f.name for f, e in zip(frames, expected, strict=True) if not e]
    assert all(name.startswith("[vdso]+0x") for name in unnamed), unnamed
    assert {f.mapping.build_id for f in frames} == {read_own_vdso()[1].build_id}
