"""The tests' shared helpers: run the real agent (``emberscope run``) with a
config and read its HTTP server, metrics, log and profiles; read profiles back
as samples of frames; wait for a condition; a free port; a process's CPU time.

    with run_agent(config_text, tmp_path) as agent:
        agent.wait_for_metrics()
        value = agent.metric("emberscope_ebpf_map_entries", map="pids")
    assert "Traceback" not in agent.log
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import logfmtkv
from prometheus_client.parser import text_string_to_metric_families

from agent.pprof import read_profile
from agent.python.symbols import TRUNCATED_FRAME

REPO = Path(__file__).resolve().parents[1]
KERNEL_BASE = 0xFFFF800000000000  # x86-64: kernel addresses are above, user ones below


_WORKLOAD_CONFIG = """
discovery.process "local" {{
}}

discovery.relabel "workloads" {{
  targets = discovery.process.local.targets
  rule {{
    source_labels = ["__meta_process_exe"]
    regex         = "{folder}/.*"
    action        = "keep"
  }}
  rule {{
    source_labels = ["__meta_process_exe"]
    regex         = ".*/([^/]+)"
    target_label  = "service_name"
  }}
{rules}}}

pyroscope.ebpf "default" {{
  targets    = discovery.relabel.workloads.output
  forward_to = [pyroscope.file.out.receiver]
{ebpf}}}

pyroscope.file "out" {{
  directory = "{output}"
}}
"""


def workload_config(folder: Path, output: Path, *, ebpf: str = "", rules: str = "") -> str:
    """The agent profiling the executables of ``folder``, each its own service
    (``service_name`` is the executable's name), into ``output``. ``ebpf`` adds
    lines (arguments) to pyroscope.ebpf, ``rules`` relabel rules."""
    return _WORKLOAD_CONFIG.format(folder=folder, output=output, ebpf=ebpf, rules=rules)


def writes_to_files(config: str, write_label: str, output: Path) -> str:
    """``config`` with its ``pyroscope.write "<write_label>"`` block, whatever its arguments,
    replaced by a ``pyroscope.file`` writing under ``output`` (no Pyroscope runs here)."""
    header = rf'^pyroscope\.write "{re.escape(write_label)}" {{\n'
    blocks = re.findall(header + r".*?^}", config, re.M | re.S)
    assert len(blocks) == 1, f"the config holds {len(blocks)} pyroscope.write {write_label!r}"
    config = config.replace(blocks[0], f'pyroscope.file "out" {{\n  directory = "{output}"\n}}')
    return config.replace(f"pyroscope.write.{write_label}.receiver", "pyroscope.file.out.receiver")


def parse_log(text: str, log_format: str = "logfmt") -> list[dict[str, str]]:
    """Every line the agent logged, read strictly (logfmt as go-logfmt reads it, or
    JSON); each holds ts (RFC 3339, UTC, milliseconds), level, logger and msg."""
    records = []
    for line in text.splitlines():
        if log_format == "json":
            record = json.loads(line)
        else:
            record = logfmtkv.parse(line, strict=True, duplicates="error")
        assert list(record)[:4] == ["ts", "level", "logger", "msg"], line
        assert all(isinstance(value, str) for value in record.values()), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"]), line
        assert record["level"] in ("debug", "info", "warn", "error"), line
        records.append(record)
    return records


def loaded_programs() -> dict[int, str]:
    """Every BPF program loaded in the kernel: id -> name."""
    shown = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True)
    return {p["id"]: p.get("name", "") for p in json.loads(shown.stdout or "[]")}


def held_bpf_ids(pid: int, kind: str = "prog") -> set[int]:
    """The ids of the BPF programs (``kind`` "prog") or maps ("map") a process
    holds file descriptors of. An fd closed while listed is skipped."""
    ids = set()
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            text = info.read_text()
        except FileNotFoundError:
            continue
        ids.update(
            int(line.split()[1]) for line in text.splitlines() if line.startswith(f"{kind}_id:")
        )
    return ids


def programs_held_by(pid: int) -> set[int]:
    return held_bpf_ids(pid, "prog")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(
    condition: Callable[[], Any], timeout: float = 5.0, what: str = "", interval: float = 0.05
) -> Any:
    """Poll ``condition`` until it returns something true, and return that. A
    condition that raises an httpx error (a server not up yet) counts as false.
    AssertionError naming ``what`` and the last answer when ``timeout`` s pass first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            answer = condition()
        except httpx.HTTPError as exc:
            answer = exc
        if answer and not isinstance(answer, Exception):
            return answer
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what or 'condition'}: not within {timeout:g} s ({answer!r})")
        time.sleep(interval)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a live process, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stream:
        fields = stream.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def profiles_in(output: Path, service: str) -> list[tuple[dict, object]]:
    """The (labels, profile) pairs pyroscope.file wrote for ``service``, oldest first."""
    found = []
    for path in sorted((output / service).glob("*.pb.gz")):
        labels = json.loads(path.with_name(path.name.replace(".pb.gz", ".labels.json")).read_text())
        found.append((labels, read_profile(path.read_bytes())))
    return found


