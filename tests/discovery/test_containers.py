"""Container IDs from /proc/<pid>/cgroup: every line form of the reference, then real cgroups
made by this kernel (v2, and a named v1 hierarchy) holding a real process."""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.discovery import (
    CgroupInfo,
    ContainerIdCache,
    only_unified_cgroups,
    parse_cgroup,
    parse_container_id,
)


def hex_id(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


ID = hex_id("workload")
NODE = hex_id("kind node")
OTHER = hex_id("other")
POD = "f6f2d169-f2ae-4afa-95ed-06ff2ed6b288"
POD_ = POD.replace("-", "_")
BURSTABLE = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice"

# (line or lines, container ID, runtime prefix, pod UID), from kubernetes-and-containers.md §3-§6
LINES = [
    (f"14:name=systemd:/docker/{ID}", ID, None, None),
    (f"0::/system.slice/docker-{ID}.scope", ID, "docker", None),
    (f"0::/system.slice/docker-{ID}.scope/init", ID, "docker", None),
    (
        "1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-"
        f"pod9692aa0e_748e_11e8_8f8e_0800270505d2.slice/docker-{ID}.scope",
        ID,
        "docker",
        "9692aa0e-748e-11e8-8f8e-0800270505d2",
    ),
    (
        f"11:memory:/kubepods/besteffort/poda9c80282-3f6b-4d5b-84d5-a137a6668011/{ID}",
        ID,
        None,
        "a9c80282-3f6b-4d5b-84d5-a137a6668011",
    ),
    (
        f"0::/kubepods/besteffort/pod05e102bf-8744-4942-a241-9b6f07983a53/{ID}",
        ID,
        None,
        "05e102bf-8744-4942-a241-9b6f07983a53",
    ),
    (f"0::/kubepods/pod{POD}/{ID}", ID, None, POD),  # Guaranteed QoS: no QoS level
    (f"0::{BURSTABLE}/cri-containerd-{ID}.scope", ID, "cri-containerd", POD),
    (f"1:name=systemd:{BURSTABLE}/cri-containerd-{ID}.scope", ID, "cri-containerd", POD),
    (
        "11:cpu,cpuacct:/system.slice/containerd.service/kubepods-besteffort-"
        f"pod86811ae3_b633_4eb8_a508_e3eae190f6ce.slice:cri-containerd:{ID}",
        ID,
        "cri-containerd",
        "86811ae3-b633-4eb8-a508-e3eae190f6ce",
    ),
    (f"0::{BURSTABLE}/crio-{ID}.scope", ID, "crio", POD),
    (f"0::/kubepods/besteffort/pod{POD}/crio-{ID}", ID, "crio", POD),
    (
        f"0::/user.slice/user-0.slice/user@0.service/machine.slice/libpod-{ID}.scope/container",
        ID,
        "libpod",
        None,
    ),
    (f"1:name=systemd:/machine.slice/libpod-{ID}.scope/init.scope", ID, "libpod", None),
    (
        f"0::/../../..{BURSTABLE.removeprefix('/kubepods.slice')}/cri-containerd-{ID}.scope",
        ID,
        "cri-containerd",
        POD,
    ),
    (  # kind seen from the host: the node's ID first, the pod container's last
        f"0::/system.slice/docker-{NODE}.scope/kubelet.slice/kubelet-kubepods.slice/"
        f"kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{POD_}.slice/"
        f"cri-containerd-{ID}.scope",
        ID,
        "cri-containerd",
        POD,
    ),
    (  # minikube: CRI-O inside Docker on v1
        f"4:memory:/docker/{NODE}{BURSTABLE}/crio-{ID}.scope",
        ID,
        "crio",
        POD,
    ),
    (f"0::{BURSTABLE}", None, None, POD),  # pod-level cgroup
    ("0::/user.slice/user-1000.slice/session-3.scope", None, None, None),
    ("0::/", None, None, None),
    (f"1:name=systemd:/docker/{OTHER}\n0::/", OTHER, None, None),
    (f"1:name=systemd:/docker/{OTHER}\n0::/system.slice/docker-{ID}.scope", ID, "docker", None),
    (  # hybrid host: every v1 line at / except memory
        f"9:name=systemd:/\n8:pids:/\n4:memory:/process_api/{ID}\n3:cpuset:/\n0::/",
        ID,
        None,
        None,
    ),
    (f"2:cpu:/docker/{OTHER}\n1:memory:/docker/{ID}", OTHER, None, None),  # first v1 line wins
    # not IDs
    (f"0::/docker/{ID[:63]}", None, None, None),
    (f"0::/docker/{ID}0", None, None, None),
    (f"0::/docker/{ID.upper()}", None, None, None),
    (f"0::/docker/x{ID}", None, None, None),
    ("0::/ecs/0123456789abcdef0123456789abcdef-1234567890", None, None, None),
    (f"garbage /docker/{ID}", None, None, None),
    (f"x:name=systemd:/docker/{ID}", None, None, None),
    ("", None, None, None),
]


@pytest.mark.parametrize(("text", "container_id", "runtime", "pod_uid"), LINES)
def test_parse_cgroup(text, container_id, runtime, pod_uid):
    assert parse_cgroup(text) == CgroupInfo(container_id, runtime, pod_uid)
    assert parse_container_id(text + "\n") == container_id


@pytest.mark.parametrize(
    "line",
    [
        f"0::{BURSTABLE}/crio-conmon-{ID}.scope",
        f"0::/machine.slice/libpod-conmon-{ID}.scope",
    ],
)
def test_conmon_monitors_are_never_credited_to_their_container(line):
    info = parse_cgroup(line)
    assert info.container_id == ID and info.is_conmon
    assert parse_container_id(line) is None


# ---- the cache, against a captured /proc tree -------------------------------------------


def write_proc(root: Path, pid: int, start_time: int, cgroup: str) -> None:
    directory = root / str(pid)
    directory.mkdir(parents=True, exist_ok=True)
    fields = ["S"] + ["0"] * 18 + [str(start_time)] + ["0"] * 30
    (directory / "stat").write_text(f"{pid} (odd ) name) " + " ".join(fields) + "\n")
    (directory / "cgroup").write_text(cgroup)


def test_cache_keys_by_pid_and_start_time(tmp_path):
    write_proc(tmp_path, 42, 100, f"0::/system.slice/docker-{ID}.scope\n")
    cache = ContainerIdCache(8, proc_root=str(tmp_path))
    assert cache.lookup(42) == ID
    assert cache.lookup(42) == ID
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)
    write_proc(tmp_path, 42, 200, f"0::/system.slice/docker-{OTHER}.scope\n")  # pid reused
    assert cache.lookup(42) == OTHER
    # the old process's entry stays until it is the least recently used
    assert (cache.hits, cache.misses, len(cache)) == (1, 2, 2)


