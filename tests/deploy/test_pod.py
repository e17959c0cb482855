"""The chart's DaemonSet pod, run here: real helm renders it, podman runs the built image with
the pod template translated field by field (tests/deploy/pod.py), in a network namespace of
its own that holds a loopback API server (HTTPS, found through in-cluster config) and a
loopback Pyroscope. A CPU-busy process in a kubelet-style cgroup on the host is profiled and
its profiles arrive named from its pod's annotation; privileged, and in least privilege."""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from agent.pprof import read_profile, top_functions
from tests.agent import free_port, wait_for
from tests.cli.test_profile import RATE, perf_report_shares
from tests.deploy.chart import KUBECTL, ROOT, container, one, pod_spec, render
from tests.deploy.pod import IMAGE, NetNs, build_image, image_version, podman_run_args
from tests.discovery.apiserver import LoopbackApiServer, write_kubeconfig
from tests.discovery.test_containers import Cgroups, cgroup2_root
from tests.discovery.test_kubernetes_agent import kubelet_cgroup, pod_object
from tests.write.test_pyroscope import Receiver, make_ca, make_certificate, serve

pytestmark = [pytest.mark.usefixtures("bpf_ready"), pytest.mark.slow]

NODE = "emberscope-pod-node"
WEB = ("shop", "web-1", "web", NODE, {"app.kubernetes.io/name": "web"})
NAMED = {"pyroscope.io/service_name": "shop-web"}
INTERVAL_S = 2
LEAVES = {"leaf_a", "leaf_b", "leaf_c"}


@dataclass
class Loopback:
    netns: NetNs
    api: LoopbackApiServer
    pyroscope: Receiver
    ca: Path


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (make install-test installs it)")
    return build_image()


@pytest.fixture(scope="module")
def loopback(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loopback]:
    pki = tmp_path_factory.mktemp("pki")
    make_ca(pki, "ca")
    make_certificate(pki, "ca", "server", "serverAuth")
    netns = NetNs()
    api = LoopbackApiServer()
    api.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    api.tls.load_cert_chain(pki / "server.pem", pki / "server.key")
    receivers = serve()
    try:
        netns.call(api.start)
        yield Loopback(netns, api, netns.call(next, receivers), pki / "ca.pem")
    finally:
        next(receivers, None)
        if api._server is not None:
            api.stop()
        netns.close()


@pytest.fixture(scope="module")
def workload(build_workload, loopback: Loopback) -> Iterator[subprocess.Popen]:
    """The busy process of pod shop/web-1, in that pod's kubelet-style cgroup on this host."""
    cgroups = Cgroups(cgroup2_root())
    process = subprocess.Popen([str(build_workload("three_leaves")), "600"])
    try:
        cgroups.move(process.pid, kubelet_cgroup(WEB))
        loopback.api.apply(pod_object(WEB, annotations=NAMED))
        yield process
    finally:
        try:
            cgroups.close([process.pid])
        finally:
            process.kill()
            process.wait()


def pod_config(pyroscope_url: str) -> str:
    """The chart's default configuration without its service_name rule, so that profiles are
    named from the pods' pyroscope.io/service_name annotation, collecting every 2 s."""
    config = (ROOT / "deploy" / "k8s.alloy").read_text()
    rule = re.compile(r"  // service_name = .*?\n  }\n\n", re.S)
    assert len(rule.findall(config)) == 1
    config = rule.sub("", config)
    targets = "  targets    = discovery.relabel.local_pods.output\n"
    for old, new in [
        ('url = "http://pyroscope:4040"', f'url = "{pyroscope_url}"'),
        (targets, targets + f'  collect_interval = "{INTERVAL_S}s"\n'),
    ]:
        assert config.count(old) == 1, old
        config = config.replace(old, new)
    return config


