"""Qualified names for code objects of CPython 3.8–3.10, from their source.

Before 3.11 a code object knows only its bare name (``step``), not where it
was defined (``Worker.step``). The source file does: each file is parsed
once, and every function, lambda, comprehension and class body in it is
indexed by (first line, name), as ``co_firstlineno`` and ``co_name`` give
them, with the qualified name CPython itself would compute.
"""

from __future__ import annotations

import ast
import os
import warnings

from agent.errors import SymbolError
from agent.symbols.cache import LruCache
from agent.symbols.procmaps import open_in_root

__all__ = ["SourceQualnames", "index_qualnames"]

_MAX_SOURCE_BYTES = 4 << 20
_COMPREHENSIONS = {
    ast.ListComp: "<listcomp>",
    ast.SetComp: "<setcomp>",
    ast.DictComp: "<dictcomp>",
    ast.GeneratorExp: "<genexpr>",
}

# (first line, bare name) -> qualified name
QualnameIndex = dict[tuple[int, str], str]


def index_qualnames(source: str | bytes) -> QualnameIndex:
    """Every code object's qualified name in a module's source; {} if it does not parse."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes and the like in old code
            tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return {}
    index: QualnameIndex = {}
    _visit(tree, "", index)
    return index


def _visit(node: ast.AST, prefix: str, index: QualnameIndex) -> None:
    """Index the children of ``node``; ``prefix`` is their scope's qualname plus '.'."""
    for child in ast.iter_child_nodes(node):
        _visit_node(child, prefix, index)


def _visit_node(node: ast.AST, prefix: str, index: QualnameIndex) -> None:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        qualname = prefix + node.name
        # co_firstlineno is that of the first decorator, if any
        first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
        index.setdefault((first, node.name), qualname)
        for decorator in node.decorator_list:
            _visit_node(decorator, prefix, index)
        if isinstance(node, ast.ClassDef):
            for base in [*node.bases, *node.keywords]:
                _visit_node(base, prefix, index)
            inner = qualname + "."
        else:
            _visit_node(node.args, prefix, index)
            inner = qualname + ".<locals>."
        for statement in node.body:
            _visit_node(statement, inner, index)
    elif isinstance(node, ast.Lambda):
        qualname = prefix + "<lambda>"
        index.setdefault((node.lineno, "<lambda>"), qualname)
        _visit_node(node.args, prefix, index)
        _visit_node(node.body, qualname + ".<locals>.", index)
    elif type(node) in _COMPREHENSIONS:
        qualname = prefix + _COMPREHENSIONS[type(node)]
        index.setdefault((node.lineno, _COMPREHENSIONS[type(node)]), qualname)
        _visit_comprehension(node, prefix, qualname + ".<locals>.", index)
    else:
        _visit(node, prefix, index)


def _visit_comprehension(node: ast.AST, outer: str, inner: str, index: QualnameIndex) -> None:
    """The first iterable is evaluated in the enclosing scope, the rest inside."""
    for number, generator in enumerate(node.generators):  # type: ignore[attr-defined]
        _visit_node(generator.iter, inner if number else outer, index)
        _visit_node(generator.target, inner, index)
        for condition in generator.ifs:
            _visit_node(condition, inner, index)
    for field in ("elt", "key", "value"):
        if hasattr(node, field):
            _visit_node(getattr(node, field), inner, index)


class SourceQualnames:
    """Qualified names looked up in source files seen through ``/proc/<pid>/root``.

    Each file is read and parsed once; at most ``size`` indexes are kept.
    """

    def __init__(self, size: int = 64, proc_root: str = "/proc") -> None:
        self._proc_root = proc_root
        self._indexes: LruCache[tuple[int, int, int, int], QualnameIndex] = LruCache(size)

    def qualname(self, pid: int, filename: str, first_line: int, name: str) -> str:
        """The qualified name, or ``name`` itself when the source does not say."""
        if not filename or filename.startswith("<"):
            return name  # <string>, <frozen importlib._bootstrap>: no file to read
        base = "root" if os.path.isabs(filename) else "cwd"
        index = self._index(f"{self._proc_root}/{pid}/{base}", filename)
        return index.get((first_line, name), name)

    def _index(self, root: str, filename: str) -> QualnameIndex:
        """The file's index; it is opened as the process sees it, a regular file
        only (a FIFO at a source path must not block the agent)."""
        try:
            stream = open_in_root(root, filename)
        except SymbolError:
            return {}
        if stream is None:
            return {}
        try:
            with stream:
                stat = os.fstat(stream.fileno())
                key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
                index = self._indexes.get(key)
                if index is None:
                    source = stream.read(_MAX_SOURCE_BYTES + 1)
                    too_big = len(source) > _MAX_SOURCE_BYTES
                    index = {} if too_big else index_qualnames(source)
                    self._indexes.put(key, index)
                return index
        except OSError:
            return {}