def test_cache_keeps_misses_and_forgets(tmp_path):
    write_proc(tmp_path, 7, 1, "0::/user.slice/user-0.slice/session-1.scope\n")
    cache = ContainerIdCache(8, proc_root=str(tmp_path))
    assert cache.lookup(7) is None
    assert cache.lookup(7) is None
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)
    assert cache.debug_info()["entries"] == {7: None}
    cache.forget(7)
    assert len(cache) == 0


def test_cache_evicts_the_least_recently_used(tmp_path):
    for pid in (1, 2, 3):
        write_proc(tmp_path, pid, pid, f"0::/docker/{hex_id(str(pid))}\n")
    cache = ContainerIdCache(2, proc_root=str(tmp_path))
    cache.lookup(1)
    cache.lookup(2)
    cache.lookup(1)
    cache.lookup(3)
    assert sorted(cache.debug_info()["entries"]) == [1, 3]


def test_cache_caches_nothing_for_a_vanished_process(tmp_path):
    cache = ContainerIdCache(2, proc_root=str(tmp_path))
    assert cache.lookup(999) is None
    assert len(cache) == 0


def test_a_fifo_or_an_endless_cgroup_file_gives_no_container_and_does_not_block(tmp_path):
    write_proc(tmp_path, 8, 1, "")
    (tmp_path / "8" / "cgroup").unlink()
    os.mkfifo(tmp_path / "8" / "cgroup")
    write_proc(tmp_path, 9, 1, f"0::/docker/{ID}\n" + "1:x:/" + "a" * (2 << 20) + "\n")
    cache = ContainerIdCache(2, proc_root=str(tmp_path))
    started = time.monotonic()
    assert cache.lookup(8) is None  # a FIFO: refused, never opened for reading
    assert cache.lookup(9) is None  # over the 1 MiB read: not parsed
    assert time.monotonic() - started < 0.5
    assert len(cache) == 0  # nothing known, so nothing cached


def test_cache_size_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        ContainerIdCache(0)


# ---- real cgroups made by this kernel ---------------------------------------------------


def cgroup2_root() -> Path:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mountpoint, fstype, *_ = line.split()
        if fstype == "cgroup2":
            return Path(mountpoint)
    pytest.skip("no cgroup v2 hierarchy is mounted (/proc/self/mounts has no cgroup2)")