class Pod:
    """The DaemonSet's pod on this node, as podman runs it."""

    def __init__(self, image: str, loopback: Loopback, values: dict, files: Path) -> None:
        """``values`` over the image built and the configuration of pod_config."""
        self.loopback = loopback
        rendered = render(
            {
                "image": {"repository": IMAGE, "tag": image_version(), "pullPolicy": "Never"},
                "config": pod_config(loopback.pyroscope.url),
                "spool": {"hostPath": ""},  # an emptyDir: nothing written to this host
                **values,
            }
        )
        self.spec = pod_spec(rendered)
        self.port = container(rendered)["ports"][0]["containerPort"]
        self.host_network = self.spec.get("hostNetwork", False)
        config_map = one(rendered, "ConfigMap")
        account = files / "serviceaccount"
        account.mkdir(parents=True)
        (account / "token").write_text("pod-token")
        (account / "namespace").write_text("emberscope")
        shutil.copy(loopback.ca, account / "ca.crt")
        self.name = f"emberscope-pod-{uuid.uuid4().hex[:8]}"
        self.args = podman_run_args(
            self.spec,
            {config_map["metadata"]["name"]: config_map["data"]},
            files,
            downward={
                "spec.nodeName": NODE,
                "metadata.name": self.name,
                "metadata.namespace": "emberscope",
            },
            service_env={
                "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                "KUBERNETES_SERVICE_PORT": str(loopback.api.port),
            },
            network="host" if self.host_network else f"ns:{loopback.netns.path}",
        )
        assert image == f"{IMAGE}:{image_version()}"

    def start(self) -> None:
        podman("run", "-d", "--name", self.name, *self.args)

    def stop(self) -> str:
        """Stop and remove the container; its log."""
        podman("stop", "-t", "10", self.name)
        log = podman("logs", self.name)
        podman("rm", "-f", self.name)
        return log

    def get(self, path: str) -> httpx.Response:
        url = f"http://127.0.0.1:{self.port}{path}"
        if self.host_network:
            return httpx.get(url, timeout=5)
        return self.loopback.netns.call(lambda: httpx.get(url, timeout=5))

    def running(self) -> bool:
        state = podman("inspect", "--format", "{{.State.Running}}", self.name)
        assert state == "true", podman("logs", self.name)
        return True


def podman(*args: str) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"podman {args[0]}: {done.stderr}"
    return done.stdout.strip() + done.stderr.strip() if args[0] == "logs" else done.stdout.strip()


def named_profiles(receiver: Receiver, service_name: str, since: int = 0) -> list:
    """The profiles pushed with ``service_name`` whose interval ends after ``since``."""
    found = []
    for received in list(receiver.requests):
        for series in received.request.series:
            labels = {label.name: label.value for label in series.labels}
            if labels.get("service_name") != service_name:
                continue
            for sample in series.samples:
                profile = read_profile(sample.raw_profile)
                if profile.time_nanos + profile.duration_nanos > since:
                    found.append((labels, profile))
    return found


def run_and_check(pod: Pod, loopback: Loopback) -> str:
    """Run the pod until two profiles of the annotated workload arrive; its log."""
    started = time.time_ns()
    pod.start()
    try:
        wait_for(
            lambda: (
                pod.running() and len(named_profiles(loopback.pyroscope, "shop-web", started)) >= 2
            ),
            60,
            "two profiles named shop-web from the pod",
        )
        assert pod.get("/-/ready").status_code == 200
        assert pod.get("/-/live").status_code == 200
        labels, profile = named_profiles(loopback.pyroscope, "shop-web", started)[-1]
    finally:
        log = pod.stop()
    assert labels["namespace"] == "shop" and labels["pod"] == "web-1", labels
    assert LEAVES <= {row.name for row in top_functions(profile, 20)}, log
    assert "Traceback" not in log and "level=WARNING" not in log, log
    return log


def test_the_privileged_pod_profiles_the_annotated_workload(image, loopback, workload, tmp_path):
    pod = Pod(image, loopback, {"security": {"privileged": True}}, tmp_path)
    assert pod.spec["hostPID"] is True
    assert "--privileged" in pod.args
    run_and_check(pod, loopback)
    lists = [q for q in loopback.api.queries("list")]
    assert lists and all(q["fieldSelector"] == [f"spec.nodeName={NODE}"] for q in lists)


def can_grant_sys_resource() -> bool:
    """Whether this test's root may give CAP_SYS_RESOURCE (number 24) to a container."""
    line = next(
        x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("CapBnd")
    )
    return bool(int(line.split()[1], 16) >> 24 & 1)


def test_the_least_privilege_pod_profiles_as_the_privileged_one(
    image, loopback, workload, tmp_path
):
    listed = yaml.safe_load((ROOT / "deploy/helm/emberscope/values.yaml").read_text())
    capabilities = listed["security"]["capabilities"]
    # This machine's root has no CAP_SYS_RESOURCE to give (a kernel of 5.11 or later does not
    # need it: BPF memory is charged to the cgroup, not RLIMIT_MEMLOCK).
    granted = [cap for cap in capabilities if can_grant_sys_resource() or cap != "SYS_RESOURCE"]
    pod = Pod(
        image, loopback, {"security": {"privileged": False, "capabilities": granted}}, tmp_path
    )
    assert "--privileged" not in pod.args and "--cap-drop=ALL" in pod.args
    run_and_check(pod, loopback)


