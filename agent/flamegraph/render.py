"""A flame tree as one self-contained interactive SVG, or an HTML page holding it.

Our own small generator in the style of flamegraph.pl and inferno, not a
vendored npm package: the npm flame-graph libraries (d3-flame-graph,
speedscope) bring d3 or a bundled app of hundreds of kilobytes, to be pinned,
rebuilt and audited, and they draw from JSON at run time. Here every frame is
an SVG rectangle laid out by Python, so the file is a picture even where no
script runs (an image viewer, a README); ``flamegraph.js`` (about 150 lines,
no dependencies) adds search, zoom and the details line in a browser. The
root is at the top, as Pyroscope draws it, so a deep stack starts where the
page does. Nothing
is fetched: no font, no stylesheet, no script from elsewhere; the HTML page
says so in its Content-Security-Policy.

Frames narrower than ``MIN_SHARE`` of the whole are left out (as flamegraph.pl
drops those under 0.1 px), which bounds the file's size on huge profiles.
"""

from __future__ import annotations

import functools
import re
import zlib
from html import escape
from importlib import resources
from pathlib import Path

from agent.flamegraph.tree import KINDS, FlameNode, build_tree
from agent.pprof import encode_profile, profile_pb2

__all__ = ["FORMATS", "MIN_SHARE", "format_of", "render", "render_html", "render_svg"]

FORMATS = ("html", "svg", "pprof")

MIN_SHARE = 0.0001
_WIDTH = 1200
_PAD = 10  # left and right of the frames
_FRAME_HEIGHT = 16
_TOP = 80  # title, buttons, legend and the details line above the frames
_CHAR_WIDTH = 7.3  # of the 12 px monospace font, to fit labels in frames
_NANOS_PER_SECOND = 1e9
# Per kind, the colour at 0 and the spread over it (as flamegraph.pl's palettes).
_PALETTES = {
    "kernel": ((220, 140, 0), (35, 50, 30)),  # orange
    "native": ((205, 60, 40), (50, 60, 30)),  # red
    "python": ((70, 110, 200), (50, 60, 50)),  # blue
    "go": ((40, 160, 170), (50, 60, 60)),  # aqua
    "jit": ((60, 180, 60), (50, 60, 50)),  # green
    "": ((170, 170, 170), (20, 20, 20)),  # the root
}
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def format_of(path: Path, default: str) -> str:
    """``html`` or ``svg`` by the file's extension, as py-spy chooses; else ``default``."""
    suffix = path.suffix.lower()
    if suffix in (".html", ".htm"):
        return "html"
    if suffix == ".svg":
        return "svg"
    return default


def render(profile: profile_pb2.Profile, fmt: str, title: str, subtitle: str = "") -> bytes:
    """The profile as a file of format ``fmt`` (one of FORMATS): gzipped pprof or a flame graph."""
    if fmt == "pprof":
        return encode_profile(profile)
    root = build_tree(profile)
    if fmt == "svg":
        return render_svg(root, title, subtitle).encode()
    if fmt == "html":
        return render_html(root, title, subtitle).encode()
    raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")


def render_svg(root: FlameNode, title: str, subtitle: str = "") -> str:
    """The flame graph of ``root`` as a standalone SVG document."""
    return '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n' + _svg(root, title, subtitle)


def render_html(root: FlameNode, title: str, subtitle: str = "", header: str = "") -> str:
    """The flame graph in an HTML page; ``header`` is HTML put above it, already escaped."""
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">\n'
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; '
        "script-src 'unsafe-inline'; style-src 'unsafe-inline'\">\n"
        f"<title>{_text(title)}</title>\n"
        "<style>body{margin:8px;font:13px monospace}</style>\n"
        f"</head><body>\n{header}{_svg(root, title, subtitle)}</body></html>\n"
    )


@functools.cache
def _script() -> str:
    """flamegraph.js, read from the package once."""
    return resources.files(__package__).joinpath("flamegraph.js").read_text()


