"""Cold load plus lookup, and warm lookups, of Emberscope's symbol tables against ``addr2line -f``.

For each target the same batch of addresses (sampled inside the function
symbols ``nm`` lists) goes to Emberscope, loading the file as the resolver
does, and to one ``addr2line -f -e FILE`` process reading them on stdin.
The kernel has no file for addr2line, so it is compared with a plain
``sort`` + ``bisect`` over /proc/kallsyms written inline here.

    .venv/bin/python bench/symbols.py --count 1000 --repeat 5 --write-results
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import tempfile
import textwrap
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from pathlib import Path

from results import describe_machine, write_section

from agent.symbols.debuginfo import read_debug_symbols
from agent.symbols.elf import read_build_id, read_elf
from agent.symbols.gopclntab import read_gopclntab
from agent.symbols.kallsyms import read_kallsyms
from agent.symbols.minidebuginfo import read_minidebuginfo

ROOT = Path(__file__).resolve().parents[1]
SECTION = "# Symbolization results"
LIBC = "/lib/x86_64-linux-gnu/libc.so.6"
LIBPYTHON = "/usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0"
KALLSYMS = "/proc/kallsyms"
WARM_TARGET_US = 5.0

Lookup = Callable[[int], "str | None"]


def build_go(root: Path, *flags: str) -> Path:
    """The Go workload, built with Debian's go; ``flags`` go to ``go build``."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root),
        "GOCACHE": str(root / "cache"),
        "GOPATH": str(root / "gopath"),
        "GOFLAGS": "-mod=mod",
        "GOPROXY": "off",
        "CGO_ENABLED": "0",
    }
    (root / "main.go").write_bytes((ROOT / "tests/workloads/go/main.go").read_bytes())
    name = "goworkload" + "".join(f.split("=")[0] for f in flags).replace("-", "_")
    subprocess.run(["go", "build", *flags, "-o", name, "main.go"], check=True, cwd=root, env=env)
    return root / name


def function_ranges(path: str) -> list[tuple[int, int]]:
    """(start, size) of each sized code symbol nm lists, from .symtab or else .dynsym."""
    for extra in ([], ["-D"]):
        out = subprocess.run(
            ["nm", "-S", "--defined-only", *extra, path], capture_output=True, text=True
        ).stdout
        ranges = {
            (int(fields[0], 16), int(fields[1], 16))
            for fields in (line.split() for line in out.splitlines())
            if len(fields) == 4 and fields[2] in "TtWwi" and int(fields[1], 16) > 0
        }
        if ranges:
            return sorted(ranges)
    raise SystemExit(f"nm lists no sized functions in {path}")


def sample(ranges: Sequence[tuple[int, int]], count: int, rng: random.Random) -> list[int]:
    picks = rng.choices(ranges, k=count)
    return [start + rng.randrange(size) for start, size in picks]


def load_elf(path: str) -> Lookup:
    """What Symbolizer._load does for a file met for the first time, caches empty."""
    with open(path, "rb") as stream:
        read_build_id(stream, path)
        info = read_debug_symbols(read_elf(stream, path), path, ("/",))
        if not info.has_symtab and not info.debug_file:
            info = read_minidebuginfo(info, stream, path)
        if not info.has_symtab and not info.debug_file:
            go = read_gopclntab(stream, path)
            if go is not None:
                return go.lookup
    return info.symbols.lookup


def load_kernel(path: str) -> Lookup:
    with open(path, encoding="utf-8") as stream:
        kernel = read_kallsyms(stream, path)
    return lambda address: (found := kernel.lookup(address)) and found[0]


def load_sort_bisect(path: str) -> Lookup:
    """The baseline: every text symbol of kallsyms sorted in a list, found with bisect."""
    with open(path, encoding="utf-8") as stream:
        rows = sorted(
            (int(fields[0], 16), fields[2])
            for fields in map(str.split, stream)
            if fields[1] in "tTwW"
        )
    starts = [row[0] for row in rows]
    return lambda address: rows[bisect_right(starts, address) - 1][1]


def kernel_ranges(path: str) -> list[tuple[int, int]]:
    with open(path, encoding="utf-8") as stream:
        starts = sorted({int(f[0], 16) for f in map(str.split, stream) if f[1] in "tT"})
    return [(a, b - a) for a, b in zip(starts, starts[1:], strict=False) if 0 < b - a < 1 << 16]


def time_cold(load: Callable[[str], Lookup], path: str, addresses: list[int]) -> tuple[float, list]:
    began = time.perf_counter()
    lookup = load(path)
    names = [lookup(address) for address in addresses]
    return time.perf_counter() - began, names


def time_addr2line(path: str, addresses: list[int]) -> tuple[float, list]:
    text = "".join(f"{address:x}\n" for address in addresses)
    began = time.perf_counter()
    out = subprocess.run(
        ["addr2line", "-f", "-e", path], input=text, capture_output=True, text=True, check=True
    ).stdout
    elapsed = time.perf_counter() - began
    return elapsed, out.splitlines()[0::2]


