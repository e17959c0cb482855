"""The agent's memory: RSS of ``emberscope run`` and the BPF maps it holds, in three modes.

Each mode runs ``python -m agent.cli run`` for ``--seconds`` and then reads VmRSS (and VmHWM,
RssAnon, RssFile) from ``/proc/<pid>/status``, and the ``bytes_memlock`` of every map whose fd
it holds (``map_id:`` in ``/proc/<pid>/fdinfo``, then ``bpftool -j map show id N``). The pages
of BPF maps the agent has mmapped (``anon_inode:bpf-map`` in ``/proc/<pid>/smaps``: the unwind
rows, the ring buffers) are the maps' kernel memory, counted in VmRSS too: "own" is VmRSS
without them, and "RSS + maps" counts them once.

- host: ``examples/local.alloy`` (discovery.process, relabel, pyroscope.ebpf, pyroscope.file);
- kubernetes: ``deploy/k8s.alloy`` against the loopback API server of the tests, serving
  ``--pods`` pods of this node, each with one sleeper (below) in its kubelet-style cgroup
  (pyroscope.write replaced by pyroscope.file);
- busy: host mode while ``--processes`` sleepers wake every 0.5-1.5 s to burn 1 ms of CPU.

``--before DIR`` runs the same modes with the agent of another tree (a worktree of an older
commit, its ``agent/ebpf/profile.bpf.o`` copied in) and prints both. Run as root:
``.venv/bin/python bench/rss.py [--before /tmp/before] [--write-results]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results import describe_machine, write_section  # noqa: E402
from tests.agent import free_port, writes_to_files  # noqa: E402
from tests.discovery.apiserver import LoopbackApiServer  # noqa: E402
from tests.discovery.test_containers import Cgroups, cgroup2_root  # noqa: E402
from tests.discovery.test_kubernetes_agent import kubelet_cgroup, pod_object  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
TITLE = "# Memory footprint results"
NODE = "emberscope-bench-node"
MIB = 1024 * 1024
START_S = 5.0  # the RSS read early: before the first collection (collect_interval is 15 s)
# Issue 17's goals: RSS by mode, and RSS + maps at the default arguments.
TARGET_RSS_MB = {"host": 50.0, "kubernetes": 80.0, "busy": 50.0}
TARGET_TOTAL_MB = 100.0
# The map_flags worth naming here (include/uapi/linux/bpf.h); others are shown in hex.
_MAP_FLAGS = {0x1: "no_prealloc", 0x80: "rdonly_prog", 0x400: "mmapable"}
_COLLECTED = re.compile(r"targets=(\d+) processes=(\d+) samples=(\d+)")

# Sleeps 0.5-1.5 s, then burns 1 ms of CPU in one of two call chains.
SLEEPER_C = ROOT / "tests" / "workloads" / "sleeper.c"


@dataclass
class BpfMap:
    id: int
    name: str
    type: str
    max_entries: int
    flags: int
    memlock: int  # bytes_memlock: the kernel's count of the map's memory


@dataclass
class Reading:
    """One agent run: its memory after ``seconds`` and what it profiled meanwhile."""

    tree: str
    mode: str
    start_rss: int  # bytes, at START_S: imports and the BPF load, before any collection
    rss: int
    hwm: int
    anon: int
    file: int
    map_pages: int  # bytes of BPF map memory resident in the agent's mappings (part of rss)
    maps: list[BpfMap] = field(default_factory=list)
    collected: str = ""  # "targets/processes/samples" of the last collection logged

    @property
    def maps_memlock(self) -> int:
        return sum(m.memlock for m in self.maps)

    @property
    def own(self) -> int:
        """VmRSS without the pages of mmapped BPF maps: the process's own memory."""
        return self.rss - self.map_pages

    @property
    def total(self) -> int:
        """RSS and maps, the mmapped maps' pages counted once (in the maps)."""
        return self.own + self.maps_memlock


