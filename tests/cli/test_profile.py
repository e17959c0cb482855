"""`emberscope profile` end to end on the real kernel, checked against perf and go tool pprof."""

from __future__ import annotations

import os
import pty
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.pprof import read_profile, top_functions

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("bpf_ready")

KERNEL_BASE = 0xFFFF800000000000
RATE = "499"  # more samples than 97 Hz in a few seconds: the shares settle within 1 pp
LEAVES = ("leaf_a", "leaf_b", "leaf_c")
CHAINS = {
    "leaf_a": ["leaf_a", "chain_a2", "chain_a1", "main"],
    "leaf_b": ["leaf_b", "chain_b1", "main"],
    "leaf_c": ["leaf_c", "chain_c1", "main"],
}


def stacks(profile) -> list[tuple[list[str], list[int], int, dict[str, str]]]:
    """Each sample as (function names leaf first, addresses, value, labels)."""
    strings = profile.string_table
    functions = {f.id: strings[f.name] for f in profile.function}
    locations = {loc.id: loc for loc in profile.location}
    result = []
    for sample in profile.sample:
        names = [functions[locations[i].line[0].function_id] for i in sample.location_id]
        addresses = [locations[i].address for i in sample.location_id]
        labels = {strings[label.key]: strings[label.str] for label in sample.label}
        result.append((names, addresses, sample.value[0], labels))
    return result


def perf_self_shares(binary: Path, seconds: int, tmp_path: Path) -> dict[str, float]:
    data = tmp_path / "perf.data"
    subprocess.run(
        [
            "perf",
            "record",
            "-q",
            "-F",
            RATE,
            "-g",
            "-o",
            str(data),
            "--",
            str(binary),
            str(seconds),
        ],
        check=True,
        capture_output=True,
    )
    return perf_report_shares(data)


