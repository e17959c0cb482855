"""The gil label: whether a sampled CPython thread held the GIL, on every
interpreter, against py-spy's ``--gil`` (which keeps only GIL holders' samples)."""

from __future__ import annotations

import subprocess

import pytest

from tests.agent import Sample, read_samples, share
from tests.python.test_unwind import (
    is_in_libz,
    py_spy,  # noqa: F401 (a fixture)
    read_py_spy_raw,
    start_workload,
    workloads,  # noqa: F401 (a fixture)
)

pytestmark = pytest.mark.usefixtures("bpf_ready")
RATE = 199


def in_spin(sample: Sample) -> bool:
    return any(site.name == "spin_loop" for site in sample.python)


def test_deflate_runs_without_the_gil_and_python_code_with_it(
    interpreter,
    workloads,  # noqa: F811
    py_spy,  # noqa: F811
    emberscope,
    tmp_path,
):
    python, _ = interpreter
    workload = start_workload(python, "gil", 15)
    workloads.append(workload)
    ours, theirs = tmp_path / "gil.pb.gz", tmp_path / "py-spy.txt"
    # --nonblocking: py-spy must not stop the process under our sampler
    spy = subprocess.Popen(
        [py_spy, "record", "--pid", str(workload.pid), "--duration", "4", "--rate", str(RATE)]
        + ["--gil", "--nonblocking", "--format", "raw", "--output", str(theirs)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        result = emberscope(
            "profile", "--pid", str(workload.pid), "--duration", "4s",
            "--sample-rate", str(RATE), "--output", str(ours),
        )  # fmt: skip
        _, spy_errors = spy.communicate(timeout=30)
    finally:
        if spy.poll() is None:
            spy.kill()
            spy.wait()
    assert result.returncode == 0, result.stderr
    assert spy.returncode == 0, spy_errors
    samples = [s for s in read_samples(ours) if s.python]
    deflate = [s for s in samples if s.sites and is_in_libz(s.sites[0])]
    spin = [s for s in samples if in_spin(s)]
    assert sum(s.count for s in deflate) > 20 and sum(s.count for s in spin) > 20
    released = share(deflate, lambda s: s.gil == "released")
    held = share(spin, lambda s: s.gil == "held")
    # py-spy --gil keeps the samples of the thread holding the GIL only
    spy_stacks = read_py_spy_raw(theirs)
    spy_total = sum(count for _, count in spy_stacks)
    spy_spin = sum(c for frames, c in spy_stacks if any(f.name == "spin_loop" for f in frames))
    spy_share = spy_spin / spy_total if spy_total else 0.0
    ours_share = share([s for s in samples if s.gil == "held"], in_spin)
    print(
        f"{python}: deflate samples gil=released {released:.1%}, spin_loop gil=held "
        f"{held:.1%}; of the GIL holders' samples spin_loop has {ours_share:.1%} here "
        f"and {spy_share:.1%} in py-spy --gil ({spy_total} samples)"
    )
    assert released >= 0.9, released
    assert held >= 0.9, held
    assert spy_total > 0 and abs(ours_share - spy_share) <= 0.1, (ours_share, spy_share)
