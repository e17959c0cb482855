"""The offset tables against reality: the DWARF of pyenv's libpython builds (read by gdb),
and the memory of running interpreters, which also covers Debian's stripped python3.11."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from agent.python.offsets import (
    DEBUG_OFFSETS_SIZE,
    PythonOffsets,
    offsets_for,
    parse_debug_offsets,
)
from tests.python.conftest import MINORS, pyenv_python

GDB = shutil.which("gdb")
FIELDS = [field.name for field in dataclasses.fields(PythonOffsets) if field.name != "version"]


def libpython(interpreter: Path, version: tuple[int, int]) -> Path:
    """Where a shared build keeps its runtime; a static build keeps it in itself."""
    shared = interpreter.resolve().parents[1] / "lib" / f"libpython{version[0]}.{version[1]}.so.1.0"
    return shared if shared.exists() else interpreter


def read_runtime_head(image: Path) -> bytes:
    """The start of the statically initialised ``_PyRuntime``: its ``.PyRuntime`` section."""
    with image.open("rb") as stream:
        section = ELFFile(stream).get_section_by_name(".PyRuntime")
        assert section is not None, f"{image} has no .PyRuntime section"
        return section.data()[:DEBUG_OFFSETS_SIZE]


def expected_offsets(interpreter: Path, version: tuple[int, int]) -> PythonOffsets:
    """What the agent would use: the built-in table, or 3.13's own description of itself."""
    if version >= (3, 13):
        return parse_debug_offsets(read_runtime_head(libpython(interpreter, version)))
    return offsets_for(version)


# ---------------------------------------------------------------------------------------
# DWARF, through gdb's ptype/o

_MEMBER = re.compile(r"/\*\s*(\d+)(?::\s*\d+)?\s*\|\s*\d+\s*\*/\s*(.+)$")
_CLOSE = re.compile(r"\}\s*(\w*)(?:\[\d*\])*\s*;$")
_VALUE = re.compile(r"^\$\d+ = (-?\d+)$", re.MULTILINE)


def member_name(declaration: str) -> str:
    """``int f_lasti;`` -> f_lasti; also arrays, bit fields and function pointers."""
    declaration = re.sub(r"\s*:\s*\d+$", "", declaration.rstrip(";").strip())
    function_pointer = re.search(r"\(\s*\*+\s*(\w+)", declaration)
    if function_pointer:
        return function_pointer[1]
    return re.findall(r"\w+", re.sub(r"(\[\d*\])+$", "", declaration))[-1]


def parse_ptype(text: str) -> dict[str, int]:
    """Member paths (``gilstate.autoTSSkey``) to offsets, from ``ptype/o`` output.

    gdb prints the members of a nested struct at their offset in the outermost
    one (``interpreters`` at 32 holds ``head`` at 40, not 8), so no sums here.
    The member's name only comes at the nested struct's closing ``} name;``.
    """
    found: dict[str, int] = {}
    current = found
    opened: list[tuple[int, dict[str, int]]] = []
    for line in text.splitlines():
        line = line.strip()
        member = _MEMBER.match(line)
        if member:
            offset, declaration = int(member[1]), member[2].strip()
            if declaration.endswith("{"):
                opened.append((offset, current))
                current = {}
            else:
                current[member_name(declaration)] = offset
            continue
        close = _CLOSE.match(line)
        if close and opened:
            offset, parent = opened.pop()
            name = close[1]
            if name:
                parent[name] = offset
            for path, inner in current.items():
                parent[f"{name}.{path}" if name else path] = inner
            current = parent
    return found


