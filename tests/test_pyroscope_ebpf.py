"""pyroscope.ebpf components of one agent share one sampler: settings that
cannot differ between them are refused at load, naming what differs."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from agent.config import Graph
from agent.config.component import ComponentOptions
from agent.errors import ConfigError
from agent.pipeline import KINDS
from agent.pyroscope_ebpf import EbpfComponent, Sampler

TWO_RATES = """
pyroscope.ebpf "fast" {
  targets     = [{"service_name" = "a", "__process_pid__" = "1"}]
  forward_to  = []
  sample_rate = 199
}

pyroscope.ebpf "slow" {
  targets     = [{"service_name" = "b", "__process_pid__" = "1"}]
  forward_to  = []
  sample_rate = 49
}
"""


@pytest.mark.parametrize(
    "command", [["run", "--server.http.listen-addr=127.0.0.1:0"], ["check-config"]]
)
def test_two_components_with_different_sample_rates_are_refused_at_load(
    emberscope, tmp_path, command
):
    config = tmp_path / "two.alloy"
    config.write_text(TWO_RATES)
    result = emberscope(*command, str(config))
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert "pyroscope.ebpf.slow has sample_rate = 49" in message, result.stderr
    assert "pyroscope.ebpf.fast has sample_rate = 199" in message
    assert "Traceback" not in result.stderr


def test_a_reload_to_components_that_disagree_is_refused_before_anything_stops():
    # Graph.reload loads the new configuration first: refused there, nothing changes
    with pytest.raises(ConfigError, match="pyroscope.ebpf.slow has sample_rate = 49"):
        Graph.load(TWO_RATES, KINDS)
    agreeing = TWO_RATES.replace("sample_rate = 49", "sample_rate = 199")
    Graph.load(agreeing, KINDS)


def test_components_may_differ_in_their_own_arguments_and_a_change_is_checked():
    options = {"shared": {}, "shared_lock": threading.Lock()}
    arguments = EbpfComponent.Arguments(targets=[], forward_to=[])
    first = EbpfComponent(ComponentOptions("pyroscope.ebpf.a", print, **options), arguments)
    second = EbpfComponent(
        ComponentOptions("pyroscope.ebpf.b", print, **options),
        EbpfComponent.Arguments(targets=[], forward_to=[], collect_interval=5.0),
    )
    with pytest.raises(ConfigError, match="pyroscope.ebpf.b has pid_map_size = 64"):
        second.update(EbpfComponent.Arguments(targets=[], forward_to=[], pid_map_size=64))
    with pytest.raises(ConfigError, match="pyroscope.ebpf.a has demangle = 'full'"):
        first.update(EbpfComponent.Arguments(targets=[], forward_to=[], demangle="full"))
    assert first.arguments.demangle == "none"  # the refused change left it as it was
    first.update(EbpfComponent.Arguments(targets=[], forward_to=[], collect_interval=30.0))
    assert first.arguments.collect_interval == 30.0


@pytest.mark.usefixtures("bpf_ready")
def test_a_scrape_does_not_wait_for_a_collection(monkeypatch):
    """A collection symbolizing a large binary holds the sampling lock for a
    while; /metrics is answered meanwhile from the kernel's counters and the
    copy of userspace's taken after the last collection."""
    registry = CollectorRegistry()
    options = ComponentOptions("pyroscope.ebpf.scrape", print, {}, threading.Lock(), registry)
    component = EbpfComponent(
        options, EbpfComponent.Arguments(targets=[], forward_to=[], python_enabled=False)
    )
    sampler = Sampler(component.arguments, registry)
    sampler.open()
    try:
        collecting = threading.Event()

        def slow_collect():
            collecting.set()
            time.sleep(2)  # as long as symbolizing a large binary for the first time
            return 0

        monkeypatch.setattr(sampler._profiler, "collect", slow_collect)
        collector = threading.Thread(target=sampler.collect, args=(component,))
        collector.start()
        assert collecting.wait(5)
        started = time.monotonic()
        text = generate_latest(registry).decode()
        elapsed = time.monotonic() - started
        collector.join()
    finally:
        sampler.close()
    assert "emberscope_ebpf_samples_total" in text
    assert "emberscope_symbol_cache_entries" in text  # userspace's copy is there too
    assert elapsed < 0.1, f"the scrape took {elapsed * 1000:.0f} ms"
