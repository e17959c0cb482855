"""The agent's page of recent profiles: its targets, and each one's flame graph
for the last few intervals, or their merged pprof to download.

    /profiles/                          the targets, with links to each window
    /profiles/<target>/last-<n>.html    the flame graph of the target's last n intervals
    /profiles/<target>/last-<n>.pb.gz   the same intervals merged into one pprof

Only reads: every answer is computed from ``RecentProfiles`` on a worker thread.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from html import escape
from http import HTTPStatus

from agent.flamegraph import build_tree, render_html
from agent.pprof import encode_profile, merge_profiles, read_profile
from agent.write import RecentProfiles

__all__ = ["PROFILES_PATH", "ProfilesPage"]

PROFILES_PATH = "/profiles/"
_WINDOW = re.compile(r"/profiles/([0-9a-f]{16})/last-([0-9]{1,4})\.(html|pb\.gz)")

Answer = tuple[int, str, bytes]


class ProfilesPage:
    """Routes the ``/profiles/`` paths to their answers over ``recent``."""

    def __init__(self, recent: RecentProfiles) -> None:
        self.recent = recent

    def route(self, path: str) -> Callable[[], Answer] | None:
        """What answers ``path``; None when it is not one of this page's. Takes no lock."""
        if path in (PROFILES_PATH, PROFILES_PATH.rstrip("/")):
            return self.index
        match = _WINDOW.fullmatch(path)
        if match is None:
            return None
        target, count, suffix = match.group(1), int(match.group(2)), match.group(3)
        if suffix == "html":
            return lambda: self.flame_graph(target, count)
        return lambda: self.pprof(target, count)

    def index(self) -> Answer:
        rows = []
        for target, labels in sorted(self.recent.targets().items(), key=lambda t: _name(t[1])):
            held = len(self.recent.last(target, self.recent.intervals))
            windows = " ".join(
                f'<a href="{target}/last-{n}.html">last {n}</a>' for n in range(1, held + 1)
            )
            rows.append(
                f"<tr><td><b>{escape(_name(labels))}</b><br><small>{escape(_labels(labels))}"
                f"</small></td><td>{held}</td><td>{windows}</td>"
                f'<td><a href="{target}/last-{held}.pb.gz" download>pprof</a></td></tr>'
            )
        body = "\n".join(rows) or '<tr><td colspan="4">No profile yet.</td></tr>'
        page = (
            '<!DOCTYPE html>\n<html><head><meta charset="utf-8">\n'
            '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
            "style-src 'unsafe-inline'\">\n<title>Emberscope: recent profiles</title>\n"
            "<style>body{font:13px monospace;margin:16px}td,th{padding:4px 12px;"
            "text-align:left;vertical-align:top}</style></head><body>\n"
            "<h1>Recent profiles</h1>\n"
            f"<p>The last {self.recent.intervals} intervals of each target, at most "
            f"{self.recent.max_bytes >> 20} MiB in all.</p>\n"
            "<table><tr><th>target</th><th>intervals</th><th>flame graph</th><th></th></tr>\n"
            f"{body}\n</table></body></html>\n"
        )
        return HTTPStatus.OK, "text/html; charset=utf-8", page.encode()

    def flame_graph(self, target: str, count: int) -> Answer:
        labels = self.recent.targets().get(target)
        profiles = self.recent.last(target, count)
        if labels is None or not profiles:
            return _not_held()
        merged = merge_profiles(read_profile(p.data) for p in profiles)
        held = len(self.recent.last(target, self.recent.intervals))
        windows = " ".join(
            f'<a href="last-{n}.html">{"<b>" * (n == count)}last {n}{"</b>" * (n == count)}</a>'
            for n in range(1, held + 1)
        )
        header = (
            f'<p><a href="../">all targets</a> · window: {windows} · '
            f'<a href="last-{len(profiles)}.pb.gz" download>pprof</a></p>\n'
        )
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(merged.time_nanos / 1e9))
        subtitle = (
            f"{_labels(labels)} · {len(profiles)} intervals, "
            f"{merged.duration_nanos / 1e9:.0f} s from {started}"
        )
        page = render_html(build_tree(merged), _name(labels), subtitle, header)
        return HTTPStatus.OK, "text/html; charset=utf-8", page.encode()

    def pprof(self, target: str, count: int) -> Answer:
        profiles = self.recent.last(target, count)
        if not profiles:
            return _not_held()
        if len(profiles) == 1:
            return HTTPStatus.OK, "application/octet-stream", profiles[0].data  # as it was sent
        merged = merge_profiles(read_profile(p.data) for p in profiles)
        return HTTPStatus.OK, "application/octet-stream", encode_profile(merged)


def _not_held() -> Answer:
    return HTTPStatus.NOT_FOUND, "text/plain", b"no profile of this target is held\n"


def _name(labels: Mapping[str, str]) -> str:
    return labels.get("service_name", "unspecified")


def _labels(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "service_name")
