"""bench/RESULTS.md: each benchmark rewrites its own top-level section and keeps
the others; and the one line that names the machine a figure comes from."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().with_name("RESULTS.md")


def describe_machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    model = found.group(1).strip() if found else "unknown CPU"
    return f"Linux {platform.release()}, {os.cpu_count()} CPUs, {model}"


def replace_section(document: str, section: str) -> str:
    """``document`` with the top-level section titled as ``section``'s first
    line replaced by ``section``, or ``section`` added at the end."""
    title = section.splitlines()[0]
    lines = document.splitlines(keepends=True)
    if title + "\n" not in lines:
        return document.rstrip("\n") + "\n\n" + section if document else section
    start = lines.index(title + "\n")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("# ")), len(lines))
    rest = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + rest if rest else "")


def write_section(section: str) -> None:
    """Put ``section`` (a ``# Title`` line and its text) into RESULTS.md."""
    document = RESULTS.read_text() if RESULTS.exists() else ""
    RESULTS.write_text(replace_section(document, section))
