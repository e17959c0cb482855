"""The Helm chart's static files and the plain manifests: YAML, schema, RBAC, DaemonSet, config.

The manifest is the chart rendered with default values by helm (`make manifests`);
tests/deploy/test_render.py renders the chart itself and checks the two agree.
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from agent.pipeline import check

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "emberscope"
MANIFEST = ROOT / "deploy" / "manifests" / "emberscope.yaml"
CAPABILITIES = {"BPF", "PERFMON", "SYS_PTRACE", "SYS_RESOURCE", "DAC_READ_SEARCH", "SYSLOG"}


def manifest_objects() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(MANIFEST.read_text()) if doc]


def one(kind: str) -> dict:
    (found,) = [obj for obj in manifest_objects() if obj["kind"] == kind]
    return found


def values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


def container() -> dict:
    (found,) = one("DaemonSet")["spec"]["template"]["spec"]["containers"]
    return found


@pytest.mark.parametrize(
    "path",
    [MANIFEST, CHART / "Chart.yaml", CHART / "values.yaml"],
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_yaml_parses(path: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs and all(isinstance(doc, dict) for doc in docs)


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "emberscope"
    templates = {path.name for path in (CHART / "templates").iterdir()}
    assert {
        "daemonset.yaml",
        "serviceaccount.yaml",
        "clusterrole.yaml",
        "clusterrolebinding.yaml",
        "configmap.yaml",
        "service.yaml",
        "servicemonitor.yaml",
    } <= templates


def test_readme_documents_the_install() -> None:
    readme = (CHART / "README.md").read_text()
    install = (
        "helm install emberscope deploy/helm/emberscope --set pyroscope.url=http://pyroscope:4040"
    )
    assert install in readme


def test_values_match_the_schema() -> None:
    jsonschema.Draft7Validator.check_schema(schema())
    jsonschema.validate(values(), schema())


@pytest.mark.parametrize(
    "change",
    [
        {"pyroscope": {"url": "pyroscope:4040"}},
        {"pyroscope": {"url": 'http://x" } evil {'}},
        {"metricsPort": 70000},
        {"security": {"privileged": "yes", "capabilities": []}},
        {"security": {"privileged": False, "capabilities": ["CAP_BPF"]}},
        {"serviceMonitor": {"enabled": True, "interval": "often"}},
        {"tolerations": [{"operator": "Sometimes"}]},
        {"hostPid": True},
    ],
    ids=repr,
)
def test_bad_values_are_rejected(change: dict) -> None:
    bad = {**values(), **change}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema())


def test_least_privilege_option_lists_the_capabilities() -> None:
    security = values()["security"]
    assert security["privileged"] is True
    assert set(security["capabilities"]) == CAPABILITIES
    template = (CHART / "templates" / "daemonset.yaml").read_text()
    assert "toYaml .Values.security.capabilities" in template
    assert 'drop: ["ALL"]' in template


def test_manifest_config_passes_the_agents_check(tmp_path: Path) -> None:
    config = one("ConfigMap")["data"]["config.alloy"]
    assert 'url = "http://pyroscope:4040"' in config
    path = tmp_path / "config.alloy"
    path.write_text(config)
    check(path, {"HOSTNAME": "node-1"})


def test_default_config_matches_the_kubernetes_example() -> None:
    config = one("ConfigMap")["data"]["config.alloy"]
    assert config == (ROOT / "deploy" / "k8s.alloy").read_text()
    template = (CHART / "templates" / "_config.tpl").read_text()
    assert "{{ .Values.pyroscope.url | quote }}" in template


def test_daemonset_runs_the_agent_on_every_node() -> None:
    daemonset = one("DaemonSet")
    pod = daemonset["spec"]["template"]["spec"]
    assert pod["hostPID"] is True
    assert {"operator": "Exists"} in pod["tolerations"]
    assert pod["serviceAccountName"] == one("ServiceAccount")["metadata"]["name"]
    assert daemonset["spec"]["selector"]["matchLabels"].items() <= (
        daemonset["spec"]["template"]["metadata"]["labels"].items()
    )
    agent = container()
    assert [*agent["command"], *agent["args"]] == [
        "emberscope",
        "run",
        "/etc/emberscope/config.alloy",
        "--server.http.listen-addr=0.0.0.0:12345",
    ]
    assert agent["securityContext"]["privileged"] is True
    assert agent["resources"]["requests"] and agent["resources"]["limits"]["memory"]


def test_daemonset_env_comes_from_the_downward_api() -> None:
    env = {item["name"]: item for item in container()["env"]}
    for name in ("HOSTNAME", "NODE_NAME"):
        assert env[name]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_daemonset_probes_and_port() -> None:
    agent = container()
    assert agent["ports"] == [{"name": "http-metrics", "containerPort": 12345, "protocol": "TCP"}]
    assert agent["livenessProbe"]["httpGet"] == {"path": "/-/live", "port": "http-metrics"}
    assert agent["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http-metrics"}


def test_daemonset_host_mounts() -> None:
    pod = one("DaemonSet")["spec"]["template"]["spec"]
    host_paths = {
        volume["name"]: volume["hostPath"]["path"]
        for volume in pod["volumes"]
        if "hostPath" in volume
    }
    mounts = {mount["name"]: mount for mount in container()["volumeMounts"]}
    # The kernel's, read only; and the spool, the one host directory written.
    assert host_paths.pop("spool") == "/var/lib/emberscope/spool"
    assert mounts["spool"] == {"name": "spool", "mountPath": "/var/lib/emberscope/spool"}
    assert set(host_paths.values()) == {
        "/sys/kernel/btf",
        "/sys/kernel/tracing",
        "/sys/kernel/debug",
        "/sys/fs/cgroup",
    }
    for name, path in host_paths.items():
        assert mounts[name]["mountPath"] == path
        assert mounts[name]["readOnly"] is True
    config = mounts["config"]
    assert config["mountPath"] == "/etc/emberscope"
    (config_volume,) = [volume for volume in pod["volumes"] if volume["name"] == "config"]
    assert config_volume["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]


def test_cluster_role_reads_pods_only() -> None:
    role = one("ClusterRole")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    binding = one("ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    account = one("ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": account["namespace"]}
    ]


def test_headless_metrics_service() -> None:
    service = one("Service")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["ports"][0]["targetPort"] == "http-metrics"
    labels = one("DaemonSet")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_namespace_allows_privileged_pods() -> None:
    namespace = one("Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    for obj in manifest_objects():
        if obj["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding"}:
            assert obj["metadata"]["namespace"] == namespace["metadata"]["name"]


def test_manifest_objects_validate_against_kubernetes_schemas() -> None:
    validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed"
    )
    for obj in manifest_objects():
        validate.validate(obj, "1.30", strict=True)
