"""The agent's /profiles/ page on a real agent, opened in headless Chromium: the
targets, a flame graph per window, the merged pprof; bounded, and read-only."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from agent.pprof import read_profile, top_functions
from tests.agent import run_agent, wait_for, workload_config
from tests.chromium import Chromium, click_element, frames

pytestmark = pytest.mark.usefixtures("bpf_ready")

RING = 2


@pytest.fixture(scope="module")
def agent_page(build_workload, tmp_path_factory):
    """An agent whose ring holds the last 2 of 3 or more intervals of flame_mix,
    which has exited: what it holds no longer changes."""
    folder = tmp_path_factory.mktemp("page")
    programs = folder / "bin"
    programs.mkdir()
    shutil.copy(build_workload("flame_mix"), programs / "flame_mix")
    out = folder / "out"
    config = workload_config(programs, out, ebpf='  collect_interval = "2s"\n')
    with run_agent(config, folder, f"--server.http.recent-profiles={RING}") as agent:
        agent.wait_for_sampling()
        workload = subprocess.Popen([str(programs / "flame_mix"), "30"])
        try:
            wait_for(lambda: len(list((out / "flame_mix").glob("*.pb.gz"))) >= 3, 60, "3 profiles")
        finally:
            workload.kill()
            workload.wait()
        written = len(list((out / "flame_mix").glob("*.pb.gz")))
        wait_for(  # the interval the workload ended in
            lambda: len(list((out / "flame_mix").glob("*.pb.gz"))) > written, 10, "the last one"
        )
        yield agent, out / "flame_mix"


def newest(folder: Path, count: int) -> list[tuple[dict, bytes]]:
    """The (labels, gzipped pprof) of the ``count`` newest files, oldest first."""
    paths = sorted(folder.glob("*.pb.gz"), key=lambda p: read_profile(p.read_bytes()).time_nanos)
    return [
        (
            json.loads(p.with_name(p.name.replace(".pb.gz", ".labels.json")).read_text()),
            p.read_bytes(),
        )
        for p in paths[-count:]
    ]


def total(profile) -> int:
    return sum(sample.value[0] for sample in profile.sample)


def test_the_ring_holds_the_last_intervals_and_its_memory_is_shown(agent_page):
    agent, files = agent_page
    held = newest(files, RING)
    assert agent.metric("emberscope_recent_profiles") == RING
    size = sum(len(data) + sum(len(k) + len(v) for k, v in labels.items()) for labels, data in held)
    assert agent.metric("emberscope_recent_profiles_bytes") == size
    assert agent.metric("emberscope_recent_profiles_max_bytes") == 32 << 20
    assert agent.metric("emberscope_recent_evicted_profiles_total") == 0


def test_the_page_lists_the_target_and_shows_its_flame_graph(agent_page, tmp_path):
    agent, files = agent_page
    base = f"http://127.0.0.1:{agent.port}"
    with Chromium(tmp_path) as browser:
        browser.open(f"{base}/profiles/")
        browser.screenshot(tmp_path / "index.png")
        links = browser.evaluate("Array.from(document.links).map((a) => a.textContent)")
        assert links == [f"last {n}" for n in range(1, RING + 1)] + ["pprof"]
        assert "flame_mix" in browser.evaluate("document.body.textContent")
        click_element(browser, "a", RING - 1)  # last 2
        wait_for(lambda: browser.evaluate("document.readyState") == "complete", 10, "the page")
        wait_for(lambda: browser.evaluate("!!document.getElementById('flamegraph')"), 10, "graph")
        drawn = frames(browser)
        browser.screenshot(tmp_path / "flamegraph.png")
        assert browser.errors == []
        assert all(url.startswith(f"{base}/profiles/") for url in browser.requests)
        assert browser.evaluate("location.pathname").endswith(f"/last-{RING}.html")
        pprof_link = browser.evaluate(
            "Array.from(document.links).find((a) => a.textContent === 'pprof').href"
        )
    merged = read_profile(httpx.get(pprof_link, timeout=10).content)
    # The merged pprof is the two newest profiles pyroscope.file wrote.
    held = [read_profile(data) for _, data in newest(files, RING)]
    assert merged.time_nanos == held[0].time_nanos
    assert total(merged) == sum(total(profile) for profile in held)
    hot = next(r for r in top_functions(merged, 100) if r.name == "hot")
    root = next(f for f in drawn if f["depth"] == 0)
    main = max((f for f in drawn if f["label"] == "main"), key=lambda f: f["width"])
    under_main = [f for f in drawn if f["depth"] == main["depth"] + 1]
    widest = max(under_main, key=lambda f: f["width"])
    assert widest["label"] == "hot"
    assert 100 * widest["width"] / root["width"] == pytest.approx(100 * hot.total_fraction, abs=2)


def test_one_interval_downloads_as_it_was_written(agent_page):
    agent, files = agent_page
    target = httpx.get(f"http://127.0.0.1:{agent.port}/profiles/").text.split('href="')[1][:16]
    downloaded = agent.get(f"/profiles/{target}/last-1.pb.gz").content
    assert downloaded == newest(files, 1)[0][1]  # the bytes pyroscope.file wrote


def test_the_page_only_reads(agent_page):
    agent, _ = agent_page
    target = httpx.get(f"http://127.0.0.1:{agent.port}/profiles/").text.split('href="')[1][:16]
    before = agent.metric("emberscope_recent_profiles_bytes")
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/profiles/", f"/profiles/{target}/last-1.html"):
            answer = httpx.request(method, f"http://127.0.0.1:{agent.port}{path}", content=b"x")
            assert answer.status_code == 501, (method, path)
    assert agent.metric("emberscope_recent_profiles_bytes") == before
    assert agent.get(f"/profiles/{target}/last-1.html").status_code == 200
    assert agent.get("/profiles/0123456789abcdef/last-1.html").status_code == 404
    assert agent.get(f"/profiles/{target}/last-1.txt").status_code == 404
