"""Fixtures that build small C workloads with gcc and run them.

Each program prints ``name 0xaddress`` for its functions, then ``ready``, and
waits for stdin to close, so a test can resolve the runtime addresses of a
live process and compare them with the names the program gave.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PROGRAM = r"""
#include <stdio.h>
#define NOINLINE __attribute__((noinline))

NOINLINE int alpha(int x) { return x * 3 + 1; }
NOINLINE static int beta(int x) { return alpha(x) ^ 5; }
NOINLINE int gamma_(int x) { return beta(x) - alpha(x); }
#ifdef WITH_LIB
void lib_report(void);
#endif

int main(void) {
    printf("alpha %p\nbeta %p\ngamma_ %p\n", (void *)alpha, (void *)beta, (void *)gamma_);
#ifdef WITH_LIB
    lib_report();
#endif
    printf("ready\n");
    fflush(stdout);
    while (getchar() != EOF) {}
    return gamma_(1) == 12345;
}
"""

LIBRARY = r"""
#include <stdio.h>
#define NOINLINE __attribute__((noinline))

NOINLINE static int lib_local(int x) { return x + 7; }
NOINLINE int lib_work(int x) { return lib_local(x) * 2; }
void lib_report(void) {
    printf("lib_local %p\nlib_work %p\nlib_report %p\n",
           (void *)lib_local, (void *)lib_work, (void *)lib_report);
}
"""

DLOPENER = r"""
#include <dlfcn.h>
#include <stdio.h>

int main(int argc, char **argv) {
    char line[16];
    printf("ready\n");
    fflush(stdout);
    if (argc < 2 || !fgets(line, sizeof line, stdin)) return 1;
    void *handle = dlopen(argv[1], RTLD_NOW);
    if (!handle) return 2;
    printf("lib_work %p\nready\n", dlsym(handle, "lib_work"));
    fflush(stdout);
    while (getchar() != EOF) {}
    return 0;
}
"""

# Symbols placed by hand to pin SymbolTable's rules (see test_elf.py).
ASSEMBLY = r"""
    .text
    .globl  sized
    .type   sized, @function
sized:
    .fill 16, 1, 0x90
    .size   sized, 16
label_after_sized:
    .fill 8, 1, 0x90
    .globl  outer
    .type   outer, @function
outer:
    .fill 8, 1, 0x90
    .type   inner, @function
inner:
    .fill 4, 1, 0x90
    .size   inner, 4
    .fill 20, 1, 0x90
    .size   outer, 32
    .globl  real_name
    .type   real_name, @function
    .weak   weak_name
    .type   weak_name, @function
    .type   local_name, @function
    .type   notype_name, @notype
real_name:
weak_name:
local_name:
notype_name:
    .fill 8, 1, 0x90
    .size   real_name, 8
    .size   weak_name, 8
    .size   local_name, 8
text_tail:
    .fill 4, 1, 0x90

    .section .tailcode, "ax", @progbits
    .p2align 6
tail_label:
    .fill 4, 1, 0x90

    .data
data_label:
    .quad 0
"""


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


def _compile(*args: str | Path) -> None:
    subprocess.run(["gcc", *map(str, args)], check=True, capture_output=True)


@pytest.fixture(scope="session")
def binaries(tmp_path_factory: pytest.TempPathFactory) -> Binaries:
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed")
    root = tmp_path_factory.mktemp("workloads")
    sources = {"prog.c": PROGRAM, "lib.c": LIBRARY, "dlopener.c": DLOPENER, "asm.s": ASSEMBLY}
    for name, text in sources.items():
        (root / name).write_text(text)
    flags = ["-O0", "-fno-omit-frame-pointer"]
    _compile(*flags, "-fPIE", "-pie", "-o", root / "prog_pie", root / "prog.c")
    _compile(*flags, "-no-pie", "-o", root / "prog_nopie", root / "prog.c")
    # A text segment above 0 makes vaddr differ from file offset in the library.
    _compile(
        *flags,
        "-shared",
        "-fPIC",
        "-Wl,-Ttext-segment=0x200000",
        "-o",
        root / "libdemo.so",
        root / "lib.c",
    )
    _compile(
        *flags,
        "-DWITH_LIB",
        "-o",
        root / "prog_lib",
        root / "prog.c",
        f"-L{root}",
        "-ldemo",
        f"-Wl,-rpath,{root}",
    )
    # The stripped copy keeps .dynsym only; the unstripped twin is its nm oracle.
    _compile(*flags, "-rdynamic", "-o", root / "prog_rdynamic", root / "prog.c")
    subprocess.run(
        ["strip", "--strip-all", "-o", str(root / "prog_stripped"), str(root / "prog_rdynamic")],
        check=True,
    )
    _compile(*flags, "-o", root / "dlopener", root / "dlopener.c", "-ldl")
    _compile("-shared", "-nostdlib", "-o", root / "libasm.so", root / "asm.s")
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
    (root / "lib32.c").write_text(
        "int f32a(int x) { return x + 1; }\nint f32b(int x) { return f32a(x) * 2; }\n"
    )
    try:
        _compile(
            "-m32",
            "-O0",
            "-shared",
            "-fPIC",
            "-nostdlib",
            "-o",
            root / "lib32.so",
            root / "lib32.c",
        )
    except subprocess.CalledProcessError:
        return None
    return root / "lib32.so"


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
