"""The chart's DaemonSet pod run by podman as the kubelet runs it, in a network namespace that
has only loopback, beside the loopback servers it talks to.

The pod template is translated to ``podman run`` field by field (image, command, args, env with
the downward API, ConfigMap/hostPath/emptyDir mounts, the service account's token and CA where
in-cluster config reads them, hostPID, securityContext, the memory limit); a field the
translation does not know fails the test rather than being dropped.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tests.deploy.chart import ROOT

IMAGE = "localhost/emberscope"
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
_CLONE_NEWNET = 0x40000000
# Known fields of the container and pod specs; anything else must be translated first.
_CONTAINER_FIELDS = {
    "name", "image", "imagePullPolicy", "command", "args", "env", "ports", "livenessProbe",
    "readinessProbe", "resources", "securityContext", "volumeMounts",
}  # fmt: skip
_POD_FIELDS = {
    "hostPID", "hostNetwork", "dnsPolicy", "serviceAccountName", "nodeSelector", "tolerations",
    "containers", "volumes", "terminationGracePeriodSeconds",
}  # fmt: skip

T = TypeVar("T")


def image_version() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise AssertionError("no version in pyproject.toml")


def build_image() -> str:
    """`make image` (podman's layer cache makes a rebuild take seconds); the image's name."""
    done = subprocess.run(
        ["make", "-C", str(ROOT), "image"], capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return f"{IMAGE}:{image_version()}"


class NetNs:
    """A network namespace of its own with loopback up. ``call`` runs a function on a thread
    that has entered it, so the sockets that function opens (servers, clients) live there."""

    def __init__(self) -> None:
        self.name = f"emberscope-test-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        self.path = f"/run/netns/{self.name}"
        self._thread = ThreadPoolExecutor(1, initializer=self._enter)

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {self.path}")
        finally:
            os.close(fd)

    def call(self, function: Callable[..., T], *args: Any) -> T:
        return self._thread.submit(function, *args).result()

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """A command in the namespace."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *command], capture_output=True, text=True, timeout=60
        )

    def close(self) -> None:
        self._thread.shutdown()
        subprocess.run(["ip", "netns", "delete", self.name], check=True)


def podman_run_args(
    pod: dict,
    config_maps: dict[str, dict[str, str]],
    files: Path,
    *,
    downward: dict[str, str],
    service_env: dict[str, str],
    network: str,
) -> list[str]:
    """``podman run`` arguments for the one container of ``pod`` (a pod template's spec).

    ``network``: ``host`` for a hostNetwork pod, else the namespace to join (``ns:<path>``);
    ``config_maps``: the data of each ConfigMap by name, written under ``files``;
    ``downward``: the value of each fieldRef path; ``service_env``: the variables the kubelet
    adds (KUBERNETES_SERVICE_HOST and _PORT); ``files / "serviceaccount"`` holds the token,
    ca.crt and namespace.
    """
    assert set(pod) <= _POD_FIELDS, set(pod) - _POD_FIELDS
    (container,) = pod["containers"]
    assert set(container) <= _CONTAINER_FIELDS, set(container) - _CONTAINER_FIELDS
    args = [
        *("--runtime", "runc", "--cgroup-manager", "cgroupfs"),
        # The test host's root lacks CAP_SYS_RESOURCE: podman must not raise these limits.
        *("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"),
        f"--network={network}",
        "--read-only-tmpfs=false",
    ]
    assert (network == "host") == pod.get("hostNetwork", False), network
    if pod.get("hostPID"):
        args.append("--pid=host")
    if "terminationGracePeriodSeconds" in pod:
        args.append(f"--stop-timeout={pod['terminationGracePeriodSeconds']}")
    for item in container.get("env", []):
        value = item.get("value")
        if value is None:
            value = downward[item["valueFrom"]["fieldRef"]["fieldPath"]]
        args += ["--env", f"{item['name']}={value}"]
    for name, value in service_env.items():
        args += ["--env", f"{name}={value}"]
    args += mount_args(pod["volumes"], container["volumeMounts"], config_maps, files)
    args += ["--volume", f"{files / 'serviceaccount'}:{SERVICE_ACCOUNT}:ro"]
    args += security_args(container["securityContext"])
    memory = container.get("resources", {}).get("limits", {}).get("memory")
    if memory:
        args += ["--memory", memory.replace("Gi", "g").replace("Mi", "m")]
    args += ["--entrypoint", container["command"][0], container["image"]]
    return args + container["command"][1:] + container["args"]


def mount_args(
    volumes: list[dict], mounts: list[dict], config_maps: dict[str, dict[str, str]], files: Path
) -> list[str]:
    by_name = {volume["name"]: volume for volume in volumes}
    args = []
    for mount in mounts:
        volume = by_name[mount["name"]]
        if "hostPath" in volume:
            source = Path(volume["hostPath"]["path"])
        elif "configMap" in volume:
            source = files / "volumes" / mount["name"]
            source.mkdir(parents=True)
            data = config_maps[volume["configMap"]["name"]]
            for item in volume["configMap"].get("items") or [{"key": k, "path": k} for k in data]:
                (source / item["path"]).write_text(data[item["key"]])
        elif "emptyDir" in volume:
            source = files / "volumes" / mount["name"]
            source.mkdir(parents=True)
        else:
            raise AssertionError(f"volume {volume} is not translated")
        options = ":ro" if mount.get("readOnly") else ""
        args += ["--volume", f"{source}:{mount['mountPath']}{options}"]
    return args


def security_args(context: dict) -> list[str]:
    args = ["--user", f"{context['runAsUser']}:{context['runAsGroup']}"]
    if context.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if context.get("privileged"):
        return [*args, "--privileged"]
    if context.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    capabilities = context.get("capabilities", {})
    args += [f"--cap-drop={cap}" for cap in capabilities.get("drop", [])]
    args += [f"--cap-add={cap}" for cap in capabilities.get("add", [])]
    if context.get("seccompProfile", {}).get("type") == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    if context.get("appArmorProfile", {}).get("type") == "Unconfined":
        args += ["--security-opt", "apparmor=unconfined"]
    return args
