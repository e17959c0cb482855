"""The component graph: load and check a configuration, then run its components.

    graph = Graph.load(Path("agent.alloy"), kinds)   # parse, check, decode: nothing runs
    graph.start()                                    # create in dependency order, run each
    ...
    graph.reload(Path("agent.alloy"))                # apply a new configuration in place
    graph.stop()                                     # stop, join in reverse order

A component reads another's exports through references such as
``discovery.relabel.local_pods.output``; they make the graph, and must not form
a cycle. When a component calls ``on_exports``, one worker thread re-evaluates
the arguments of every component that references it and calls ``update``.

Stopping goes in reverse dependency order, one component at a time, so that a
producer's last profiles reach receivers that are still running.
"""

from __future__ import annotations

import dataclasses
import functools
import heapq
import logging
import os
import threading
import time
import typing
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from agent.config.component import ComponentOptions, Health
from agent.config.decode import alloy_type, decode
from agent.config.evaluate import UNKNOWN, Reference, Scope, references, unknown
from agent.config.lexer import decode_source, error_at
from agent.config.parser import Attribute, Block, Expr, Statement, parse
from agent.errors import ConfigError
from agent.supervise import SupervisedThread

__all__ = ["Graph"]

_RUN_FAILED = "run failed"

log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class _Node:
    """One component: its declaration, and once started, its running state."""

    id: str
    kind: type
    block: Block
    index: int  # declaration order, which breaks ties in the dependency order
    dependencies: frozenset[str] = frozenset()
    arguments: Any = None
    component: Any = None
    thread: SupervisedThread | None = None
    failure: Health | None = None  # set by the graph: evaluation, update or run failed
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)


