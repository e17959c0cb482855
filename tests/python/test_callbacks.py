"""Python called back from C, in place: with whole native stacks, a sorted()
key function sits above the C frames of sorted(), which sit above the Python
function that called it, on interpreters built without frame pointers."""

from __future__ import annotations

import pytest

from tests.agent import Sample, read_samples, share
from tests.python.test_unwind import start_workload, workloads  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("bpf_ready")
# sorted() calls list.sort(): either may carry the key's call
SORT_FUNCTIONS = {"builtin_sorted", "list_sort", "list_sort_impl"}


def in_place(sample: Sample, sorted_site: str) -> bool:
    """slow_key, then a C frame of sorted() (named, or unnamed at its C
    function's start), then sort_them, leaf first."""
    names = sample.names()
    key = names.index("slow_key")
    caller = names.index("sort_them") if "sort_them" in names else -1
    sort = [
        i
        for i, site in enumerate(sample.sites)
        if not site.is_python and (site.name in SORT_FUNCTIONS or site.name == sorted_site)
    ]
    return any(key < i < caller for i in sort)


def test_a_key_function_sits_above_sorted_above_its_caller(
    interpreter,
    workloads,  # noqa: F811
    emberscope,
    tmp_path,
):
    python, _ = interpreter
    site_file = tmp_path / "sorted.site"
    workload = start_workload(python, "sort_key", 15, site_file)
    workloads.append(workload)
    sorted_site = site_file.read_text()
    out = tmp_path / "sort.pb.gz"
    result = emberscope(
        "profile", "--pid", str(workload.pid), "--duration", "3s", "--output", str(out)
    )
    assert result.returncode == 0, result.stderr
    keys = [s for s in read_samples(out) if "slow_key" in s.names()]
    placed = share(keys, lambda s: in_place(s, sorted_site))
    wrong = [s.names()[:12] for s in keys if not in_place(s, sorted_site)]
    print(f"{python}: {placed:.1%} of {sum(s.count for s in keys)} slow_key samples in place")
    assert sum(s.count for s in keys) > 50
    assert placed >= 0.9, wrong[:3]
