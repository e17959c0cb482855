"""`emberscope run` on a Python service: pyroscope.ebpf with python_enabled
on (the default) and off, its profiles, metrics and debug info."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.pprof import read_profile
from tests.agent import loaded_programs, programs_held_by, run_agent, wait_for
from tests.python.conftest import pyenv_python

pytestmark = pytest.mark.usefixtures("bpf_ready")

SERVICE = """\
import time

class Handler:
    def handle(self, n):
        total = 0
        for i in range(n):
            total += i * i  # hot: handle
        return total

def serve():
    handler = Handler()
    end = time.time() + 60
    while time.time() < end:
        handler.handle(20000)

serve()
"""

CONFIG = """
discovery.process "local" {{
}}

discovery.relabel "service" {{
  targets = discovery.process.local.targets
  rule {{
    source_labels = ["__meta_process_commandline"]
    regex         = ".*{script}.*"
    action        = "keep"
  }}
  rule {{
    target_label = "service_name"
    replacement  = "python-service"
  }}
}}

pyroscope.ebpf "default" {{
  targets          = discovery.relabel.service.output
  forward_to       = [pyroscope.file.out.receiver]
  collect_interval = "2s"
  python_enabled   = {python_enabled}
}}

pyroscope.file "out" {{
  directory = "{output}"
}}
"""


def profile_service(tmp_path: Path, python: Path, python_enabled: bool) -> dict:
    """Run the agent on a Python service for three intervals; what it left behind."""
    script = tmp_path / "service_app.py"
    script.write_text(SERVICE)
    output = tmp_path / "out"
    config = CONFIG.format(
        script=script.name, output=output, python_enabled=str(python_enabled).lower()
    )
    service = subprocess.Popen([str(python), str(script)])
    try:
        with run_agent(config, tmp_path) as agent:
            agent.wait_for_sampling()
            wait_for(lambda: len(list(output.glob("*/*.pb.gz"))) >= 3, 30, "three profiles")
            metrics = agent.get("/metrics").text
            detail = agent.component("pyroscope.ebpf.default")
            programs = _program_names(agent.process.pid)
            returncode = agent.stop()
    finally:
        service.kill()
        service.wait()
    profiles = [read_profile(p.read_bytes()) for p in sorted(output.glob("*/*.pb.gz"))]
    return {
        "pid": service.pid,
        "script": str(script),
        "profiles": profiles,
        "metrics": metrics,
        "debug": detail["debugInfo"],
        "programs": programs,
        "log": agent.log,
        "returncode": returncode,
    }


def _program_names(pid: int) -> set[str]:
    programs = loaded_programs()
    return {programs.get(program, "") for program in programs_held_by(pid)}


def functions(profile) -> dict[int, tuple[str, str]]:
    strings = profile.string_table
    return {f.id: (strings[f.name], strings[f.filename]) for f in profile.function}


def python_lines(profiles, script: str) -> dict[tuple[str, int], int]:
    """Samples per (function, line) of the service's own Python frames, leaf first only."""
    found: dict[tuple[str, int], int] = {}
    for profile in profiles:
        names = functions(profile)
        locations = {location.id: location for location in profile.location}
        for sample in profile.sample:
            for location_id in sample.location_id:
                line = locations[location_id].line[0]
                name, filename = names[line.function_id]
                if filename == script:
                    key = (name, line.line)
                    found[key] = found.get(key, 0) + sample.value[0] // profile.period
                    break
    return found


@pytest.fixture(scope="module")
def python312() -> Path:
    path = pyenv_python("3.12")
    if path is None:
        pytest.skip("no pyenv python3.12 on this machine")
    return path


def test_the_agent_profiles_python_functions_with_lines(tmp_path, python312):
    run = profile_service(tmp_path, python312, python_enabled=True)
    assert run["returncode"] == 0, run["log"]
    assert "Traceback" not in run["log"]
    assert "walk_python" in run["programs"]
    lines = python_lines(run["profiles"], run["script"])
    hot_line = SERVICE.splitlines().index("            total += i * i  # hot: handle") + 1
    assert lines, "no Python frame of the service in any profile"
    (name, line), _ = max(lines.items(), key=lambda item: item[1])
    assert (name, line) == ("Handler.handle", hot_line)

    # the kernel walked Python stacks and says so
    samples = _metric(run["metrics"], "emberscope_python_samples_total")
    assert samples > 50
    assert _metric(run["metrics"], "emberscope_python_symbols_new_total") >= 3
    assert _metric(run["metrics"], "emberscope_python_symbols_evicted_total") == 0
    # every new code object's line table reached userspace, and every frame had its line
    assert _metric(run["metrics"], "emberscope_python_lines_lost_total") == 0
    assert _metric(run["metrics"], "emberscope_python_lines_unknown_total") == 0
    python = run["debug"]["python"]
    assert python["processes"][str(run["pid"])]["version"].startswith("3.12.")
    assert python["not_unwound"] == {}


def test_python_disabled_gives_native_stacks_without_the_unwinder(tmp_path, python312):
    run = profile_service(tmp_path, python312, python_enabled=False)
    assert run["returncode"] == 0, run["log"]
    assert "walk_python" not in run["programs"]
    assert {"do_sample", "handle_exec", "handle_exit"} <= run["programs"]
    assert python_lines(run["profiles"], run["script"]) == {}
    names = {name for p in run["profiles"] for name, _ in functions(p).values()}
    assert "_PyEval_EvalFrameDefault" in names
    assert "emberscope_python_samples_total" not in run["metrics"]
    assert run["debug"]["python"] is None


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} is not exposed")