class Graph:
    """A checked configuration: components in dependency order, ready to start."""

    def __init__(
        self,
        nodes: list[_Node],
        environ: Mapping[str, str],
        registry: CollectorRegistry | None = None,
        shared: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
        kinds: Mapping[str, type] | None = None,
        blocks: Mapping[str, type] | None = None,
    ) -> None:
        self._nodes = nodes
        self.settings: Mapping[str, Any] = settings or {}
        self._kinds = kinds or {}
        self._blocks = blocks or {}
        self._by_id = {node.id: node for node in nodes}
        self._environ = environ
        self._stop = threading.Event()
        self._changed: set[str] = set()
        self._announced: dict[str, dict[str, Any]] = {}  # exports passed to on_exports
        self._wakeup = threading.Condition()
        self._worker: threading.Thread | None = None
        self._shared: dict[str, Any] = dict(shared or {})
        self._shared_lock = threading.Lock()
        self._registry = registry
        self._changing = threading.RLock()  # one reload or re-evaluation at a time
        self.stop_timeout = 10.0  # see ComponentOptions.stop_timeout
        self._stop_started = 0.0  # monotonic: when the last stop of components began

    @classmethod
    def load(
        cls,
        source: str | os.PathLike[str],
        kinds: Mapping[str, type],
        *,
        environ: Mapping[str, str] | None = None,
        filename: str = "<config>",
        registry: CollectorRegistry | None = None,
        shared: Mapping[str, Any] | None = None,
        blocks: Mapping[str, type] | None = None,
    ) -> Graph:
        """Parse and check a configuration: a path to read, or (a ``str``) the text itself.

        ``kinds`` maps component names (``"pyroscope.ebpf"``) to classes with an
        ``Arguments`` dataclass. ``blocks`` maps the names of unlabelled blocks
        that configure the agent itself (``"logging"``) to their dataclass; each
        decoded block, or its defaults when absent, is in ``settings``.
        ``environ`` is what ``sys.env`` reads (``os.environ`` when omitted);
        components register their metrics in ``registry``; ``shared`` starts the
        components' ``shared`` dictionary (what the agent hands every component).
        Raises ConfigError; nothing is started.
        """
        if isinstance(source, os.PathLike):
            filename = os.fspath(source)
            source = _read(Path(source))
        blocks = blocks or {}
        file = parse(source, filename)
        declared = [s for s in file.body if not (isinstance(s, Block) and s.name in blocks)]
        ordered = _sort(_declare(declared, kinds))
        environ = os.environ if environ is None else environ
        scope = Scope({node.id: _unknown_exports(node.kind) for node in ordered}, environ)
        settings = _decode_settings(file.body, blocks, scope)
        graph = cls(ordered, environ, registry, shared, settings, kinds, blocks)
        for node in ordered:
            node.arguments = decode(node.block, node.kind.Arguments, scope)
        _check_together(ordered)
        return graph

    @property
    def order(self) -> list[str]:
        """Component ids in dependency order: each after every component it references."""
        return [node.id for node in self._nodes]

    def arguments(self, component_id: str) -> Any:
        """The arguments a component was last given; at load, unknown exports read as empty."""
        return self._by_id[component_id].arguments

    def components(self) -> list[tuple[str, Any]]:
        """(id, component) of every created component, in dependency order."""
        return [(node.id, node.component) for node in self._nodes if node.component is not None]

    @property
    def started(self) -> bool:
        """Whether every component has been created and runs (what ``/-/ready`` reports)."""
        return self._worker is not None

    def health(self, component_id: str) -> Health:
        """The graph's verdict when it failed the component, else the component's own."""
        node = self._by_id[component_id]
        if node.failure is not None:
            return node.failure
        if node.component is None:
            return Health("unknown", "not started")
        return node.component.health()

    def start(self) -> None:
        """Create every component in dependency order and run each in its own thread.

        If one cannot be created, those already running are stopped and the error raised.
        A graph starts once.
        """
        if self._stop.is_set() or self._worker is not None:
            raise RuntimeError("a graph can be started only once; load a new one")
        try:
            for node in self._nodes:
                self._start_node(node)
        except BaseException:
            self.stop()
            raise
        self._worker = threading.Thread(target=self._reevaluate_loop, name="config-graph")
        self._worker.daemon = True
        self._worker.start()

    def stop(self, timeout: float = 10.0) -> list[str]:
        """Stop the components one by one in reverse dependency order, each joined
        before the next is stopped; return the ids still running after ``timeout``."""
        self._stop.set()
        with self._wakeup:
            self._wakeup.notify_all()
        deadline = time.monotonic() + timeout
        with self._changing:
            stuck = self._stop_nodes(reversed(self._nodes), deadline)
        if self._worker is not None:
            self._worker.join(max(0.0, deadline - time.monotonic()))
            if self._worker.is_alive():
                stuck.append("config-graph")
        return stuck

    def reload(self, source: str | os.PathLike[str], filename: str = "<config>") -> list[str]:
        """Apply a new configuration to the running graph; return the ids started anew.

        Raises ConfigError, changing nothing, when the new one does not load.
        Components whose id and kind stay are kept and given their new arguments
        through ``update``, unless ``restart_needed(arguments)`` says they must be
        created again; the others are stopped, in reverse dependency order, before
        the new ones start. A component that fails to start is marked unhealthy.
        """
        loaded = Graph.load(
            source, self._kinds, environ=self._environ, filename=filename, blocks=self._blocks
        )
        with self._changing:
            if self._stop.is_set() or self._worker is None:
                raise RuntimeError("only a running graph can be reloaded")
            kept = self._matching_nodes(loaded._nodes)
            leaving = [node for node in reversed(self._nodes) if kept.get(node.id) is not node]
            self._stop_nodes(leaving, time.monotonic() + self.stop_timeout)
            self.settings = loaded.settings
            self._nodes = [kept.get(node.id, node) for node in loaded._nodes]
            self._by_id = {node.id: node for node in self._nodes}
            with self._wakeup:
                for node in leaving:
                    self._announced.pop(node.id, None)
            started = []
            for node in self._nodes:
                if node.component is None:
                    started.append(node.id)
                    self._start_or_mark(node)
                else:
                    self._reevaluate(node)
        return started

    def _matching_nodes(self, nodes: list[_Node]) -> dict[str, _Node]:
        """The running nodes to keep for ``nodes`` of a new configuration, by id, each
        given its new declaration: same id, same kind, and no restart asked for."""
        kept = {}
        for new in nodes:
            old = self._by_id.get(new.id)
            if old is None or old.kind is not new.kind or old.component is None:
                continue
            restart_needed = getattr(old.component, "restart_needed", None)
            if restart_needed is not None and restart_needed(new.arguments):
                log.info("component %s is created again for its new arguments", new.id)
                continue
            old.block, old.index, old.dependencies = new.block, new.index, new.dependencies
            kept[new.id] = old
        return kept

    def _stop_nodes(self, nodes: Iterable[_Node], deadline: float) -> list[str]:
        self._stop_started = time.monotonic()
        stuck = []
        for node in nodes:
            node.stop.set()
            if node.thread is None:
                continue
            node.thread.join(max(0.0, deadline - time.monotonic()))
            if node.thread.is_alive():
                log.warning("%s did not stop in time", node.id)
                stuck.append(node.id)
        return stuck

    def _start_or_mark(self, node: _Node) -> None:
        try:
            self._start_node(node)
        except Exception as exc:  # the other components keep running
            log.error("component %s cannot start: %s", node.id, exc)
            node.failure = Health("unhealthy", f"cannot start: {exc}", time.time())

    def _start_node(self, node: _Node) -> None:
        arguments = decode(node.block, node.kind.Arguments, self._scope())
        on_exports = functools.partial(self._on_exports, node.id)
        options = ComponentOptions(
            node.id,
            on_exports,
            self._shared,
            self._shared_lock,
            self._registry,
            self.stop_timeout,
            lambda: self._stop_started,
        )
        node.component = node.kind(options, arguments)
        node.arguments = arguments
        node.thread = SupervisedThread(
            node.id,
            functools.partial(self._run, node),
            on_crash=functools.partial(self._on_crash, node),
            stop=node.stop,
        )
        node.thread.start()

    def _run(self, node: _Node, stop: threading.Event) -> None:
        if node.failure is not None and node.failure.message.startswith(_RUN_FAILED):
            node.failure = None  # running again after a crash: its own health speaks
        node.component.run(stop)
        if not stop.is_set():
            log.info("component %s exited", node.id)

    def _on_crash(self, node: _Node, exc: BaseException) -> None:
        """One component's failure must not take the agent down: it runs again after a backoff."""
        node.failure = Health("unhealthy", f"{_RUN_FAILED}: {exc}; restarting", time.time())

    def _scope(self) -> Scope:
        """Exports of created components (as last announced); UNKNOWN for the others."""
        with self._wakeup:
            announced = dict(self._announced)
        exports = {
            node.id: announced[node.id] if node.id in announced else node.component.exports()
            for node in self._nodes
            if node.component is not None
        }
        unknown = {
            node.id: _unknown_exports(node.kind) for node in self._nodes if node.component is None
        }
        return Scope(exports | unknown, self._environ)

    def _on_exports(self, component_id: str, exports: dict[str, Any]) -> None:
        with self._wakeup:
            self._announced[component_id] = dict(exports)
            self._changed.add(component_id)
            self._wakeup.notify()

    def _reevaluate_loop(self) -> None:
        """The graph's worker: serializes updates; a burst of changes is handled once."""
        while True:
            with self._wakeup:
                while not self._changed and not self._stop.is_set():
                    self._wakeup.wait()
                if self._stop.is_set():
                    return
                changed, self._changed = self._changed, set()
            with self._changing:
                for node in self._nodes:
                    if node.dependencies & changed and node.component is not None:
                        self._reevaluate(node)

    def _reevaluate(self, node: _Node) -> None:
        """Decode the arguments again; on failure keep the old ones and mark the component."""
        try:
            arguments = decode(node.block, node.kind.Arguments, self._scope())
        except ConfigError as exc:
            log.error("component %s: %s", node.id, exc)
            node.failure = Health("unhealthy", str(exc), time.time())
            return
        node.failure = None
        if arguments == node.arguments:
            return
        try:
            node.component.update(arguments)
        except Exception as exc:  # a component's bug must not stop the other updates
            log.exception("component %s rejected its new arguments", node.id)
            node.failure = Health("unhealthy", f"update failed: {exc}", time.time())
            return
        node.arguments = arguments


