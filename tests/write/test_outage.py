"""pyroscope.write through outages: the receiver down for 60 s under a whole running agent,
and a dead endpoint beside a live one."""

from __future__ import annotations

import collections
import http.server
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from agent.config import ComponentOptions
from agent.pprof import read_profile, top_functions
from agent.write.pyroscope import PyroscopeWrite
from tests.agent import RunningAgent, run_agent
from tests.write.test_pyroscope import (
    Receiver,
    _handler,
    closed_port_url,
    metric,
    profile,
    series,
    serve,
    wait_until,
    write_to,
)

OUTAGE_S = 20  # 40 intervals of 500 ms
CONFIG = """
discovery.process "local" {{
}}

discovery.relabel "workload" {{
  targets = discovery.process.local.targets
  rule {{
    source_labels = ["__meta_process_exe"]
    regex         = "{folder}/.*"
    action        = "keep"
  }}
  rule {{
    target_label = "service_name"
    replacement  = "outage-workload"
  }}
}}

pyroscope.ebpf "default" {{
  targets          = discovery.relabel.workload.output
  forward_to       = [pyroscope.write.receiver.receiver]
  collect_interval = "500ms"
}}

pyroscope.write "receiver" {{
  endpoint {{
    url                 = "{url}"
    remote_timeout      = "300ms"
    min_backoff_period  = "50ms"
    max_backoff_period  = "200ms"
    max_backoff_retries = 2
  }}
}}
"""


class RestartableReceiver:
    """The loopback Connect receiver of test_pyroscope, stoppable and restartable on the
    same port. Stopping also cuts the kept-alive connections, so the agent's pooled
    connection cannot keep reaching a handler thread while the receiver is "down"."""

    def __init__(self) -> None:
        self.receiver = Receiver()
        self.port = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._connections: list[socket.socket] = []

    def start(self) -> None:
        connections = self._connections

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False
            allow_reuse_address = True

            def process_request(self, request, client_address) -> None:
                connections.append(request)
                super().process_request(request, client_address)

        self._server = Server(("127.0.0.1", self.port), _handler(self.receiver))
        self.port = self._server.server_address[1]
        self.receiver.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        for connection in self._connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._connections.clear()


