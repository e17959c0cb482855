"""Fixtures shared by the rooms' tests: workloads built by the tests, the
real-kernel requirements, and a runner for the ``emberscope`` command."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKLOADS = REPO / "tests" / "workloads"
BPF_OBJECT = REPO / "agent" / "ebpf" / "profile.bpf.o"


def _kernel_blocker() -> str | None:
    """Why BPF tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root to load BPF programs"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "the kernel has no BTF (/sys/kernel/btf/vmlinux)"
    if not BPF_OBJECT.exists():
        return f"{BPF_OBJECT} is not built: run 'make install'"
    return None


@pytest.fixture(scope="session")
def bpf_ready() -> None:
    """Skip, with the reason, where the kernel features are truly absent."""
    blocker = _kernel_blocker()
    if blocker:
        pytest.skip(blocker)


def compile_workload(source: str, binary: Path, *flags: str, link: Sequence[str] = ()) -> Path:
    """Build ``tests/workloads/<source>`` into ``binary`` with exactly ``flags``:
    ``gcc FLAGS -o BINARY SOURCE LINK`` (g++ for a .cpp source), where ``link``
    holds what must follow the source, such as ``-ldl``."""
    compiler = "g++" if source.endswith(".cpp") else "gcc"
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} is needed to build tests/workloads/{source}")
    command = [compiler, *flags, "-o", str(binary), str(WORKLOADS / source), *link]
    subprocess.run(command, check=True)
    return binary


@pytest.fixture(scope="session")
def compile_c(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Build ``tests/workloads/<name>.c`` once per session with exactly the given
    gcc flags. The binary is named ``name`` (profiles and service_name show it),
    in one folder per set of flags."""
    folders: dict[tuple[str, ...], Path] = {}

    def build(name: str, *flags: str) -> Path:
        if flags not in folders:
            folders[flags] = tmp_path_factory.mktemp("workloads")
        binary = folders[flags] / name
        if not binary.exists():
            compile_workload(f"{name}.c", binary, *flags)
        return binary

    return build


@pytest.fixture(scope="session")
def build_workload(compile_c: Callable[..., Path]) -> Callable[..., Path]:
    """``compile_c`` at -O0 with frame pointers, then the given flags."""

    def build(name: str, *flags: str) -> Path:
        return compile_c(name, "-O0", "-fno-omit-frame-pointer", *flags)

    return build


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def emberscope() -> Callable[..., CliResult]:
    """Run ``emberscope ARGS`` as a real process, optionally behind a wrapper."""

    def run(*args: str, wrapper: tuple[str, ...] = (), timeout: float = 120) -> CliResult:
        command = [*wrapper, sys.executable, "-m", "agent.cli", *args]
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
        )
        return CliResult(done.returncode, done.stdout, done.stderr)

    return run


def go_env(home: Path) -> dict[str, str]:
    """An environment in which the go tool works offline with its caches under ``home``."""
    return os.environ | {
        "HOME": str(home),
        "GOPATH": str(home / "gopath"),
        "GOCACHE": str(home / "gocache"),
        "GOFLAGS": "-mod=mod",
        "GOPROXY": "off",
        "CGO_ENABLED": "0",
        "PPROF_TMPDIR": str(home),
    }


@pytest.fixture(scope="session")
def build_go_workload(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Build ``tests/workloads/go/main.go`` with the given flags; return the binary."""
    if shutil.which("go") is None:
        pytest.skip("go (golang-go) is not installed")
    home = tmp_path_factory.mktemp("go-build")

    def build(name: str, *flags: str) -> Path:
        subprocess.run(
            ["go", "build", *flags, "-o", str(home / name), str(WORKLOADS / "go" / "main.go")],
            check=True,
            capture_output=True,
            env=go_env(home),
            cwd=home,
        )
        return home / name

    return build


@pytest.fixture(scope="session")
def go_pprof(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., str]:
    """Run ``go tool pprof FLAGS`` offline on profile bytes; the oracle for pprof output."""
    go = shutil.which("go")
    if go is None:
        pytest.skip("go (golang-go) is not installed; go tool pprof is the oracle here")
    home = tmp_path_factory.mktemp("go")
    env = go_env(home)

    def run(profile_bytes: bytes, *flags: str) -> str:
        path = home / "cpu.pb.gz"
        path.write_bytes(profile_bytes)
        result = subprocess.run(
            [go, "tool", "pprof", "-symbolize=none", *flags, str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return result.stdout

    return run
