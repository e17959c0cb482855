"""A loopback Kubernetes API server for pods: list and chunked watch, as the real one speaks them.

Serves ``/api/v1/pods`` and ``/api/v1/namespaces/<ns>/pods``, and for kubectl the discovery
documents (``/api``, ``/apis``, ``/api/v1``), one pod by name and its JSON merge PATCH (what
``kubectl annotate`` and ``kubectl label`` send). Lists are a ``PodList`` with
``metadata.resourceVersion``; ``?watch=true`` streams newline-delimited events after the given
resourceVersion, with BOOKMARKs when asked, and an ERROR 410 event when that version has been
compacted away. ``fieldSelector`` and ``labelSelector`` are honoured, and every request's path
and query are recorded so tests can assert that filtering happened on the server.
"""

from __future__ import annotations

import copy
import hashlib
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["LoopbackApiServer", "container_id", "make_pod", "write_kubeconfig"]

_BOOKMARK_INTERVAL = 0.5


class LoopbackApiServer:
    """The pod store outlives ``stop()``, so a restart on the same port continues it."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self._cond = threading.Condition()
        self._pods: dict[tuple[str, str], dict[str, Any]] = {}
        self._events: list[tuple[int, str, dict[str, Any]]] = []
        self._version = 1
        self._oldest = 1  # watches from an older version get 410 Gone
        self._generation = 0  # bumped to end every open watch
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.tls: ssl.SSLContext | None = None  # set before start: serve HTTPS, as the real one

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self))
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self._server is not None
        self.drop_watches()
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    def apply(self, pod: dict[str, Any], *, record: bool = True) -> None:
        """Create or replace a pod; ``record=False`` changes it without a watch event."""
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        with self._cond:
            kind = "MODIFIED" if key in self._pods else "ADDED"
            self._change(key, kind, copy.deepcopy(pod), record)

    def delete(self, namespace: str, name: str, *, record: bool = True) -> None:
        with self._cond:
            self._change((namespace, name), "DELETED", self._pods[(namespace, name)], record)

    def compact(self) -> None:
        """Forget the event history, as etcd compaction does: older watches get 410."""
        with self._cond:
            self._events.clear()
            self._oldest = self._version

    def drop_watches(self) -> None:
        """Close every open watch connection without ending its chunked body."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def queries(self, kind: str = "") -> list[dict[str, list[str]]]:
        """Queries of the recorded requests; ``kind`` is ``list``, ``watch`` or empty for all."""
        return [q for (_, _, q) in self.requests if kind in ("", _request_kind(q))]

    def _change(self, key: tuple[str, str], kind: str, pod: dict[str, Any], record: bool) -> None:
        self._version += 1
        pod["metadata"]["resourceVersion"] = str(self._version)
        if kind == "DELETED":
            del self._pods[key]
        else:
            self._pods[key] = pod
        if record:
            self._events.append((self._version, kind, copy.deepcopy(pod)))
        self._cond.notify_all()

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._cond:
            pod = self._pods.get((namespace, name))
            return copy.deepcopy(pod) if pod is not None else None

    def patch_pod(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any] | None:
        """Apply a JSON merge patch (RFC 7386) and record a MODIFIED event; None if no pod."""
        with self._cond:
            pod = self._pods.get((namespace, name))
            if pod is None:
                return None
            patched = _merge_patch(copy.deepcopy(pod), patch)
            self._change((namespace, name), "MODIFIED", patched, True)
            return copy.deepcopy(patched)

    def list_pods(self, namespace: str | None, query: dict[str, list[str]]) -> dict[str, Any]:
        with self._cond:
            items = [
                copy.deepcopy(p) for p in self._pods.values() if _selected(p, namespace, query)
            ]
            version = self._version
        meta = {"resourceVersion": str(version)}
        return {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": items}

    def watch_events(self, namespace: str | None, query: dict[str, list[str]], write: Any) -> bool:
        """Stream events until the timeout; False when the connection is to be dropped."""
        since = int(_first(query, "resourceVersion") or "0")
        deadline = time.monotonic() + float(_first(query, "timeoutSeconds") or "1800")
        bookmarks = _true(_first(query, "allowWatchBookmarks"))
        with self._cond:
            generation = self._generation
            if since < self._oldest:
                write(_gone(since))
                return True
        next_bookmark = time.monotonic() + _BOOKMARK_INTERVAL
        while time.monotonic() < deadline:
            with self._cond:
                self._cond.wait(timeout=0.1)
                if self._generation != generation:
                    return False
                events = [e for e in self._events if e[0] > since]
                version = self._version
            for event_version, kind, pod in events:
                since = event_version
                if _selected(pod, namespace, query):
                    write({"type": kind, "object": pod})
            if bookmarks and time.monotonic() >= next_bookmark:
                write({"type": "BOOKMARK", "object": _bookmark(version)})
                next_bookmark = time.monotonic() + _BOOKMARK_INTERVAL
        return True


def _handler(api: LoopbackApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            api.requests.append(("GET", url.path, query))
            namespace = _namespace_of(url.path)
            if url.path in _DISCOVERY:
                self._send_json(200, _DISCOVERY[url.path])
            elif (pod_key := _pod_of(url.path)) is not None:
                pod = api.get_pod(*pod_key)
                if pod is None:
                    self._send_json(404, _NOT_FOUND)
                else:
                    self._send_json(200, pod)
            elif namespace is False:
                self._send_json(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
            elif _true(_first(query, "watch")):
                self._stream(namespace, query)
            else:
                self._send_json(200, api.list_pods(namespace, query))

        def do_PATCH(self) -> None:  # noqa: N802
            url = urlsplit(self.path)
            api.requests.append(("PATCH", url.path, parse_qs(url.query)))
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            pod_key = _pod_of(url.path)
            if pod_key is None:
                self._send_json(405, {"kind": "Status", "code": 405})
            elif self.headers.get("Content-Type") != "application/merge-patch+json":
                self._send_json(415, {"kind": "Status", "code": 415})
            else:
                pod = api.patch_pod(*pod_key, json.loads(body))
                if pod is None:
                    self._send_json(404, _NOT_FOUND)
                else:
                    self._send_json(200, pod)

        def do_POST(self) -> None:  # noqa: N802 - recorded so tests can assert there is none
            api.requests.append(("POST", self.path, {}))
            self._send_json(405, {"kind": "Status", "code": 405})

        do_PUT = do_DELETE = do_POST  # noqa: N815

        def _send_json(self, code: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _stream(self, namespace: str | None, query: dict[str, list[str]]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def write(event: dict[str, Any]) -> None:
                data = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            try:
                if api.watch_events(namespace, query, write):
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self.close_connection = True
            except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return Handler


_NOT_FOUND = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}
# What kubectl reads before it touches a resource: the legacy discovery documents.
_DISCOVERY: dict[str, dict[str, Any]] = {
    "/api": {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
    },
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
    "/api/v1": {
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [
            {
                "name": "pods",
                "singularName": "pod",
                "namespaced": True,
                "kind": "Pod",
                "verbs": ["get", "list", "watch", "patch"],
                "shortNames": ["po"],
            }
        ],
    },
}


def _pod_of(path: str) -> tuple[str, str] | None:
    """(namespace, name) of ``/api/v1/namespaces/<ns>/pods/<name>``."""
    parts = path.strip("/").split("/")
    if len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
        return parts[3], parts[5]
    return None


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = target if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _namespace_of(path: str) -> str | None | bool:
    """``None`` for every namespace, the name for a namespaced path, False for anything else."""
    parts = path.strip("/").split("/")
    if parts == ["api", "v1", "pods"]:
        return None
    if len(parts) == 5 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "pods":
        return parts[3]
    return False


def _request_kind(query: dict[str, list[str]]) -> str:
    return "watch" if _true(_first(query, "watch")) else "list"


def _first(query: dict[str, list[str]], name: str) -> str:
    return query.get(name, [""])[0]


def _true(value: str) -> bool:
    """As the apiserver parses booleans: client 33 sends ``True``."""
    return value not in ("", "false", "False", "0")


def _selected(pod: dict[str, Any], namespace: str | None, query: dict[str, list[str]]) -> bool:
    meta = pod["metadata"]
    if namespace is not None and meta["namespace"] != namespace:
        return False
    fields = {
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "status.phase": pod["status"].get("phase", ""),
    }
    return _matches(_first(query, "fieldSelector"), fields, exists=False) and _matches(
        _first(query, "labelSelector"), meta.get("labels") or {}, exists=True
    )


def _matches(selector: str, values: dict[str, str], *, exists: bool) -> bool:
    """``a=b``, ``a==b``, ``a!=b``; label selectors also ``a`` and ``!a``."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            ok = values.get(key) != value
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            ok = values.get(key) == value
        elif exists and term.startswith("!"):
            ok = term[1:] not in values
        elif exists:
            ok = term in values
        else:
            raise ValueError(f"unsupported field selector {term!r}")
        if not ok:
            return False
    return True


def _bookmark(version: int) -> dict[str, Any]:
    return {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": str(version)}}


def _gone(since: int) -> dict[str, Any]:
    message = f"too old resource version: {since}"
    status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message}
    return {"type": "ERROR", "object": {**status, "reason": "Expired", "code": 410}}


def make_pod(
    name: str,
    *,
    namespace: str = "default",
    node: str = "node-a",
    ip: str = "10.0.0.5",
    containers: list[dict[str, Any]] | None = None,
    init_containers: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A running pod of the real shape, each container started with a ``containerd://`` ID."""
    containers = containers or [{"name": "main", "image": "busybox:1.36"}]
    init_containers = init_containers or []

    def statuses(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": c["name"], "containerID": container_id(name, c["name"])} for c in items]

    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{namespace}-{name}",
            "labels": labels or {},
            "annotations": annotations or {},
        },
        "spec": {"nodeName": node, "containers": containers, "initContainers": init_containers},
        "status": {
            "phase": "Running",
            "podIP": ip,
            "hostIP": "192.168.1.10",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": statuses(containers),
            "initContainerStatuses": statuses(init_containers),
        },
    }


def container_id(pod: str, container: str) -> str:
    """A stable ``containerd://<64 hex>`` per pod and container."""
    return "containerd://" + hashlib.sha256(f"{pod}/{container}".encode()).hexdigest()


def write_kubeconfig(path: str, server: str, ca: str | None = None) -> None:
    """JSON is YAML: a kubeconfig pointing at ``server`` (trusting ``ca``) with a bearer token."""
    cluster = {"server": server, **({"certificate-authority": ca} if ca else {})}
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": "test", "user": {"token": "test-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "current-context": "test",
    }
    with open(path, "w", encoding="utf-8") as file:
        json.dump(kubeconfig, file)