def scrape(agent: RunningAgent) -> tuple[dict[str, float], list]:
    """The agent's /metrics: each sample name's value summed over its labels, and the
    samples themselves."""
    samples = agent.metrics()
    totals: dict[str, float] = collections.defaultdict(float)
    for sample in samples:
        totals[sample.name] += sample.value
    return totals, samples


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.mark.slow  # about 30 s: a 20 s outage of the receiver under the real agent
@pytest.mark.usefixtures("bpf_ready")
def test_the_receiver_down_for_20_s_keeps_memory_bounded_and_delivery_resumes(
    build_workload, tmp_path
):
    workload = build_workload("three_leaves")
    pyroscope = RestartableReceiver()
    pyroscope.start()
    url = pyroscope.receiver.url
    config = CONFIG.format(folder=workload.parent, url=url)
    busy = subprocess.Popen([str(workload), "120"])
    began = time.monotonic()
    try:
        with run_agent(config, tmp_path) as agent:
            agent.wait_for_metrics()

            # Up: profiles arrive.
            assert pyroscope.receiver.wait_for(1, timeout=30), "no profile before the outage"
            time.sleep(3)
            before, _ = scrape(agent)
            sent_before = before["pyroscope_write_sent_profiles_total"]
            assert sent_before >= 2
            assert before["pyroscope_write_dropped_profiles_total"] == 0

            # Down for OUTAGE_S while the agent keeps sampling.
            pyroscope.stop()
            arrived_before = len(pyroscope.receiver.requests)
            outage_began = time.monotonic()
            rss_start = rss_kib(agent.process.pid)
            rss = [rss_start]
            while time.monotonic() - outage_began < OUTAGE_S:
                time.sleep(3)
                assert agent.process.poll() is None, "the agent died during the outage"
                rss.append(rss_kib(agent.process.pid))
            during, _ = scrape(agent)
            assert len(pyroscope.receiver.requests) == arrived_before  # it really was down

            # Back: later profiles arrive, with samples in them.
            pyroscope.start()
            restarted = time.monotonic()
            assert pyroscope.receiver.url == url
            pyroscope.receiver.wait_for(arrived_before + 3, timeout=10)
            time.sleep(max(0.0, 5 - (time.monotonic() - restarted)))
            received = list(pyroscope.receiver.requests)
            after, samples = scrape(agent)
            returncode = agent.stop()
    finally:
        busy.kill()
        busy.wait()
        pyroscope.stop()
    elapsed = time.monotonic() - began

    growth_mib = (max(rss) - rss_start) / 1024
    print(
        f"\nRSS (MiB) at outage start {rss_start / 1024:.1f}, max {max(rss) / 1024:.1f}, "
        f"growth {growth_mib:.1f}; samples {[round(r / 1024, 1) for r in rss]}"
        f"\nprofiles: received before {arrived_before}, after {len(received) - arrived_before};"
        f" dropped during the outage "
        f"{during['pyroscope_write_dropped_profiles_total']:.0f},"
        f" produced during the outage "
        f"{during['pyroscope_ebpf_pprofs_total'] - before['pyroscope_ebpf_pprofs_total']:.0f},"
        f" retries {after['pyroscope_write_retries_total']:.0f}; run {elapsed:.1f}s"
    )

    assert returncode == 0, agent.log
    # Sampling went on: one round per 500 ms, give or take a loaded machine.
    rounds = "pyroscope_ebpf_profiling_sessions_total"
    assert during[rounds] - before[rounds] >= 0.7 * OUTAGE_S / 0.5
    # What was made during the outage was dropped and counted, after retrying.
    produced = during["pyroscope_ebpf_pprofs_total"] - before["pyroscope_ebpf_pprofs_total"]
    dropped = during["pyroscope_write_dropped_profiles_total"]
    assert dropped >= max(1, produced - 3)
    assert after["pyroscope_write_retries_total"] > 0
    assert growth_mib < 20
    # Delivery resumed with real profiles of the workload.
    later = received[arrived_before:]
    assert len(later) >= 3
    assert after["pyroscope_write_sent_profiles_total"] > sent_before
    for request in later:
        labels = series(request)
        assert labels["service_name"] == "outage-workload"
        (sample,) = request.request.series[0].samples
        pprof = read_profile(sample.raw_profile)
        assert sum(s.value[0] for s in pprof.sample) > 0
    names = {
        row.name
        for r in later
        for row in top_functions(read_profile(r.request.series[0].samples[0].raw_profile), 20)
    }
    assert {"leaf_a", "main"} <= names
    endpoints = {s.labels.get("endpoint") for s in samples if s.name.startswith("pyroscope_write")}
    assert endpoints == {url}
    assert after["pyroscope_fanout_latency_count"] > 0


def test_a_refusing_endpoint_does_not_delay_a_live_one():
    dead = closed_port_url()
    live_server = serve()
    live = next(live_server)
    options = ComponentOptions("pyroscope.write.two", lambda _: None, {}, threading.Lock())
    component = PyroscopeWrite(options, write_to(dead, live.url))
    stop = threading.Event()
    thread = threading.Thread(target=component.run, args=(stop,), daemon=True)
    thread.start()
    try:
        latencies = []
        for number in range(20):
            appended = time.monotonic()
            component.append(profile(number))
            assert len(live.wait_for(number + 1, timeout=1)) == number + 1
            latencies.append(time.monotonic() - appended)
        assert [series(r)["n"] for r in live.requests] == [str(n) for n in range(20)]
        assert max(latencies) < 0.5, latencies
        assert metric(component, "pyroscope_write_retries_total", dead) > 0
        assert metric(component, "pyroscope_write_retries_total", live.url) == 0
        sent = "pyroscope_write_sent_profiles_total"
        wait_until(lambda: metric(component, sent, live.url) == 20, timeout=1)
        assert metric(component, sent, dead) == 0
    finally:
        stop.set()
        thread.join(10)
        next(live_server, None)
