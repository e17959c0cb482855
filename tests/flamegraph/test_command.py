"""`emberscope flamegraph` over the directory pyroscope.file wrote during a real agent
run: --service and --since checked against the files' labels and timestamps."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from agent.pprof import read_profile, top_functions
from tests.agent import run_agent, wait_for, workload_config

pytestmark = pytest.mark.usefixtures("bpf_ready")

SERVICES = ("flame_mix", "three_leaves")
INTERVAL_S = 3


@pytest.fixture(scope="module")
def written(build_workload, tmp_path_factory) -> Path:
    """pyroscope.file's directory after both workloads ran for four intervals or more."""
    folder = tmp_path_factory.mktemp("flamegraph-run")
    programs = folder / "bin"
    programs.mkdir()
    for name in SERVICES:
        shutil.copy(build_workload(name), programs / name)
    out = folder / "out"
    config = workload_config(programs, out, ebpf=f'  collect_interval = "{INTERVAL_S}s"\n')
    with run_agent(config, folder) as agent:
        agent.wait_for_sampling()
        workloads = [subprocess.Popen([str(programs / name), "30"]) for name in SERVICES]
        try:
            wait_for(
                lambda: all(len(list((out / n).glob("*.pb.gz"))) >= 4 for n in SERVICES),
                60,
                "four profiles of each workload",
            )
        finally:
            for workload in workloads:
                workload.kill()
                workload.wait()
    return out


def total(profile) -> int:
    return sum(sample.value[0] for sample in profile.sample)


def files_of(out: Path, service: str) -> list[tuple[Path, object]]:
    """The service's (path, profile) pairs, oldest first."""
    found = [(path, read_profile(path.read_bytes())) for path in (out / service).glob("*.pb.gz")]
    return sorted(found, key=lambda pair: pair[1].time_nanos)


def test_service_keeps_the_profiles_labelled_with_it(written, emberscope, tmp_path):
    out = tmp_path / "leaves.pb.gz"
    result = emberscope(
        "flamegraph", str(written), "--service", "three_leaves", "--format", "pprof", "-o", str(out)
    )
    assert result.returncode == 0, result.stderr
    theirs = files_of(written, "three_leaves")
    for path, _ in theirs:
        labels = json.loads(path.with_name(path.name.replace(".pb.gz", ".labels.json")).read_text())
        assert labels["service_name"] == "three_leaves"
    merged = read_profile(out.read_bytes())
    assert total(merged) == sum(total(profile) for _, profile in theirs)
    names = {row.name for row in top_functions(merged, 1000)}
    assert {"leaf_a", "leaf_b", "leaf_c"} <= names
    assert "hot" not in names
    assert f"wrote {out}: {len(theirs)} profiles merged" in result.stdout


def test_since_keeps_the_profiles_that_end_after_it(written, emberscope, tmp_path):
    theirs = files_of(written, "flame_mix")
    ends = [p.time_nanos + p.duration_nanos for _, p in theirs]
    # Just after the second profile ended: the command starts later still, and the
    # third ends a whole interval after the second.
    since_ms = (time.time_ns() - ends[1]) // 1_000_000 - 50
    out = tmp_path / "since.pb.gz"
    result = emberscope(
        "flamegraph", str(written), "--service", "flame_mix", "--since", f"{since_ms}ms",
        "-o", str(out), "--format", "pprof",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    merged = read_profile(out.read_bytes())
    assert merged.time_nanos == theirs[2][1].time_nanos
    assert total(merged) == sum(total(profile) for _, profile in theirs[2:])


def test_the_whole_directory_becomes_one_html_flame_graph(written, emberscope, tmp_path):
    out = tmp_path / "all.html"
    result = emberscope("flamegraph", str(written), "-o", str(out))
    assert result.returncode == 0, result.stderr
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert "<title>hot\n" in page and "<title>leaf_a\n" in page


def test_an_unreadable_file_is_named_and_the_others_still_merged(written, emberscope, tmp_path):
    copy = tmp_path / "out"
    shutil.copytree(written / "flame_mix", copy / "flame_mix")
    (copy / "flame_mix" / "1.pb.gz").write_bytes(b"\x1f\x8bnot gzip at all")
    (copy / "flame_mix" / "1.labels.json").write_text('{"service_name": "flame_mix"}')
    (copy / "flame_mix" / "2.pb.gz").write_bytes(b"")
    (copy / "flame_mix" / "2.labels.json").write_text("{not json")
    out = tmp_path / "merged.pb.gz"
    result = emberscope(
        "flamegraph", str(copy), "--service", "flame_mix", "--format", "pprof", "-o", str(out)
    )
    assert result.returncode == 0, result.stderr
    assert f"skipped {copy / 'flame_mix' / '1.pb.gz'}: not a pprof profile" in result.stderr
    assert f"skipped {copy / 'flame_mix' / '2.pb.gz'}: 2.labels.json is not JSON" in result.stderr
    theirs = files_of(written, "flame_mix")
    assert total(read_profile(out.read_bytes())) == sum(total(p) for _, p in theirs)


def test_nothing_matched_is_an_error_naming_the_paths(written, emberscope, tmp_path):
    missing = tmp_path / "missing"
    result = emberscope(
        "flamegraph", str(written), str(missing), "--service", "nobody", "-o", str(tmp_path / "x")
    )
    assert result.returncode == 1
    assert f"skipped {missing}: no such file or directory" in result.stderr
    assert f"emberscope: no profile in {written} {missing}" in result.stderr
    assert not (tmp_path / "x").exists()
