"""Podman behind its Docker-compatible API on a Unix socket, with an image imported from
the local busybox-static binary: shared by the discovery.docker tests."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.agent import writes_to_files

IMAGE = "localhost/emberscope-busybox:test"
BUSYBOX = Path("/bin/busybox")


class Podman:
    """The podman command line and its API service, with all state under one directory."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.socket = base / "podman.sock"
        self.prefix = [
            "podman",
            f"--root={base / 'root'}",
            f"--runroot={base / 'run'}",
            f"--tmpdir={base / 'tmp'}",  # the events file, shared by CLI and service
            "--events-backend=file",
            "--storage-driver=vfs",
            "--cgroup-manager=cgroupfs",
            "--runtime=runc",
        ]
        self.service: subprocess.Popen | None = None

    def __call__(self, *args: str) -> str:
        done = subprocess.run([*self.prefix, *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"podman {' '.join(args)}: {done.stderr.strip()}"
        return done.stdout.strip()

    def start_service(self) -> None:
        command = [*self.prefix, "system", "service", "--time=0", f"unix://{self.socket}"]
        self.service = subprocess.Popen(command, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with httpx.Client(transport=httpx.HTTPTransport(uds=str(self.socket))) as client:
                    if client.get("http://d/_ping").status_code == 200:
                        return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("podman system service did not answer on its socket")

    def stop_service(self) -> None:
        if self.service is not None:
            self.service.terminate()
            self.service.wait(timeout=10)
            self.service = None
        self.socket.unlink(missing_ok=True)

    def run_container(
        self, name: str, *args: str, command: tuple[str, ...] = ("/bin/sleep", "1000")
    ) -> str:
        limits = ("--ulimit=nofile=1024:1024", "--ulimit=nproc=1024:1024")  # no CAP_SYS_RESOURCE
        run = ["run", "-d", "--network=none", *limits, f"--name={name}", *args]
        return self(*run, IMAGE, *command)


def build_image(podman: Podman) -> None:
    """Import a busybox-only root filesystem: no registry is reachable here."""
    rootfs = podman.base / "rootfs"
    for folder in ("bin", "proc", "sys", "dev", "etc", "tmp"):
        (rootfs / folder).mkdir(parents=True)
    shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in ("sleep", "sh"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    archive = podman.base / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(rootfs, arcname=".")
    podman("import", str(archive), IMAGE)


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None]
    if missing or not BUSYBOX.exists():
        pytest.skip(f"needs podman, runc and busybox-static (missing: {missing or [BUSYBOX]})")
    engine = Podman(tmp_path_factory.mktemp("podman"))
    try:
        build_image(engine)
        engine.start_service()
        yield engine
    finally:
        subprocess.run([*engine.prefix, "rm", "-a", "-f", "-t", "0"], capture_output=True)
        engine.stop_service()


def edit_exactly_once(text: str, edits: list[tuple[str, str]]) -> str:
    for old, new in edits:
        assert text.count(old) == 1, f"the example no longer holds {old!r}"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="session")
def example_to_files():
    """Rewrite an example of the pyroscope.ebpf page for a test: its ``pyroscope.write``
    becomes a ``pyroscope.file`` under ``output`` (no Pyroscope runs here), the collect
    interval is shortened, and ``edits`` point discovery at the test's sources."""

    def rewrite(
        text: str,
        write_label: str,
        relabel_label: str,
        output: Path,
        interval_s: int,
        edits: list[tuple[str, str]],
    ) -> str:
        targets = f"targets    = discovery.relabel.{relabel_label}.output\n"
        text = writes_to_files(text, write_label, output)
        return edit_exactly_once(
            text, [*edits, (targets, targets + f'  collect_interval = "{interval_s}s"\n')]
        )

    return rewrite