def _read(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from exc
    return decode_source(data, str(path))


def _check_together(nodes: list[_Node]) -> None:
    """Let each kind that declares ``check_together`` see the arguments of all its
    components at once (id -> arguments): those that must agree with one another."""
    by_kind: dict[type, dict[str, Any]] = {}
    for node in nodes:
        by_kind.setdefault(node.kind, {})[node.id] = node.arguments
    for kind, arguments in by_kind.items():
        check = getattr(kind, "check_together", None)
        if check is not None:
            check(arguments)


def _decode_settings(
    body: tuple[Statement, ...], blocks: Mapping[str, type], scope: Scope
) -> dict[str, Any]:
    """The agent's own blocks (``logging``): each at most once, unlabelled, referencing
    no component; defaults for those absent."""
    found: dict[str, Block] = {}
    for statement in body:
        if not isinstance(statement, Block) or statement.name not in blocks:
            continue
        if statement.label is not None:
            raise error_at(statement.pos, f'block "{statement.name}" requires empty label')
        if statement.name in found:
            first = found[statement.name].pos
            raise error_at(statement.pos, f"block {statement.name} already declared at {first}")
        for expr in _expressions(statement.body):
            references(expr, ())  # names nothing but the standard library
        found[statement.name] = statement
    return {
        name: decode(found[name], arguments, scope) if name in found else arguments()
        for name, arguments in blocks.items()
    }


def _declare(body: list[Statement], kinds: Mapping[str, type]) -> list[_Node]:
    """One node per top-level block, with its references checked."""
    nodes: dict[str, _Node] = {}
    for index, statement in enumerate(body):
        node = _declare_one(statement, kinds, index)
        if node.id in nodes:
            first = nodes[node.id].block.pos
            raise error_at(statement.pos, f"block {node.id} already declared at {first}")
        nodes[node.id] = node
    for node in nodes.values():
        found = [ref for expr in _expressions(node.block.body) for ref in references(expr, nodes)]
        for reference in found:
            _check_export(reference, nodes[reference.component_id].kind)
        node.dependencies = frozenset(ref.component_id for ref in found)
    return list(nodes.values())


def _declare_one(statement: Statement, kinds: Mapping[str, type], index: int) -> _Node:
    if isinstance(statement, Attribute):
        raise error_at(statement.pos, f'unrecognized attribute name "{statement.name}"')
    kind = kinds.get(statement.name)
    if kind is None:
        message = f'cannot find the definition of component name "{statement.name}"'
        raise error_at(statement.pos, message)
    if not statement.label:
        raise error_at(statement.pos, f'block "{statement.name}" requires non-empty label')
    return _Node(f"{statement.name}.{statement.label}", kind, statement, index)


def _expressions(body: tuple[Statement, ...]) -> Iterator[Expr]:
    for statement in body:
        if isinstance(statement, Attribute):
            yield statement.value
        else:
            yield from _expressions(statement.body)


def _check_export(reference: Reference, kind: type) -> None:
    """A kind that declares an ``Exports`` dataclass can only be read for its fields."""
    exports = getattr(kind, "Exports", None)
    if exports is None or not reference.fields:
        return
    name = reference.fields[0]
    if name not in {field.name for field in dataclasses.fields(exports)}:
        raise error_at(reference.pos, f'field "{name}" does not exist')


def _unknown_exports(kind: type) -> Any:
    """The exports of a component not created yet: each of its declared ``Exports``
    unknown but of its type, so that a reference is type-checked at load."""
    types = _export_types(kind)
    if types is None:
        return UNKNOWN
    return {name: unknown(type_name) for name, type_name in types}


@functools.cache
def _export_types(kind: type) -> tuple[tuple[str, str], ...] | None:
    """(name, Alloy type) of each declared export of ``kind``; None where it declares none.
    Read once per kind: the graph asks again at every re-evaluation."""
    exports = getattr(kind, "Exports", None)
    if exports is None:
        return None
    hints = typing.get_type_hints(exports)
    return tuple((f.name, alloy_type(hints[f.name])) for f in dataclasses.fields(exports))


def _sort(nodes: list[_Node]) -> list[_Node]:
    """Dependency order (Kahn's algorithm, declaration order among equals); a cycle is an error."""
    by_id = {node.id: node for node in nodes}
    waiting = {node.id: set(node.dependencies) for node in nodes}
    dependents: dict[str, list[str]] = {node.id: [] for node in nodes}
    for node in nodes:
        for dependency in node.dependencies:
            dependents[dependency].append(node.id)
    ready = [(node.index, node.id) for node in nodes if not node.dependencies]
    heapq.heapify(ready)
    ordered: list[_Node] = []
    while ready:
        _, current = heapq.heappop(ready)
        ordered.append(by_id[current])
        for dependent in dependents[current]:
            waiting[dependent].discard(current)
            if not waiting[dependent]:
                heapq.heappush(ready, (by_id[dependent].index, dependent))
    if len(ordered) < len(nodes):
        cycle = _find_cycle([node for node in nodes if waiting[node.id]], by_id)
        names = ", ".join(node.id for node in cycle)
        raise error_at(cycle[0].block.pos, f"cycle: {names}")
    return ordered


def _find_cycle(blocked: list[_Node], by_id: dict[str, _Node]) -> list[_Node]:
    """Follow references from the first blocked component until one repeats."""
    blocked_ids = {node.id for node in blocked}
    path: list[_Node] = []
    current = blocked[0]
    while current not in path:
        path.append(current)
        following = sorted(
            (by_id[dep] for dep in current.dependencies if dep in blocked_ids),
            key=lambda node: node.index,
        )
        current = following[0]
    cycle = path[path.index(current) :]
    start = min(range(len(cycle)), key=lambda i: cycle[i].index)
    return cycle[start:] + cycle[:start]
