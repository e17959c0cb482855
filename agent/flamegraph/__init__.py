"""Flame graphs: pprof profiles drawn as one interactive, self-contained SVG or HTML file."""

from agent.flamegraph.render import (
    FORMATS,
    MIN_SHARE,
    format_of,
    render,
    render_html,
    render_svg,
)
from agent.flamegraph.sources import ProfileFile, Selection, select_profiles
from agent.flamegraph.tree import KINDS, FlameNode, build_tree

__all__ = [
    "FORMATS",
    "FlameNode",
    "KINDS",
    "MIN_SHARE",
    "ProfileFile",
    "Selection",
    "build_tree",
    "format_of",
    "render",
    "render_html",
    "render_svg",
    "select_profiles",
]
