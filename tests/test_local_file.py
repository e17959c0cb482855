"""local.file: a file's content exported, read again on an inotify event or a poll,
a secret that reaches Pyroscope as basic auth and no output of the real agent."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from agent.config import ComponentOptions, Duration, Secret
from agent.config.decode import decode
from agent.config.evaluate import Scope
from agent.config.parser import parse
from agent.errors import ConfigError
from agent.local_file import LocalFile
from tests.agent import parse_log, run_agent, wait_for
from tests.write.test_pyroscope import serve

PASSWORD = "l0cal-f1le-pw-93ad"
NEW_PASSWORD = "r0tated-pw-5b21"
COMPONENTS = ("local.file.password", "local.file.service", "pyroscope.write.live")


class Exported:
    """A recording ``on_exports``."""

    def __init__(self) -> None:
        self.contents: list[str] = []
        self.thread: threading.Thread | None = None  # the component's run loop

    def __call__(self, exports: dict) -> None:
        self.contents.append(exports["content"])


@pytest.fixture
def start() -> Iterator:
    stops: list[tuple[threading.Event, threading.Thread]] = []

    def start(**arguments) -> tuple[LocalFile, Exported]:
        exported = Exported()
        options = ComponentOptions("local.file.test", exported, {}, threading.Lock())
        component = LocalFile(options, LocalFile.Arguments(**arguments))
        stop = threading.Event()
        thread = threading.Thread(target=component.run, args=(stop,), daemon=True)
        thread.start()
        stops.append((stop, thread))
        exported.thread = thread
        return component, exported

    yield start
    for stop, thread in stops:
        stop.set()
        thread.join(timeout=5)
        assert not thread.is_alive()


def test_the_content_is_exported_from_creation_and_as_a_secret_when_asked(start, tmp_path):
    path = tmp_path / "token"
    path.write_text("t0ken\n")
    plain, _ = start(filename=str(path))
    secret, _ = start(filename=str(path), is_secret=True)
    assert plain.exports() == {"content": "t0ken\n"}
    assert type(plain.exports()["content"]) is str
    assert isinstance(secret.exports()["content"], Secret)
    assert "t0ken" not in repr(secret.exports())


@pytest.mark.parametrize("how", ["write", "rename", "kubernetes"])
def test_fsnotify_reads_a_change_at_once(start, tmp_path, how):
    path = tmp_path / "token"
    if how == "kubernetes":  # token -> ..data/token, ..data -> a versioned directory
        (tmp_path / "v1").mkdir()
        (tmp_path / "v1" / "token").write_text("one")
        (tmp_path / "..data").symlink_to("v1")
        path.symlink_to("..data/token")
    else:
        path.write_text("one")
    component, exported = start(filename=str(path), poll_frequency=Duration(3600))
    if how == "write":
        path.write_text("two")
    elif how == "rename":
        (tmp_path / "token.new").write_text("two")
        os.rename(tmp_path / "token.new", path)
    else:
        (tmp_path / "v2").mkdir()
        (tmp_path / "v2" / "token").write_text("two")
        (tmp_path / "..data_tmp").symlink_to("v2")
        os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
    wait_for(lambda: exported.contents[-1:] == ["two"], 5, "the new content")
    assert component.exports() == {"content": "two"}


def waiting(thread: threading.Thread) -> bool:
    """Whether ``thread`` is in the component's wait for the next change or poll."""
    frame = sys._current_frames().get(thread.ident)
    while frame is not None:
        if frame.f_code.co_name == "_watch_until_changed":
            return True
        frame = frame.f_back
    return False


def test_poll_reads_every_poll_frequency_and_only_then(start, tmp_path):
    often, seldom = tmp_path / "often", tmp_path / "seldom"
    often.write_text("one")
    seldom.write_text("one")
    _, exported = start(filename=str(often), detector="poll", poll_frequency=Duration(0.2))
    hourly = Duration(3600)
    slow, slow_exported = start(filename=str(seldom), detector="poll", poll_frequency=hourly)
    # Its run loop reads the file once as it starts: only a write after that read is a test.
    wait_for(lambda: waiting(slow_exported.thread), 5, "the slow poller's first read")
    often.write_text("two")
    seldom.write_text("two")
    wait_for(lambda: exported.contents[-1:] == ["two"], 5, "the polled content")
    assert slow.exports() == {"content": "one"}  # no event is listened to


def test_a_file_that_goes_keeps_its_last_content_and_makes_the_component_unhealthy(start, tmp_path):
    path = tmp_path / "token"
    path.write_text("one")
    component, exported = start(filename=str(path), poll_frequency=Duration(3600))
    path.unlink()
    wait_for(lambda: component.health().state == "unhealthy", 5, "unhealthy")
    assert component.health().message == f"failed to read file: cannot read {path}: " + (
        "No such file or directory"
    )
    assert component.exports() == {"content": "one"}
    path.write_text("two")
    wait_for(lambda: component.health().state == "healthy", 5, "healthy again")
    wait_for(lambda: exported.contents[-1:] == ["two"], 5, "the new content")


