"""Real CPython interpreters to test against: pyenv's builds of 3.8–3.13
(shared libpython with DWARF) and Debian's static, stripped python3.11."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest

PYENV_ROOT = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
MINORS = ["3.8", "3.9", "3.10", "3.11", "3.12", "3.13"]
DEBIAN_PYTHON = Path("/usr/bin/python3.11")


def pyenv_python(minor: str) -> Path | None:
    """The newest pyenv build of ``minor``, or None when pyenv has none."""
    found = sorted(
        glob.glob(str(PYENV_ROOT / "versions" / f"{minor}.*" / "bin" / f"python{minor}")),
        key=lambda path: [int(part) for part in Path(path).parts[-3].split(".") if part.isdigit()],
    )
    return Path(found[-1]) if found else None


def _interpreters() -> list[pytest.param]:
    params = [pytest.param(("pyenv", minor), id=f"pyenv-{minor}") for minor in MINORS]
    params.append(pytest.param(("debian", "3.11"), id="debian-3.11"))
    return params


def only_on(*ids: str) -> pytest.MarkDecorator:
    """Runs a test on these interpreters alone ("pyenv-3.8", "debian-3.11"): for what
    does not depend on the interpreter's version, to keep the suite short."""
    chosen = [param for param in _interpreters() if param.id in ids]
    assert len(chosen) == len(ids), f"unknown interpreter among {ids}"
    return pytest.mark.parametrize("interpreter", chosen, indirect=True)


@pytest.fixture(params=_interpreters())
def interpreter(request: pytest.FixtureRequest) -> tuple[Path, tuple[int, int]]:
    """(path of a real interpreter, its minor version); skipped where absent."""
    kind, minor = request.param
    path = DEBIAN_PYTHON if kind == "debian" else pyenv_python(minor)
    if path is None or not path.exists():
        pytest.skip(f"no {kind} python{minor} on this machine")
    major, _, rest = minor.partition(".")
    return path, (int(major), int(rest))
