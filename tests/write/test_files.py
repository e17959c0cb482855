"""pyroscope.file: profiles land under <directory>/<service_name>/ with their labels."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from agent.config.component import ArgumentError, ComponentOptions, Duration
from agent.write import Fanout, FileReceiver, LabeledProfile
from agent.write.files import service_directory


def receiver(tmp_path, **arguments) -> FileReceiver:
    options = ComponentOptions(
        "pyroscope.file.test", lambda _: None, {}, threading.Lock(), CollectorRegistry()
    )
    return FileReceiver(options, FileReceiver.Arguments(directory=str(tmp_path), **arguments))


def counted(component: FileReceiver) -> dict[str, float]:
    """The component's metrics as the agent's registry has them: written, and drops by reason."""
    found = {}
    for family in component.metrics.written.collect() + component.metrics.dropped.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                assert sample.labels["component_id"] == "pyroscope.file.test"
                found[sample.labels.get("reason", "written")] = sample.value
    return found


def run_until_written(component: FileReceiver, count: int) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=component.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 5
    while component.written + component.dropped < count and time.monotonic() < deadline:
        time.sleep(0.01)
    stop.set()
    thread.join(5)


def test_profiles_are_written_under_the_service_name_with_their_labels(tmp_path):
    component = receiver(tmp_path)
    labels = {"service_name": "ebpf/default/web", "__name__": "process_cpu", "env": "test"}
    component.append(LabeledProfile(labels, b"\x1f\x8bpprof", 1_700_000_000_123_456_789))
    component.append(LabeledProfile(labels, b"\x1f\x8bsecond", 1_700_000_000_999_000_000))
    run_until_written(component, 2)
    folder = tmp_path / "ebpf" / "default" / "web"
    assert (folder / "1700000000.pb.gz").read_bytes() == b"\x1f\x8bpprof"
    assert (folder / "1700000000-1.pb.gz").read_bytes() == b"\x1f\x8bsecond"
    assert json.loads((folder / "1700000000.labels.json").read_text()) == labels
    assert component.exports() == {"receiver": component}
    assert counted(component) == {"written": 2}


@pytest.mark.parametrize(
    ("service_name", "parts"),
    [("../../etc", ("_", "_", "etc")), ("/abs", ("_", "abs")), ("a b:c", ("a_b_c",))],
)
def test_service_names_cannot_escape_the_directory(tmp_path, service_name, parts):
    assert service_directory(tmp_path, service_name) == tmp_path.joinpath(*parts)


def test_an_unwritable_directory_makes_it_unhealthy_and_counts_the_drop(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    component = receiver(blocker)
    component.append(LabeledProfile({"service_name": "x"}, b"data", 0))
    run_until_written(component, 1)
    assert component.dropped == 1
    assert counted(component) == {"write_failed": 1}
    assert component.health().state == "unhealthy"
    assert "cannot write profiles" in component.health().message


def test_write_failures_are_counted_and_logged_with_the_path_cut(tmp_path, caplog):
    if os.geteuid() == 0:
        # root writes anywhere: a file where the service's folder should be refuses it
        (tmp_path / ("d" * 200)).write_text("")
    else:
        tmp_path.chmod(0o500)
    component = receiver(tmp_path)
    for number in range(3):
        component.append(LabeledProfile({"service_name": "d" * 200}, b"data", number))
    run_until_written(component, 3)
    assert counted(component) == {"write_failed": 3}
    lines = [r.getMessage() for r in caplog.records if "dropped a profile" in r.getMessage()]
    assert len(lines) == 3 and all(len(line) < 250 for line in lines), lines
    assert lines[0].endswith((": File exists", ": Permission denied")), lines[0]


def test_a_5000_character_service_name_is_dropped_counted_and_cut_in_the_log(tmp_path, caplog):
    component = receiver(tmp_path)
    component.append(LabeledProfile({"service_name": "s" * 5000}, b"data", 0))
    component.append(LabeledProfile({"service_name": "ok"}, b"data", 0))
    run_until_written(component, 2)
    assert counted(component) == {"invalid_service_name": 1, "written": 1}
    assert list(tmp_path.iterdir()) == [tmp_path / "ok"]  # nothing else lost
    (line,) = [r.getMessage() for r in caplog.records if "dropped a profile" in r.getMessage()]
    assert len(line) < 200 and "(4920 characters)" in line, line
    assert component.health().state == "healthy"  # the file system is fine


def test_retention_removes_old_profiles(tmp_path):
    component = receiver(tmp_path, retention=Duration(60))
    old = tmp_path / "svc" / "1.pb.gz"
    old.parent.mkdir()
    old.write_bytes(b"old")
    stale = time.time() - 3600
    os.utime(old, (stale, stale))
    component.append(LabeledProfile({"service_name": "svc"}, b"new", time.time_ns()))
    run_until_written(component, 1)
    assert not old.exists()
    assert len(list((tmp_path / "svc").glob("*.pb.gz"))) == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"directory": ""}, "directory: must not be empty"),
        ({"directory": "x", "retention": Duration(0)}, "retention: must be greater than 0"),
    ],
)
def test_bad_arguments_are_refused(arguments, message):
    with pytest.raises(ArgumentError, match=message):
        FileReceiver.Arguments(**arguments)


def test_a_full_queue_drops_the_oldest_and_counts(tmp_path):
    component = receiver(tmp_path)
    for number in range(300):
        component.append(
            LabeledProfile({"service_name": "q"}, str(number).encode(), number * 10**9)
        )
    assert component.dropped == 300 - 256
    assert counted(component) == {"queue_full": 300 - 256}


def test_fanout_survives_a_failing_receiver(tmp_path):
    class Broken:
        def append(self, profile):
            raise RuntimeError("boom")

    good = receiver(tmp_path)
    fanout = Fanout([Broken(), good])
    fanout.append(LabeledProfile({"service_name": "f"}, b"x", 0))
    assert fanout.failures == 1
    run_until_written(good, 1)
    assert good.written == 1
