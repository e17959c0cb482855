"""Short runs of each scenario of bench/soak.py (24 s each instead of 10 min)."""

from __future__ import annotations

import pytest

from bench.soak import (
    INTERVAL_S,
    api_scenario,
    churn_scenario,
    kill_scenario,
    outage_scenario,
    pid_map_scenario,
    setup,
    table,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("bpf_ready")]

MINUTES = 0.4


def run(scenario):
    with setup() as prepared:
        row = scenario(prepared, MINUTES)
    print("\n" + table([row]))
    return row


def profile_drops(row) -> dict[str, float]:
    return {r: n for r, n in row.dropped.items() if r.startswith("profiles") and n}


def test_churn_loses_no_profile_and_profiles_the_burners():
    row = run(churn_scenario)
    assert row.delivered == row.produced > 0
    assert row.duplicates == 0
    assert profile_drops(row) == {}
    # CPU time against samples: loose, the machine is shared
    assert 0.5 * row.expected <= row.profiled <= 1.3 * row.expected


def test_a_full_pid_map_counts_drops_keeps_profiling_and_heals():
    row = run(pid_map_scenario)
    assert row.dropped.get("samples pid_map_full", 0) > 0
    assert row.facts["busy samples after the sleepers exited"] > 100
    assert row.facts["health at end"] == "healthy"
    assert row.delivered == row.produced
    assert row.profiled >= 0.5 * row.expected


def test_pyroscope_down_spools_and_delivers_everything_afterwards():
    row = run(outage_scenario)
    assert row.facts["spooled"] > 0
    assert row.facts["replayed"] == row.facts["spooled"]
    assert row.delivered == row.produced
    assert row.duplicates == 0
    assert profile_drops(row) == {}


def test_kill_9_leaves_no_bpf_object_and_the_spool_is_replayed_once():
    row = run(kill_scenario)
    assert row.facts["BPF programs left"] == 0
    assert row.facts["spooled before the kill"] > 0
    assert row.facts["replayed after"] >= row.facts["spooled before the kill"]
    assert row.duplicates == 0
    # while Pyroscope is down every profile goes straight to disk: none is lost
    assert row.delivered == row.produced
    if row.facts["BPF maps left"] != "0":
        # README, "What is not there yet": the prog_array of the tail calls is at
        # times still in the kernel after a kill -9, held by nothing visible
        pytest.xfail(f"BPF maps left after the kill: {row.facts['BPF maps left']}")


def test_a_flapping_api_server_keeps_the_targets_and_a_change_shows_within_an_interval():
    row = run(api_scenario)
    shown, total = row.facts["intervals with a profile"].split(" of ")
    assert int(shown) >= int(total) - 1
    assert row.facts["change shown after s"] <= INTERVAL_S + 2
    assert row.delivered == row.produced