def test_a_file_that_cannot_be_read_at_creation_is_an_error(tmp_path):
    options = ComponentOptions("local.file.x", lambda _: None, {}, threading.Lock())
    with pytest.raises(ConfigError, match=rf"^local.file.x: cannot read {tmp_path}/no: No such"):
        LocalFile(options, LocalFile.Arguments(filename=str(tmp_path / "no")))
    with pytest.raises(ConfigError, match=r"not a regular file"):
        LocalFile(options, LocalFile.Arguments(filename=str(tmp_path)))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("", '1:1: missing required attribute "filename"'),
        ('filename = ""', "2:1: filename: must not be empty"),
        ('filename = "/f"\ndetector = "inotify"', "3:1: detector: must be one of fsnotify, poll"),
        ('filename = "/f"\npoll_frequency = "0s"', "3:1: poll_frequency: must be greater than 0"),
        ('filename = "/f"\nis_secret = "yes"', "3:13: expected bool, got string"),
    ],
)
def test_argument_checks(body, message):
    (block,) = parse(f'local.file "f" {{\n{body}\n}}', "t.alloy").body
    with pytest.raises(ConfigError) as caught:
        decode(block, LocalFile.Arguments, Scope())
    assert str(caught.value).startswith(f"t.alloy:{message}")


def test_the_defaults_are_alloys():
    (block,) = parse('local.file "f" {\n  filename = "/f"\n}', "t.alloy").body
    arguments = decode(block, LocalFile.Arguments, Scope())
    assert (arguments.detector, arguments.poll_frequency, arguments.is_secret) == (
        "fsnotify",
        60,
        False,
    )


# ---- the real agent -----------------------------------------------------------------------

CONFIG = """
logging {{
  level = "debug"
}}

local.file "password" {{
  filename  = "{password}"
  is_secret = true
}}

local.file "service" {{
  filename = "{service}"
}}

discovery.relabel "busy" {{
  targets = [{{"__process_pid__" = "{pid}"}}]
  rule {{
    target_label = "service_name"
    replacement  = string.trim_space(local.file.service.content)
  }}
}}

pyroscope.ebpf "default" {{
  targets          = discovery.relabel.busy.output
  forward_to       = [pyroscope.write.live.receiver]
  collect_interval = "1s"
}}

pyroscope.write "live" {{
  endpoint {{
    url = "{url}"
    basic_auth {{
      username = "user"
      password = local.file.password.content
    }}
  }}
}}
"""


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"user:{password}".encode()).decode()


@pytest.mark.usefixtures("bpf_ready")
def test_a_secret_file_reaches_pyroscope_and_no_output_and_a_change_is_used_at_once(
    build_workload, tmp_path
):
    receiver = serve()
    live = next(receiver)
    password, service = tmp_path / "password", tmp_path / "service"
    password.write_text(PASSWORD)
    service.write_text("from-a-file\n")
    busy = build_workload("three_leaves")
    workload = subprocess.Popen([str(busy), "60"])
    config = CONFIG.format(password=password, service=service, pid=workload.pid, url=live.url)
    try:
        with run_agent(config, tmp_path) as agent:
            wait_for(lambda: live.requests, 60, "a push")
            shown = {
                component: agent.get(f"/api/v0/web/components/{component}").text
                for component in (
                    "local.file.password",
                    "local.file.service",
                    "pyroscope.write.live",
                )
            }
            password.write_text(NEW_PASSWORD)
            seen = len(live.requests)
            wait_for(
                lambda: live.requests[-1].headers["Authorization"] == basic(NEW_PASSWORD),
                30,
                "a push with the new password",
            )
            metrics = agent.get("/metrics").text
            assert agent.stop() == 0
    finally:
        workload.kill()
        workload.wait()
        next(receiver, None)
    first = {request.headers["Authorization"] for request in live.requests[:seen]}
    assert first == {basic(PASSWORD)}
    services = {
        label.value
        for received in live.requests
        for series in received.request.series
        for label in series.labels
        if label.name == "service_name"
    }
    assert services == {"from-a-file"}
    assert "(redacted)" in shown["local.file.password"]
    assert "from-a-file" in shown["local.file.service"]
    records = parse_log(agent.log)
    assert any("local.file.password" in record["msg"] for record in records)
    for secret in (PASSWORD, NEW_PASSWORD):
        for form in (secret, basic(secret)):
            assert form not in agent.log
            assert form not in metrics
            assert all(form not in text for text in shown.values())


def test_a_secret_given_to_a_plain_string_stops_the_agent_from_starting(emberscope, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text(PASSWORD)
    config = tmp_path / "agent.alloy"
    config.write_text(
        f'local.file "s" {{\n  filename = "{secret}"\n  is_secret = true\n}}\n'
        'discovery.relabel "r" {\n  targets = []\n  rule {\n    target_label = "x"\n'
        "    replacement = local.file.s.content\n  }\n}\n"
    )
    assert emberscope("check-config", str(config)).returncode == 0  # known only when read
    result = emberscope("run", "--server.http.listen-addr=127.0.0.1:0", str(config))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"emberscope: {config}:9:19: expected string, got secret"
    )
    assert PASSWORD not in result.stderr


def test_a_missing_file_stops_the_agent_from_starting(emberscope, tmp_path):
    config = tmp_path / "agent.alloy"
    config.write_text(f'local.file "s" {{\n  filename = "{tmp_path}/none"\n}}\n')
    result = emberscope("run", "--server.http.listen-addr=127.0.0.1:0", str(config))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"emberscope: local.file.s: cannot read {tmp_path}/none: No such file or directory"
    )