def test_the_image_profiles_a_host_process_as_perf_record_does(image, build_workload, tmp_path):
    """`emberscope profile --pid` from inside the container (privileged, host PID namespace)
    against `perf record -p` on the same process while both sample it."""
    seconds = 12
    busy = subprocess.Popen([str(build_workload("three_leaves")), "60"])
    out = tmp_path / "out"
    out.mkdir()
    run = [
        *("run", "--rm", "--runtime", "runc", "--cgroup-manager", "cgroupfs"),
        *("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", "--network=none"),
        *("--privileged", "--pid=host", "--volume", f"{out}:/out"),
        *("--volume", "/sys/kernel/btf:/sys/kernel/btf:ro"),
        *(image, "profile", "--pid", str(busy.pid), "--sample-rate", RATE),
        *("--duration", f"{seconds}s", "--output", "/out/busy.pb.gz"),
    ]
    perf = ["perf", "record", "-q", "-F", RATE, "-g", "-p", str(busy.pid), "-o"]
    try:
        ours = subprocess.Popen(["podman", *run], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(3)  # the agent's BPF program is loaded and sampling by now
        subprocess.run(
            [*perf, str(tmp_path / "perf.data"), "--", "sleep", str(seconds - 4)],
            check=True,
            capture_output=True,
        )
        stdout, stderr = ours.communicate(timeout=60)
        assert ours.returncode == 0, stderr.decode()
    finally:
        busy.kill()
        busy.wait()
    profile = read_profile((out / "busy.pb.gz").read_bytes())
    shares = {row.name: row.self_fraction for row in top_functions(profile, 50)}
    theirs = perf_report_shares(tmp_path / "perf.data")
    for leaf in LEAVES:
        assert abs(shares[leaf] - theirs[leaf]) <= 0.03, (leaf, shares[leaf], theirs[leaf])
    assert shares["leaf_a"] > shares["leaf_b"] > shares["leaf_c"] > 0.1


def test_kubectl_annotate_renames_the_next_intervals_profile(image, loopback, workload, tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(str(kubeconfig), loopback.api.url, str(loopback.ca))
    pod = Pod(image, loopback, {"security": {"privileged": True}}, tmp_path / "pod")
    started = time.time_ns()
    pod.start()
    try:
        wait_for(
            lambda: pod.running() and named_profiles(loopback.pyroscope, "shop-web", started),
            60,
            "a profile named shop-web from the pod",
        )
        annotated = time.time_ns()
        done = loopback.netns.run(
            *(str(KUBECTL), "--kubeconfig", str(kubeconfig), "annotate", "--overwrite"),
            *("--namespace", "shop", "pod", "web-1", "pyroscope.io/service_name=shop-web-v2"),
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "pod/web-1 annotated"
        wait_for(
            lambda: named_profiles(loopback.pyroscope, "shop-web-v2"),
            3 * INTERVAL_S + 5,
            "a profile named shop-web-v2",
        )
    finally:
        pod.stop()
    renamed = [profile for _, profile in named_profiles(loopback.pyroscope, "shop-web-v2")]
    first = min(renamed, key=lambda profile: profile.time_nanos)
    # The interval running when kubectl returned, or the next one, carries the new name.
    assert first.time_nanos + first.duration_nanos >= annotated
    assert first.time_nanos <= annotated + INTERVAL_S * 1_000_000_000
    assert LEAVES <= {row.name for row in top_functions(first, 20)}
    old = [p for _, p in named_profiles(loopback.pyroscope, "shop-web", started)]
    assert old and all(p.time_nanos < annotated for p in old)
    patches = [(path, query) for method, path, query in loopback.api.requests if method == "PATCH"]
    assert patches == [
        ("/api/v1/namespaces/shop/pods/web-1", {"fieldManager": ["kubectl-annotate"]})
    ]
    pod_object_now = loopback.api.get_pod("shop", "web-1")
    assert pod_object_now["metadata"]["annotations"]["pyroscope.io/service_name"] == "shop-web-v2"


@pytest.mark.parametrize("host_network", [False, True], ids=["pod network", "host network"])
def test_discovery_process_hears_process_events_only_with_host_network(
    image, loopback, host_network, tmp_path
):
    """The kernel's process events connector answers in the host's network namespace only:
    in the pod's own, discovery.process says so and lists /proc instead."""
    config = 'discovery.process "all" {\n}\n'
    values = {"config": config, "hostNetwork": host_network, "metricsPort": free_port()}
    pod = Pod(image, loopback, values, tmp_path)
    assert pod.spec.get("dnsPolicy") == ("ClusterFirstWithHostNet" if host_network else None)
    pod.start()
    try:

        def events() -> str:
            assert pod.running()
            try:
                detail = pod.get("/api/v0/web/components/discovery.process.all").json()
            except httpx.HTTPError:
                return ""
            return (detail.get("debugInfo") or {}).get("process_events", "")

        wait_for(lambda: events() not in ("", "not started"), 30, "discovery.process started")
        state = events()
    finally:
        log = pod.stop()
    if host_network:
        assert state == "subscribed", log
    else:
        assert (
            state == "unavailable: process events connector: cannot subscribe: Connection refused"
        )
        assert "listing /proc every second instead" in log