def read_dwarf(library: Path, types: list[str], values: list[str]) -> dict[str, object]:
    """Layouts of ``types`` (None where absent) and integer ``values`` (None where unknown)."""
    commands = ["set max-value-size unlimited", "set width unlimited", "set height unlimited"]
    for name in types:
        commands += [f"echo @@{name}\\n", f"ptype/o {name}"]
    for expression in values:
        commands += [f"echo @@{expression}\\n", f"print {expression}"]
    argv = [GDB, "-nx", "-batch"]
    for command in commands:
        argv += ["-ex", command]
    done = subprocess.run(
        [*argv, str(library)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    sections: dict[str, list[str]] = {}
    for line in done.stdout.splitlines(keepends=True):
        if line.startswith("@@"):
            section = sections[line[2:].rstrip("\n")] = []
        elif sections:
            section.append(line)
    found: dict[str, object] = {}
    for name in types:
        text = "".join(sections.get(name, []))
        found[name] = parse_ptype(text) if "type = " in text else None
    for expression in values:
        value = _VALUE.search("".join(sections.get(expression, [])))
        found[expression] = int(value[1]) if value else None
    return found


def dwarf_sources(minor: int) -> dict[str, tuple[str, str] | str]:
    """For each field, the (type, member path) or gdb expression it stands for.

    A type or member the version lacks reads as None, which is what the table
    must then say (3.12 has no ``is_entry``, 3.13 no ``_PyCFrame``).
    """
    legacy = minor <= 10
    frame = "struct _frame" if legacy else "struct _PyInterpreterFrame"
    if legacy:
        frame_code, previous, instr, tstate_frame = "f_code", "f_back", "f_lasti", "frame"
    elif minor <= 12:
        frame_code, previous, instr, tstate_frame = "f_code", "previous", "prev_instr", "cframe"
    else:
        frame_code, previous, instr = "f_executable", "previous", "instr_ptr"
        tstate_frame = "current_frame"
    return {
        "runtime_tss_key": (
            "struct pyruntimestate",
            "gilstate.autoTSSkey" if minor <= 11 else "autoTSSkey",
        ),
        "tstate_frame": ("PyThreadState", tstate_frame),
        "cframe_frame": ("struct _PyCFrame", "current_frame"),
        "frame_code": (frame, frame_code),
        "frame_previous": (frame, previous),
        "frame_instr": (frame, instr),
        "frame_owner": ("struct _PyInterpreterFrame", "owner"),
        "frame_is_entry": ("struct _PyInterpreterFrame", "is_entry"),
        "owner_cstack": "(int)FRAME_OWNED_BY_CSTACK",
        "code_first_line": ("PyCodeObject", "co_firstlineno"),
        "code_filename": ("PyCodeObject", "co_filename"),
        "code_name": ("PyCodeObject", "co_name" if legacy else "co_qualname"),
        "code_linetable": ("PyCodeObject", "co_lnotab" if minor <= 9 else "co_linetable"),
        "code_adaptive": ("PyCodeObject", "co_code_adaptive"),
        "unicode_ascii_data": "sizeof(PyASCIIObject)",
        "unicode_compact_data": "sizeof(PyCompactUnicodeObject)",
        "runtime_main_interpreter": ("struct pyruntimestate", "interpreters.main"),
        "runtime_gil": ("struct pyruntimestate", "ceval.gil"),
        "interpreter_gil": ("PyInterpreterState", "ceval.gil"),
        "gil_last_holder": ("struct _gil_runtime_state", "last_holder"),
        "gil_locked": ("struct _gil_runtime_state", "locked"),
    }


@pytest.mark.skipif(GDB is None, reason="gdb is not installed")
@pytest.mark.parametrize("minor", MINORS)
def test_every_offset_is_the_dwarf_offset_of_its_member(minor):
    python = pyenv_python(minor)
    if python is None:
        pytest.skip(f"no pyenv python{minor} on this machine")
    version = (3, int(minor.split(".")[1]))
    library = libpython(python, version)
    if library == python:
        pytest.skip(f"{python} has no shared libpython carrying DWARF")
    sources = dwarf_sources(version[1])
    assert sorted(sources) == sorted(FIELDS)  # every field has its source
    types = sorted({source[0] for source in sources.values() if isinstance(source, tuple)})
    values = [source for source in sources.values() if isinstance(source, str)]
    dwarf = read_dwarf(library, types, values)
    assert dwarf["PyCodeObject"], f"gdb found no PyCodeObject in {library}: no DWARF?"
    expected = {}
    for field, source in sources.items():
        if isinstance(source, str):
            expected[field] = dwarf[source]
        else:
            layout = dwarf[source[0]]
            expected[field] = layout.get(source[1]) if layout is not None else None
    offsets = expected_offsets(python, version)
    assert offsets.version == version
    table = {field: getattr(offsets, field) for field in FIELDS}
    print(f"{library}: {sum(value is not None for value in expected.values())} offsets checked")
    assert table == expected


def test_parse_ptype_names_nested_members_by_path():
    text = """\
/* offset      |    size */  type = struct pyruntimestate {
/*      0      |       4 */    int _initialized;
/*     32      |      32 */    struct pyinterpreters {
/*     32      |       8 */        PyThread_type_lock mutex;
/*     40      |       8 */        PyInterpreterState *head;

                                   /* total size (bytes):   32 */
                               } interpreters;
/*     88      |     256 */    void (*exitfuncs[32])(void);
/*     96      |       4 */    struct {
/*     96: 0   |       4 */        unsigned int interned : 2;
                               } state;
/*    100      |       4 */    union {
/*    100      |       4 */        int anonymous;
                               };
/*    104      |       8 */    char co_code_adaptive[1];
                             }
"""
    assert parse_ptype(text) == {
        "_initialized": 0,
        "interpreters": 32,
        "interpreters.mutex": 32,
        "interpreters.head": 40,
        "exitfuncs": 88,
        "state": 96,
        "state.interned": 96,
        "anonymous": 100,
        "co_code_adaptive": 104,
    }


# ---------------------------------------------------------------------------------------
# Live memory, through ctypes in the interpreter itself

# Runs under the interpreter being checked (3.8+: no 3.9+ syntax or APIs). argv[1] is the
# offsets as JSON; prints {check: [found in memory, what Python says]}.
PROBE = r'''
import ctypes, dis, json, sys, types

offsets = json.loads(sys.argv[1])
version = tuple(sys.version_info[:2])
checks = {}


def check(name, found, want):
    checks[name] = [found, want]


def pointer(address):
    return ctypes.c_void_p.from_address(address).value or 0


def int32(address):
    return ctypes.c_int.from_address(address).value


def byte(address):
    return ctypes.c_ubyte.from_address(address).value


ctypes.pythonapi.PyThreadState_Get.restype = ctypes.c_void_p
tstate = ctypes.pythonapi.PyThreadState_Get()
runtime = ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime"))

# Code objects, compiled here and never run; the method's names are Latin-1, not ASCII.
SOURCE = "\n" * 40 + "class Foo:\n    def m\xe9thode(self, items):\n" + (
    "        total = self.value + len(items)\n"
    "        for item in items:\n"
    "            total += item.size\n"
    "        return total\n"
)
module = compile(SOURCE, "emberscope_probe.py", "exec")
klass = [const for const in module.co_consts if isinstance(const, types.CodeType)][0]
code = [const for const in klass.co_consts if isinstance(const, types.CodeType)][0]
name = code.co_qualname if version >= (3, 11) else code.co_name
table = code.co_lnotab if version < (3, 10) else code.co_linetable
base = id(code)

check("code_filename", pointer(base + offsets["code_filename"]), id(code.co_filename))
check("code_name", pointer(base + offsets["code_name"]), id(name))
check("code_first_line", int32(base + offsets["code_first_line"]), code.co_firstlineno)
stored = pointer(base + offsets["code_linetable"])
if table is (code.co_lnotab if version < (3, 10) else code.co_linetable):  # a stored object
    check("code_linetable", stored, id(table))
size = ctypes.c_ssize_t.from_address(stored + 16).value  # PyBytesObject.ob_size
check("code_linetable bytes", ctypes.string_at(stored + 32, size).hex(), table.hex())

if offsets["code_adaptive"] is not None:
    # 3.12+ quicken at creation: caches get counters, some opcodes become
    # specialised ones. Compare each instruction's base opcode and argument.
    raw = ctypes.string_at(base + offsets["code_adaptive"], len(code.co_code))
    plain = code.co_code
    differ = [
        at for at in range(0, len(plain), 2)
        if plain[at] != dis.opmap["CACHE"]
        and (dis._deoptop(raw[at]) != plain[at] or raw[at + 1] != plain[at + 1])
    ]
    compared = sum(plain[at] != dis.opmap["CACHE"] for at in range(0, len(plain), 2))
    check("code_adaptive instructions", [differ, compared > 5], [[], True])

ascii_text = "".join(["ember", "scope"])
latin1_text = "".join(["m", "\xe9", "thode"])
for label, text, field, encoding in [
    ("a str", ascii_text, "unicode_ascii_data", "ascii"),
    ("co_filename", code.co_filename, "unicode_ascii_data", "ascii"),
    ("a str", latin1_text, "unicode_compact_data", "latin-1"),
    ("the code's name", name, "unicode_compact_data", "latin-1"),
]:
    data = ctypes.string_at(id(text) + offsets[field], len(text))
    check("%s: %s" % (field, label), data.decode(encoding, "replace"), text)

# Py_tss_t autoTSSkey: {int _is_initialized; pthread_key_t _key}, holding this thread's state.
libc = ctypes.CDLL(None)
libc.pthread_getspecific.argtypes = [ctypes.c_uint]
libc.pthread_getspecific.restype = ctypes.c_void_p
key = runtime + offsets["runtime_tss_key"]
check("runtime_tss_key initialised", int32(key), 1)
check("runtime_tss_key", libc.pthread_getspecific(ctypes.c_uint.from_address(key + 4).value),
      tstate)
check("runtime head", ctypes.string_at(runtime, 584).hex(), None)


def probe():
    """Walk this thread's frames from its PyThreadState, as the BPF program does."""
    # Read inline: within pointer() the newest frame would be pointer's own.
    frame = ctypes.c_void_p.from_address(tstate + offsets["tstate_frame"]).value
    if offsets["cframe_frame"] is not None:
        frame = ctypes.c_void_p.from_address(frame + offsets["cframe_frame"]).value
    chain = []
    while frame and len(chain) < 64:
        owner = entry = None
        if offsets["frame_owner"] is not None:
            owner = byte(frame + offsets["frame_owner"])
        if offsets["frame_is_entry"] is not None:
            entry = byte(frame + offsets["frame_is_entry"])
        chain.append((frame, pointer(frame + offsets["frame_code"]), owner, entry))
        frame = pointer(frame + offsets["frame_previous"])
    shims = [link for link in chain if link[2] is not None and link[2] == offsets["owner_cstack"]]
    frames = [link for link in chain if link not in shims]
    python = []
    here = sys._getframe()
    while here is not None:
        python.append(here)
        here = here.f_back
    check("frame chain codes", [link[1] for link in frames], [id(f.f_code) for f in python])
    if offsets["code_adaptive"] is None:  # PyFrameObjects themselves, f_lasti an int
        check("frame chain frames", [link[0] for link in frames], [id(f) for f in python])
        lasti = int32(frames[1][0] + offsets["frame_instr"]) * offsets["lasti_unit"]
    else:
        instr = pointer(frames[1][0] + offsets["frame_instr"])
        lasti = instr - (frames[1][1] + offsets["code_adaptive"])
        # probe, the generator, caller, <module>: only the generator's frame is its own.
        check("frame_owner", [link[2] for link in frames], [0, 1, 0, 0])
    check("frame_instr", lasti, python[1].f_lasti)
    if offsets["frame_is_entry"] is not None:  # the generator and <module> entered from C
        check("frame_is_entry", [link[3] for link in frames], [0, 1, 0, 1])
    if offsets["owner_cstack"] is not None:
        check("owner_cstack shims", len(shims) >= 1, True)


def generator():
    yield probe()


def caller():
    return next(generator())


caller()
json.dump(checks, sys.stdout)
'''


def test_offsets_read_the_right_things_in_a_live_interpreter(interpreter):
    path, version = interpreter
    offsets = expected_offsets(path, version)
    described = dataclasses.asdict(offsets) | {"lasti_unit": offsets.lasti_unit}
    done = subprocess.run(
        [str(path), "-c", PROBE, json.dumps(described)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    checks = json.loads(done.stdout)
    head = bytes.fromhex(checks.pop("runtime head")[0])
    if version >= (3, 13):  # the file's _Py_DebugOffsets is what the process holds
        assert head == read_runtime_head(libpython(path, version))
    wrong = {name: pair for name, pair in checks.items() if pair[0] != pair[1]}
    print(f"{path} ({version[0]}.{version[1]}): {len(checks)} live checks")
    assert wrong == {}
    assert len(checks) >= 14
