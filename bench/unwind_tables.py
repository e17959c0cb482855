"""Unwind table build time against ``readelf --debug-dump=frames-interp``, cache load
time, and the table memory of every executable file this machine's processes map.

Each build is timed in a fresh Python process (imports done, nothing of the file
read yet) around ``build_table``; readelf writes to /dev/null. Both are the median
of ``--repeat`` runs; the file itself is in the page cache for both.

    .venv/bin/python bench/unwind_tables.py --repeat 5 --write-results
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

from results import describe_machine, write_section

from agent.symbols.elf import read_build_id
from agent.unwind import TableCache, UnwindError, build_table

ROOT = Path(__file__).resolve().parents[1]
SECTION = "# Unwind table results"
FILES = [
    "/usr/bin/python3.11",
    "/lib/x86_64-linux-gnu/libc.so.6",
    "/lib/x86_64-linux-gnu/liblzma.so.5",
    "/lib/x86_64-linux-gnu/libz.so.1",
    "/usr/bin/xz",
    "/usr/bin/gzip",
]
BUILD_TARGET = 3.0  # × readelf
LOAD_TARGET_MS = 10.0
# Run in a fresh interpreter: prints the seconds build_table took.
_COLD = (
    "import sys, time\n"
    "from agent.unwind import build_table\n"
    "started = time.perf_counter()\n"
    "with open(sys.argv[1], 'rb') as file:\n"
    "    build_table(file)\n"
    "print(time.perf_counter() - started)\n"
)


def time_readelf(path: str, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(
            ["readelf", "--debug-dump=frames-interp", path],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def time_cold_build(path: str, repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        out = subprocess.run(
            [sys.executable, "-c", _COLD, path], check=True, capture_output=True, text=True
        )
        runs.append(float(out.stdout))
    return statistics.median(runs)


def time_cache_load(path: str, repeat: int, directory: str) -> float:
    with open(path, "rb") as file:
        build_id = read_build_id(file)
    cache = TableCache(directory)
    with open(path, "rb") as file:
        cache.store(build_id, build_table(file))
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        cache.load(build_id)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def measure_files(repeat: int) -> tuple[list[str], list[str]]:
    """The per-file table and the targets, as Markdown lines."""
    lines = [
        "| file | FDEs | rows | table KiB | readelf ms | build ms (cold) | ratio | cache load ms |"
        " unsupported rows |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    targets = []
    with tempfile.TemporaryDirectory() as directory:
        for path in FILES:
            if not os.path.exists(path):
                continue
            table = build_table(open(path, "rb"))
            readelf = time_readelf(path, repeat)
            cold = time_cold_build(path, repeat)
            load = time_cache_load(path, repeat, directory)
            ratio = cold / readelf
            unsupported = ", ".join(f"{k} {v}" for k, v in sorted(table.unsupported.items()))
            lines.append(
                f"| {os.path.basename(path)} | {len(table.functions)} | {table.row_count} | "
                f"{table.nbytes / 1024:.0f} | {readelf * 1e3:.1f} | {cold * 1e3:.1f} | "
                f"{ratio:.2f} | {load * 1e3:.2f} | {unsupported or '-'} |"
            )
            met = "met" if ratio <= BUILD_TARGET else "NOT met"
            targets.append(
                f"- {os.path.basename(path)}: build {ratio:.2f}× readelf, {met} "
                f"(target ≤ {BUILD_TARGET:g}×)"
            )
            met = "met" if load * 1e3 <= LOAD_TARGET_MS else "NOT met"
            targets.append(
                f"- {os.path.basename(path)}: cache load {load * 1e3:.2f} ms, {met} "
                f"(target ≤ {LOAD_TARGET_MS:g} ms)"
            )
    return lines, targets


def mapped_executables() -> dict[tuple[str, str], str]:
    """(device, inode) -> a path that opens it, for every r-x file mapping of every process."""
    found: dict[tuple[str, str], str] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as maps:
                lines = maps.readlines()
        except OSError:
            continue
        for line in lines:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or fields[1][:3] != "r-x" or not fields[5].startswith("/"):
                continue
            path = fields[5].rstrip("\n")
            if path.endswith(" (deleted)") or fields[4] == "0":
                continue
            found.setdefault((fields[3], fields[4]), f"/proc/{pid}/root{path}")
    return found


def measure_machine() -> list[str]:
    """Table memory for every distinct executable file mapped right now."""
    files = mapped_executables()
    sizes: list[tuple[int, int, str]] = []
    failures: Counter[str] = Counter()
    started = time.perf_counter()
    gone = 0
    for path in files.values():
        try:
            with open(path, "rb") as file:
                table = build_table(file, path)
        except OSError:
            gone += 1  # the process exited, or its root is not ours to read
            continue
        except UnwindError as exc:
            failures[exc.reason] += 1
            continue
        sizes.append((table.nbytes, table.row_count, path.split("/root", 1)[1]))
    elapsed = time.perf_counter() - started
    sizes.sort(reverse=True)
    total_bytes = sum(size for size, _, _ in sizes)
    total_rows = sum(rows for _, rows, _ in sizes)
    row_bytes = 8 * total_rows
    lines = [
        f"{len(files)} distinct executable files mapped (r-x, by device and inode); "
        f"{len(sizes)} tables built in {elapsed:.2f} s, one after the other in one process:",
        "",
        f"- rows: {total_rows}, {row_bytes / 2**20:.2f} MiB of 8-byte rows (what BPF maps hold)",
        f"- with the function ranges: {total_bytes / 2**20:.2f} MiB",
        f"- empty tables (no CFI): {sum(1 for _, rows, _ in sizes if rows == 0)}",
        "- largest: " + ", ".join(f"{os.path.basename(p)} {rows} rows" for _, rows, p in sizes[:5]),
    ]
    if gone:
        lines.append(f"- not opened ({gone}): the process exited before its file was read")
    for reason, count in failures.most_common():
        lines.append(f"- refused ({count}): {reason}")
    return lines


def write_results(body: str, command: str) -> None:
    """Replace (or append) this benchmark's top-level section, keeping the others."""
    machine = describe_machine()
    section = (
        f"{SECTION}\n\nWritten by `bench/unwind_tables.py --write-results`.\n\n"
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        f"- Machine: {machine}\n- Command: `{command}`\n\n{body}\n"
    )
    write_section(section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args()
    table, targets = measure_files(args.repeat)
    machine = measure_machine()
    explanation = textwrap.fill(
        "Build ms is `build_table` in a fresh Python process, its imports done (open, ELF "
        "headers, section read, CFI parse, rows): the agent is already running when it "
        "builds. readelf ms is the wall time of `readelf --debug-dump=frames-interp FILE > "
        "/dev/null`, its exec included (about 1 ms, most of it for the small files). Both "
        f"are the median of {args.repeat} runs, the file in the page cache. Cache load is "
        "`TableCache.load` (read, CRC32, decode). Table KiB counts the 8-byte rows and the "
        "function ranges; unsupported rows are CFI rows before merging.",
        width=100,
    )
    body = "\n".join(
        [explanation, "", *table, "", "## Machine", "", *machine, "", "## Targets", "", *targets]
    )
    print(body)
    if args.write_results:
        write_results(body, " ".join([".venv/bin/python", "bench/unwind_tables.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
