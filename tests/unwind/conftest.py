"""Fixtures of the unwind tests: C workloads built with exactly chosen flags."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

WORKLOADS = Path(__file__).resolve().parents[1] / "workloads"


@pytest.fixture(scope="session")
def compile_c(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Build ``tests/workloads/<name>.c`` with exactly the given gcc flags."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the workloads")
    out = tmp_path_factory.mktemp("unwind")
    built: dict[tuple[str, tuple[str, ...]], Path] = {}

    def build(name: str, *flags: str) -> Path:
        key = (name, flags)
        if key not in built:
            binary = out / f"{name}-{len(built)}"
            subprocess.run(
                ["gcc", *flags, "-o", str(binary), str(WORKLOADS / f"{name}.c")],
                check=True,
                capture_output=True,
            )
            built[key] = binary
        return built[key]

    return build