def read_status(pid: int) -> dict[str, int]:
    """The ``Vm*``/``Rss*`` lines of ``/proc/<pid>/status``, in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if rest.strip().endswith(" kB"):
            values[name] = int(rest.split()[0]) * 1024
    return values


def read_map_pages(pid: int) -> int:
    """Bytes resident in process ``pid``'s mappings of BPF maps (``anon_inode:bpf-map``)."""
    total, in_map = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if not fields[0].endswith(":"):  # a mapping's first line: range perms offset dev inode path
            in_map = len(fields) > 5 and fields[5].startswith("anon_inode:bpf-map")
        elif fields[0] == "Rss:" and in_map:
            total += int(fields[1]) * 1024
    return total


def read_maps(pid: int) -> list[BpfMap]:
    """Every BPF map process ``pid`` holds an fd of, once each."""
    ids: set[int] = set()
    for fdinfo in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            found = re.search(r"^map_id:\s*(\d+)", fdinfo.read_text(), re.MULTILINE)
        except OSError:  # closed meanwhile
            continue
        if found:
            ids.add(int(found.group(1)))
    maps = []
    for map_id in sorted(ids):
        shown = subprocess.run(
            ["bpftool", "-j", "map", "show", "id", str(map_id)], capture_output=True, text=True
        )
        if shown.returncode != 0:
            continue  # freed meanwhile
        info = json.loads(shown.stdout)
        maps.append(
            BpfMap(
                map_id,
                info.get("name", ""),
                info.get("type", ""),
                info.get("max_entries", 0),
                info.get("flags", 0),
                info.get("bytes_memlock", 0),
            )
        )
    return maps


def describe_tree(tree: Path) -> str:
    """The tree's commit, ``+changes`` when it has uncommitted ones."""
    commit = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"{commit or tree}{'+changes' if dirty else ''}"


def host_config(output: Path) -> str:
    text = (ROOT / "examples" / "local.alloy").read_text()
    return edit_once(text, 'directory = "./profiles"', f'directory = "{output}"')


def kubernetes_config(output: Path, api_server: str) -> str:
    text = (ROOT / "deploy" / "k8s.alloy").read_text()
    role = '  role = "pod"\n\n'
    text = edit_once(text, role, role.rstrip("\n") + f'\n  api_server = "{api_server}"\n\n')
    return writes_to_files(text, "endpoint", output)


def edit_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        sys.exit(f"bench/rss.py: the example config no longer holds {old!r} once")
    return text.replace(old, new)


def measure(tree: Path, mode: str, config: str, workdir: Path, seconds: float) -> Reading:
    """Run ``tree``'s agent on ``config`` for ``seconds``; read its memory, then stop it."""
    path = workdir / f"{mode}.alloy"
    path.write_text(config)
    log_path = workdir / f"{mode}.log"
    argv = [sys.executable, "-m", "agent.cli", "run"]
    argv += [f"--server.http.listen-addr=127.0.0.1:{free_port()}", str(path)]
    env = os.environ | {"PYTHONPATH": str(tree), "HOSTNAME": NODE}
    with log_path.open("w") as log:
        agent = subprocess.Popen(argv, cwd=tree, env=env, stdout=log, stderr=log)
    try:
        started = time.monotonic()
        start_rss = 0
        while time.monotonic() < started + seconds:
            if agent.poll() is not None:
                sys.exit(f"the agent ({tree}, {mode}) exited:\n{log_path.read_text()}")
            if not start_rss and time.monotonic() >= started + START_S:
                start_rss = read_status(agent.pid)["VmRSS"]
            time.sleep(0.5)
        status, map_pages = read_status(agent.pid), read_map_pages(agent.pid)
        maps = read_maps(agent.pid)
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
    collected = _COLLECTED.findall(log_path.read_text())
    return Reading(
        describe_tree(tree),
        mode,
        start_rss,
        status["VmRSS"],
        status["VmHWM"],
        status.get("RssAnon", 0),
        status.get("RssFile", 0),
        map_pages,
        maps,
        "/".join(collected[-1]) if collected else "none yet",
    )


def build_sleeper(workdir: Path) -> Path:
    binary = workdir / "sleeper"
    if not binary.exists():
        gcc = ["gcc", "-O0", "-fno-omit-frame-pointer", "-o", str(binary), str(SLEEPER_C)]
        subprocess.run(gcc, check=True)
    return binary


def kill_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.kill()
        process.wait()