def time_warm(lookup: Lookup, addresses: list[int], rounds: int = 20) -> float:
    """µs per lookup once the table is loaded and the names decoded."""
    for address in addresses:
        lookup(address)
    began = time.perf_counter()
    for _ in range(rounds):
        for address in addresses:
            lookup(address)
    return (time.perf_counter() - began) / (rounds * len(addresses)) * 1e6


def agreement(ours: list, theirs: list) -> float:
    return sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(ours)


def measure(
    target: tuple[str, str, Callable[[str], Lookup], str, str], args: argparse.Namespace
) -> dict:
    """``target`` is (name, path, loader, baseline, the path the baseline and nm read)."""
    name, path, load, baseline, oracle = target
    rng = random.Random(args.seed)
    ranges = kernel_ranges(path) if path == KALLSYMS else function_ranges(oracle)
    addresses = sample(ranges, args.count, rng)
    other = time_addr2line if baseline == "addr2line" else _sort_bisect_cold
    ours_times, theirs_times = [], []
    for _ in range(args.repeat):
        seconds, ours = time_cold(load, path, addresses)
        ours_times.append(seconds)
        seconds, theirs = other(oracle, addresses)
        theirs_times.append(seconds)
    cold, base = statistics.median(ours_times), statistics.median(theirs_times)
    return {
        "target": name,
        "baseline": baseline,
        "cold_ms": cold * 1e3,
        "base_ms": base * 1e3,
        "ratio": cold / base,
        "warm_us": time_warm(load(path), addresses),
        "agree": agreement(ours, theirs),
    }


def _sort_bisect_cold(path: str, addresses: list[int]) -> tuple[float, list]:
    return time_cold(load_sort_bisect, path, addresses)


def report(rows: list[dict], count: int, repeat: int) -> str:
    lines = [
        textwrap.fill(
            f"{count} addresses per target, sampled in nm's sized functions; cold is open, parse"
            f" and every lookup once, the median of {repeat} runs; addr2line is one process reading"
            " the batch on stdin; warm is the mean over 20 more passes. The kernel has no"
            " addr2line, so its baseline is a plain sort + bisect of /proc/kallsyms. Same name"
            " differs by alias choice (libc: the exported GLOBAL name against addr2line's local"
            " `__GI_` alias), Go's `.abi0` symtab suffix (-s -w: pclntab names) and addr2line"
            " naming DWARF's inlined callee.",
            100,
        ),
        "",
        "| target | baseline | Emberscope cold ms | baseline ms | ratio | warm µs/lookup "
        "| same name |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['baseline']} | {r['cold_ms']:.1f} | {r['base_ms']:.1f} "
            f"| {r['ratio']:.2f} | {r['warm_us']:.2f} | {r['agree']:.1%} |"
        )
    lines += ["", "## Targets", ""]
    for r in rows:
        if r["baseline"] == "addr2line":
            met = "met" if r["ratio"] < 1 else "NOT met"
            lines.append(f"- {r['target']}: cold load + lookups {r['ratio']:.2f}× addr2line, {met}")
    for r in rows:
        met = "met" if r["warm_us"] < WARM_TARGET_US else "NOT met"
        lines.append(f"- {r['target']}: warm lookup {r['warm_us']:.2f} µs, {met} (target < 5 µs)")
    return "\n".join(lines)


def write_results(body: str, command: str) -> None:
    """Replace (or append) this benchmark's top-level section, keeping the others."""
    machine = describe_machine()
    section = (
        f"{SECTION}\n\nWritten by `bench/symbols.py --write-results`.\n\n"
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
        f"- Machine: {machine}\n- Command: `{command}`\n\n{body}\n"
    )
    write_section(section)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        go_binary = str(build_go(Path(tmp)))
        # Stripped, only .gopclntab names its functions; addr2line reads the unstripped twin.
        go_stripped = str(build_go(Path(tmp), "-ldflags=-s -w"))
        targets = [
            ("libc", LIBC, load_elf, "addr2line", LIBC),
            ("libpython3.11", LIBPYTHON, load_elf, "addr2line", LIBPYTHON),
            ("Go workload", go_binary, load_elf, "addr2line", go_binary),
            ("Go workload -s -w", go_stripped, load_elf, "addr2line", go_binary),
            ("kernel", KALLSYMS, load_kernel, "sort+bisect", KALLSYMS),
        ]
        rows = [measure(target, args) for target in targets]
    body = report(rows, args.count, args.repeat)
    print(body)
    if args.write_results:
        command = f".venv/bin/python bench/symbols.py --count {args.count} --repeat {args.repeat}"
        write_results(body, command + " --write-results")


if __name__ == "__main__":
    main()