class Cgroups:
    """Creates cgroups under one hierarchy and removes them, whatever happens."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.base = root / f"emberscope-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.created: list[Path] = []

    def move(self, pid: int, relative: str) -> None:
        path = self.base / relative
        missing = []
        while not path.exists():
            missing.append(path)
            path = path.parent
        for directory in reversed(missing):
            directory.mkdir()
            self.created.append(directory)
        (self.base / relative / "cgroup.procs").write_text(str(pid))

    def close(self, pids: list[int]) -> None:
        for pid in pids:
            try:
                (self.root / "cgroup.procs").write_text(str(pid))
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise
        for directory in sorted(self.created, key=lambda p: len(p.parts), reverse=True):
            directory.rmdir()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def real_layouts() -> list[tuple[str, str | None]]:
    return [
        (f"docker-{ID}.scope", "docker"),
        (f"cri-containerd-{ID}.scope", "cri-containerd"),
        (f"crio-{ID}.scope", "crio"),
        (f"libpod-{ID}.scope", "libpod"),
        (f"libpod-{ID}.scope/container", "libpod"),
        (f"docker/{ID}", None),
        (f"kubepods/besteffort/pod{POD}/{ID}", None),
        (
            f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD_}.slice/"
            f"cri-containerd-{ID}.scope",
            "cri-containerd",
        ),
        (f"docker-{NODE}.scope/kubelet.slice/kubelet-pod{POD_}.slice/crio-{ID}.scope", "crio"),
        (f"kubepods-besteffort-pod{POD_}.slice:cri-containerd:{ID}", "cri-containerd"),
    ]


def check_real_layouts(sleeper: subprocess.Popen, cgroups: Cgroups, line_prefix: str) -> None:
    cache = ContainerIdCache(16)
    for relative, runtime in real_layouts():
        cgroups.move(sleeper.pid, relative)
        text = Path(f"/proc/{sleeper.pid}/cgroup").read_text()
        line = next(line for line in text.splitlines() if line.startswith(line_prefix))
        assert line.endswith(f"{cgroups.base.name}/{relative}"), text
        assert parse_cgroup(text).runtime == runtime, text
        assert parse_container_id(text) == ID, text
        cache.forget(sleeper.pid)
        assert cache.lookup(sleeper.pid) == ID
    cgroups.move(sleeper.pid, "user.slice/session-3.scope")
    text = Path(f"/proc/{sleeper.pid}/cgroup").read_text()
    others = "\n".join(line for line in text.splitlines() if not line.startswith(line_prefix))
    cache.forget(sleeper.pid)
    assert cache.lookup(sleeper.pid) == parse_container_id(others)  # the agent's own, if any


def test_real_cgroup_v2_lines(sleeper):
    cgroups = Cgroups(cgroup2_root())
    try:
        check_real_layouts(sleeper, cgroups, "0::")
    finally:
        cgroups.close([sleeper.pid])


@pytest.fixture
def v1_hierarchy() -> Iterator[tuple[Path, str]]:
    """A named v1 hierarchy (allowed beside v2); skipped only if the kernel refuses it."""
    name = f"emberscope{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="emberscope-v1-") as mountpoint:
        command = ["mount", "-t", "cgroup", "-o", f"none,name={name}", "cgroup", mountpoint]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"the kernel refused a named cgroup v1 hierarchy: {done.stderr.strip()}")
        try:
            yield Path(mountpoint), name
        finally:
            subprocess.run(["umount", mountpoint], check=True)
            release_hierarchy(name, command)


def release_hierarchy(name: str, mount_command: list[str]) -> None:
    """The kernel frees a v1 hierarchy at umount (asynchronously) only if no removed child
    cgroup is still dying; if it stays, mount and unmount it again once the child is gone."""
    for _ in range(6):
        for _ in range(10):
            if f":name={name}:" not in Path("/proc/self/cgroup").read_text():
                return
            time.sleep(0.05)
        subprocess.run(mount_command, check=True)
        subprocess.run(["umount", mount_command[-1]], check=True)


def test_real_cgroup_v1_lines(sleeper, v1_hierarchy):
    mountpoint, name = v1_hierarchy
    cgroups = Cgroups(mountpoint)
    try:
        text = Path(f"/proc/{sleeper.pid}/cgroup").read_text()
        prefix = next(line for line in text.splitlines() if f":name={name}:" in line)
        check_real_layouts(sleeper, cgroups, prefix.split(":/", 1)[0] + ":")
    finally:
        cgroups.close([sleeper.pid])


def test_only_unified_cgroups_tells_a_v2_host_from_a_hybrid_one(tmp_path):
    own = tmp_path / str(os.getpid())
    own.mkdir()
    (own / "cgroup").write_text("0::/system.slice/emberscope.service\n")
    assert only_unified_cgroups(str(tmp_path))
    (own / "cgroup").write_text("4:memory:/x\n1:name=systemd:/x\n0::/\n")
    assert not only_unified_cgroups(str(tmp_path))
    assert not only_unified_cgroups(str(tmp_path / "nowhere"))
