"""Fixtures that build small C workloads of tests/workloads and run them.

Each program prints ``name 0xaddress`` for its functions, then ``ready``, and
waits for stdin to close, so a test can resolve the runtime addresses of a
live process and compare them with the names the program gave.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import compile_workload


@dataclass(frozen=True)
class Binaries:
    """Paths of the programs built for a session; ``lib32`` is None without -m32."""

    root: Path
    pie: Path
    nopie: Path
    library: Path
    with_library: Path
    rdynamic: Path
    stripped: Path
    dlopener: Path
    assembly: Path
    lib32: Path | None


@pytest.fixture(scope="session")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> Binaries:
    root = tmp_path_factory.mktemp("workloads")
    flags = ["-O0", "-fno-omit-frame-pointer"]
    program = "named_functions.c"
    compile_workload(program, root / "prog_pie", *flags, "-fPIE", "-pie")
    compile_workload(program, root / "prog_nopie", *flags, "-no-pie")
    # A text segment above 0 makes vaddr differ from file offset in the library.
    compile_workload(
        "named_functions_lib.c",
        root / "libdemo.so",
        *flags,
        "-shared",
        "-fPIC",
        "-Wl,-Ttext-segment=0x200000",
    )
    compile_workload(
        program,
        root / "prog_lib",
        *flags,
        "-DWITH_LIB",
        link=[f"-L{root}", "-ldemo", f"-Wl,-rpath,{root}"],
    )
    # The stripped copy keeps .dynsym only; the unstripped twin is its nm oracle.
    compile_workload(program, root / "prog_rdynamic", *flags, "-rdynamic")
    subprocess.run(
        ["strip", "--strip-all", "-o", str(root / "prog_stripped"), str(root / "prog_rdynamic")],
        check=True,
    )
    compile_workload("dlopen_on_request.c", root / "dlopener", *flags, link=["-ldl"])
    compile_workload("placed_symbols.s", root / "libasm.so", "-shared", "-nostdlib")
    return Binaries(
        root=root,
        pie=root / "prog_pie",
        nopie=root / "prog_nopie",
        library=root / "libdemo.so",
        with_library=root / "prog_lib",
        rdynamic=root / "prog_rdynamic",
        stripped=root / "prog_stripped",
        dlopener=root / "dlopener",
        assembly=root / "libasm.so",
        lib32=_build_lib32(root),
    )


def _build_lib32(root: Path) -> Path | None:
    flags = ["-m32", "-O0", "-shared", "-fPIC", "-nostdlib"]
    try:
        return compile_workload("lib32.c", root / "lib32.so", *flags)
    except subprocess.CalledProcessError:
        return None


@pytest.fixture(scope="session")
def nm() -> Callable[..., dict[int, tuple[int, set[str]]]]:
    return nm_functions


def nm_functions(path: Path, dynamic: bool = False) -> dict[int, tuple[int, set[str]]]:
    """The oracle: address -> (largest size, names) of every FUNC or IFUNC symbol nm lists."""
    args = ["nm", "--format=sysv", "--defined-only", *(["-D"] if dynamic else []), str(path)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    found: dict[int, tuple[int, set[str]]] = {}
    # name | value | class | type | size | line | section; class i is an IFUNC.
    for row in (line.split("|") for line in out.splitlines() if line.count("|") == 6):
        if row[3].strip() != "FUNC" and row[2].strip() != "i":
            continue
        address, size = int(row[1], 16), int(row[4].strip() or "0", 16)
        old_size, names = found.get(address, (0, set()))
        names.add(row[0].strip().split("@")[0])
        found[address] = (max(size, old_size), names)
    return found


@dataclass
class Workload:
    """A running test program and the addresses it printed."""

    process: subprocess.Popen[str]
    addresses: dict[str, int] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def read_until_ready(self) -> dict[str, int]:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.strip() == "ready":
                return self.addresses
            name, address = line.split()
            self.addresses[name] = int(address, 16)
        raise AssertionError(f"workload exited early with {self.process.wait()}")

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        """Close stdin so the program returns from main, then reap it."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def run_workload() -> Iterator[Callable[..., Workload]]:
    """Start a program, wait for its ``ready`` line; every one started is stopped after."""
    started: list[Workload] = []

    def start(path: Path, *args: str) -> Workload:
        process = subprocess.Popen(
            [str(path), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        workload = Workload(process)
        started.append(workload)
        workload.read_until_ready()
        return workload

    yield start
    for workload in started:
        workload.stop()


@pytest.fixture(scope="session")
def readelf_build_id() -> Callable[[Path], str]:
    """The oracle for build ids: the ``Build ID:`` line of ``readelf -n``."""

    def build_id(path: Path) -> str:
        out = subprocess.run(
            ["readelf", "-n", str(path)], check=True, capture_output=True, text=True
        ).stdout
        return next(line.split()[-1] for line in out.splitlines() if "Build ID:" in line)

    return build_id
