"""The LRU and the symbolizer's three caches: exact sizes, eviction closes files, debug info."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.symbols import Symbolizer
from agent.symbols.cache import LruCache
from tests.conftest import compile_workload


def test_lru_evicts_the_least_recently_used_and_counts():
    evicted = []
    cache: LruCache[str, int] = LruCache(2, on_evict=lambda key, value: evicted.append(key))
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the oldest
    cache.put("c", 3)
    assert evicted == ["b"] and len(cache) == 2
    assert cache.get("b") is None
    assert [key for key, _ in cache.items()] == ["a", "c"]
    assert cache.pop("a") == 1 and cache.pop("a") is None
    assert evicted == ["b"]
    assert cache.stats() == {"size": 2, "len": 1, "hits": 1, "misses": 1, "evictions": 1}


def test_lru_put_of_a_held_key_replaces_without_evicting():
    cache: LruCache[str, int] = LruCache(1)
    cache.put("a", 1)
    cache.put("a", 2)
    assert cache.get("a") == 2 and cache.evictions == 0


def test_lru_refuses_a_size_below_one():
    with pytest.raises(ValueError, match="at least 1"):
        LruCache(0)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_evicting_a_process_closes_its_files(binaries, run_workload):
    workloads = [run_workload(binaries.with_library) for _ in range(3)]
    with Symbolizer(pid_cache_size=2) as symbolizer:
        symbolizer.add_process(workloads[0].pid)
        symbolizer.add_process(workloads[1].pid)
        full = open_fds()
        symbolizer.add_process(workloads[2].pid)  # evicts the first
        assert open_fds() == full
        pids = [entry["pid"] for entry in symbolizer.debug_info()["pid_cache"]["entries"]]
        assert pids == [workloads[1].pid, workloads[2].pid]
        # An evicted process is read again on its next sample, evicting another.
        frames = symbolizer.resolve_user(workloads[0].pid, [workloads[0].addresses["alpha"]])
        assert frames[0].name == "alpha"
        info = symbolizer.debug_info()["pid_cache"]
        assert (info["size"], info["len"], info["evictions"]) == (2, 2, 2)


@pytest.fixture(scope="module")
def no_build_id(binaries) -> tuple[Path, Path]:
    """Two different programs linked without a build id."""
    paths = []
    for name, flag in (("nobid_a", "-O0"), ("nobid_b", "-O1")):
        path = binaries.root / name
        paths.append(compile_workload("named_functions.c", path, flag, "-Wl,--build-id=none"))
    return paths[0], paths[1]


def test_caches_hold_exactly_their_configured_sizes(binaries, no_build_id, run_workload, tmp_path):
    with_id = [binaries.pie, binaries.nopie, binaries.rdynamic]
    without_id = list(no_build_id)
    workloads = [run_workload(path) for path in with_id + without_id]
    sizes = {"pid_cache_size": 3, "build_id_cache_size": 2, "same_file_cache_size": 1}
    with Symbolizer(**sizes) as symbolizer:
        for workload in workloads:
            frames = symbolizer.resolve_user(workload.pid, [workload.addresses["alpha"]])
            assert frames[0].name == "alpha"
        info = symbolizer.debug_info()
    assert {
        name: info[name]["size"] for name in ("pid_cache", "build_id_cache", "same_file_cache")
    } == {
        "pid_cache": 3,
        "build_id_cache": 2,
        "same_file_cache": 1,
    }
    assert [info[name]["len"] for name in ("pid_cache", "build_id_cache", "same_file_cache")] == [
        3,
        2,
        1,
    ]
    assert info["build_id_cache"]["evictions"] == 1
    assert info["same_file_cache"]["evictions"] == 1
    assert [e["path"] for e in info["build_id_cache"]["entries"]] == [
        str(binaries.nopie),
        str(binaries.rdynamic),
    ]
    (same_file,) = info["same_file_cache"]["entries"]
    assert same_file["path"] == str(no_build_id[1])
    assert same_file["inode"] == os.stat(no_build_id[1]).st_ino


def test_debug_info_lists_each_process_files_and_symbol_counts(
    binaries, run_workload, nm, readelf_build_id
):
    workload = run_workload(binaries.with_library)
    with Symbolizer() as symbolizer:
        symbolizer.resolve_user(workload.pid, [workload.addresses["lib_work"]])
        info = symbolizer.debug_info()
    (process,) = info["pid_cache"]["entries"]
    assert process["pid"] == workload.pid and process["perf_map"] is None
    files = {Path(f["path"]).name: f for f in process["files"]}
    library = files[binaries.library.name]
    # Parsed: counted; mapped but never sampled: not parsed yet.
    assert library["symbols"] == len(nm(binaries.library))
    assert library["build_id"] == readelf_build_id(binaries.library)
    assert library["inode"] == os.stat(binaries.library).st_ino
    assert files[binaries.with_library.name]["symbols"] is None
    (table,) = info["build_id_cache"]["entries"]
    assert table == {
        "build_id": readelf_build_id(binaries.library),
        "path": str(binaries.library),
        "symbols": library["symbols"],
        "debug_file": "",
    }
    assert info["same_file_cache"]["entries"] == []


def test_a_table_evicted_by_build_id_is_parsed_again(binaries, run_workload):
    pie, nopie = run_workload(binaries.pie), run_workload(binaries.nopie)
    with Symbolizer(build_id_cache_size=1) as symbolizer:
        for workload in (pie, nopie):
            symbolizer.resolve_user(workload.pid, [workload.addresses["alpha"]])
        symbolizer.forget(pie.pid)
        symbolizer.resolve_user(pie.pid, [pie.addresses["alpha"]])
        assert symbolizer.tables_parsed == 3
