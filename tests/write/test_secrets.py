"""A password written in a URL of pyroscope.write reaches the server as basic auth and no
output of the running agent: its log, /metrics, the probes and the component API."""

from __future__ import annotations

import base64
import subprocess
from urllib.parse import quote

import pytest

from tests.agent import free_port, run_agent, wait_for
from tests.write.test_pyroscope import serve

pytestmark = pytest.mark.usefixtures("bpf_ready")

# A percent-encoded "@" in the URL: it must be hidden in both spellings.
PASSWORD = "s3cr3t@pw-4e9f"
PROXY_PASSWORD = "pr0xy-pw-71c2"
FORMS = [
    PASSWORD,
    quote(PASSWORD, safe=""),
    PROXY_PASSWORD,
    base64.b64encode(f"user:{PASSWORD}".encode()).decode(),
]

CONFIG = """
pyroscope.ebpf "default" {{
  targets          = [{{"__process_pid__" = "{pid}", "service_name" = "busy"}}]
  forward_to       = [pyroscope.write.live.receiver, pyroscope.write.dead.receiver]
  collect_interval = "1s"
}}

pyroscope.write "live" {{
  endpoint {{
    url = "http://user:{password}@127.0.0.1:{live}"
  }}
}}

pyroscope.write "dead" {{
  endpoint {{
    url                 = "http://user:{password}@127.0.0.1:{dead}"
    proxy_url           = "http://proxy:{proxy_password}@127.0.0.1:{proxy}"
    max_backoff_retries = 2
    min_backoff_period  = "10ms"
    max_backoff_period  = "20ms"
  }}
}}
"""


@pytest.fixture(scope="module")
def agent_outputs(build_workload, tmp_path_factory):
    """Every output of one agent run that pushed to a live and a dead endpoint."""
    receiver = serve()
    live = next(receiver)
    busy = subprocess.Popen([str(build_workload("three_leaves")), "60"])
    folder = tmp_path_factory.mktemp("secrets")
    config = CONFIG.format(
        pid=busy.pid,
        password=quote(PASSWORD, safe=""),
        proxy_password=PROXY_PASSWORD,
        live=live.url.rsplit(":", 1)[1],
        dead=free_port(),
        proxy=free_port(),
    )
    outputs: dict[str, str] = {}
    try:
        with run_agent(config, folder, "-vv") as agent:
            wait_for(lambda: live.requests, 60, "a push to the live endpoint")
            dead = "/api/v0/web/components/pyroscope.write.dead"
            wait_for(lambda: "cannot connect" in agent.get(dead).text, 30, "the dead endpoint")
            paths = ["/metrics", "/-/healthy", "/-/ready", "/api/v0/web/components"]
            ids = [c["localID"] for c in agent.get("/api/v0/web/components").json()]
            paths += [f"/api/v0/web/components/{component}" for component in ids]
            for path in paths:
                outputs[path] = agent.get(path).text
            agent.stop()
    finally:
        busy.kill()
        busy.wait()
        next(receiver, None)
    outputs["stdout"] = agent.stdout
    outputs["stderr"] = agent.log
    return outputs, live


def test_the_password_is_in_no_output_of_the_agent(agent_outputs):
    outputs, _ = agent_outputs
    assert "agent stopped" in outputs["stderr"]
    assert "/api/v0/web/components/pyroscope.write.dead" in outputs
    for name, text in outputs.items():
        for form in FORMS:
            assert form not in text, f"{form!r} in {name}"


def test_the_component_api_shows_the_url_with_its_password_redacted(agent_outputs):
    outputs, live = agent_outputs
    shown = outputs["/api/v0/web/components/pyroscope.write.live"]
    assert f"http://user:(redacted)@127.0.0.1:{live.url.rsplit(':', 1)[1]}" in shown
    assert (
        "http://proxy:(redacted)@127.0.0.1:"
        in outputs["/api/v0/web/components/pyroscope.write.dead"]
    )


def test_the_password_still_reaches_the_server_as_basic_auth(agent_outputs):
    _, live = agent_outputs
    expected = "Basic " + base64.b64encode(f"user:{PASSWORD}".encode()).decode()
    assert {request.headers["Authorization"] for request in live.requests} == {expected}
