"""`emberscope run` on the Kubernetes example of the pyroscope.ebpf page, end to end: a
loopback API server speaking list/watch, real CPU-busy processes in real cgroups with
kubelet-style paths, the real kernel sampler, and a ``pyroscope.file`` receiver in place of
``pyroscope.write``."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.pprof import read_profile, top_functions
from tests.agent import RunningAgent, run_agent, wait_for
from tests.discovery.apiserver import LoopbackApiServer, container_id, make_pod
from tests.discovery.test_containers import Cgroups, cgroup2_root

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "k8s.alloy"
pytestmark = pytest.mark.usefixtures("bpf_ready")

INTERVAL_S = 2
INTERVAL_NS = INTERVAL_S * 1_000_000_000
NODE = "emberscope-test-node"
ANNOTATION = {"pyroscope.io/service_name": "custom-name"}

# (namespace, pod, container, node, pod labels)
WEB = ("shop", "web-1", "web", NODE, {"app.kubernetes.io/name": "web", "version": "v1"})
WORKER = ("batch", "worker-1", "worker", NODE, {"app.kubernetes.io/name": "worker"})
ELSEWHERE = ("shop", "web-2", "web", "other-node", {"app.kubernetes.io/name": "web"})


def example_config(rewrite, api_server: str, output: Path) -> str:
    """The example, verbatim except ``api_server``, the receiver, and a short interval."""
    header = 'discovery.kubernetes "all_pods" {\n  role = "pod"\n'
    server = (header, header + f'  api_server = "{api_server}"\n')
    return rewrite(EXAMPLE.read_text(), "endpoint", "local_pods", output, INTERVAL_S, [server])


def pod_uid(namespace: str, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"emberscope-test/{namespace}/{name}"))


def pod_object(spec: tuple, **changes: Any) -> dict[str, Any]:
    """A pod of the real shape, with a real UUID and its container started."""
    namespace, name, container, node, labels = spec
    labels = {**labels, **changes.pop("labels", {})}
    pod = make_pod(
        name,
        namespace=namespace,
        node=node,
        containers=[{"name": container, "image": "registry.local/busy:1"}],
        labels=labels,
        **changes,
    )
    pod["metadata"]["uid"] = pod_uid(namespace, name)
    return pod


def kubelet_cgroup(spec: tuple) -> str:
    """``kubepods.slice/…/kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope``."""
    namespace, name, container, _, _ = spec
    uid = pod_uid(namespace, name).replace("-", "_")
    hex_id = container_id(name, container).removeprefix("containerd://")
    return (
        "kubepods.slice/kubepods-burstable.slice/"
        f"kubepods-burstable-pod{uid}.slice/cri-containerd-{hex_id}.scope"
    )


def service(spec: tuple) -> str:
    return f"ebpf/{spec[0]}/{spec[2]}"


def profiles(output: Path) -> dict[str, list[tuple[dict, Any]]]:
    """Every profile written so far, by its (namespace, pod) labels, in time order."""
    found: dict[str, list[tuple[dict, Any]]] = {}
    for path in output.rglob("*.pb.gz"):
        labels = json.loads(path.with_name(path.name.replace(".pb.gz", ".labels.json")).read_text())
        key = f"{labels.get('namespace')}/{labels.get('pod')}"
        found.setdefault(key, []).append((labels, read_profile(path.read_bytes())))
    for entries in found.values():
        entries.sort(key=lambda entry: entry[1].time_nanos)
    return found


def of(found: dict[str, list[tuple[dict, Any]]], spec: tuple) -> list[tuple[dict, Any]]:
    return found.get(f"{spec[0]}/{spec[1]}", [])


def ends(profile: Any) -> int:
    return profile.time_nanos + profile.duration_nanos


def run_scenario(
    agent: RunningAgent, api: LoopbackApiServer, output: Path, facts: dict[str, Any]
) -> None:
    """Pods change, the API server restarts mid-watch and a resumed watch meets 410 Gone;
    what happened when goes into ``facts``."""

    def seen(condition: Callable[[dict], bool]) -> Callable[[], bool]:
        def check() -> bool:
            assert agent.process.poll() is None, f"the agent exited: {agent.log}"
            return condition(profiles(output))

        return check

    def labelled(spec: tuple, name: str, value: str) -> Callable[[dict], bool]:
        return lambda found: any(labels.get(name) == value for labels, _ in of(found, spec))

    wait_for(
        seen(lambda found: len(of(found, WEB)) >= 2 and len(of(found, WORKER)) >= 2),
        25,
        "two profiles of each pod of this node",
    )

    # kubectl annotate (and relabel) the web pod: one MODIFIED event
    facts["patched"] = time.time_ns()
    api.apply(pod_object(WEB, labels={"version": "v2"}, annotations=ANNOTATION))
    wait_for(seen(labelled(WEB, "version", "v2")), 3 * INTERVAL_S, "the patched web pod")
    facts["patch_seen"] = time.time_ns()

    # the API server restarts mid-watch; the worker pod changes while it is away
    facts["outage_start"] = time.time_ns()
    api.stop()
    time.sleep(1)
    api.apply(pod_object(WORKER, labels={"stage": "during-outage"}))
    time.sleep(1.5)
    facts["alive_in_outage"] = agent.process.poll() is None
    facts["outage_end"] = time.time_ns()
    api.start()
    wait_for(
        seen(labelled(WORKER, "stage", "during-outage")),
        6 * INTERVAL_S,
        "the change made while the API server was away",
    )

    # 410 on resume: the history is compacted under a change no watch reports
    facts["lists_before_410"] = len(api.queries("list"))
    api.apply(pod_object(WORKER, labels={"stage": "after-410"}), record=False)
    api.compact()
    api.drop_watches()
    wait_for(
        seen(labelled(WORKER, "stage", "after-410")),
        6 * INTERVAL_S,
        "the change hidden by the compaction",
    )
    facts["lists_after_410"] = len(api.queries("list"))
    time.sleep(INTERVAL_S)

    facts["returncode"] = agent.stop()


@pytest.fixture(scope="module")
def agent_run(build_workload, example_to_files, tmp_path_factory):
    """Run the agent on the example while pods change, the API server restarts mid-watch
    and a resumed watch meets 410 Gone."""
    root = cgroup2_root()
    busy = build_workload("three_leaves")
    folder = tmp_path_factory.mktemp("k8s-agent")
    output = folder / "out"
    api = LoopbackApiServer()
    api.start()
    for spec in (WEB, WORKER, ELSEWHERE):
        api.apply(pod_object(spec))
    config = example_config(example_to_files, api.url, output)
    facts: dict[str, Any] = {"output": output, "api": api}

    cgroups = Cgroups(root)
    processes: list[subprocess.Popen] = []
    try:
        for spec in (WEB, WORKER, ELSEWHERE):
            process = subprocess.Popen([str(busy), "60"])
            processes.append(process)
            cgroups.move(process.pid, kubelet_cgroup(spec))
        facts["cgroup_lines"] = [
            Path(f"/proc/{p.pid}/cgroup").read_text().splitlines()[-1] for p in processes
        ]
        with run_agent(config, folder, environ={"HOSTNAME": NODE}) as agent:
            run_scenario(agent, api, output, facts)
        facts["log"] = agent.log
    finally:
        try:
            cgroups.close([p.pid for p in processes])
        finally:
            for process in processes:
                process.kill()
                process.wait()
            if api._server is not None:
                api.stop()
    facts["profiles"] = profiles(output)
    return facts


def test_workloads_sit_in_kubelet_style_cgroups(agent_run):
    for line, spec in zip(agent_run["cgroup_lines"], (WEB, WORKER, ELSEWHERE), strict=True):
        assert line.startswith("0::/") and line.endswith("/" + kubelet_cgroup(spec)), line


def test_profiles_carry_the_labels_of_the_examples_relabel_rules(agent_run):
    found = agent_run["profiles"]
    before = [labels for labels, p in of(found, WEB) if ends(p) < agent_run["patched"]]
    assert before
    for labels in before:
        # the example's node rule reads __meta_kubernetes_node_name, which the pod role
        # does not set (it sets __meta_kubernetes_pod_node_name): the label stays away
        assert labels == {
            "__name__": "process_cpu",
            "service_name": "ebpf/shop/web",
            "namespace": "shop",
            "pod": "web-1",
            "container": "web",
            "app_kubernetes_io_name": "web",
            "version": "v1",
        }
    first_worker = of(found, WORKER)[0][0]
    assert first_worker == {
        "__name__": "process_cpu",
        "service_name": "ebpf/batch/worker",
        "namespace": "batch",
        "pod": "worker-1",
        "container": "worker",
        "app_kubernetes_io_name": "worker",
    }
    assert {labels["service_name"] for entries in found.values() for labels, _ in entries} == {
        service(WEB),
        service(WORKER),
    }


def test_profiles_hold_the_workloads_functions(agent_run):
    for spec in (WEB, WORKER):
        _, profile = of(agent_run["profiles"], spec)[1]
        assert profile.sample
        names = {row.name for row in top_functions(profile, 20)}
        assert {"leaf_a", "leaf_b", "leaf_c", "main"} <= names


def test_a_patched_pod_relabels_a_later_intervals_profile(agent_run):
    patched = agent_run["patched"]
    web = of(agent_run["profiles"], WEB)
    after = [(labels, p) for labels, p in web if labels.get("version") == "v2"]
    assert after
    first = after[0][1]
    # a later interval: the first profile with the new labels ends after the patch, and
    # shows up within one interval plus the time to write it
    assert ends(first) >= patched
    assert agent_run["patch_seen"] - patched <= INTERVAL_NS + 1_500_000_000
    # labels are those of the target when its interval is flushed
    assert all(labels.get("version") == "v1" for labels, p in web if ends(p) < patched)
    for labels, _ in after:
        # The example's second rule always sets service_name = ebpf/<ns>/<container>, and
        # pyroscope.ebpf falls back to the pyroscope.io/service_name annotation only when
        # service_name is unset (as Alloy does): with the example verbatim, the annotation
        # cannot rename the profile.
        assert labels["service_name"] == "ebpf/shop/web"


def test_the_pod_on_another_node_is_never_requested_and_nothing_is_written(agent_run):
    api = agent_run["api"]
    assert api.queries("list") and api.queries("watch")
    for query in api.queries():
        assert query["fieldSelector"] == [f"spec.nodeName={NODE}"]
    assert {method for method, _, _ in api.requests} == {"GET"}
    assert {path for _, path, _ in api.requests} == {"/api/v1/pods"}
    # its process is busy in its own kubelet-style cgroup, yet never profiled
    assert of(agent_run["profiles"], ELSEWHERE) == []


def test_api_server_restart_and_410_crash_nothing_and_targets_recover(agent_run):
    assert agent_run["alive_in_outage"]
    start, end = agent_run["outage_start"], agent_run["outage_end"]
    for spec in (WEB, WORKER):
        # the targets stay as they were while the API server is away: sampling goes on
        entries = of(agent_run["profiles"], spec)
        assert any(start <= p.time_nanos < end and p.sample for _, p in entries), spec
        # and after both faults the pods are still profiled
        assert any(p.time_nanos > end and p.sample for _, p in entries), spec
    assert agent_run["lists_after_410"] > agent_run["lists_before_410"]
    worker = [labels for labels, _ in of(agent_run["profiles"], WORKER)]
    assert worker[-1]["stage"] == "after-410"
    assert worker[-1]["service_name"] == "ebpf/batch/worker"
    log = agent_run["log"]
    gone = log.find("discovery.kubernetes.all_pods unhealthy: cannot reach the API server")
    assert gone >= 0, log
    assert "discovery.kubernetes.all_pods healthy" in log[gone:], log  # back again
    assert "Traceback" not in log, log


def test_sigterm_stops_it_with_exit_code_0(agent_run):
    log = agent_run["log"]
    assert agent_run["returncode"] == 0, log
    assert "agent stopped" in log, log
