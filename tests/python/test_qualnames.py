"""Qualified names of 3.8–3.10 code objects, recovered from their source,
checked against what CPython 3.11+ computes itself (co_qualname)."""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import types

from agent.python.qualnames import SourceQualnames, index_qualnames

SOURCE = textwrap.dedent(
    """\
    import functools

    class Outer:
        class Inner:
            def method(self):
                return [x for x in range(3)]

        @staticmethod
        @functools.lru_cache()
        def decorated():
            return lambda y: {k: v for k, v in ((y, y),)}

        async def coro(self):
            return (i for i in range(2))

    def outer():
        def inner():
            class Local:
                def deep(self):
                    return sorted([3, 1], key=lambda v: -v)
            return Local
        return inner

    def with_default(a=lambda: 0):
        return a
    """
)


def all_code_objects(code: types.CodeType):
    yield code
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from all_code_objects(constant)


def test_every_code_object_gets_the_qualname_cpython_gives_it():
    assert sys.version_info >= (3, 11), "co_qualname is the oracle"
    index = index_qualnames(SOURCE)
    checked = 0
    for code in all_code_objects(compile(SOURCE, "example.py", "exec")):
        if code.co_name == "<module>":
            continue
        assert index[(code.co_firstlineno, code.co_name)] == code.co_qualname, code.co_name
        checked += 1
    # comprehensions are inlined from 3.12 on, so count what this interpreter compiles
    assert checked >= 12


def test_names_from_a_process_source_file(tmp_path):
    source = tmp_path / "app.py"
    source.write_text(SOURCE)
    qualnames = SourceQualnames(proc_root="/proc")
    pid = "self"
    assert qualnames.qualname(pid, str(source), 5, "method") == "Outer.Inner.method"
    assert (
        qualnames.qualname(pid, str(source), 19, "deep")
        == "outer.<locals>.inner.<locals>.Local.deep"
    )
    # a name the source does not have at that line stays as it is
    assert qualnames.qualname(pid, str(source), 1, "method") == "method"


def test_files_that_cannot_be_read_or_parsed_keep_the_bare_name(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def f(:\n")
    qualnames = SourceQualnames(proc_root="/proc")
    pid = os.getpid()
    assert qualnames.qualname(pid, str(broken), 1, "f") == "f"
    assert qualnames.qualname(pid, str(tmp_path / "missing.py"), 1, "f") == "f"
    assert qualnames.qualname(pid, "<string>", 1, "f") == "f"
    assert index_qualnames(b"\xff\xfe not python") == {}


def test_a_fifo_at_a_source_path_is_refused_without_blocking(tmp_path):
    root = tmp_path / "proc" / "7" / "root"
    (root / "app").mkdir(parents=True)
    os.mkfifo(root / "app" / "work.py")
    names = SourceQualnames(proc_root=str(tmp_path / "proc"))
    answer = []
    reader = threading.Thread(
        target=lambda: answer.append(names.qualname(7, "/app/work.py", 3, "step"))
    )
    reader.start()
    reader.join(5)
    assert answer == ["step"], "the lookup blocked on the FIFO"