def perf_report_shares(data: Path) -> dict[str, float]:
    """Each function's self share of the samples in ``data``, as `perf report` counts them."""
    report = subprocess.run(
        [
            "perf",
            "report",
            "-i",
            str(data),
            "--stdio",
            "--no-children",
            "--sort",
            "sym",
            "-q",
            "-g",
            "none",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    shares = {}
    for line in report.splitlines():
        match = re.match(r"\s*([\d.]+)%\s+\[[.k]\]\s+(\S+)", line)
        if match:
            shares[match.group(2)] = float(match.group(1)) / 100
    return shares


@pytest.fixture(scope="module")
def three_leaves_profile(build_workload, emberscope, tmp_path_factory):
    out = tmp_path_factory.mktemp("profile") / "three.pb.gz"
    binary = build_workload("three_leaves")
    result = emberscope(
        "profile",
        "--sample-rate",
        RATE,
        "--duration",
        "20s",
        "--output",
        str(out),
        "--",
        str(binary),
        "6",
    )
    assert result.returncode == 0, result.stderr
    return out, result


def test_self_shares_agree_with_perf_record(three_leaves_profile, build_workload, tmp_path):
    out, _ = three_leaves_profile
    ours = {
        row.name: row.self_fraction for row in top_functions(read_profile(out.read_bytes()), 50)
    }
    theirs = perf_self_shares(build_workload("three_leaves"), 6, tmp_path)
    for leaf in LEAVES:
        assert abs(ours[leaf] - theirs[leaf]) <= 0.03, (leaf, ours[leaf], theirs[leaf])
    # and the workload's own 3:2:1 split shows through
    assert ours["leaf_a"] > ours["leaf_b"] > ours["leaf_c"] > 0.1


def test_each_leaf_has_its_whole_chain_from_main(three_leaves_profile):
    out, _ = three_leaves_profile
    samples = stacks(read_profile(out.read_bytes()))
    for leaf, chain in CHAINS.items():
        chains = [names[: len(chain)] for names, _, _, _ in samples if names and names[0] == leaf]
        assert chain in chains, (leaf, chains[:3])


def test_prints_the_top_table_and_the_file_summary(three_leaves_profile):
    out, result = three_leaves_profile
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["function", "self%", "total%"]
    assert lines[1].split()[0] == "leaf_a"
    assert re.search(rf"wrote {re.escape(str(out))}: \d+ samples, \d+ stacks", result.stdout)


def test_the_profile_has_the_pprof_shape_a_server_needs(three_leaves_profile):
    out, _ = three_leaves_profile
    profile = read_profile(out.read_bytes())
    strings = profile.string_table
    assert [(strings[t.type], strings[t.unit]) for t in profile.sample_type] == [
        ("cpu", "nanoseconds")
    ]
    assert profile.period == 1_000_000_000 // int(RATE)
    assert all(s.value[0] % profile.period == 0 for s in profile.sample)
    # the window ends with the workload, which runs until time(NULL) has moved 6
    # whole seconds on: 5 to 6 s after its start, less the time to attach to it,
    # plus up to one 0.2 s poll to notice its exit
    assert profile.time_nanos > 0 and 4e9 < profile.duration_nanos < 7e9
    binaries = [m for m in profile.mapping if strings[m.filename].endswith("three_leaves")]
    assert binaries and strings[binaries[0].build_id]
    readelf = subprocess.run(
        ["readelf", "-n", strings[binaries[0].filename]], capture_output=True, text=True
    ).stdout
    assert strings[binaries[0].build_id] in readelf


def test_go_tool_pprof_reads_the_file(three_leaves_profile, go_pprof):
    out, _ = three_leaves_profile
    raw = go_pprof(out.read_bytes(), "-raw")
    for name in (*LEAVES, "chain_a1", "main"):
        assert re.search(rf"\b{name}\b", raw), name
    assert "cpu/nanoseconds" in raw


def run_syscalls(build_workload, emberscope, tmp_path, *flags: str):
    out = tmp_path / "sys.pb.gz"
    result = emberscope(
        "profile",
        "--sample-rate",
        RATE,
        "--duration",
        "10s",
        "--output",
        str(out),
        *flags,
        "--",
        str(build_workload("syscalls")),
        "3",
    )
    assert result.returncode == 0, result.stderr
    return stacks(read_profile(out.read_bytes()))


def kernel_text_symbols() -> set[str]:
    with open("/proc/kallsyms") as stream:
        return {line.split()[2] for line in stream if line.split()[1] in "tTwW"}


def test_kernel_frames_are_named_from_kallsyms(build_workload, emberscope, tmp_path):
    samples = run_syscalls(build_workload, emberscope, tmp_path)
    kernel_names = {
        name
        for names, addresses, _, _ in samples
        for name, address in zip(names, addresses, strict=True)
        if address >= KERNEL_BASE
    }
    assert kernel_names, "no kernel frames"
    named = kernel_names & kernel_text_symbols()
    assert len(named) >= 0.9 * len(kernel_names)
    assert any("write" in name for name in named)
    assert any("write_loop" in names for names, _, _, _ in samples)


def test_no_kernel_removes_kernel_frames(build_workload, emberscope, tmp_path):
    samples = run_syscalls(build_workload, emberscope, tmp_path, "--no-kernel")
    assert samples
    assert all(address < KERNEL_BASE for _, addresses, _, _ in samples for address in addresses)
    assert any("write_loop" in names for names, _, _, _ in samples)


def test_no_user_removes_user_frames(build_workload, emberscope, tmp_path):
    samples = run_syscalls(build_workload, emberscope, tmp_path, "--no-user")
    assert any(addresses for _, addresses, _, _ in samples)
    assert all(address >= KERNEL_BASE for _, addresses, _, _ in samples for address in addresses)


def test_an_unselected_process_does_not_appear(build_workload, emberscope, tmp_path):
    selected = subprocess.Popen([str(build_workload("syscalls")), "30"])
    other = subprocess.Popen([str(build_workload("three_leaves")), "30"])
    out = tmp_path / "one.pb.gz"
    try:
        result = emberscope(
            "profile",
            "--pid",
            str(selected.pid),
            "--duration",
            "3s",
            "--sample-rate",
            RATE,
            "--output",
            str(out),
        )
    finally:
        for process in (selected, other):
            process.kill()
            process.wait()
    assert result.returncode == 0, result.stderr
    samples = stacks(read_profile(out.read_bytes()))
    assert {labels["pid"] for _, _, _, labels in samples} == {str(selected.pid)}
    names = {name for names, _, _, _ in samples for name in names}
    assert "write_loop" in names
    assert not names & set(LEAVES)


def test_a_selected_process_that_exits_keeps_its_samples(build_workload, emberscope, tmp_path):
    # 4 s of work: more than the CLI's start-up takes on a loaded machine, less than the run.
    short = subprocess.Popen([str(build_workload("three_leaves")), "4"])
    out = tmp_path / "short.pb.gz"
    started = time.monotonic()
    result = emberscope(
        "profile",
        "--pid",
        str(short.pid),
        "--duration",
        "7s",
        "--sample-rate",
        RATE,
        "--output",
        str(out),
    )
    short.wait()
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started >= 7
    rows = {row.name: row for row in top_functions(read_profile(out.read_bytes()), 50)}
    assert set(LEAVES) <= rows.keys()
    assert rows["main"].total_fraction > 0.95


def test_each_sample_keeps_its_comm_though_its_process_exited_first(
    build_workload, emberscope, go_pprof, tmp_path
):
    binary = build_workload("three_leaves")
    out = tmp_path / "comm.pb.gz"
    result = emberscope(
        "profile",
        "--duration",
        "10s",
        "--sample-rate",
        RATE,
        "--output",
        str(out),
        "--",
        "sh",
        "-c",
        f"{binary} 1; {binary} 1",  # both have exited when the profile is written
    )
    assert result.returncode == 0, result.stderr
    samples = stacks(read_profile(out.read_bytes()))
    # A sample may have no frame at all (taken as a process execs): it has no leaf to check.
    leaves = [labels for names, _, _, labels in samples if names and names[0] in LEAVES]
    assert {labels["comm"] for labels in leaves} == {"three_leaves"}
    assert len({labels["pid"] for labels in leaves}) == 2
    tags = go_pprof(out.read_bytes(), "-tags")
    totals = dict(re.findall(r"^ (comm|pid): Total (\S+)$", tags, re.MULTILINE))
    assert totals["comm"] == totals["pid"], tags  # every sample has both
    assert re.search(r"^\s+\S+ \(\s*[\d.]+%\): three_leaves$", tags, re.MULTILINE), tags


def test_sigint_ends_the_run_early_and_still_writes_the_profile(build_workload, tmp_path):
    busy = subprocess.Popen([str(build_workload("three_leaves")), "30"])
    out = tmp_path / "early.pb.gz"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "profile",
            "--pid",
            str(busy.pid),
            "--duration",
            "60s",
            "--output",
            str(out),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(3)
        run.send_signal(signal.SIGINT)
        stdout, stderr = run.communicate(timeout=30)
    finally:
        busy.kill()
        busy.wait()
    assert run.returncode == 0, stderr
    assert "wrote" in stdout
    rows = {row.name for row in top_functions(read_profile(out.read_bytes()), 20)}
    assert "leaf_a" in rows


def test_progress_is_shown_on_a_terminal(build_workload, tmp_path):
    primary, secondary = pty.openpty()
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "profile",
            "--duration",
            "2s",
            "--output",
            str(tmp_path / "p.pb.gz"),
            "--",
            str(build_workload("three_leaves")),
            "5",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=secondary,
        text=True,
    )
    os.close(secondary)
    shown = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        shown += chunk
    run.wait(timeout=30)
    os.close(primary)
    assert run.returncode == 0
    progress = re.findall(rb"(\d+\.\d)s\s+(\d+) samples", shown)
    assert len(progress) >= 3
    assert float(progress[-1][0]) >= 1.5 and int(progress[-1][1]) > 100


def test_a_stripped_go_program_has_its_functions_named(build_go_workload, emberscope, tmp_path):
    binary = build_go_workload("go_stripped", "-ldflags=-s -w")
    out = tmp_path / "go.pb.gz"
    result = emberscope(
        "profile",
        "--sample-rate",
        RATE,
        "--duration",
        "10s",
        "--output",
        str(out),
        "--",
        str(binary),
        "2",
    )
    assert result.returncode == 0, result.stderr
    names = {name for names, _, _, _ in stacks(read_profile(out.read_bytes())) for name in names}
    assert {"main.hotLoop", "main.(*worker).step", "main.main"} <= names
