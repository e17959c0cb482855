"""The component graph: checks at load, dependency order, live re-evaluation, stopping."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.config import ComponentOptions, Graph, Health
from agent.errors import ConfigError
from tests.agent import wait_for

WAIT = 5.0


@dataclass(frozen=True)
class SourceArguments:
    value: int = 0


@dataclass(frozen=True)
class SourceExports:
    value: int


@dataclass(frozen=True)
class RelayArguments:
    input: int


class Source:
    """Exports ``value``; the test makes it announce new values with ``publish``."""

    Arguments = SourceArguments
    Exports = SourceExports
    created: list[str]

    def __init__(self, options: ComponentOptions, arguments: SourceArguments) -> None:
        self.options = options
        self.value = arguments.value
        self.created.append(options.id)
        self.instances[options.id] = self

    def run(self, stop: threading.Event) -> None:
        stop.wait()

    def update(self, arguments: Any) -> None:
        self.value = arguments.value

    def exports(self) -> dict[str, Any]:
        return {"value": self.value}

    def health(self) -> Health:
        return Health("healthy")

    def publish(self, value: int) -> None:
        self.value = value
        self.options.on_exports({"value": value})


class Relay(Source):
    """Takes ``input`` and exports ``input + 1``, so changes cascade down a chain."""

    Arguments = RelayArguments

    def __init__(self, options: ComponentOptions, arguments: RelayArguments) -> None:
        super().__init__(options, SourceArguments(arguments.input + 1))
        self.updates: list[int] = []
        self.entered = threading.Event()  # set when an update begins
        self.gate = threading.Event()  # cleared by a test to hold the update there
        self.gate.set()

    def update(self, arguments: Any) -> None:
        self.entered.set()
        self.gate.wait(WAIT)
        self.updates.append(arguments.input)
        self.publish(arguments.input + 1)


class Broken(Source):
    """Fails at creation when its value is negative, and in ``run`` otherwise."""

    def __init__(self, options: ComponentOptions, arguments: SourceArguments) -> None:
        if arguments.value < 0:
            raise RuntimeError("cannot create")
        super().__init__(options, arguments)

    runs = 0

    def run(self, stop: threading.Event) -> None:
        type(self).runs += 1
        raise RuntimeError("lost the device")


@pytest.fixture
def kinds() -> dict[str, type]:
    """Fresh component classes per test, sharing one creation log."""
    created: list[str] = []
    instances: dict[str, Source] = {}
    state = {"created": created, "instances": instances}
    return {
        "test.source": type("TestSource", (Source,), state),
        "test.relay": type("TestRelay", (Relay,), state),
        "test.broken": type("TestBroken", (Broken,), state),
    }


def load(text: str, kinds: dict[str, type]) -> Graph:
    return Graph.load(text, kinds, environ={}, filename="t.alloy")


def load_error(text: str, kinds: dict[str, type]) -> str:
    with pytest.raises(ConfigError) as caught:
        load(text, kinds)
    return str(caught.value)


CHAIN = """
test.relay "second" {
  input = test.relay.first.value
}
test.relay "first" {
  input = test.source.origin.value
}
test.source "origin" {
  value = 1
}
"""


@pytest.fixture
def running(kinds):
    graphs: list[Graph] = []

    def start(text: str) -> Graph:
        graph = load(text, kinds)
        graphs.append(graph)
        graph.start()
        return graph

    yield start
    for graph in graphs:
        graph.stop(timeout=1.0)


def test_components_are_ordered_and_created_by_dependency(kinds, running):
    graph = load(CHAIN, kinds)
    assert graph.order == ["test.source.origin", "test.relay.first", "test.relay.second"]
    assert graph.arguments("test.relay.first") == RelayArguments(0)  # exports unknown at load
    graph = running(CHAIN)
    assert kinds["test.source"].created == graph.order
    assert graph.arguments("test.relay.second") == RelayArguments(2)  # origin 1, +1 by first
    assert [component_id for component_id, _ in graph.components()] == graph.order
    assert graph.health("test.relay.first") == Health("healthy")


def test_an_export_change_updates_the_components_that_reference_it_transitively(kinds, running):
    graph = running(CHAIN)
    instances = kinds["test.source"].instances
    instances["test.source.origin"].publish(10)
    second = instances["test.relay.second"]
    wait_for(lambda: second.updates == [11])
    assert instances["test.relay.first"].updates == [10]
    assert graph.arguments("test.relay.second") == RelayArguments(11)


def test_a_burst_of_changes_is_coalesced_into_one_update(kinds, running):
    running(CHAIN)
    instances = kinds["test.source"].instances
    first = instances["test.relay.first"]
    first.gate.clear()  # hold the worker inside the first update
    origin = instances["test.source.origin"]
    origin.publish(5)
    assert first.entered.wait(WAIT)
    for value in range(6, 50):
        origin.publish(value)
    first.gate.set()
    wait_for(lambda: first.updates[-1:] == [49])
    assert first.updates == [5, 49]


def test_arguments_that_evaluate_the_same_do_not_cause_an_update(kinds, running):
    running(
        'test.source "origin" {\n  value = 1\n}\n'
        'test.relay "masked" {\n  input = test.source.origin.value * 0\n}\n'
        'test.relay "plain" {\n  input = test.source.origin.value\n}\n'
    )
    instances = kinds["test.source"].instances
    instances["test.source.origin"].publish(5)
    wait_for(lambda: instances["test.relay.plain"].updates == [5])
    assert instances["test.relay.masked"].updates == []  # re-evaluated first, to the same 0


def test_an_evaluation_failure_keeps_the_old_arguments_and_marks_the_component(kinds, running):
    graph = running(
        'test.source "origin" {\n  value = 1\n}\n'
        'test.relay "ratio" {\n  input = 10 / test.source.origin.value\n}\n'
    )
    origin = kinds["test.source"].instances["test.source.origin"]
    origin.publish(0)
    wait_for(lambda: graph.health("test.relay.ratio").state == "unhealthy")
    assert graph.health("test.relay.ratio").message == "t.alloy:5:16: divide by zero error"
    assert graph.arguments("test.relay.ratio") == RelayArguments(10)
    origin.publish(5)
    wait_for(lambda: graph.arguments("test.relay.ratio") == RelayArguments(2))
    assert graph.health("test.relay.ratio") == Health("healthy")


def test_stop_joins_every_thread_in_reverse_order(kinds):
    graph = load(CHAIN, kinds)
    graph.start()
    threads = {t.name: t for t in threading.enumerate() if t.name in graph.order}
    assert set(threads) == set(graph.order)
    assert graph.stop(timeout=WAIT) == []
    assert not any(thread.is_alive() for thread in threads.values())
    with pytest.raises(RuntimeError, match="only once"):
        graph.start()


def test_stop_reports_a_component_that_ignores_it(kinds):
    release = threading.Event()

    class Stubborn(kinds["test.source"]):
        def run(self, stop: threading.Event) -> None:
            release.wait(WAIT)

    graph = load('test.stubborn "x" {\n}\n', {"test.stubborn": Stubborn})
    graph.start()
    assert graph.stop(timeout=0.05) == ["test.stubborn.x"]
    release.set()


def test_a_failing_run_marks_the_component_unhealthy_and_runs_it_again(kinds, running):
    graph = running('test.broken "b" {\n}\n')
    wait_for(lambda: graph.health("test.broken.b").state == "unhealthy")
    assert graph.health("test.broken.b").message == "run failed: lost the device; restarting"
    wait_for(lambda: kinds["test.broken"].runs >= 2)  # after the first backoff
    assert kinds["test.broken"].runs >= 2


def test_a_component_that_cannot_be_created_stops_the_others(kinds):
    graph = load('test.source "a" {\n}\ntest.broken "b" {\n  value = -1\n}\n', kinds)
    with pytest.raises(RuntimeError, match="cannot create"):
        graph.start()
    assert kinds["test.source"].created == ["test.source.a"]
    assert [t for t in threading.enumerate() if t.name == "test.source.a"] == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('foo.bar "x" {\n}', '1:1: cannot find the definition of component name "foo.bar"'),
        ("test.source {\n}", '1:1: block "test.source" requires non-empty label'),
        ('test.source "" {\n}', '1:1: block "test.source" requires non-empty label'),
        ("value = 1", '1:1: unrecognized attribute name "value"'),
        (
            'test.source "a" {\n}\ntest.source "a" {\n}',
            "3:1: block test.source.a already declared at t.alloy:1:1",
        ),
        (
            'test.relay "a" {\n  input = test.source.missing.value\n}',
            '2:11: component "test.source.missing.value" does not exist or is out of scope',
        ),
        (
            'test.source "a" {\n}\ntest.relay "b" {\n  input = test.source.a.nope\n}',
            '4:11: field "nope" does not exist',
        ),
        ('test.relay "a" {\n  input = "x"\n}', "2:11: expected number, got string"),
        ('test.relay "a" {\n}', '1:1: missing required attribute "input"'),
    ],
)
def test_invalid_graphs_are_rejected_with_positions(kinds, text, message):
    assert load_error(text, kinds) == f"t.alloy:{message}"


def test_a_cycle_is_rejected_naming_its_components(kinds):
    text = (
        'test.relay "c" {\n  input = test.relay.a.value\n}\n'
        'test.relay "a" {\n  input = test.relay.b.value\n}\n'
        'test.relay "b" {\n  input = test.relay.a.value\n}\n'
    )  # c depends on the cycle without being in it
    assert load_error(text, kinds) == "t.alloy:4:1: cycle: test.relay.a, test.relay.b"
    entered_late = (
        'test.relay "f" {\n  input = test.relay.q.value\n}\n'
        'test.relay "p" {\n  input = test.relay.q.value\n}\n'
        'test.relay "q" {\n  input = test.relay.p.value\n}\n'
    )  # found from f through q, but named from p, the first declared
    assert load_error(entered_late, kinds) == "t.alloy:4:1: cycle: test.relay.p, test.relay.q"
    itself = 'test.relay "self" {\n  input = test.relay.self.value\n}\n'
    assert load_error(itself, kinds) == "t.alloy:1:1: cycle: test.relay.self"


def test_a_graph_loads_from_a_file(kinds, tmp_path: Path):
    path = tmp_path / "agent.alloy"
    path.write_text('test.source "a" {\n  value = 2\n}\n')
    Graph.load(path, kinds)
    path.write_text('test.source "a" {\n  value = "two"\n}\n')
    with pytest.raises(ConfigError, match=rf"^{path}:2:11: expected number, got string$"):
        Graph.load(path, kinds)
    with pytest.raises(ConfigError, match=r"missing.alloy: No such file or directory"):
        Graph.load(tmp_path / "missing.alloy", kinds)


def test_sys_env_reads_the_given_environment(kinds):
    text = 'test.source "a" {\n  value = json_decode(sys.env("N"))\n}\n'
    graph = Graph.load(text, kinds, environ={"N": "42"})
    assert graph.arguments("test.source.a") == SourceArguments(42)


def test_stop_ends_a_component_only_after_those_that_reference_it_have_ended(kinds):
    ended: list[str] = []

    class Recording(kinds["test.relay"]):
        def run(self, stop: threading.Event) -> None:
            stop.wait()
            ended.append(self.options.id)

    class RecordingSource(kinds["test.source"]):
        def run(self, stop: threading.Event) -> None:
            stop.wait()
            ended.append(self.options.id)

    graph = load(CHAIN, {"test.relay": Recording, "test.source": RecordingSource})
    graph.start()
    assert graph.stop(timeout=WAIT) == []
    assert ended == ["test.relay.second", "test.relay.first", "test.source.origin"]


def test_a_reload_updates_kept_components_in_place_and_starts_and_stops_the_others(kinds, running):
    graph = running(CHAIN)
    instances = kinds["test.source"].instances
    first = instances["test.relay.first"]
    started = graph.reload(
        'test.source "origin" {\n  value = 7\n}\n'
        'test.relay "first" {\n  input = test.source.origin.value\n}\n'
        'test.source "extra" {\n}\n',
        "t2.alloy",
    )
    assert started == ["test.source.extra"]
    assert graph.order == ["test.source.origin", "test.relay.first", "test.source.extra"]
    assert instances["test.source.origin"].value == 7  # updated, not created again
    assert kinds["test.source"].created.count("test.source.origin") == 1
    assert instances["test.relay.first"] is first and first.updates == [7]
    assert "test.relay.second" not in {t.name for t in threading.enumerate()}
    assert "test.relay.second" not in dict(graph.components())


def test_a_reload_that_does_not_load_changes_nothing(kinds, running):
    graph = running(CHAIN)
    with pytest.raises(ConfigError, match="t2.alloy"):
        graph.reload('test.source "origin" {\n  value = "seven"\n}\n', "t2.alloy")
    assert graph.order == ["test.source.origin", "test.relay.first", "test.relay.second"]
    assert kinds["test.source"].instances["test.source.origin"].value == 1
    assert graph.health("test.relay.second") == Health("healthy")


def test_a_component_that_asks_for_a_restart_is_created_again(kinds, running):
    class Restarting(kinds["test.source"]):
        def restart_needed(self, arguments: SourceArguments) -> bool:
            return arguments.value != self.value

    graph = load('test.restarting "r" {\n  value = 1\n}\n', {"test.restarting": Restarting})
    graph.start()
    try:
        old = dict(graph.components())["test.restarting.r"]
        assert graph.reload('test.restarting "r" {\n  value = 2\n}\n') == ["test.restarting.r"]
        new = dict(graph.components())["test.restarting.r"]
        assert new is not old and new.value == 2
        assert graph.reload('test.restarting "r" {\n  value = 2\n}\n') == []
    finally:
        graph.stop(timeout=1.0)
