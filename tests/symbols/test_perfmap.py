"""Perf maps: a program names the code it generates at run time, and its frames get those names.

The file belongs to the profiled process, so the hostile ones are tested on
real files: a FIFO nobody writes, a symlink to /dev/zero, a device node, a
socket, symlinks out of the process's root, and a 100 MB map whose cost is
measured as the RSS of a child process against a control run.
"""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agent.symbols import Symbolizer, procmaps, resolver
from agent.symbols.perfmap import PerfMap, parse_perf_map
from tests.conftest import compile_workload


@pytest.fixture(scope="module")
def jit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A program that copies `ret` into an executable anonymous page, names two
    regions of it in its own perf map (one name with spaces), and calls into it."""
    root = tmp_path_factory.mktemp("perfmap")
    return compile_workload("perf_map_jit.c", root / "jit", "-O0")


@pytest.fixture
def jit_workload(jit, run_workload):
    workload = run_workload(jit)
    perf_map = Path(f"/tmp/perf-{workload.pid}.map")
    yield workload, perf_map
    perf_map.unlink(missing_ok=True)


def test_generated_code_is_named_from_the_perf_map(jit_workload):
    workload, _ = jit_workload
    with Symbolizer() as symbolizer:
        first = symbolizer.resolve_user(workload.pid, [workload.addresses["first"]])
        second = symbolizer.resolve_user(workload.pid, [workload.addresses["second"]])
        info = symbolizer.debug_info()
    assert first[0].name == "LazyCompile:*handler /app/server.js:10"
    assert first[0].address == workload.addresses["first"]
    assert second[0].name == "jit_second"
    (entry,) = info["pid_cache"]["entries"]
    assert entry["perf_map"] == {
        "path": f"/proc/{workload.pid}/root/tmp/perf-{workload.pid}.map",
        "symbols": 2,
        "malformed": 0,
        "error": "",
    }


def test_perf_map_is_read_again_when_it_grows(jit_workload, monkeypatch):
    monkeypatch.setattr(resolver, "_PERF_MAP_EVERY_S", 0.0)
    workload, perf_map = jit_workload
    third = workload.addresses["third"]
    with Symbolizer() as symbolizer:
        (frame,) = symbolizer.resolve_user(workload.pid, [third])
        assert frame.name.startswith("[anon]+0x")
        with perf_map.open("a") as stream:
            stream.write(f"{third:x} 10 jit_third\nnot a line\n")
        assert [f.name for f in symbolizer.resolve_user(workload.pid, [third])] == ["jit_third"]
        (entry,) = symbolizer.debug_info()["pid_cache"]["entries"]
    assert entry["perf_map"]["symbols"] == 3 and entry["perf_map"]["malformed"] == 1


def test_malformed_lines_are_counted_and_skipped():
    text = (
        b"1000 10 good one\n"
        b"\n"
        b"zz 10 bad_start\n"
        b"2000 bad_size\n"
        b"3000\n"
        b"4000 0 empty\n"
        b"0x5000 0x8 prefixed\n"
        b"1000 20 moved\n"
    )
    symbols, malformed = parse_perf_map(io.BytesIO(text))
    assert list(symbols.records()) == [(0x1000, 0x20, "moved"), (0x5000, 8, "prefixed")]
    assert malformed == 4


def test_a_name_longer_than_the_limit_is_cut_and_the_next_line_still_read():
    text = b"1000 10 " + b"n" * 100_000 + b"\n2000 10 after\n"
    symbols, malformed = parse_perf_map(io.BytesIO(text))
    assert [(start, len(name)) for start, _, name in symbols.records()] == [
        (0x1000, 1024),
        (0x2000, 5),
    ]
    assert malformed == 0


def test_parsing_stops_at_max_bytes_even_if_the_file_goes_on():
    lines = b"".join(b"%012x 10 function_%06d\n" % (0x1000 + 0x10 * i, i) for i in range(1000))
    symbols, _ = parse_perf_map(io.BytesIO(lines), max_bytes=100)  # 32 bytes a line
    assert [name for _, _, name in symbols.records()] == [f"function_{i:06d}" for i in range(3)]


def test_missing_perf_map_names_nothing(tmp_path):
    perf_map = PerfMap(str(tmp_path), "/perf-1.map")
    assert perf_map.refresh() is False
    assert perf_map.lookup(0x1000) is None and len(perf_map) == 0
    (tmp_path / "perf-1.map").write_text("1000 10 f\n")
    assert perf_map.refresh() is True
    assert [perf_map.lookup(a) for a in (0xFFF, 0x1000, 0x100F, 0x1010)] == [None, "f", "f", None]
    assert perf_map.refresh() is False  # unchanged: not read again


def test_names_of_a_gone_process_stay_for_the_stacks_it_left(tmp_path):
    (tmp_path / "perf-1.map").write_text("1000 10 f\n")
    perf_map = PerfMap(str(tmp_path), "/perf-1.map")
    perf_map.refresh()
    (tmp_path / "perf-1.map").unlink()
    assert perf_map.refresh() is False and perf_map.lookup(0x1000) == "f"


# Hostile perf maps, in a root of their own (as /proc/<pid>/root is).


def timed_refresh(perf_map: PerfMap) -> tuple[bool, float]:
    """refresh() in a thread, so a test that would block fails instead of hanging."""
    result: list[bool] = []
    started = time.monotonic()
    thread = threading.Thread(target=lambda: result.append(perf_map.refresh()), daemon=True)
    thread.start()
    thread.join(timeout=5)
    assert not thread.is_alive(), f"refresh of {perf_map.path} blocked"
    return result[0], time.monotonic() - started


@pytest.fixture
def fifo_map(tmp_path):
    path = tmp_path / "tmp" / "perf-7.map"
    path.parent.mkdir()
    os.mkfifo(path)
    yield path
    # A reader stuck in open() would be released by a writer.
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def test_a_fifo_is_refused_without_blocking(tmp_path, fifo_map):
    perf_map = PerfMap(str(tmp_path), "/tmp/perf-7.map")
    changed, elapsed = timed_refresh(perf_map)
    assert changed and perf_map.error_reason == "perf_map_refused"
    assert perf_map.error == "is a FIFO, not a regular file"
    assert elapsed < 0.5
    # Refused once: the same FIFO is not reported again.
    assert timed_refresh(perf_map)[0] is False


def test_a_symlink_to_dev_zero_is_refused_without_reading(tmp_path):
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp" / "perf-7.map").symlink_to("/dev/zero")
    perf_map = PerfMap("/", f"{tmp_path}/tmp/perf-7.map")
    changed, elapsed = timed_refresh(perf_map)
    assert changed and perf_map.error == "is a character device, not a regular file"
    assert elapsed < 0.5 and len(perf_map) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_a_device_node_is_refused_without_being_opened(tmp_path):
    (tmp_path / "tmp").mkdir()
    # /dev/null's numbers: opening it would succeed, so only the type refuses it.
    os.mknod(tmp_path / "tmp" / "perf-7.map", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    perf_map = PerfMap(str(tmp_path), "/tmp/perf-7.map")
    assert timed_refresh(perf_map)[0] is True
    assert perf_map.error == "is a character device, not a regular file"


def test_a_socket_is_refused(tmp_path):
    (tmp_path / "tmp").mkdir()
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "tmp" / "perf-7.map"))
        perf_map = PerfMap(str(tmp_path), "/tmp/perf-7.map")
        assert timed_refresh(perf_map)[0] is True
    assert perf_map.error == "is a socket, not a regular file"


@pytest.fixture
def rooted(tmp_path):
    """A process root beside a perf map outside it that no symlink may reach."""
    root = tmp_path / "root"
    (root / "tmp").mkdir(parents=True)
    (root / "app").mkdir()
    (root / "app" / "inside.map").write_text("1000 10 inside\n")
    (tmp_path / "outside.map").write_text("1000 10 outside\n")
    return root


@pytest.mark.parametrize("target", ["{outside}", "../../outside.map", "../../../../outside.map"])
def test_a_symlink_out_of_the_process_root_reaches_nothing_outside(rooted, target):
    link = rooted / "tmp" / "perf-7.map"
    link.symlink_to(target.format(outside=rooted.parent / "outside.map"))
    perf_map = PerfMap(str(rooted), "/tmp/perf-7.map")
    perf_map.refresh()
    assert perf_map.lookup(0x1000) is None and len(perf_map) == 0


@pytest.mark.parametrize("target", ["/app/inside.map", "../app/inside.map"])
def test_a_symlink_inside_the_process_root_is_followed_there(rooted, target):
    # An absolute target means the process's /app, not the agent's.
    (rooted / "tmp" / "perf-7.map").symlink_to(target)
    perf_map = PerfMap(str(rooted), "/tmp/perf-7.map")
    assert perf_map.refresh() is True and perf_map.lookup(0x1000) == "inside"


def test_without_openat2_every_symlink_is_refused(rooted, monkeypatch):
    monkeypatch.setattr(procmaps, "_openat2_missing", True)
    (rooted / "tmp" / "perf-7.map").symlink_to("../app/inside.map")
    perf_map = PerfMap(str(rooted), "/tmp/perf-7.map")
    assert perf_map.refresh() is True and perf_map.lookup(0x1000) is None
    assert perf_map.error == "holds a symlink, refused without openat2"
    (rooted / "tmp" / "perf-7.map").unlink()
    (rooted / "tmp" / "perf-7.map").write_text("1000 10 plain\n")
    assert perf_map.refresh() is True and perf_map.lookup(0x1000) == "plain"


def test_a_file_over_the_cap_names_nothing_until_the_cap_is_raised(tmp_path):
    text = "".join(f"{0x1000 + 0x10 * i:012x} 10 f{i:015d}\n" for i in range(100))
    (tmp_path / "perf-7.map").write_text(text)
    perf_map = PerfMap(str(tmp_path), "/perf-7.map", max_bytes=len(text) - 1)
    assert perf_map.refresh() is True and perf_map.lookup(0x1000) is None
    assert perf_map.error_reason == "perf_map_too_large"
    assert (
        perf_map.error
        == f"{len(text)} bytes, more than the {len(text) - 1} read (perf_map_max_bytes)"
    )
    assert perf_map.refresh() is False  # counted once
    raised = PerfMap(str(tmp_path), "/perf-7.map", max_bytes=len(text))
    assert raised.refresh() is True and raised.lookup(0x1000) == f"f{0:015d}" and len(raised) == 100


def test_tiny_lines_cannot_cost_more_than_the_cap_pays_for(tmp_path):
    text = "".join(f"{i:x} 1 a\n" for i in range(1, 5000))  # about 9 bytes a line
    (tmp_path / "perf-7.map").write_text(text)
    perf_map = PerfMap(str(tmp_path), "/perf-7.map", max_bytes=len(text))
    assert perf_map.refresh() is True and len(perf_map) == 0
    assert perf_map.error_reason == "perf_map_refused" and "regions in" in perf_map.error


# Through the symbolizer, on a live process.


def test_a_fifo_perf_map_costs_one_counted_error_and_nothing_else(jit_workload):
    workload, perf_map = jit_workload
    perf_map.unlink()
    os.mkfifo(perf_map)
    with Symbolizer() as symbolizer:
        started = time.monotonic()
        for _ in range(3):
            (frame,) = symbolizer.resolve_user(workload.pid, [workload.addresses["first"]])
        elapsed = time.monotonic() - started
        (entry,) = symbolizer.debug_info()["pid_cache"]["entries"]
        assert symbolizer.errors == {"perf_map_refused": 1}
    assert frame.name.startswith("[anon]+0x")
    assert entry["perf_map"]["error"] == "is a FIFO, not a regular file"
    assert elapsed < 1


def test_a_perf_map_over_the_symbolizers_cap_is_counted_once(jit_workload, caplog):
    workload, _ = jit_workload
    with Symbolizer(perf_map_max_bytes=32) as symbolizer:
        for _ in range(3):
            (frame,) = symbolizer.resolve_user(workload.pid, [workload.addresses["first"]])
        assert symbolizer.errors == {"perf_map_too_large": 1}
    assert frame.name.startswith("[anon]+0x")
    assert "more than the 32 read (perf_map_max_bytes)" in caplog.text


# Memory, measured as the RSS of a child process that reads one perf map.

MEASURE = """
import json, sys, time
from agent.symbols.perfmap import PerfMap

