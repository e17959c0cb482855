"""Perf maps: a program names the code it generates at run time, and its frames get those names."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.symbols import Symbolizer
from agent.symbols.perfmap import PerfMap, parse_perf_map

# Copies `ret` into an executable anonymous page, names two regions of it in
# its own perf map (one name with spaces), and calls into it in a loop.
JIT = r"""
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(void) {
    unsigned char *code = mmap(NULL, 4096, PROT_READ | PROT_WRITE | PROT_EXEC,
                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (code == MAP_FAILED) return 1;
    memset(code, 0xc3, 4096);
    char path[64];
    snprintf(path, sizeof path, "/tmp/perf-%d.map", (int)getpid());
    FILE *map = fopen(path, "w");
    if (!map) return 2;
    fprintf(map, "%lx 40 LazyCompile:*handler /app/server.js:10\n", (unsigned long)code);
    fprintf(map, "%lx 20 jit_second\n", (unsigned long)(code + 0x40));
    fclose(map);
    void (*generated)(void) = (void (*)(void))code;
    for (int i = 0; i < 100000; i++) generated();
    printf("first %p\nsecond %p\nthird %p\nready\n", code + 4, code + 0x40, code + 0x80);
    fflush(stdout);
    while (getchar() != EOF) {}
    return 0;
}
"""


@pytest.fixture(scope="module")
def jit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    root = tmp_path_factory.mktemp("perfmap")
    (root / "jit.c").write_text(JIT)
    subprocess.run(["gcc", "-O0", "-o", str(root / "jit"), str(root / "jit.c")], check=True)
    return root / "jit"


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
    }


def test_perf_map_is_read_again_when_it_grows(jit_workload):
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
        "1000 10 good one\n"
        "\n"
        "zz 10 bad_start\n"
        "2000 bad_size\n"
        "3000\n"
        "4000 0 empty\n"
        "0x5000 0x8 prefixed\n"
        "1000 20 moved\n"
    )
    records, malformed = parse_perf_map(io.StringIO(text))
    assert records == [(0x1000, 0x20, "moved"), (0x5000, 8, "prefixed")]
    assert malformed == 4


def test_missing_perf_map_names_nothing(tmp_path):
    perf_map = PerfMap(str(tmp_path / "perf-1.map"))
    assert perf_map.refresh() is False
    assert perf_map.lookup(0x1000) is None and len(perf_map) == 0
    (tmp_path / "perf-1.map").write_text("1000 10 f\n")
    assert perf_map.refresh() is True
    assert [perf_map.lookup(a) for a in (0xFFF, 0x1000, 0x100F, 0x1010)] == [None, "f", "f", None]