def _svg(root: FlameNode, title: str, subtitle: str) -> str:
    frames, depth = _frames(root)
    height = _TOP + (depth + 1) * _FRAME_HEIGHT + _PAD
    script = _script()
    parts = [
        f'<svg id="flamegraph" version="1.1" width="{_WIDTH}" height="{height}" '
        f'viewBox="0 0 {_WIDTH} {height}" xmlns="http://www.w3.org/2000/svg" '
        f'data-width="{_WIDTH}" data-pad="{_PAD}" data-char-width="{_CHAR_WIDTH}" '
        f'data-total="{root.total}">\n',
        "<style>text{font:12px monospace;fill:#000}g.f{cursor:pointer}"
        "g.f text{pointer-events:none}g.f:hover rect{stroke:#000;stroke-width:.5}"
        "g.match rect{fill:rgb(230,0,230)}g.parent{opacity:.5}"
        ".button{cursor:pointer;fill:#225}.hidden{display:none}</style>\n",
        f'<rect width="{_WIDTH}" height="{height}" fill="#f8f8f4"/>\n',
        f'<text x="{_WIDTH // 2}" y="20" text-anchor="middle" style="font-size:16px">'
        f"{_text(title)}</text>\n",
        f'<text x="{_WIDTH // 2}" y="36" text-anchor="middle">{_text(subtitle)}</text>\n',
        f'<text id="reset" class="button hidden" x="{_PAD}" y="20">Reset Zoom</text>\n',
        f'<text id="search" class="button" x="{_WIDTH - _PAD}" y="20" '
        'text-anchor="end">Search</text>\n',
        _legend(),
        f'<text id="matched" x="{_WIDTH - _PAD}" y="51" text-anchor="end"> </text>\n',
        f'<text id="details" x="{_PAD}" y="70"> </text>\n',
        *frames,
        f"<script><![CDATA[\n{script}]]></script>\n</svg>\n",
    ]
    return "".join(parts)


def _legend() -> str:
    parts = []
    x = _PAD
    for kind in KINDS:
        parts.append(
            f'<rect x="{x}" y="42" width="10" height="10" fill="{_colour(kind, kind)}"/>'
            f'<text x="{x + 14}" y="51">{kind}</text>'
        )
        x += 14 + len(kind) * _CHAR_WIDTH + 16
    return "".join(parts) + "\n"


def _frames(root: FlameNode) -> tuple[list[str], int]:
    """Each frame kept as an SVG group, root first; and the deepest depth drawn."""
    total = root.total or 1
    scale = (_WIDTH - 2 * _PAD) / total
    minimum = total * MIN_SHARE
    parts = []
    deepest = 0
    pending = [(root, 0, 0)]
    while pending:
        node, x, depth = pending.pop()
        deepest = max(deepest, depth)
        parts.append(_frame(node, x, depth, total, scale))
        offset = x
        for key in sorted(node.children):
            child = node.children[key]
            if child.total >= minimum:
                pending.append((child, offset, depth + 1))
            offset += child.total
    return parts, deepest


def _frame(node: FlameNode, x: int, depth: int, total: int, scale: float) -> str:
    left = _PAD + x * scale
    width = node.total * scale
    y = _TOP + depth * _FRAME_HEIGHT
    kind = node.kind or "all"
    details = (
        f"{kind} · self {_share(node.self_value, total)} · total {_share(node.total, total)} "
        f"({node.total / _NANOS_PER_SECOND:.2f} s)"
    )
    return (
        f'<g class="f" data-x="{x}" data-w="{node.total}" data-d="{depth}" data-k="{kind}">'
        f"<title>{_text(node.label)}\n{details}</title>"
        f'<rect x="{left:.2f}" y="{y}" width="{width:.2f}" height="{_FRAME_HEIGHT - 1}" '
        f'rx="2" fill="{_colour(node.kind, node.label)}"/>'
        f'<text x="{left + 3:.2f}" y="{y + _FRAME_HEIGHT - 4}">{_text(_fit(node.label, width))}'
        "</text></g>\n"
    )


def _fit(label: str, width: float) -> str:
    """The label cut to the frame's width, as flamegraph.js does after a zoom."""
    chars = int((width - 6) / _CHAR_WIDTH)
    if chars < 3:
        return ""
    return label if len(label) <= chars else label[: chars - 2] + ".."


def _colour(kind: str, name: str) -> str:
    """A colour of the kind's palette, the same for a name in every graph."""
    (red, green, blue), (d_red, d_green, d_blue) = _PALETTES.get(kind, _PALETTES[""])
    vary = (zlib.crc32(name.encode()) & 0xFFFF) / 0xFFFF
    red, green, blue = (
        red + int(d_red * vary),
        green + int(d_green * vary),
        blue + int(d_blue * vary),
    )
    return f"rgb({red},{green},{blue})"


def _share(value: int, total: int) -> str:
    return f"{100 * value / total:.2f}%"


def _text(value: str) -> str:
    """Text for XML and HTML alike: escaped, and without the characters XML forbids."""
    return escape(_NOT_XML.sub("\ufffd", value), quote=True)
