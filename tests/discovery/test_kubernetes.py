"""``discovery.kubernetes`` against a loopback API server speaking the real list/watch protocol."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from agent.config.component import ComponentOptions
from agent.discovery.kubernetes import (
    KubernetesArguments,
    KubernetesDiscovery,
    NamespaceDiscovery,
    SelectorConfig,
    Timings,
)
from tests.agent import wait_for
from tests.discovery.apiserver import LoopbackApiServer, container_id, make_pod, write_kubeconfig

FAST = Timings(backoff_initial=0.1, backoff_max=0.5, watch_read_timeout=5.0)
ANNOTATION = "__meta_kubernetes_pod_annotation_pyroscope_io_service_name"


class Recorder:
    """Collects what the component exports."""

    def __init__(self) -> None:
        self.exports: list[list[dict[str, str]]] = []

    def __call__(self, exports: dict[str, Any]) -> None:
        self.exports.append(exports["targets"])

    @property
    def targets(self) -> list[dict[str, str]]:
        return self.exports[-1] if self.exports else []


@pytest.fixture
def server() -> Iterator[LoopbackApiServer]:
    api = LoopbackApiServer()
    api.start()
    yield api
    if api._server is not None:
        api.stop()


def start(
    tmp_path: Any, server: LoopbackApiServer, **arguments: Any
) -> tuple[KubernetesDiscovery, Recorder, threading.Event]:
    kubeconfig = str(tmp_path / "kubeconfig")
    write_kubeconfig(kubeconfig, server.url)
    recorder = Recorder()
    options = ComponentOptions("discovery.kubernetes.pods", recorder, {}, threading.Lock())
    args = KubernetesArguments(role="pod", kubeconfig_file=kubeconfig, **arguments)
    component = KubernetesDiscovery(options, args, timings=FAST)
    stop = threading.Event()
    threading.Thread(target=component.run, args=(stop,), daemon=True).start()
    return component, recorder, stop


def names(recorder: Recorder) -> set[str]:
    return {t["__meta_kubernetes_pod_name"] for t in recorder.targets}


def node_selector(node: str = "node-a") -> list[SelectorConfig]:
    return [SelectorConfig(role="pod", field=f"spec.nodeName={node}")]


def test_initial_list_gives_targets_with_prometheus_labels(tmp_path, server):
    app = {
        "name": "app",
        "image": "app:1",
        "ports": [
            {"name": "http", "containerPort": 8080, "protocol": "TCP"},
            {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
        ],
    }
    sidecar = {"name": "sidecar", "image": "envoy:1"}
    init = {"name": "setup", "image": "busybox:1.36"}
    pod = make_pod(
        "web-1",
        namespace="shop",
        containers=[app, sidecar],
        init_containers=[init],
        labels={"app.kubernetes.io/name": "web"},
        annotations={"pyroscope.io/service_name": "shop-web"},
    )
    pod["metadata"]["ownerReferences"] = [
        {"kind": "ReplicaSet", "name": "web-5d9", "controller": True}
    ]
    server.apply(pod)
    _, recorder, stop = start(tmp_path, server)
    wait_for(lambda: recorder.targets)
    stop.set()
    common = {
        "__meta_kubernetes_namespace": "shop",
        "__meta_kubernetes_pod_name": "web-1",
        "__meta_kubernetes_pod_ip": "10.0.0.5",
        "__meta_kubernetes_pod_ready": "true",
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_node_name": "node-a",
        "__meta_kubernetes_pod_host_ip": "192.168.1.10",
        "__meta_kubernetes_pod_uid": "uid-shop-web-1",
        "__meta_kubernetes_pod_controller_kind": "ReplicaSet",
        "__meta_kubernetes_pod_controller_name": "web-5d9",
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "web",
        "__meta_kubernetes_pod_labelpresent_app_kubernetes_io_name": "true",
        ANNOTATION: "shop-web",
        "__meta_kubernetes_pod_annotationpresent_pyroscope_io_service_name": "true",
    }

    def container(name: str, image: str, init: str) -> dict[str, str]:
        return {
            **common,
            "__meta_kubernetes_pod_container_name": name,
            "__meta_kubernetes_pod_container_id": container_id("web-1", name),
            "__meta_kubernetes_pod_container_image": image,
            "__meta_kubernetes_pod_container_init": init,
        }

    def port(name: str, number: int) -> dict[str, str]:
        return {
            "__address__": f"10.0.0.5:{number}",
            "__meta_kubernetes_pod_container_port_name": name,
            "__meta_kubernetes_pod_container_port_number": str(number),
            "__meta_kubernetes_pod_container_port_protocol": "TCP",
        }

    assert recorder.targets == [
        {**container("app", "app:1", "false"), **port("http", 8080)},
        {**container("app", "app:1", "false"), **port("metrics", 9090)},
        {**container("sidecar", "envoy:1", "false"), "__address__": "10.0.0.5"},
        {**container("setup", "busybox:1.36", "true"), "__address__": "10.0.0.5"},
    ]
    assert container_id("web-1", "app").startswith("containerd://")


def test_selectors_are_sent_to_the_server(tmp_path, server):
    server.apply(make_pod("here", node="node-a", labels={"tier": "web"}))
    server.apply(make_pod("elsewhere", node="node-b", labels={"tier": "web"}))
    selectors = [SelectorConfig(role="pod", field="spec.nodeName=node-a", label="tier=web")]
    component, recorder, stop = start(tmp_path, server, selectors=selectors)
    wait_for(lambda: server.queries("watch"))
    stop.set()
    assert names(recorder) == {"here"}
    assert server.queries("list") and server.queries("watch")
    for query in server.queries():
        assert query["fieldSelector"] == ["spec.nodeName=node-a"]
        assert query["labelSelector"] == ["tier=web"]
    watch = server.queries("watch")[0]
    assert watch["allowWatchBookmarks"][0].lower() == "true"
    assert "timeoutSeconds" in watch and "resourceVersion" in watch
    assert {method for method, _, _ in server.requests} == {"GET"}
    assert component.health().state == "healthy"


def test_namespaces_are_listed_by_path(tmp_path, server):
    server.apply(make_pod("a", namespace="one"))
    server.apply(make_pod("b", namespace="two"))
    server.apply(make_pod("c", namespace="three"))
    _, recorder, stop = start(tmp_path, server, namespaces=NamespaceDiscovery(names=["one", "two"]))
    wait_for(lambda: names(recorder) == {"a", "b"})
    stop.set()
    paths = {path for _, path, _ in server.requests}
    assert paths == {"/api/v1/namespaces/one/pods", "/api/v1/namespaces/two/pods"}


def test_added_modified_deleted_pods_update_targets(tmp_path, server):
    server.apply(make_pod("first"))
    _, recorder, stop = start(tmp_path, server, selectors=node_selector())
    wait_for(lambda: names(recorder) == {"first"})
    server.apply(make_pod("second"))
    server.apply(make_pod("other-node", node="node-b"))
    wait_for(lambda: names(recorder) == {"first", "second"})
    renamed = make_pod("first", annotations={"pyroscope.io/service_name": "renamed"})
    server.apply(renamed)
    wait_for(lambda: any(t.get(ANNOTATION) == "renamed" for t in recorder.targets))
    server.delete("default", "second")
    wait_for(lambda: names(recorder) == {"first"})
    count = len(recorder.exports)
    time.sleep(1.2)  # bookmarks arrive meanwhile; unchanged targets are not exported again
    stop.set()
    assert len(recorder.exports) == count


def test_410_gone_relists_and_catches_up(tmp_path, server):
    server.apply(make_pod("kept"))
    server.apply(make_pod("deleted"))
    _, recorder, stop = start(tmp_path, server, selectors=node_selector())
    wait_for(lambda: names(recorder) == {"kept", "deleted"})
    lists = len(server.queries("list"))
    server.delete("default", "deleted", record=False)
    server.apply(make_pod("added"), record=False)
    server.compact()
    server.drop_watches()
    wait_for(lambda: names(recorder) == {"kept", "added"})
    stop.set()
    assert len(server.queries("list")) == lists + 1


def test_api_server_outage_keeps_targets_then_catches_up(tmp_path, server):
    server.apply(make_pod("kept"))
    server.apply(make_pod("deleted"))
    component, recorder, stop = start(tmp_path, server, selectors=node_selector())
    wait_for(lambda: names(recorder) == {"kept", "deleted"})
    before = list(recorder.targets)
    server.stop()
    wait_for(lambda: component.health().state == "unhealthy")
    assert "cannot reach the API server" in component.health().message
    server.delete("default", "deleted")
    server.apply(make_pod("added"))
    time.sleep(2)
    assert recorder.targets == before
    server.start()
    wait_for(lambda: names(recorder) == {"kept", "added"}, timeout=3)
    wait_for(lambda: component.health().state == "healthy")
    stop.set()


def test_other_roles_are_unhealthy(server):
    recorder = Recorder()
    options = ComponentOptions("discovery.kubernetes.nodes", recorder, {}, threading.Lock())
    component = KubernetesDiscovery(
        options, KubernetesArguments(role="node", api_server=server.url)
    )
    stop = threading.Event()
    threading.Thread(target=component.run, args=(stop,), daemon=True).start()
    wait_for(lambda: component.health().state == "unhealthy")
    stop.set()
    assert component.health().message == "role node is not supported yet"
    assert component.exports() == {"targets": []}
    assert server.requests == []


def test_a_list_answer_of_an_unexpected_shape_is_shown_and_the_watch_goes_on(
    tmp_path, server, monkeypatch
):
    """A PodList without metadata (a proxy's answer, a server bug) breaks the pod
    watch's reading: it is shown in health, and the watch starts again."""
    server.apply(make_pod("web"))
    answers = []
    real_list = LoopbackApiServer.list_pods

    def list_pods(self, namespace, query):
        body = real_list(self, namespace, query)
        answers.append(body)
        if len(answers) == 1:
            del body["metadata"]
        return body

    monkeypatch.setattr(LoopbackApiServer, "list_pods", list_pods)
    component, recorder, stop = start(tmp_path, server)
    wait_for(lambda: len(answers) >= 1)
    wait_for(lambda: names(recorder) == {"web"}, timeout=5)
    assert len(answers) >= 2  # listed again after the bad answer
    wait_for(lambda: component.health().state == "healthy")
    stop.set()
