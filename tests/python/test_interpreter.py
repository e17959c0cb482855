"""InterpreterFinder against real interpreters: each address is checked against what the
child reports through ctypes, and the TSS key by reading glibc's TSD slot of each thread."""

from __future__ import annotations

import json
import os
import select
import shutil
import struct
import subprocess
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile

from agent.errors import ProcessError, PythonError, SymbolError
from agent.python import interpreter as interpreter_module
from agent.python import runtime_file
from agent.python.interpreter import Interpreter, InterpreterFinder, InterpreterNotReady
from agent.python.runtime_file import PythonFile, Refused, read_python_file
from tests.conftest import compile_workload
from tests.python.conftest import DEBIAN_PYTHON, pyenv_python

# Reports, as one JSON line, what the finder must find, for the main
# thread and a second one, then sleeps. argv[1], if given, is mmapped first.
CHILD = r"""
import ctypes, json, mmap, sys, threading, time
if len(getattr(sys, "argv", [])) > 1:
    with open(sys.argv[1], "rb") as extra:
        kept = mmap.mmap(extra.fileno(), 0, prot=mmap.PROT_READ)
libc = ctypes.CDLL(None)
libc.pthread_self.restype = ctypes.c_void_p
this_tstate = ctypes.pythonapi.PyGILState_GetThisThreadState
this_tstate.restype = ctypes.c_void_p

def me():
    tid = threading.get_native_id()
    return {"tid": tid, "pthread": libc.pthread_self(), "tstate": this_tstate()}

threads, ready = [], threading.Event()
def second():
    threads.append(me())
    ready.set()
    time.sleep(60)
threading.Thread(target=second, daemon=True).start()
ready.wait()
print(json.dumps({
    "runtime": ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime")),
    "code_type": id(type((lambda: 0).__code__)),
    "version": list(sys.version_info[:3]),
    "threads": [me()] + threads,
}), flush=True)
time.sleep(60)
"""

PYENV_MINORS = ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]

# glibc's struct pthread: specific_1stblock at 0x310, 16-byte {seq, data} entries.
GLIBC_SPECIFIC = 0x310


@pytest.fixture
def finder() -> InterpreterFinder:
    """A finder whose cache starts empty."""
    return InterpreterFinder()


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Start processes that are killed and reaped at teardown."""
    children: list[subprocess.Popen[str]] = []

    def start(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        child = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        children.append(child)
        return child

    yield start
    for child in children:
        child.kill()
        child.wait()


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An embedding host: maps libpython (argv[1]) but initialises it only once a
    line arrives on stdin, then runs argv[2]. argv[3], if given, is how many
    pthread keys to take first."""
    root = tmp_path_factory.mktemp("host")
    return compile_workload("python_host.c", root / "host", link=["-ldl"])


def start_host(
    spawn: Callable[..., subprocess.Popen[str]],
    host: Path,
    library: Path,
    prefix: Path,
    keys_first: int = 0,
) -> subprocess.Popen[str]:
    """The host with ``library`` loaded, Python not yet initialised."""
    argv = [str(host), str(library), CHILD, str(keys_first)]
    child = spawn(argv, env={**os.environ, "PYTHONHOME": str(prefix)})
    assert readline(child) == "loaded\n"
    return child


def initialize(child: subprocess.Popen[str]) -> dict[str, Any]:
    assert child.stdin is not None
    child.stdin.write("go\n")
    child.stdin.flush()
    return report(child)


def readline(child: subprocess.Popen[str], timeout: float = 10) -> str:
    """One line of the child's output; fails instead of hanging."""
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    assert ready, f"no output from pid {child.pid} in {timeout} s"
    return child.stdout.readline()


def report(child: subprocess.Popen[str]) -> dict[str, Any]:
    line = readline(child)
    assert line, f"the child exited with {child.wait()}"
    return json.loads(line)


def expected_path(python: Path, minor: tuple[int, int]) -> str:
    if python == DEBIAN_PYTHON:
        return str(DEBIAN_PYTHON)
    library = python.parent.parent / "lib" / f"libpython{minor[0]}.{minor[1]}.so.1.0"
    return os.path.realpath(library)


def read_word(pid: int, address: int) -> int:
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:
        mem.seek(address)
        return struct.unpack("<Q", mem.read(8))[0]