def run_host(trees: list[Path], args: argparse.Namespace, workdir: Path) -> list[Reading]:
    config = host_config(workdir / "profiles")
    return [measure(tree, "host", config, workdir, args.seconds) for tree in trees]


def run_busy(trees: list[Path], args: argparse.Namespace, workdir: Path) -> list[Reading]:
    binary = build_sleeper(workdir)
    sleepers = [subprocess.Popen([str(binary), str(i)]) for i in range(args.processes)]
    try:
        config = host_config(workdir / "profiles")
        return [measure(tree, "busy", config, workdir, args.seconds) for tree in trees]
    finally:
        kill_all(sleepers)


def run_kubernetes(trees: list[Path], args: argparse.Namespace, workdir: Path) -> list[Reading]:
    """``--pods`` pods of this node, each running one sleeper in its kubelet-style cgroup,
    so that the pods' targets match real processes (as tests/discovery do)."""
    binary = build_sleeper(workdir)
    cgroups = Cgroups(cgroup2_root())
    api = LoopbackApiServer()
    api.start()
    sleepers: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(args.pods):
            labels = {"app.kubernetes.io/name": f"app-{i % 10}"}
            spec = (f"ns-{i % 5}", f"pod-{i}", "main", NODE, labels)
            api.apply(pod_object(spec))
            sleepers.append(subprocess.Popen([str(binary), str(i)]))
            cgroups.move(sleepers[-1].pid, kubelet_cgroup(spec))
        config = kubernetes_config(workdir / "profiles", api.url)
        return [measure(tree, "kubernetes", config, workdir, args.seconds) for tree in trees]
    finally:
        kill_all(sleepers)
        cgroups.close([s.pid for s in sleepers])
        api.stop()


RUNS = {"host": run_host, "kubernetes": run_kubernetes, "busy": run_busy}


def mib(value: int) -> str:
    return f"{value / MIB:.1f}"


