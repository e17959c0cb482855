"""The Helm chart through the real helm: lint, and `helm template` with every value varied.

Each case renders the chart with some values over the defaults, validates every object against
the Kubernetes schemas and checks what the values should change; together the cases set every
value of values.yaml at least once. deploy/manifests/emberscope.yaml must be what `make
manifests` writes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from agent.pipeline import check
from tests.deploy.chart import (
    CHART,
    ROOT,
    assert_valid,
    container,
    objects,
    one,
    pod_spec,
    render,
    run_helm,
)

MANIFEST = ROOT / "deploy" / "manifests" / "emberscope.yaml"
CAPABILITIES = ["BPF", "PERFMON", "SYS_PTRACE", "SYS_RESOURCE", "DAC_READ_SEARCH", "SYSLOG"]
# The oldest Kubernetes release kubernetes-validate has schemas for, and the newest.
OLDEST, NEWEST = "1.25", "1.37"


def assert_config_checks(rendered: str, tmp_path: Path, env: dict[str, str] | None = None) -> str:
    config = one(rendered, "ConfigMap")["data"]["config.alloy"]
    path = tmp_path / "config.alloy"
    path.write_text(config)
    check(path, {"HOSTNAME": "node-1", **(env or {})})
    return config


def env_of(rendered: str) -> dict[str, dict]:
    return {item["name"]: item for item in container(rendered)["env"]}


def secret_env(rendered: str) -> dict[str, tuple[str, str]]:
    """(Secret, key) of each variable read from a Secret."""
    return {
        name: (ref["name"], ref["key"])
        for name, item in env_of(rendered).items()
        if (ref := item.get("valueFrom", {}).get("secretKeyRef"))
    }


def check_defaults(rendered: str, tmp_path: Path) -> None:
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
    assert config == (ROOT / "deploy" / "k8s.alloy").read_text()
    assert container(rendered)["securityContext"]["privileged"] is True


def check_least_privilege(rendered: str, tmp_path: Path) -> None:
    context = container(rendered)["securityContext"]
    assert context["privileged"] is False
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "PERFMON"]}
    assert "appArmorProfile" not in context and "seccompProfile" not in context
    assert pod_spec(rendered)["hostPID"] is True


def check_unconfined(rendered: str, tmp_path: Path) -> None:
    context = container(rendered)["securityContext"]
    assert context["capabilities"]["add"] == CAPABILITIES
    assert context["seccompProfile"] == {"type": "Unconfined"}
    # A field from Kubernetes 1.30 on, an annotation before (test_apparmor_before_1_30).
    annotations = one(rendered, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]
    annotation = annotations.get("container.apparmor.security.beta.kubernetes.io/emberscope")
    field = context.get("appArmorProfile")
    assert (annotation, field) in [("unconfined", None), (None, {"type": "Unconfined"})]


def check_custom_config(rendered: str, tmp_path: Path) -> None:
    config = assert_config_checks(rendered, tmp_path)
    assert 'url = "https://profiles.example.com:4443/pyroscope"' in config
    assert "discovery.kubernetes" in config
    assert "http://pyroscope:4040" not in config


def check_verbatim_config(rendered: str, tmp_path: Path) -> None:
    assert assert_config_checks(rendered, tmp_path) == VERBATIM


def check_image(rendered: str, tmp_path: Path) -> None:
    agent = container(rendered)
    assert agent["image"] == "registry.example.com/emberscope:1.2.3"
    assert agent["imagePullPolicy"] == "Always"
    assert pod_spec(rendered)["imagePullSecrets"] == [{"name": "registry"}]


def check_port(rendered: str, tmp_path: Path) -> None:
    agent = container(rendered)
    assert agent["args"][-1] == "--server.http.listen-addr=0.0.0.0:9090"
    assert agent["ports"][0]["containerPort"] == 9090
    assert one(rendered, "Service")["spec"]["ports"][0]["port"] == 9090


def check_scheduling(rendered: str, tmp_path: Path) -> None:
    pod = pod_spec(rendered)
    assert pod["nodeSelector"] == {"disktype": "ssd"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "profiling"}]
    assert pod["affinity"]["nodeAffinity"]
    assert container(rendered)["resources"] == {"requests": {"cpu": "50m", "memory": "256Mi"}}
    strategy = one(rendered, "DaemonSet")["spec"]["updateStrategy"]
    assert strategy == {"type": "OnDelete"}


def check_pod_metadata(rendered: str, tmp_path: Path) -> None:
    metadata = one(rendered, "DaemonSet")["spec"]["template"]["metadata"]
    assert metadata["annotations"]["example.com/team"] == "perf"
    assert metadata["labels"]["team"] == "perf"


def check_priority_class(rendered: str, tmp_path: Path) -> None:
    # Helm reads values through JSON, so an unconverted 2000000 would render as 2e+06.
    assert objects(rendered)[0]["kind"] == "PriorityClass"
    priority = one(rendered, "PriorityClass")
    assert priority["value"] == 2000000
    assert pod_spec(rendered)["priorityClassName"] == priority["metadata"]["name"]
    assert priority["metadata"]["name"] == "emberscope-node"


def check_existing_priority_class(rendered: str, tmp_path: Path) -> None:
    assert "PriorityClass" not in [obj["kind"] for obj in objects(rendered)]
    assert pod_spec(rendered)["priorityClassName"] == "system-node-critical"


def check_existing_account(rendered: str, tmp_path: Path) -> None:
    kinds = {obj["kind"] for obj in objects(rendered)}
    assert not kinds & {"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Service"}
    assert pod_spec(rendered)["serviceAccountName"] == "profiler"


def check_account_annotations(rendered: str, tmp_path: Path) -> None:
    account = one(rendered, "ServiceAccount")["metadata"]
    assert account["name"] == "profiler"
    assert account["annotations"] == {"example.com/role": "profiler"}
    binding = one(rendered, "ClusterRoleBinding")
    assert binding["subjects"][0]["name"] == "profiler"


def check_service_monitor(rendered: str, tmp_path: Path) -> None:
    monitor = objects(rendered)[-1]  # unknown kinds last, as Helm installs them
    assert monitor["kind"] == "ServiceMonitor"
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    service = one(rendered, "Service")
    spec = monitor["spec"]
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert spec["namespaceSelector"] == {"matchNames": ["emberscope"]}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert (endpoint["path"], endpoint["interval"], endpoint["scrapeTimeout"]) == (
        "/metrics",
        "15s",
        "5s",
    )


def check_basic_auth_and_tenant(rendered: str, tmp_path: Path) -> None:
    assert secret_env(rendered) == {
        "PYROSCOPE_USERNAME": ("pyroscope", "user"),
        "PYROSCOPE_PASSWORD": ("pyroscope", "pass"),
        "PYROSCOPE_TENANT_ID": ("pyroscope", "tenant"),
    }
    env = {"PYROSCOPE_USERNAME": "u", "PYROSCOPE_PASSWORD": "p", "PYROSCOPE_TENANT_ID": "t"}
    config = assert_config_checks(rendered, tmp_path, env)
    assert 'password = sys.env("PYROSCOPE_PASSWORD")' in config
    assert 'headers = { "X-Scope-OrgID" = sys.env("PYROSCOPE_TENANT_ID") }' in config
    assert "bearer_token" not in config


def check_bearer_token(rendered: str, tmp_path: Path) -> None:
    assert secret_env(rendered) == {"PYROSCOPE_BEARER_TOKEN": ("pyroscope", "token")}
    config = assert_config_checks(rendered, tmp_path, {"PYROSCOPE_BEARER_TOKEN": "t"})
    assert 'bearer_token = sys.env("PYROSCOPE_BEARER_TOKEN")' in config
    assert "basic_auth" not in config


def check_existing_config_map(rendered: str, tmp_path: Path) -> None:
    assert "ConfigMap" not in [obj["kind"] for obj in objects(rendered)]
    (volume,) = [v for v in pod_spec(rendered)["volumes"] if v["name"] == "config"]
    assert volume["configMap"] == {
        "name": "my-config",
        "items": [{"key": "agent.alloy", "path": "config.alloy"}],
    }
    metadata = one(rendered, "DaemonSet")["spec"]["template"]["metadata"]
    assert "checksum/config" not in metadata["annotations"]


def check_extra_env_and_volumes(rendered: str, tmp_path: Path) -> None:
    agent = container(rendered)
    assert env_of(rendered)["TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "t", "key": "k"}
    assert agent["envFrom"] == [{"secretRef": {"name": "all-of-it"}}]
    assert agent["volumeMounts"][-1] == {"name": "certs", "mountPath": "/etc/certs"}
    assert pod_spec(rendered)["volumes"][-1] == {"name": "certs", "secret": {"secretName": "ca"}}


def check_name_override(rendered: str, tmp_path: Path) -> None:
    daemonset = one(rendered, "DaemonSet")
    assert daemonset["metadata"]["name"] == "emberscope-profiler"
    assert daemonset["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "profiler"


def check_fullname_override(rendered: str, tmp_path: Path) -> None:
    names = {obj["metadata"]["name"] for obj in objects(rendered)}
    assert names == {"ember"}


def check_host_network(rendered: str, tmp_path: Path) -> None:
    pod = pod_spec(rendered)
    assert (pod["hostNetwork"], pod["dnsPolicy"]) == (True, "ClusterFirstWithHostNet")
    assert container(rendered)["securityContext"]["capabilities"]["add"][-1] == "NET_ADMIN"


def check_spool(rendered: str, tmp_path: Path) -> None:
    config = assert_config_checks(rendered, tmp_path)
    assert 'spool_directory = "/var/lib/emberscope/spool"' in config
    assert "spool_max_bytes = 1048576" in config
    pod = pod_spec(rendered)
    assert pod["terminationGracePeriodSeconds"] == 60
    assert {"name": "spool", "emptyDir": {}} in pod["volumes"]
    mounts = container(rendered)["volumeMounts"]
    assert {"name": "spool", "mountPath": "/var/lib/emberscope/spool"} in mounts


VERBATIM = 'pyroscope.write "out" {\n  endpoint {\n    url = "http://p:4040"\n  }\n}\n'
Check = Callable[[str, Path], None]
# Every value of values.yaml is set by at least one case (test_every_value_is_exercised).
CASES: dict[str, tuple[dict, Check]] = {
    "defaults": ({}, check_defaults),
    "spool in an emptyDir": (
        {"spool": {"hostPath": "", "maxBytes": 1 << 20}, "terminationGracePeriodSeconds": 60},
        check_spool,
    ),
    "least privilege": (
        {
            "security": {
                "privileged": False,
                "capabilities": ["BPF", "PERFMON"],
                "appArmorUnconfined": False,
                "seccompUnconfined": False,
            }
        },
        check_least_privilege,
    ),
    "least privilege unconfined": (
        {"security": {"privileged": False, "appArmorUnconfined": True}},
        check_unconfined,
    ),
    "pyroscope url": (
        {"pyroscope": {"url": "https://profiles.example.com:4443/pyroscope"}},
        check_custom_config,
    ),
    "verbatim config": ({"config": VERBATIM}, check_verbatim_config),
    "basic auth and tenant": (
        {
            "pyroscope": {
                "auth": {
                    "secretName": "pyroscope",
                    "usernameKey": "user",
                    "passwordKey": "pass",
                    "tenantIdKey": "tenant",
                }
            }
        },
        check_basic_auth_and_tenant,
    ),
    "bearer token": (
        {"pyroscope": {"auth": {"secretName": "pyroscope", "bearerTokenKey": "token"}}},
        check_bearer_token,
    ),
    "existing config map": (
        {"configMap": {"create": False, "name": "my-config", "key": "agent.alloy"}},
        check_existing_config_map,
    ),
    "extra env and volumes": (
        {
            "extraEnv": [
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}}
            ],
            "envFrom": [{"secretRef": {"name": "all-of-it"}}],
            "extraVolumes": [{"name": "certs", "secret": {"secretName": "ca"}}],
            "extraVolumeMounts": [{"name": "certs", "mountPath": "/etc/certs"}],
        },
        check_extra_env_and_volumes,
    ),
    "name override": ({"nameOverride": "profiler"}, check_name_override),
    "fullname override": ({"fullnameOverride": "ember"}, check_fullname_override),
    "host network": (
        {
            "hostNetwork": True,
            "security": {"privileged": False, "capabilities": [*CAPABILITIES, "NET_ADMIN"]},
        },
        check_host_network,
    ),
    "image": (
        {
            "image": {
                "repository": "registry.example.com/emberscope",
                "tag": "1.2.3",
                "pullPolicy": "Always",
            },
            "imagePullSecrets": [{"name": "registry"}],
        },
        check_image,
    ),
    "port": ({"metricsPort": 9090}, check_port),
    "scheduling": (
        {
            "nodeSelector": {"kubernetes.io/os": None, "disktype": "ssd"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "profiling"}],
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {"matchExpressions": [{"key": "profile", "operator": "Exists"}]}
                        ]
                    }
                }
            },
            "resources": {"requests": {"cpu": "50m"}, "limits": None},
            "updateStrategy": {"type": "OnDelete", "rollingUpdate": None},
        },
        check_scheduling,
    ),
    "pod metadata": (
        {"podAnnotations": {"example.com/team": "perf"}, "podLabels": {"team": "perf"}},
        check_pod_metadata,
    ),
    "priority class": (
        {
            "priorityClassName": "emberscope-node",
            "priorityClass": {"create": True, "value": 2000000},
        },
        check_priority_class,
    ),
    "existing priority class": (
        {"priorityClassName": "system-node-critical"},
        check_existing_priority_class,
    ),
    "existing account": (
        {
            "serviceAccount": {"create": False, "name": "profiler"},
            "rbac": {"create": False},
            "service": {"enabled": False},
        },
        check_existing_account,
    ),
    "account annotations": (
        {"serviceAccount": {"name": "profiler", "annotations": {"example.com/role": "profiler"}}},
        check_account_annotations,
    ),
    "service monitor": (
        {
            "serviceMonitor": {
                "enabled": True,
                "interval": "15s",
                "scrapeTimeout": "5s",
                "labels": {"release": "prometheus"},
            }
        },
        check_service_monitor,
    ),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("version", [OLDEST, NEWEST])
def test_case_renders_valid_objects(case: str, version: str, tmp_path: Path) -> None:
    values, check_rendered = CASES[case]
    rendered = render(values, "--kube-version", version)
    assert_valid(rendered, version)
    check_rendered(rendered, tmp_path)


def leaves(values: dict, schema: dict, prefix: str = "") -> Iterator[str]:
    """The paths of the values, down through the objects the schema lists the properties of."""
    for key, value in values.items():
        path = f"{prefix}{key}"
        properties = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and "properties" in properties:
            yield from leaves(value, properties, f"{path}.")
        else:
            yield path


def test_every_value_is_exercised() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = set(leaves(yaml.safe_load((CHART / "values.yaml").read_text()), schema))
    exercised = {path for values, _ in CASES.values() for path in leaves(values, schema)}
    assert defaults - exercised == set()


@pytest.mark.parametrize("case", CASES)
def test_helm_lint_strict(case: str) -> None:
    result = run_helm("lint", "--strict", str(CHART), values=CASES[case][0])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"serviceMonitor": {"enabled": True}, "service": {"enabled": False}}, "needs service"),
        ({"metricsPort": 70000}, "metricsPort"),
        ({"security": {"capabilities": ["CAP_BPF"]}}, "capabilities"),
        ({"hostPid": True}, "hostPid"),
        ({"pyroscope": {"auth": {"bearerTokenKey": "t"}}}, "keys need pyroscope.auth.secretName"),
        (
            {"pyroscope": {"auth": {"secretName": "s", "usernameKey": "u"}}},
            "usernameKey and passwordKey go together",
        ),
        ({"configMap": {"create": False}}, "needs configMap.name"),
        ({"terminationGracePeriodSeconds": 10}, "terminationGracePeriodSeconds"),
        ({"spool": {"hostPath": "relative/dir"}}, "hostPath"),
    ],
    ids=repr,
)
def test_bad_values_are_refused_naming_them(values: dict, error: str) -> None:
    result = run_helm("template", "emberscope", str(CHART), values=values)
    assert result.returncode != 0
    assert error in result.stderr


def test_a_config_change_rolls_the_pods() -> None:
    def checksum(values: dict) -> str:
        return one(render(values), "DaemonSet")["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]

    assert checksum({}) == checksum({"metricsPort": 9090})
    assert checksum({}) != checksum({"pyroscope": {"url": "http://other:4040"}})


def test_apparmor_before_1_30() -> None:
    values = CASES["least privilege unconfined"][0]
    before, since = (render(values, "--kube-version", v) for v in ("1.29", "1.30"))
    assert "appArmorProfile" not in container(before)["securityContext"]
    assert "container.apparmor.security.beta.kubernetes.io/emberscope" not in since


def test_kube_version_below_the_charts_is_refused() -> None:
    result = run_helm("template", "emberscope", str(CHART), "--kube-version", "1.18")
    assert result.returncode != 0
    assert "kubeVersion" in result.stderr


def test_manifest_is_the_rendered_chart() -> None:
    expected = (ROOT / "deploy" / "namespace.yaml").read_text() + render()
    assert MANIFEST.read_text() == expected, (
        "deploy/manifests/emberscope.yaml drifted from the chart: run `make manifests`"
    )
