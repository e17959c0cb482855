"""Python unwinding end to end on real interpreters (pyenv 3.8–3.13, Debian's
static 3.11): shares, names and lines against py-spy, C extensions, threads,
depth, an evicting symbols map, and ``--no-python``."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.ebpf import Session, SessionOptions
from agent.pprof import ProfileBuilder, read_profile
from agent.profiler import ProcessProfile, Profiler
from agent.python import PythonProcesses
from agent.python.symbols import TRUNCATED_FRAME, UNKNOWN_FUNCTION
from agent.symbols import Symbolizer
from tests.agent import (
    Sample,
    Site,
    cpu_seconds,
    loaded_programs,
    programs_held_by,
    read_samples,
    share,
)
from tests.python.conftest import only_on

pytestmark = pytest.mark.usefixtures("bpf_ready")

REPO = Path(__file__).resolve().parents[2]
WORKLOADS = REPO / "tests" / "python" / "workloads"
RATE = 97  # the CLI's default sample rate
# Shares are compared at a higher rate: py-spy samples at random times, so at
# 97 Hz for 4 s (about 390 samples) one standard deviation of a 70 % share is
# already 2.3 points; at 499 Hz it is 1 point for each sampler.
SHARE_RATE = 499
MAX_PY_FRAMES = 128  # bpf/profile.h: deeper Python stacks are truncated
BOOTSTRAP = ["Thread.run", "Thread._bootstrap_inner", "Thread._bootstrap"]
LIBZ_FUNCTION = re.compile(r"^(deflate|longest_match|compress|fill_window|_tr_)")


# --- reading profiles back ------------------------------------------------------------


def is_in_libz(site: Site) -> bool:
    return "libz.so" in site.mapping or bool(site.mapping and LIBZ_FUNCTION.match(site.name))


def hot_line(path: Path, marker: str) -> int:
    """The line of ``path`` that carries the comment ``# hot: <marker>``."""
    lines = path.read_text().splitlines()
    found = [n for n, text in enumerate(lines, start=1) if text.endswith(f"# hot: {marker}")]
    assert len(found) == 1, (marker, found)
    return found[0]


# --- py-spy, the reference sampler ----------------------------------------------------


@dataclass(frozen=True)
class SpyFrame:
    name: str
    filename: str
    line: int


def read_py_spy_raw(path: Path) -> list[tuple[list[SpyFrame], int]]:
    """py-spy's ``--format raw`` (collapsed stacks): ``root;...;leaf COUNT``,
    each frame ``name (file:line)``; returned leaf first."""
    stacks = []
    for text in path.read_text().splitlines():
        stack, _, count = text.rpartition(" ")
        frames = []
        for frame in stack.split(";"):
            match = re.fullmatch(r"(.*) \((.*):(\d+)\)", frame)
            assert match, frame
            frames.append(SpyFrame(match[1], match[2], int(match[3])))
        stacks.append((frames[::-1], int(count)))
    return stacks


def spy_share(stacks: list[tuple[list[SpyFrame], int]], name: str) -> float:
    """The share of samples with a frame of ``name`` (py-spy names methods
    bare before 3.11, as co_name is)."""
    bare = name.rpartition(".")[2]
    total = sum(count for _, count in stacks)
    hits = sum(
        count for frames, count in stacks if any(frame.name in (name, bare) for frame in frames)
    )
    return hits / total if total else 0.0


@pytest.fixture(scope="session")
def py_spy() -> str:
    found = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if found is None:
        pytest.skip("py-spy is not installed (pip install py-spy): it is the oracle here")
    return found


# --- workloads ------------------------------------------------------------------------


def start_workload(python: Path, name: str, *args: object) -> subprocess.Popen:
    """Start ``workloads/<name>.py`` and wait until it prints "ready"."""
    process = subprocess.Popen(
        [str(python), str(WORKLOADS / f"{name}.py"), *map(str, args)],
        stdout=subprocess.PIPE,
        text=True,
    )
    ready, _, _ = select.select([process.stdout], [], [], 30)
    line = process.stdout.readline() if ready else ""
    if line.strip() != "ready":
        stop_workloads([process])
        pytest.fail(f"{name}.py on {python} did not start: {line!r}")
    return process


