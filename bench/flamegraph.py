"""What drawing a flame graph costs, on a real profile of this whole host.

Profiles every process for ``--duration`` (``emberscope profile --all``), then
times, best of ``--repeat``: decoding the pprof (the baseline), building the
frame tree, writing the HTML, and what the agent's ``/profiles/`` page does for
``last-4``: merging 4 such profiles and drawing them (its answers must come
within the server's 4 s). Sizes: the pprof, the HTML, what the ring holds.

Run as root: `.venv/bin/python bench/flamegraph.py [--duration 10s] [--repeat 3]`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.flamegraph import build_tree, render_html  # noqa: E402
from agent.pprof import merge_profiles, read_profile  # noqa: E402

PAGE_WINDOW = 4  # the page's default ring: last-4 is its largest answer


def best_of(repeat: int, work) -> tuple[float, object]:
    """The shortest wall time of ``repeat`` runs of ``work()``, and its last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", default="10s")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "host.pb.gz"
        subprocess.run(
            [sys.executable, "-m", "agent.cli", "profile", "--all", "--duration", args.duration,
             "--output", str(path)],
            check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        data = path.read_bytes()
    decode_s, profile = best_of(args.repeat, lambda: read_profile(data))
    tree_s, root = best_of(args.repeat, lambda: build_tree(profile))
    html_s, html = best_of(args.repeat, lambda: render_html(root, "host"))
    page_s, _ = best_of(
        args.repeat,
        lambda: render_html(
            build_tree(merge_profiles(read_profile(data) for _ in range(PAGE_WINDOW))), "host"
        ),
    )
    samples = sum(sample.value[0] for sample in profile.sample) // profile.period
    print(
        f"host profile: {len(data)} bytes of pprof, {len(profile.sample)} stacks, "
        f"{samples} samples, {len(profile.function)} functions"
    )
    print(f"decode (baseline)      {decode_s * 1000:8.1f} ms")
    print(f"frame tree             {tree_s * 1000:8.1f} ms  {tree_s / decode_s:6.1f}x decode")
    print(f"HTML                   {html_s * 1000:8.1f} ms  {html_s / decode_s:6.1f}x decode")
    print(
        f"page last-{PAGE_WINDOW} (merge+draw) {page_s * 1000:8.1f} ms  {page_s / decode_s:6.1f}x "
        f"decode, {page_s / 4:.0%} of the 4 s answer timeout"
    )
    print(
        f"HTML {len(html)} bytes ({len(html) / len(data):.1f}x the pprof); "
        f"the ring holds {PAGE_WINDOW * len(data)} bytes for {PAGE_WINDOW} such intervals"
    )


if __name__ == "__main__":
    main()
