"""The Helm chart rendered by tools/chart-render: Go's text/template and sprig, as Helm uses them.

No helm binary can be installed here. tools/chart-render is a small Go program built offline
against Debian's Go packages (golang-github-masterminds-sprig-dev, gopkg.in/yaml.v2) that renders
the chart like `helm template`. Every rendered object is validated against the Kubernetes 1.30
schemas, and deploy/manifests/emberscope.yaml must be exactly what `make manifests` writes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from agent.pipeline import check

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "emberscope"
MANIFEST = ROOT / "deploy" / "manifests" / "emberscope.yaml"
RENDERER = ROOT / "tools" / "chart-render"
GOPATH = Path("/usr/share/gocode")
GO_SOURCES = {
    "golang-github-masterminds-sprig-dev": GOPATH / "src/github.com/Masterminds/sprig/functions.go",
    "golang-gopkg-yaml.v2-dev": GOPATH / "src/gopkg.in/yaml.v2/yaml.go",
}
CAPABILITIES = ["BPF", "PERFMON", "SYS_PTRACE", "SYS_RESOURCE", "DAC_READ_SEARCH", "SYSLOG"]

Render = Callable[..., str]


@pytest.fixture(scope="session")
def render(tmp_path_factory: pytest.TempPathFactory) -> Render:
    """Builds chart-render once; returns a function rendering the chart with --set overrides."""
    if shutil.which("go") is None:
        pytest.skip("go is not installed (Debian package golang-go)")
    for package, source in GO_SOURCES.items():
        if not source.exists():
            pytest.skip(f"{source} is missing: install the Debian package {package}")
    build = tmp_path_factory.mktemp("chart-render")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": f"{GOPATH}:{build / 'gopath'}",
        "GOFLAGS": "",
        "GOPROXY": "off",
    }
    binary = build / "chart-render"
    subprocess.run(
        ["go", "build", "-o", str(binary), "."], cwd=RENDERER, env=env, check=True, timeout=300
    )

    def run(*sets: str) -> str:
        args = [str(binary), "emberscope", str(CHART), "--namespace", "emberscope"]
        for item in sets:
            args += ["--set", item]
        result = subprocess.run(args, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    run.binary = binary  # type: ignore[attr-defined]
    return run


def objects(rendered: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def one(rendered: str, kind: str) -> dict:
    (found,) = [obj for obj in objects(rendered) if obj["kind"] == kind]
    return found


def container(rendered: str) -> dict:
    (found,) = one(rendered, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    return found


def assert_valid(rendered: str) -> None:
    """Every object against the Kubernetes 1.30 schemas; the ServiceMonitor CRD by hand."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed"
    )
    for obj in objects(rendered):
        if obj["kind"] == "ServiceMonitor":
            assert_service_monitor(obj, rendered)
        else:
            kubernetes_validate.validate(obj, "1.30", strict=True)


def assert_service_monitor(monitor: dict, rendered: str) -> None:
    # kubernetes-validate has no CRD schemas: the shape of monitoring.coreos.com/v1 by hand.
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert monitor["metadata"]["namespace"] == "emberscope"
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
    service = one(rendered, "Service")
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    for key in ("interval", "scrapeTimeout"):
        assert isinstance(endpoint[key], str) and endpoint[key][-1] in "smh"
    for relabeling in endpoint["relabelings"]:
        assert set(relabeling) <= {
            "action",
            "sourceLabels",
            "targetLabel",
            "regex",
            "replacement",
            "separator",
        }
        assert all(isinstance(label, str) for label in relabeling.get("sourceLabels", []))


def assert_config_checks(rendered: str, tmp_path: Path) -> str:
    config = one(rendered, "ConfigMap")["data"]["config.alloy"]
    path = tmp_path / "config.alloy"
    path.write_text(config)
    check(path, {"HOSTNAME": "node-1"})
    return config


def test_defaults_render_valid_objects(render: Render, tmp_path: Path) -> None:
    rendered = render()
    assert_valid(rendered)
    kinds = [obj["kind"] for obj in objects(rendered)]
    # Helm's install order, and nothing optional by default.
    assert kinds == [
        "ServiceAccount",
        "ConfigMap",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "DaemonSet",
    ]
    config = assert_config_checks(rendered, tmp_path)
    assert 'url = "http://pyroscope:4040"' in config
    assert config == (ROOT / "deploy" / "k8s.alloy").read_text()
    assert container(rendered)["securityContext"]["privileged"] is True


def test_least_privilege(render: Render) -> None:
    rendered = render("security.privileged=false")
    assert_valid(rendered)
    context = container(rendered)["securityContext"]
    assert context["privileged"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"], "add": CAPABILITIES}
    assert context["appArmorProfile"] == {"type": "Unconfined"}
    assert context["seccompProfile"] == {"type": "Unconfined"}
    assert one(rendered, "DaemonSet")["spec"]["template"]["spec"]["hostPID"] is True


def test_service_monitor(render: Render) -> None:
    rendered = render("serviceMonitor.enabled=true")
    assert_valid(rendered)
    assert objects(rendered)[-1]["kind"] == "ServiceMonitor"  # unknown kinds last, as Helm


def test_service_monitor_needs_the_service(render: Render) -> None:
    args = [str(render.binary), "emberscope", str(CHART), "--namespace", "emberscope"]  # type: ignore[attr-defined]
    args += ["--set", "serviceMonitor.enabled=true,service.enabled=false"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "serviceMonitor.enabled needs service.enabled" in result.stderr


def test_custom_pyroscope_url(render: Render, tmp_path: Path) -> None:
    url = "https://profiles.example.com:4443/pyroscope"
    rendered = render(f"pyroscope.url={url}")
    assert_valid(rendered)
    config = assert_config_checks(rendered, tmp_path)
    assert f'url = "{url}"' in config
    assert "http://pyroscope:4040" not in config


def test_priority_class(render: Render) -> None:
    # Helm reads values through JSON, so an unconverted 1000000 would render as 1e+06.
    rendered = render("priorityClass.create=true,priorityClassName=emberscope-node")
    assert_valid(rendered)
    assert objects(rendered)[0]["kind"] == "PriorityClass"
    priority = one(rendered, "PriorityClass")
    assert priority["value"] == 1000000
    pod = one(rendered, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == priority["metadata"]["name"] == "emberscope-node"


def test_manifest_is_the_rendered_chart(render: Render) -> None:
    expected = (RENDERER / "namespace.yaml").read_text() + render()
    assert MANIFEST.read_text() == expected, (
        "deploy/manifests/emberscope.yaml drifted from the chart: run `make manifests`"
    )