def assert_matches(found: Interpreter | None, pid: int, facts: dict[str, Any]) -> None:
    """The addresses are the child's, and each thread's TSD slot holds its thread state."""
    assert found is not None
    assert list(found.version) == facts["version"]
    assert found.offsets.version == tuple(facts["version"][:2])
    assert found.runtime_address == facts["runtime"]
    assert found.code_type_address == facts["code_type"]
    assert 0 <= found.tss_key < 32
    assert len(facts["threads"]) == 2
    for thread in facts["threads"]:
        slot = thread["pthread"] + GLIBC_SPECIFIC + 16 * found.tss_key + 8
        assert thread["tstate"] and read_word(pid, slot) == thread["tstate"]


def wait_for_interpreter(
    finder: InterpreterFinder, pid: int, seen: list[str] | None = None
) -> Interpreter:
    """Poll from the moment the process starts; every answer before the right one is
    None or InterpreterNotReady (recorded in ``seen``)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            found = finder.find(pid)
        except InterpreterNotReady:
            found, outcome = None, "not ready"
        else:
            outcome = "none"
        if found is not None:
            return found
        if seen is not None and (not seen or seen[-1] != outcome):
            seen.append(outcome)
        time.sleep(0.001)
    raise AssertionError(f"no interpreter in pid {pid} after 10 s")


@pytest.mark.parametrize("module", [interpreter_module, runtime_file])
def test_all_lists_the_public_names_sorted(module):
    public = sorted(
        name
        for name in dir(module)
        if not name.startswith("_")
        and not isinstance(getattr(module, name), types.ModuleType)
        and getattr(getattr(module, name), "__module__", None) == module.__name__
    )
    assert module.__all__ == sorted(module.__all__) == public


def test_finds_runtime_code_type_version_and_tss_key(interpreter, spawn, finder):
    python, minor = interpreter
    child = spawn([str(python), "-c", CHILD])
    facts = report(child)
    found = finder.find(child.pid)
    assert found is not None
    assert found.path == expected_path(python, minor)
    assert_matches(found, child.pid, facts)


def test_interpreter_just_started_is_never_misread(interpreter, spawn, finder):
    python, _ = interpreter
    child = spawn([str(python), "-c", CHILD])
    seen: list[str] = []
    found = wait_for_interpreter(finder, child.pid, seen)
    assert set(seen) <= {"none", "not ready"}
    assert_matches(found, child.pid, report(child))


@pytest.mark.parametrize("minor", ["3.9", "3.13"])
def test_stripped_libpython_copy_is_found(minor, spawn, tmp_path, finder):
    python = pyenv_python(minor)
    if python is None:
        pytest.skip(f"no pyenv python{minor}")
    name = f"libpython{minor}.so.1.0"
    stripped = tmp_path / name
    subprocess.run(
        ["strip", "--strip-all", "-o", str(stripped), str(python.parent.parent / "lib" / name)],
        check=True,
    )
    sections = subprocess.run(
        ["readelf", "-SW", str(stripped)], check=True, capture_output=True, text=True
    ).stdout
    assert ".symtab" not in sections and ".dynsym" in sections
    # The launcher has a RUNPATH, which LD_LIBRARY_PATH overrides.
    env = {**os.environ, "LD_LIBRARY_PATH": str(tmp_path)}
    child = spawn([str(python), "-c", CHILD], env=env)
    facts = report(child)
    found = finder.find(child.pid)
    assert found is not None and found.path == str(stripped)
    assert_matches(found, child.pid, facts)


def test_runtime_falls_back_to_the_pyruntime_section(tmp_path):
    if not DEBIAN_PYTHON.exists():
        pytest.skip("no Debian python3.11")
    data = DEBIAN_PYTHON.read_bytes()
    hidden = tmp_path / "python3.11"
    assert data.count(b"\0_PyRuntime\0") >= 1
    hidden.write_bytes(data.replace(b"\0_PyRuntime\0", b"\0_PyRuntimX\0"))
    with open(DEBIAN_PYTHON, "rb") as stream:
        original = read_python_file(stream, str(DEBIAN_PYTHON))
    with open(hidden, "rb") as stream:
        fallback = read_python_file(stream, str(hidden))
    with open(DEBIAN_PYTHON, "rb") as stream:
        section = ELFFile(stream).get_section_by_name(".PyRuntime")["sh_addr"]
    assert isinstance(original, PythonFile)
    assert isinstance(fallback, PythonFile)
    assert original.runtime == fallback.runtime == section
    assert fallback.version == original.version


@pytest.mark.parametrize("minor", PYENV_MINORS)
def test_embedding_host_is_not_ready_until_initialized(minor, host, spawn, finder):
    python = pyenv_python(minor)
    if python is None:
        pytest.skip(f"no pyenv python{minor}")
    library = python.parent.parent / "lib" / f"libpython{minor}.so.1.0"
    child = start_host(spawn, host, library, python.parent.parent)
    with pytest.raises(InterpreterNotReady, match="not initialized yet"):
        finder.find(child.pid)
    facts = initialize(child)
    found = finder.find(child.pid)
    assert found is not None and found.path == os.path.realpath(library)
    assert_matches(found, child.pid, facts)


@pytest.mark.parametrize(
    ("name", "found"), [("libembedded-python-rt.so", True), ("libruntime.so", False)]
)
def test_renamed_libpython_is_found_while_its_name_says_python(
    name, found, host, spawn, tmp_path, finder
):
    python = pyenv_python("3.12")
    if python is None:
        pytest.skip("no pyenv python3.12")
    renamed = tmp_path / name
    shutil.copy(python.parent.parent / "lib" / "libpython3.12.so.1.0", renamed)
    child = start_host(spawn, host, renamed, python.parent.parent)
    facts = initialize(child)
    result = finder.find(child.pid)
    if found:
        assert result is not None and result.path == str(renamed)
        assert_matches(result, child.pid, facts)
    else:
        assert result is None


def test_tss_key_beyond_glibcs_first_block_is_refused(host, spawn, finder):
    python = pyenv_python("3.12")
    if python is None:
        pytest.skip("no pyenv python3.12")
    library = python.parent.parent / "lib" / "libpython3.12.so.1.0"
    child = start_host(spawn, host, library, python.parent.parent, keys_first=40)
    initialize(child)
    with pytest.raises(PythonError, match="TSS key is 4[0-9]") as refused:
        finder.find(child.pid)
    assert not isinstance(refused.value, InterpreterNotReady)


def test_musl_processes_are_refused(spawn, tmp_path):
    # A captured /proc tree (no musl system here): a real process's maps plus
    # ld-musl, its files reached through root/.
    python = pyenv_python("3.12")
    if python is None:
        pytest.skip("no pyenv python3.12")
    child = spawn([str(python), "-c", CHILD])
    report(child)
    captured = tmp_path / str(child.pid)
    captured.mkdir()
    (captured / "root").symlink_to("/")
    maps = Path(f"/proc/{child.pid}/maps").read_text()
    musl = "7f0000000000-7f0000001000 r-xp 00000000 00:00 4242 /lib/ld-musl-x86_64.so.1\n"
    (captured / "maps").write_text(maps + musl)
    with pytest.raises(PythonError, match="musl"):
        InterpreterFinder(str(tmp_path)).find(child.pid)


def test_library_still_loading_is_not_ready(spawn, tmp_path):
    # A captured /proc tree of the moment ld.so has reserved libpython's span as
    # one mapping of file offset 0, before mapping each segment in its place:
    # _PyRuntime's address then holds other bytes of the file.
    python = pyenv_python("3.11")
    if python is None:
        pytest.skip("no pyenv python3.11")
    child = spawn([str(python), "-c", CHILD])
    report(child)
    library = os.path.realpath(python.parent.parent / "lib" / "libpython3.11.so.1.0")
    lines = Path(f"/proc/{child.pid}/maps").read_text().splitlines()
    ours = [line for line in lines if line.endswith(library)]
    first, last = ours[0].split(), ours[-1].split()
    span = f"{first[0].split('-')[0]}-{last[0].split('-')[1]}"
    reserved = " ".join([span, "r--p", *first[2:]])
    captured = tmp_path / str(child.pid)
    captured.mkdir()
    (captured / "root").symlink_to("/")
    (captured / "maps").write_text(
        "\n".join([reserved] + [line for line in lines if line not in ours]) + "\n"
    )
    with pytest.raises(InterpreterNotReady, match="_PyRuntime of .* is not mapped"):
        InterpreterFinder(str(tmp_path)).find(child.pid)


def test_newer_minor_with_unknown_layout_is_refused(tmp_path):
    python = pyenv_python("3.13")
    if python is None:
        pytest.skip("no pyenv python3.13")
    data = (python.parent.parent / "lib" / "libpython3.13.so.1.0").read_bytes()
    hexversion = struct.pack("<I", 0x030D00F0)  # Py_Version and _Py_DebugOffsets.version
    assert data.count(hexversion) >= 1
    future = tmp_path / "libpython3.14.so.1.0"
    future.write_bytes(data.replace(hexversion, struct.pack("<I", 0x030E00F0)))
    with open(future, "rb") as stream:
        refused = read_python_file(stream, str(future))
    assert isinstance(refused, Refused)
    assert refused.problem == "CPython 3.14.0 is not supported: only 3.8–3.13"


def test_not_python_is_none_after_one_cheap_parse(spawn, finder):
    child = spawn(["sleep", "30"])  # Popen returns once exec has succeeded
    assert finder.find(child.pid) is None
    # At most the executable is read (libc and ld.so are not named like Python).
    assert finder.parsed <= 1
    assert finder.find(child.pid) is None
    assert finder.parsed <= 1


@pytest.mark.parametrize("version", ["2.7", "3.6", "3.7"])
def test_unsupported_versions_are_refused_by_name(version, spawn, finder):
    python = pyenv_python(version)
    if python is None:
        pytest.skip(f"no pyenv python{version}")
    child = spawn([str(python), "-c", "import time; time.sleep(30)"])
    deadline = time.monotonic() + 10
    with pytest.raises(PythonError) as refused:
        while time.monotonic() < deadline and finder.find(child.pid) is None:
            time.sleep(0.005)
    assert not isinstance(refused.value, InterpreterNotReady)
    message = str(refused.value)
    assert f"CPython {version}." in message and "3.8–3.13" in message


def test_gone_process_raises_process_error(finder):
    child = subprocess.Popen(["true"])
    child.wait()
    assert not Path(f"/proc/{child.pid}").exists()
    with pytest.raises(ProcessError):
        finder.find(child.pid)


def test_corrupt_file_named_libpython_does_not_hide_the_real_one(spawn, tmp_path, finder):
    python = pyenv_python("3.12")
    if python is None:
        pytest.skip("no pyenv python3.12")
    corrupt = tmp_path / "libpython3.11.so.1.0"
    corrupt.write_bytes(
        (python.parent.parent / "lib" / "libpython3.12.so.1.0").read_bytes()[:65536]
    )
    child = spawn([str(python), "-c", CHILD, str(corrupt)])
    facts = report(child)
    assert str(corrupt) in Path(f"/proc/{child.pid}/maps").read_text()
    found = finder.find(child.pid)
    assert found is not None and found.path.endswith("libpython3.12.so.1.0")
    assert_matches(found, child.pid, facts)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda lib: lib[:65536], id="truncated"),
        pytest.param(lambda lib: lib[:64] + b"\xff" * 4096, id="garbage-headers"),
        pytest.param(lambda lib: b"\x7fELF" + b"\0" * 60, id="bare-header"),
    ],
)
def test_corrupt_elf_raises_symbol_error_only(content, tmp_path):
    library = pyenv_python("3.11")
    if library is None:
        pytest.skip("no pyenv python3.11")
    data = (library.parent.parent / "lib" / "libpython3.11.so.1.0").read_bytes()
    corrupt = tmp_path / "libpython3.11.so.1.0"
    corrupt.write_bytes(content(data))
    with open(corrupt, "rb") as stream:
        try:
            found = read_python_file(stream, str(corrupt))
        except SymbolError:
            return
    assert found == ""


def test_each_file_is_parsed_once_for_many_processes(spawn, finder):
    python = pyenv_python("3.12")
    if python is None:
        pytest.skip("no pyenv python3.12")
    first, second = spawn([str(python), "-c", CHILD]), spawn([str(python), "-c", CHILD])
    first_facts, second_facts = report(first), report(second)
    found_first = finder.find(first.pid)
    parsed = finder.parsed
    found_second = finder.find(second.pid)
    assert parsed == 1  # libpython is tried first, so the launcher is never read
    assert finder.parsed == parsed
    assert_matches(found_first, first.pid, first_facts)
    assert_matches(found_second, second.pid, second_facts)
    assert found_first is not None and found_second is not None
    assert found_first.offsets is found_second.offsets
