"""Flame graphs written by `emberscope profile` and `emberscope flamegraph`, opened in
headless Chromium: they load offline without errors, their widths are the pprof's
shares, and search, zoom and the details work. Screenshots are left in tmp_path."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from agent.pprof import read_profile, top_functions
from tests.agent import read_samples, share
from tests.chromium import Chromium, click_element, frames

pytestmark = pytest.mark.usefixtures("bpf_ready")

RATE = "499"
PYTHON_WORKLOAD = """
import os, sys, time

def hot():
    total = 0
    for i in range(20000):
        total += i * i
    return total

def cold():
    return sum(range(4000))

def zeroes(fd):
    # Reading /dev/zero clears pages in the kernel: kernel frames on every run.
    return os.read(fd, 1 << 18)

fd = os.open("/dev/zero", os.O_RDONLY)
print("ready", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    hot()
    cold()
    zeroes(fd)
"""


def profile_command(emberscope, out: Path, *command: str) -> None:
    """`emberscope profile -- COMMAND` into ``out``, until the command exits."""
    result = emberscope(
        "profile", "--sample-rate", RATE, "--duration", "20s", "--output", str(out), "--", *command
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def mix_pprof(build_workload, emberscope, tmp_path_factory) -> Path:
    """A real profile of flame_mix: main → hot (about 60%), warm → warm_leaf, syscalls."""
    out = tmp_path_factory.mktemp("mix") / "mix.pb.gz"
    binary = build_workload("flame_mix")
    profile_command(emberscope, out, str(binary), "5")
    return out


@pytest.fixture(scope="module")
def mix_html(mix_pprof, emberscope) -> Path:
    out = mix_pprof.with_name("mix.html")
    result = emberscope("flamegraph", str(mix_pprof), "-o", str(out))
    assert result.returncode == 0, result.stderr
    return out


def shares(pprof: Path) -> dict[str, tuple[float, float]]:
    """Each function's (self, total) share of the pprof, in percent."""
    rows = top_functions(read_profile(pprof.read_bytes()), 10_000)
    return {row.name: (100 * row.self_fraction, 100 * row.total_fraction) for row in rows}


def children_of(drawn: list[dict], label: str) -> list[dict]:
    """The frames drawn right under the frame ``label`` (the widest such, if several)."""
    parent = max((f for f in drawn if f["label"] == label), key=lambda f: f["width"])
    return [
        f
        for f in drawn
        if f["depth"] == parent["depth"] + 1
        and parent["x"] - 0.5 <= f["x"] <= parent["x"] + parent["width"] + 0.5
    ]


def ancestors(drawn: list[dict], frame: dict) -> list[dict]:
    """The frames drawn below ``frame`` on its call path: its callers, down to the root."""
    return [
        f
        for f in drawn
        if f["depth"] < frame["depth"]
        and f["x"] - 0.5 <= frame["x"] <= frame["x"] + frame["width"] <= f["x"] + f["width"] + 0.5
    ]


def test_the_page_loads_offline_without_errors(mix_html, tmp_path):
    with Chromium(tmp_path) as browser:
        browser.open(mix_html.as_uri())
        browser.screenshot(tmp_path / "loaded.png")
        assert browser.errors == []
        assert browser.requests == [mix_html.as_uri()]  # nothing but the file itself
        assert browser.evaluate("document.title") == "emberscope: mix.html"


def test_the_widest_frame_under_main_is_the_hottest_function_at_its_share(
    mix_pprof, mix_html, tmp_path
):
    theirs = shares(mix_pprof)
    hottest = top_functions(read_profile(mix_pprof.read_bytes()), 1)[0].name
    assert hottest == "hot"
    with Chromium(tmp_path) as browser:
        browser.open(mix_html.as_uri())
        drawn = frames(browser)
        browser.screenshot(tmp_path / "widths.png")
    root = next(f for f in drawn if f["depth"] == 0)
    widest = max(children_of(drawn, "main"), key=lambda f: f["width"])
    assert widest["label"] == hottest
    assert widest["kind"] == "native"
    assert 100 * widest["width"] / root["width"] == pytest.approx(theirs["hot"][1], abs=2)
    # The tooltip gives this call path's self and total shares: nearly all of hot's.
    match = re.search(r"self ([\d.]+)% · total ([\d.]+)%", widest["details"])
    assert match, widest["details"]
    assert float(match.group(1)) == pytest.approx(theirs["hot"][0], abs=1)
    assert float(match.group(2)) == pytest.approx(theirs["hot"][1], abs=1)


def test_frames_are_coloured_by_kind(mix_html, tmp_path):
    with Chromium(tmp_path) as browser:
        browser.open(mix_html.as_uri())
        drawn = frames(browser)
    kernel = [f for f in drawn if f["kind"] == "kernel"]
    assert {"do_syscall_64", "__do_sys_getppid"} <= {f["label"] for f in kernel}
    native_fills = {f["fill"] for f in drawn if f["kind"] == "native"}
    assert not native_fills & {f["fill"] for f in kernel}
    for frame in kernel:  # the orange palette: red over 200, green 140 to 190, little blue
        red, green, blue = map(int, frame["fill"][4:-1].split(","))
        assert red >= 220 and 140 <= green <= 190 and blue <= 30, frame


def test_search_highlights_the_frames_and_shows_their_share(mix_pprof, mix_html, tmp_path):
    with Chromium(tmp_path) as browser:
        browser.open(mix_html.as_uri())
        browser.prompt_answer = "^warm"
        click_element(browser, "#search")
        drawn = frames(browser)
        matched = browser.evaluate("document.getElementById('matched').textContent")
        browser.screenshot(tmp_path / "search.png")
        assert browser.errors == []
    assert {f["label"] for f in drawn if f["match"]} == {"warm", "warm_leaf"}
    assert all(f["fill"] == "rgb(230, 0, 230)" for f in drawn if f["match"])
    # The samples with warm or warm_leaf on their stack, each counted once.
    ours = float(matched.removeprefix("Matched: ").removesuffix("%"))
    theirs = 100 * share(read_samples(mix_pprof), lambda s: {"warm", "warm_leaf"} & {*s.names()})
    assert ours == pytest.approx(theirs, abs=0.01)


def test_a_click_zooms_into_a_frame_and_reset_zooms_out(mix_html, tmp_path):
    with Chromium(tmp_path) as browser:
        browser.open(mix_html.as_uri())
        before = frames(browser)
        index = browser.evaluate(
            "Array.from(document.querySelectorAll('g.f'))"
            ".findIndex((g) => g.querySelector('title').textContent.startsWith('warm\\n'))"
        )
        click_element(browser, "g.f", index)
        zoomed = frames(browser)
        browser.screenshot(tmp_path / "zoomed.png")
        click_element(browser, "#reset")
        after = frames(browser)
        assert browser.errors == []
    root = next(f for f in before if f["depth"] == 0)
    warm = next(f for f in zoomed if f["label"] == "warm")
    assert warm["width"] == pytest.approx(root["width"], abs=1)
    below = [f for f in zoomed if f["depth"] > warm["depth"]]
    assert "warm_leaf" in {f["label"] for f in below}
    assert all(root["x"] - 0.5 <= f["x"] <= root["x"] + root["width"] for f in below)
    assert not {"hot", "syscalls"} & {f["label"] for f in zoomed}  # outside warm: hidden
    assert all(f["parent"] for f in zoomed if f["depth"] < warm["depth"])
    assert [(f["label"], f["width"]) for f in after] == [(f["label"], f["width"]) for f in before]


def test_hovering_a_frame_shows_its_details(mix_html, tmp_path):
    with Chromium(tmp_path) as browser:
        browser.open(mix_html.as_uri())
        hot = next(f for f in frames(browser) if f["label"] == "hot")
        browser.evaluate(
            "Array.from(document.querySelectorAll('g.f')).find((g) =>"
            " g.querySelector('title').textContent.startsWith('hot\\n')).scrollIntoView()"
        )
        hot = next(f for f in frames(browser) if f["label"] == "hot")
        browser.hover(hot["x"] + hot["width"] / 2, hot["y"] + hot["height"] / 2)
        details = browser.evaluate("document.getElementById('details').textContent")
    assert details == f"hot · {hot['details']}"


def test_profile_writes_an_svg_by_its_extension(build_workload, emberscope, tmp_path):
    out = tmp_path / "mix.svg"
    binary = build_workload("flame_mix")
    profile_command(emberscope, out, str(binary), "3")
    assert out.read_text().startswith("<?xml")
    with Chromium(tmp_path) as browser:
        browser.open(out.as_uri())
        drawn = frames(browser)
        browser.prompt_answer = "hot"
        click_element(browser, "#search")
        matched = browser.evaluate("document.getElementById('matched').textContent")
        browser.screenshot(tmp_path / "svg.png")
        assert browser.errors == []
        assert browser.requests == [out.as_uri()]
    assert max(children_of(drawn, "main"), key=lambda f: f["width"])["label"] == "hot"
    assert 40 < float(matched.removeprefix("Matched: ").removesuffix("%")) < 80


def test_python_frames_show_file_and_line(emberscope, tmp_path):
    script = tmp_path / "busy.py"
    script.write_text(PYTHON_WORKLOAD)
    pprof, out = tmp_path / "python.pb.gz", tmp_path / "python.html"
    workload = subprocess.Popen([sys.executable, str(script), "30"], stdout=subprocess.PIPE)
    try:
        assert workload.stdout.readline() == b"ready\n"
        result = emberscope(
            "profile", "--sample-rate", RATE, "--duration", "4s", "--output", str(pprof),
            "--pid", str(workload.pid),
        )  # fmt: skip
    finally:
        workload.kill()
        workload.wait()
    assert result.returncode == 0, result.stderr
    result = emberscope("flamegraph", str(pprof), "-o", str(out))
    assert result.returncode == 0, result.stderr
    with Chromium(tmp_path) as browser:
        browser.open(out.as_uri())
        drawn = frames(browser)
        browser.screenshot(tmp_path / "python.png")
        assert browser.errors == []
    # Each call path of hot is drawn as hot (file:line), as the pprof has them.
    sites = {(site.filename, site.line) for s in read_samples(pprof) for site in s.python}
    sites = {(filename, line) for filename, line in sites if filename == str(script)}
    hot = [f for f in drawn if f["label"].startswith("hot (")]
    assert hot and all(f["kind"] == "python" for f in hot)
    assert {f["label"] for f in hot} <= {f"hot ({filename}:{line})" for filename, line in sites}
    fills = [tuple(map(int, f["fill"][4:-1].split(","))) for f in hot]
    assert all(blue > red and blue > green for red, green, blue in fills)  # blue: Python
    assert {"native", "python", "kernel"} <= {f["kind"] for f in drawn}
    # The kernel frames sit above zeroes, the Python function that made the system call.
    kernel = [f for f in drawn if f["kind"] == "kernel"]
    assert any(f["label"].startswith("zeroes (") for k in kernel for f in ancestors(drawn, k))


def test_go_frames_are_coloured_as_go(build_go_workload, emberscope, tmp_path):
    binary = build_go_workload("go_spin")
    out = tmp_path / "go.html"
    profile_command(emberscope, out, str(binary), "2")
    with Chromium(tmp_path) as browser:
        browser.open(out.as_uri())
        drawn = frames(browser)
        browser.screenshot(tmp_path / "go.png")
        assert browser.errors == []
    go = {f["label"]: f for f in drawn if f["kind"] == "go"}
    assert {"main.main", "main.hotLoop", "main.(*worker).step"} <= set(go)
    for frame in go.values():  # aqua: green and blue alike, over red
        red, green, blue = map(int, frame["fill"][4:-1].split(","))
        assert green > red + 60 and blue > red + 60, frame