def format_report(readings: list[Reading]) -> str:
    rows = [
        f"| mode | agent | RSS MB at {START_S:g} s | RSS MB | peak RSS MB | anon MB | file MB "
        "| map pages MB | own MB | maps MB | RSS + maps MB "
        "| last collection: targets/processes/samples |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in readings:
        rows.append(
            f"| {r.mode} | {r.tree} | {mib(r.start_rss)} | {mib(r.rss)} | {mib(r.hwm)} | "
            f"{mib(r.anon)} | {mib(r.file)} | {mib(r.map_pages)} | {mib(r.own)} | "
            f"{mib(r.maps_memlock)} | {mib(r.total)} | {r.collected} |"
        )
    return "\n".join(rows)


def format_flags(flags: int) -> str:
    names = [name for bit, name in _MAP_FLAGS.items() if flags & bit]
    rest = flags & ~sum(_MAP_FLAGS)
    return "\\|".join(names + ([hex(rest)] if rest else [])) or "-"


def format_maps(readings: list[Reading]) -> str:
    """One row per map name, one MB column per run, largest first; maps under 0.05 MB in
    every run are counted in one row."""
    header = "| map | type | max entries | flags | " + " | ".join(f"{r.mode} MB" for r in readings)
    rows = [header + " |", "|---|---|---:|---|" + "---:|" * len(readings)]
    by_name: dict[str, list[BpfMap | None]] = {}
    for i, reading in enumerate(readings):
        for m in reading.maps:
            by_name.setdefault(m.name, [None] * len(readings))[i] = m
    small = []
    for name, maps in sorted(by_name.items(), key=lambda item: -max_memlock(item[1])):
        if max_memlock(maps) < 0.05 * MIB:
            small.append(name)
            continue
        first = next(m for m in maps if m is not None)
        sizes = " | ".join(mib(m.memlock) if m else "-" for m in maps)
        flags = format_flags(first.flags)
        rows.append(f"| {name} | {first.type} | {first.max_entries} | {flags} | {sizes} |")
    rest = " | ".join(mib(sum(m.memlock for m in r.maps if m.name in small)) for r in readings)
    rows.append(f"| {len(small)} smaller maps | | | | {rest} |")
    rows.append("| all | | | | " + " | ".join(mib(r.maps_memlock) for r in readings) + " |")
    return "\n".join(rows)


def max_memlock(maps: list[BpfMap | None]) -> int:
    return max(m.memlock for m in maps if m is not None)


def format_targets(readings: list[Reading]) -> str:
    def mark(name: str, value: int, limit: float) -> str:
        verdict = "met" if value / MIB <= limit else "NOT met"
        return f"- {name}: {mib(value)} MB, {verdict} (target ≤ {limit:g} MB)"

    lines = []
    for r in readings:
        lines.append(mark(f"{r.mode} RSS ({r.tree})", r.rss, TARGET_RSS_MB[r.mode]))
        lines.append(
            f"  - of it {mib(r.map_pages)} MB mmapped BPF map pages; own memory {mib(r.own)} MB "
            "(not the goal's figure)"
        )
        lines.append(mark(f"{r.mode} RSS + maps ({r.tree})", r.total, TARGET_TOTAL_MB))
    return "\n".join(lines)


def write_results(report: str, maps: str, targets: str, args: argparse.Namespace) -> None:
    """Replace this benchmark's section of RESULTS.md, or add it at the end."""
    argv = [".venv/bin/python", "bench/rss.py", *sys.argv[1:]]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    legend = textwrap.fill(
        f"RSS is VmRSS of `python -m agent.cli run` after {args.seconds:g} s (peak: VmHWM), in "
        "MiB; maps MB is the sum of `bytes_memlock` of the BPF maps whose fds the agent holds "
        "(`bpftool map show`), charged to its memory cgroup beside the RSS. Map pages MB are "
        "the resident pages of the maps the agent mmaps (`anon_inode:bpf-map` in smaps), part "
        "of both RSS and maps MB: own MB is RSS without them, and RSS + maps counts them "
        "once. Host and busy mode "
        "profile every process of the machine, so what else runs there moves their figures. "
        f"busy: {args.processes} sleepers; kubernetes: {args.pods} pods, one sleeper each.",
        width=100,
    )
    section = (
        f"{TITLE}\n\n"
        "Written by `bench/rss.py --write-results`; see `bench/README.md`.\n\n"
        f"- Date: {now}\n- Machine: {describe_machine()}\n- Command: `{' '.join(argv)}`\n\n"
        f"{legend}\n\n{report}\n\n{maps}\n\n## Targets\n\n{targets}\n"
    )
    write_section(section)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30, help="run time per agent (30)")
    parser.add_argument("--processes", type=int, default=200, help="sleepers in busy mode")
    parser.add_argument("--pods", type=int, default=50, help="pods the API server serves")
    parser.add_argument("--modes", default=",".join(RUNS), help="host,kubernetes,busy")
    parser.add_argument("--root", type=Path, default=ROOT, help="the tree whose agent runs")
    parser.add_argument("--before", type=Path, help="a second tree to compare, run first")
    parser.add_argument("--write-results", action="store_true", help=f"rewrite {RESULTS.name}")
    args = parser.parse_args()
    modes = args.modes.split(",")
    if os.geteuid() != 0:
        sys.exit("rss.py needs root (BPF, /proc/<pid>/fdinfo, bpftool)")
    if not set(modes) <= set(RUNS):
        sys.exit(f"--modes: choose among {', '.join(RUNS)}")
    trees = [t.resolve() for t in (args.before, args.root) if t is not None]
    for tree in trees:
        if not (tree / "agent" / "ebpf" / "profile.bpf.o").exists():
            sys.exit(f"{tree}/agent/ebpf/profile.bpf.o is missing: build or copy it there")
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(143))

    readings: list[Reading] = []
    with tempfile.TemporaryDirectory(prefix="emberscope-rss-") as tmp:
        for mode in modes:
            print(f"{mode}: {len(trees)} run(s) of {args.seconds:g} s", file=sys.stderr)
            readings += RUNS[mode](trees, args, Path(tmp))
    report = format_report(readings)
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    report += f"\n\nLoad average at the end (1, 5, 15 min): {load}"
    last = readings[len(trees) - 1 :: len(trees)]  # each mode's run of --root
    maps = f"BPF maps of {last[-1].tree}, by mode:\n\n{format_maps(last)}"
    targets = format_targets(last)
    print(f"{report}\n\n{maps}\n\n{targets}")
    if args.write_results:
        write_results(report, maps, targets, args)
        print(f"wrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
