"""The agent walks a binary without frame pointers with its unwind tables:
whole stacks in the profile, the walk's counters on /metrics, the tables in
debug info and in the disk cache, which a restart reads instead of building."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.agent import profiles_in, run_agent, workload_config

pytestmark = pytest.mark.usefixtures("bpf_ready")

NO_FRAME_POINTERS = ("-O2", "-fomit-frame-pointer", "-fno-optimize-sibling-calls")
CACHED = '  collect_interval = "1s"\n  unwind_cache_directory = "{cache}"\n'


def whole_chain_share(output, service: str) -> float:
    """The share of samples in leaf_a whose stack holds mid_a, drive_a and main."""
    whole = total = 0
    for _, profile in profiles_in(output, service):
        names = {f.id: profile.string_table[f.name] for f in profile.function}
        lines = {loc.id: [names[line.function_id] for line in loc.line] for loc in profile.location}
        for sample in profile.sample:
            stack = [name for location in sample.location_id for name in lines[location]]
            if stack and stack[0] == "leaf_a":
                total += sample.value[0]
                if {"mid_a", "drive_a", "main"} <= set(stack):
                    whole += sample.value[0]
    return whole / total if total else 0.0


def bpf_map_mappings(pid: int) -> list[int]:
    """The sizes of process ``pid``'s mappings of BPF maps (ring buffers, mmapped arrays)."""
    sizes = []
    for line in open(f"/proc/{pid}/maps", encoding="ascii"):
        fields = line.split()
        if len(fields) > 5 and fields[5].startswith("anon_inode:bpf-map"):
            start, end = (int(bound, 16) for bound in fields[0].split("-"))
            sizes.append(end - start)
    return sizes


def test_the_agent_unwinds_with_tables_and_shows_it(build_workload, tmp_path):
    binary = build_workload("two_chains", *NO_FRAME_POINTERS)
    cache = tmp_path / "cache"
    runs = []
    for run in range(2):
        output = tmp_path / f"out{run}"
        folder = tmp_path / f"run{run}"
        folder.mkdir()
        config = workload_config(binary.parent, output, ebpf=CACHED.format(cache=cache))
        with run_agent(config, folder) as agent:
            agent.wait_for_sampling()
            workload = subprocess.Popen([str(binary), "4"])
            workload.wait()
            time.sleep(2)
            runs.append(
                {
                    "table_frames": agent.metric("emberscope_unwind_frames_total", method="table"),
                    "outermost": agent.metric(
                        "emberscope_unwind_stacks_ended_total", reason="outermost"
                    ),
                    "rows": agent.metric("emberscope_unwind_table_rows"),
                    "capacity": agent.metric("emberscope_unwind_table_max_rows"),
                    "built": agent.metric("emberscope_unwind_files_built_total"),
                    "files": agent.component("pyroscope.ebpf.default")["debugInfo"][
                        "unwind_tables"
                    ]["files"],
                    "share": whole_chain_share(output, binary.name),
                    "map_mappings": bpf_map_mappings(agent.process.pid),
                }
            )
        assert "Traceback" not in agent.log
    first, second = runs
    assert first["share"] >= 0.9
    assert first["table_frames"] > 100 and first["outermost"] > 50
    assert 0 < first["rows"] < first["capacity"] == 1 << 20
    # the rows array is mapped only while a table is written: its pages are the map's memory,
    # not the agent's, and stay out of its RSS
    assert first["map_mappings"] and max(first["map_mappings"]) < first["capacity"] * 8
    assert any(f["path"] == str(binary) and f["rows"] > 0 for f in first["files"])
    assert len(list(cache.glob("*.unwind"))) >= 2  # the binary and libc at least
    # the second agent reads the cached tables instead of building them again
    assert second["share"] >= 0.9
    build_s = {f["path"]: f["build_s"] for f in first["files"]}
    libc = next(path for path in build_s if "libc.so" in path)
    cached = next(f["build_s"] for f in second["files"] if f["path"] == libc)
    assert cached < build_s[libc] / 5, (cached, build_s[libc])