def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {key: int(fields[key].split()[0]) for key in ("VmRSS", "VmHWM")}

root, path, max_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
perf_map = PerfMap(root, path, max_bytes)
started = time.monotonic()
perf_map.refresh()
elapsed = time.monotonic() - started
found = {"seconds": elapsed, "symbols": len(perf_map), "error": perf_map.error}
print(json.dumps({**status(), **found}))
"""


def measure(root: Path, path: str, max_bytes: int = 16 << 20) -> dict:
    """RSS and peak RSS (kB) of a fresh interpreter after one refresh of the perf map."""
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(root), path, str(max_bytes)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
    ).stdout
    return json.loads(out)


def write_jit_map(path: Path, size: int) -> None:
    """A perf map as Node writes one: 64-byte lines of addresses, sizes and names, the
    addresses out of order (code is placed wherever the JIT has room)."""
    with path.open("wb") as stream:
        written, index = 0, 0
        while written < size:
            chunk = b"".join(
                b"%012x 40 LazyCompile:*handler_%08d /app/server.js:10\n"
                % (0x7F0000000000 + 0x40 * ((index + i) * 7919 % 1_000_003), index + i)
                for i in range(10_000)
            )
            stream.write(chunk)
            written += len(chunk)
            index += 10_000


@pytest.fixture(scope="module")
def maps_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("maps_root")
    (root / "control.map").write_text("7f0000000000 40 LazyCompile:*handler /app/server.js:10\n")
    write_jit_map(root / "big.map", 100 << 20)
    write_jit_map(root / "genuine.map", 15 << 20)
    (root / "zero.map").symlink_to("/dev/zero")
    yield root
    for name in ("big.map", "genuine.map"):
        (root / name).unlink()


@pytest.mark.parametrize("hostile", ["big.map", "zero.map"])
def test_a_100_mb_map_or_dev_zero_costs_no_memory_beyond_a_control_run(maps_root, hostile):
    control = measure(maps_root, "/control.map")
    # Seen from "/", as for a host process: the symlink reaches the real /dev/zero.
    measured = measure(Path("/"), f"{maps_root}/{hostile}")
    print(f"{hostile}: control {control}, measured {measured}")
    assert control["symbols"] == 1 and measured["symbols"] == 0 and measured["error"]
    assert measured["VmHWM"] - control["VmHWM"] < 20 * 1024
    assert measured["seconds"] < 0.5


def test_a_genuine_map_under_the_cap_costs_about_its_size(maps_root):
    control = measure(maps_root, "/control.map")
    measured = measure(maps_root, "/genuine.map")
    print(f"genuine 15 MiB: control {control}, measured {measured}")
    assert measured["symbols"] == 250_000
    size_kb = (maps_root / "genuine.map").stat().st_size // 1024
    # Kept: 26 bytes a region and its 40-byte name, for a 64-byte line.
    assert measured["VmRSS"] - control["VmRSS"] < 1.5 * size_kb
    # While sorting: the columns as read, one int per region, the sorted columns.
    assert measured["VmHWM"] - control["VmHWM"] < 3 * size_kb


def test_a_growing_perf_map_is_looked_at_once_a_second_at_most(jit_workload, monkeypatch):
    workload, perf_map = jit_workload
    reads = []
    real_refresh = PerfMap.refresh
    monkeypatch.setattr(PerfMap, "refresh", lambda self: reads.append(1) or real_refresh(self))
    with Symbolizer() as symbolizer:
        for index in range(50):
            with perf_map.open("a") as stream:
                stream.write(f"{0x10 * index:x} 10 appended_{index}\n")
            symbolizer.resolve_user(workload.pid, [workload.addresses["first"]])
    assert len(reads) == 1