def stop_workloads(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout:
            process.stdout.close()


@pytest.fixture
def workloads() -> Iterator[list[subprocess.Popen]]:
    """Processes a test started: killed in teardown, whatever happened."""
    started: list[subprocess.Popen] = []
    yield started
    stop_workloads(started)


# --- profiles shared by several tests, one per interpreter ----------------------------


@dataclass
class RatioRun:
    """The ratio workload profiled at once by emberscope and by py-spy."""

    python: Path
    pid: int
    script: Path
    ours: list[Sample]
    spy: list[tuple[list[SpyFrame], int]]


@dataclass
class MixedRun:
    """One emberscope run over five workloads: compress, threads, and three recursions."""

    samples: dict[str, list[Sample]]  # workload -> its samples
    cpu_seconds: dict[str, float]  # workload -> CPU time it had while sampled
    duration_s: float  # the profile's duration_nanos, in seconds


@pytest.fixture(scope="module")
def runs() -> dict[tuple[str, Path], object]:
    """Profiles taken once per interpreter and read by several tests."""
    return {}


def cached_run(runs: dict[tuple[str, Path], object], key: tuple[str, Path], take: Callable):
    """The run ``key``, taken the first time a test asks; a run that failed
    fails the later tests that read it without being taken again."""
    if key not in runs:
        try:
            runs[key] = take()
        except (Exception, pytest.fail.Exception) as exc:
            runs[key] = exc
            raise
    run = runs[key]
    if isinstance(run, BaseException):
        pytest.fail(f"the {key[0]} run on {key[1]} failed in an earlier test: {run}")
    return run


@pytest.fixture
def ratio_run(interpreter, runs, emberscope, py_spy, tmp_path) -> RatioRun:
    python, _ = interpreter
    return cached_run(
        runs, ("ratio", python), lambda: profile_ratio(python, emberscope, py_spy, tmp_path)
    )


def profile_ratio(python: Path, emberscope, py_spy: str, tmp_path: Path) -> RatioRun:
    script = WORKLOADS / "ratio.py"
    ours, theirs = tmp_path / "ours.pb.gz", tmp_path / "py-spy.txt"
    workload = start_workload(python, "ratio", 10)
    spy = None
    try:
        # --nonblocking: py-spy must not stop the process under our sampler.
        spy = subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(workload.pid),
                "--duration",
                "4",
                "--rate",
                str(SHARE_RATE),
                "--format",
                "raw",
                "--nonblocking",
                "--full-filenames",
                "--output",
                str(theirs),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        result = emberscope(
            "profile",
            "--pid",
            str(workload.pid),
            "--duration",
            "4s",
            "--sample-rate",
            str(SHARE_RATE),
            "--output",
            str(ours),
        )
        _, spy_errors = spy.communicate(timeout=30)
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
            spy.wait()
        stop_workloads([workload])
    assert result.returncode == 0, result.stderr
    assert spy.returncode == 0, spy_errors
    return RatioRun(python, workload.pid, script, read_samples(ours), read_py_spy_raw(theirs))


MIXED_DURATION_S = 4
MIXED = {
    "compress": ("compress",),
    "threads": ("threads",),
    "deep": ("recursion", 300),
    "shallow": ("recursion", 50),
    "limit": ("recursion", MAX_PY_FRAMES - 3),
}


@pytest.fixture
def mixed_run(interpreter, runs, tmp_path) -> MixedRun:
    python, _ = interpreter
    return cached_run(runs, ("mixed", python), lambda: profile_mixed(python, tmp_path))


def profile_mixed(python: Path, tmp_path: Path) -> MixedRun:
    out = tmp_path / "mixed.pb.gz"
    processes: dict[str, subprocess.Popen] = {}
    run = None
    try:
        for label, (name, *args) in MIXED.items():
            processes[label] = start_workload(python, name, *args, 15)
        pids = {label: process.pid for label, process in processes.items()}
        run = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent.cli",
                "profile",
                *(arg for pid in pids.values() for arg in ("--pid", str(pid))),
                "--duration",
                f"{MIXED_DURATION_S}s",
                "--output",
                str(out),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Sampling starts as the programs are attached and lasts the duration:
        # the CPU time each workload gets meanwhile is what the samples measure.
        wait_for_programs(run, {"do_sample", "walk_python"})
        cpu_before = {label: cpu_seconds(pid) for label, pid in pids.items()}
        time.sleep(MIXED_DURATION_S)
        cpu = {label: cpu_seconds(pid) - cpu_before[label] for label, pid in pids.items()}
        _, stderr = run.communicate(timeout=60)
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.wait()
        stop_workloads(list(processes.values()))
    assert run.returncode == 0, stderr
    samples = read_samples(out)
    by_label = {label: [s for s in samples if s.pid == pid] for label, pid in pids.items()}
    duration_s = read_profile(out.read_bytes()).duration_nanos / 1e9
    return MixedRun(by_label, cpu, duration_s)


# --- 1. shares, names and lines against py-spy ----------------------------------------


def same_function(site: Site, name: str) -> bool:
    """Whether a frame is of ``name``, qualified or not (qualnames are tested apart)."""
    return site.name.rpartition(".")[2] == name.rpartition(".")[2]


def test_function_shares_agree_with_py_spy(ratio_run):
    ours = {}
    for name in ("Worker.step", "churn"):
        ours[name] = share(
            ratio_run.ours, lambda s, name=name: any(same_function(x, name) for x in s.python)
        )
        theirs = spy_share(ratio_run.spy, name)
        print(f"{ratio_run.python}: {name}: ours {ours[name]:.3f} py-spy {theirs:.3f}")
        assert abs(ours[name] - theirs) <= 0.05, (name, ours[name], theirs)
    # and the workload's 70/30 split shows through
    assert 0.6 <= ours["Worker.step"] <= 0.8, ours


def test_methods_are_named_by_their_qualified_name(ratio_run):
    names = Counter(site.name for s in ratio_run.ours for site in s.python)
    assert {"Worker.step", "churn", "main", "<module>"} <= names.keys(), names
    assert "step" not in names


def test_python_frames_carry_the_workload_path_as_py_spy_does(ratio_run):
    script = str(ratio_run.script)
    for name in ("Worker.step", "churn", "main", "<module>"):
        files = {site.filename for s in ratio_run.ours for site in s.python if site.name == name}
        assert files == {script}, (name, files)
    spy_files = {frame.filename for frames, _ in ratio_run.spy for frame in frames}
    assert spy_files == {script}


def test_samples_carry_the_pid_and_comm_of_the_process(ratio_run):
    labels = {(s.pid, s.comm) for s in ratio_run.ours}
    assert labels == {(ratio_run.pid, ratio_run.python.name[:15])}


def test_the_hottest_line_of_each_function_is_its_loop_body(ratio_run):
    for name, marker in (("Worker.step", "step"), ("churn", "churn")):
        lines: Counter[int] = Counter()
        for sample in ratio_run.ours:
            for site in sample.python:
                if same_function(site, name):
                    lines[site.line] += sample.count
        expected = hot_line(ratio_run.script, marker)
        assert lines.most_common(1)[0][0] == expected, (name, expected, lines)


# --- 2. C extensions ------------------------------------------------------------------


def test_time_in_libz_sits_under_the_calling_python_function(mixed_run):
    samples = mixed_run.samples["compress"]
    in_libz = [s for s in samples if s.sites and is_in_libz(s.sites[0])]
    leaves = Counter(s.sites[0].name for s in samples if s.sites)
    assert share(samples, lambda s: s in in_libz) > 0.3, leaves
    # The first samples of a process lack Python frames (a bug): see
    # test_every_sample_of_a_python_process_has_python_frames.
    under_work = [s for s in in_libz if "compress_work" in s.names()]
    assert share(in_libz, lambda s: s in under_work) >= 0.9, leaves
    for sample in under_work:
        names = sample.names()
        libz = [i for i, site in enumerate(sample.sites) if is_in_libz(site)]
        assert max(libz) < names.index("compress_work"), names
        assert [site.name for site in sample.python][-3:] == [
            "compress_work",
            "main",
            "<module>",
        ], names


# --- 3. threads -----------------------------------------------------------------------


def test_each_thread_has_its_own_stack_down_to_the_thread_bootstrap(mixed_run):
    samples = mixed_run.samples["threads"]
    for spin in ("spin_a", "spin_b"):
        assert share(samples, lambda s, spin=spin: spin in s.names()) > 0.25, spin
    for sample in samples:
        names = [site.name for site in sample.python]
        if "spin_a" in names or "spin_b" in names:
            assert not {"spin_a", "spin_b"} <= set(names), names
            assert names[1:] == BOOTSTRAP, names


# --- 4. depth -------------------------------------------------------------------------


def test_a_deep_stack_keeps_its_innermost_frames_and_is_marked_truncated(mixed_run):
    walked = [s for s in mixed_run.samples["deep"] if s.python]
    assert share(mixed_run.samples["deep"], lambda s: s in walked) >= 0.9
    for sample in walked:
        names = [site.name for site in sample.python]
        assert names == ["spin", *["recurse"] * (MAX_PY_FRAMES - 1)], Counter(names)
        assert sample.sites[-1].name == TRUNCATED_FRAME.name, sample.names()[-3:]


def test_no_sample_is_lost_however_deep_the_stack(mixed_run):
    """97 Hz of the CPU time each recursion had while sampled: five workloads
    share two CPUs here, and other tests run beside them."""
    counts = {label: sum(s.count for s in mixed_run.samples[label]) for label in MIXED}
    for label in ("deep", "shallow", "limit"):
        expected = RATE * mixed_run.cpu_seconds[label]
        print(f"{label}: {counts[label]} samples, {expected:.0f} expected")
        assert abs(counts[label] - expected) <= 0.25 * expected, (label, counts, expected)


def test_a_stack_within_the_limit_is_whole_down_to_the_module(mixed_run):
    walked = [s for s in mixed_run.samples["shallow"] if s.python]
    assert share(mixed_run.samples["shallow"], lambda s: s in walked) >= 0.9
    for sample in walked:
        names = [site.name for site in sample.python]
        assert names == ["spin", *["recurse"] * 50, "main", "<module>"], Counter(names)
        assert TRUNCATED_FRAME.name not in sample.names()


def test_a_stack_of_exactly_the_limit_is_not_marked_truncated(mixed_run):
    # spin, 125 x recurse, main and <module>: MAX_PY_FRAMES frames, all walked
    walked = [s for s in mixed_run.samples["limit"] if s.python]
    assert walked
    for sample in walked:
        names = [site.name for site in sample.python]
        assert len(names) == MAX_PY_FRAMES and names[-1] == "<module>", Counter(names)
        assert TRUNCATED_FRAME.name not in sample.names(), sample.names()[-3:]


# --- around the Python frames ---------------------------------------------------------


def test_every_sample_of_a_python_process_has_python_frames(ratio_run):
    """A CPU-bound pure-Python loop is always in some Python frame, from the
    first sample on: the kernel must know the process runs Python before it
    samples it (Profiler.add marks it profiled before PythonProcesses.add)."""
    bare = [s.names() for s in ratio_run.ours if not s.python]
    assert not bare, bare[:5]


def test_nothing_outside_any_file_lies_rootward_of_the_module_frame(ratio_run, mixed_run):
    """A native walk that went astray past the eval loop (no frame pointers)
    yields addresses in no file; they must not end up under <module>."""

    def astray(sample: Sample) -> bool:
        names = sample.names()
        return "<module>" in names and any(
            not site.mapping and not site.is_kernel and not site.is_python
            for site in sample.sites[names.index("<module>") :]
        )

    samples = ratio_run.ours + mixed_run.samples["shallow"]
    found = [s.names()[-4:] for s in samples if astray(s)]
    assert not found, (f"{share(samples, astray):.1%} of samples", found[:3])


# --- 5. a symbols map smaller than the functions --------------------------------------


# The map's eviction is the same for every version; the oldest, the newest and
# Debian's read names each their own way.
@only_on("pyenv-3.8", "pyenv-3.13", "debian-3.11")
def test_names_survive_an_evicting_symbols_map(interpreter, workloads, tmp_path):
    python, _ = interpreter
    workload = start_workload(python, "many_functions", 30)
    workloads.append(workload)
    options = SessionOptions(
        sample_rate=RATE, python_enabled=True, symbols_map_size=64, discover_new=False
    )
    builder = ProfileBuilder(RATE, time_nanos=time.time_ns())
    with Session(options) as session, Symbolizer() as symbolizer:
        python_processes = PythonProcesses(session, 64)
        profiler = Profiler(session, symbolizer, lambda _process: [], python_processes)
        profiler.add(workload.pid, [ProcessProfile(builder)])
        routed = 0
        for _ in range(4):
            deadline = time.monotonic() + 1
            while time.monotonic() < deadline:
                profiler.poll(timeout_ms=100)
            routed += profiler.collect()
        # Stopped, it takes no more samples; its memory can still be read.
        os.kill(workload.pid, signal.SIGSTOP)
        time.sleep(0.05)
        routed += profiler.collect()
        total = session.read_sample_total()
        stats = session.read_python_stats()
        entries, capacity = session.read_map_fill()["py_symbols"]
    print(f"symbols: {stats}, map {entries}/{capacity}, routed {routed}, total {total}")
    assert capacity == 64
    assert capacity // 2 <= entries <= capacity, entries
    assert stats["symbols_new"] - entries > 100, (stats, entries)
    assert routed == total > 0
    out = tmp_path / "many.pb.gz"
    out.write_bytes(builder.encode())
    frames: Counter[str] = Counter()
    for sample in read_samples(out):
        for site in sample.python:
            frames["unknown" if site.name == UNKNOWN_FUNCTION else "named"] += sample.count
    print(f"python frames: {dict(frames)}")
    assert frames["named"] >= 0.9 * (frames["named"] + frames["unknown"]), frames
    work = {site.name for s in read_samples(out) for site in s.python}
    assert len({name for name in work if name.startswith("work_")}) > 100


# --- 6. --no-python -------------------------------------------------------------------


# What loads does not depend on the version: Debian's, without frame pointers, shows
# the native frames are still there.
@only_on("debian-3.11")
def test_no_python_leaves_native_frames_only_and_loads_no_walker(interpreter, workloads, tmp_path):
    python, _ = interpreter
    workload = start_workload(python, "ratio", 8)
    workloads.append(workload)
    out = tmp_path / "native.pb.gz"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agent.cli",
            "profile",
            "--no-python",
            "--pid",
            str(workload.pid),
            "--duration",
            "3s",
            "--output",
            str(out),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        held = wait_for_programs(run, {"do_sample", "handle_exec", "handle_exit"})
        stdout, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, stderr
    assert "walk_python" not in held.values(), held
    samples = read_samples(out)
    names = {site.name for s in samples for site in s.sites}
    assert not names & {"Worker.step", "step", "churn", "<module>"}, names
    assert not [site for s in samples for site in s.sites if site.is_python]
    assert any(name.startswith("_PyEval_EvalFrameDefault") for name in names), names


def test_the_python_walker_is_loaded_only_when_enabled():
    for enabled in (True, False):
        with Session(SessionOptions(python_enabled=enabled)):
            held = {loaded_programs().get(i, "") for i in programs_held_by(os.getpid())}
        assert ("walk_python" in held) is enabled, held


# --- the profile as a whole -----------------------------------------------------------


def test_the_profile_duration_is_the_sampling_window(mixed_run):
    """duration_nanos covers the --duration sampled, not the symbolization
    of the last batch that follows it (no samples are taken meanwhile)."""
    assert MIXED_DURATION_S <= mixed_run.duration_s <= MIXED_DURATION_S * 1.1


# --- helpers --------------------------------------------------------------------------


def wait_for_programs(
    process: subprocess.Popen, expected: set[str], timeout: float = 30
) -> dict[int, str]:
    """The BPF programs ``process`` holds once it holds ``expected`` (it has loaded them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"emberscope exited early: {process.communicate()[1]}")
        programs = loaded_programs()
        held = {i: programs.get(i, "") for i in programs_held_by(process.pid)}
        if expected <= set(held.values()):
            return held
        time.sleep(0.1)
    pytest.fail(f"pid {process.pid} did not load {sorted(expected)} within {timeout}s")