@dataclass(frozen=True)
class Site:
    """One frame of a sample read back from pprof."""

    name: str
    filename: str
    line: int
    mapping: str  # the file of a native user frame, else ""
    address: int

    @property
    def is_python(self) -> bool:
        # Python frames are interpreted: no address (bpf → merge → builder).
        return self.address == 0 and self.name != TRUNCATED_FRAME.name

    @property
    def is_kernel(self) -> bool:
        return self.address >= KERNEL_BASE


@dataclass(frozen=True)
class Sample:
    sites: tuple[Site, ...]  # leaf first
    count: int
    pid: int
    comm: str
    gil: str = ""  # the gil label of a Python thread's sample: held or released

    @property
    def python(self) -> list[Site]:
        return [site for site in self.sites if site.is_python]

    def names(self) -> list[str]:
        return [site.name for site in self.sites]


def read_samples(path: Path) -> list[Sample]:
    """The samples of a pprof file written by emberscope, each with its frames."""
    profile = read_profile(path.read_bytes())
    strings = profile.string_table
    functions = {f.id: (strings[f.name], strings[f.filename]) for f in profile.function}
    mappings = {m.id: strings[m.filename] for m in profile.mapping}
    sites = {}
    for location in profile.location:
        name, filename = functions[location.line[0].function_id]
        sites[location.id] = Site(
            name,
            filename,
            location.line[0].line,
            mappings.get(location.mapping_id, ""),
            location.address,
        )
    samples = []
    for sample in profile.sample:
        labels = {strings[label.key]: strings[label.str] for label in sample.label}
        samples.append(
            Sample(
                tuple(sites[i] for i in sample.location_id),
                sample.value[0] // profile.period,
                int(labels["pid"]),
                labels["comm"],
                labels.get("gil", ""),
            )
        )
    return samples


def share(samples: list[Sample], has: Callable[[Sample], bool]) -> float:
    """The share of the samples (by count) for which ``has`` is true; 0 when none."""
    total = sum(s.count for s in samples)
    return sum(s.count for s in samples if has(s)) / total if total else 0.0


class RunningAgent:
    def __init__(self, process: subprocess.Popen, port: int, folder: Path) -> None:
        self.process = process
        self.port = port
        self._folder = folder

    @property
    def log(self) -> str:
        """What the agent wrote to stderr so far."""
        return (self._folder / "agent.log").read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return (self._folder / "agent.stdout").read_text(errors="replace")

    def get(self, path: str, timeout: float = 5) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=timeout)

    def metrics(self) -> list:
        """Every sample of the agent's /metrics."""
        text = self.get("/metrics").text
        return [s for family in text_string_to_metric_families(text) for s in family.samples]

    def metric(self, name: str, **labels: str) -> float:
        """The sum of ``name``'s samples whose labels include ``labels``; 0 when none."""
        return sum(
            sample.value
            for sample in self.metrics()
            if sample.name == name and labels.items() <= sample.labels.items()
        )

    def wait_for_metrics(self, timeout: float = 30) -> None:
        def answers() -> bool:
            assert self.process.poll() is None, f"the agent exited early:\n{self.log}"
            try:
                self.get("/metrics")
            except httpx.HTTPError:
                return False
            return True

        wait_for(answers, timeout, "the agent's /metrics", interval=0.2)

    def wait_for_sampling(self, timeout: float = 30) -> None:
        """Until the BPF program samples: /metrics answers before the components start."""
        self.wait_for_metrics(timeout)
        wait_for(
            lambda: any(s.name == "emberscope_ebpf_samples_total" for s in self.metrics()),
            timeout,
            "the agent's BPF program",
            interval=0.2,
        )

    def component(self, component_id: str) -> dict:
        return self.get(f"/api/v0/web/components/{component_id}").json()

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@contextmanager
def run_agent(
    config: str, folder: Path, *args: str, environ: dict[str, str] | None = None
) -> Iterator[RunningAgent]:
    """Start ``emberscope run`` on ``config`` (written into ``folder``), with ``environ``
    added to this environment; stop it on exit."""
    path = folder / "agent.alloy"
    path.write_text(config)
    port = free_port()
    # Files, not pipes: a verbose agent would fill a pipe nobody reads and stall.
    with open(folder / "agent.log", "w") as log, open(folder / "agent.stdout", "w") as stdout:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "agent.cli",
                "run",
                f"--server.http.listen-addr=127.0.0.1:{port}",
                *args,
                str(path),
            ],
            cwd=REPO,
            env=os.environ | (environ or {}),
            stdin=subprocess.DEVNULL,
            stderr=log,
            stdout=stdout,
        )
    agent = RunningAgent(process, port, folder)
    try:
        yield agent
    finally:
        agent.stop()
