"""Frame kinds and the flame tree read back from pprof, and the files drawn from it."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from agent.flamegraph import MIN_SHARE, build_tree, render, render_svg
from agent.pprof import ProfileBuilder, read_profile
from agent.symbols.frames import Frame, MappedFile

APP = MappedFile(0x400000, 0x480000, 0, "/usr/bin/app", "ab12")
GO = MappedFile(0x500000, 0x580000, 0, "/usr/bin/server", "cd34")
ANON = MappedFile(0x7F0000000000, 0x7F0000100000, 0, "")
MAIN = Frame("main", 0x401000, APP)
WORK = Frame("work", 0x402000, APP)
GO_MAIN = Frame("main.main", 0x501000, GO)
GO_RUNTIME = Frame("runtime.main", 0x502000, GO)
JITTED = Frame("LazyCompile:*fib", 0x7F0000001000, ANON)
SYSCALL = Frame("do_syscall_64", 0xFFFFFFFF81000000)
UNKNOWN = Frame("[unknown]+0x1234", 0x1234)
HANDLE = Frame("handle", 0, None, "server.py", 42)
SERVE = Frame("serve", 0, None, "server.py", 7)


def profile_of(*stacks: tuple[list[Frame], int]):
    builder = ProfileBuilder(sample_rate=100, time_nanos=1)
    for frames, count in stacks:
        builder.add_sample(frames, count)
    return read_profile(builder.encode())


def flatten(node, depth=0):
    yield node, depth
    for child in node.children.values():
        yield from flatten(child, depth + 1)


def test_each_frame_kind_is_read_back_from_the_pprof_shape():
    profile = profile_of(
        ([SYSCALL, WORK, MAIN], 3),
        ([HANDLE, SERVE, MAIN], 2),
        ([GO_MAIN, GO_RUNTIME], 4),
        ([JITTED, UNKNOWN], 1),
    )
    kinds = {node.label: node.kind for node, _ in flatten(build_tree(profile))}
    assert kinds == {
        "all": "",
        "main": "native",
        "work": "native",
        "do_syscall_64": "kernel",
        "serve (server.py:7)": "python",
        "handle (server.py:42)": "python",
        "runtime.main": "go",
        "main.main": "go",
        "[unknown]+0x1234": "native",
        "LazyCompile:*fib": "jit",
    }


def test_totals_and_self_values_sum_the_samples():
    root = build_tree(profile_of(([WORK, MAIN], 3), ([MAIN], 1), ([SYSCALL, WORK, MAIN], 2)))
    period = 10_000_000  # 100 Hz
    main = root.children[("main", "native")]
    work = main.children[("work", "native")]
    assert (root.total, main.total, main.self_value) == (6 * period, 6 * period, period)
    assert (work.total, work.self_value) == (5 * period, 3 * period)


def test_names_a_process_controls_are_text_in_a_well_formed_svg():
    hostile = Frame('<script>alert(1)</script>]]>&"\x01', 0x403000, APP)
    svg = render_svg(build_tree(profile_of(([hostile, MAIN], 1))), "t<i>tle", "sub")
    document = ET.fromstring(svg.split("\n", 1)[1])  # parses: nothing broke out
    titles = [element.text for element in document.iter("{http://www.w3.org/2000/svg}title")]
    assert '<script>alert(1)</script>]]>&"\ufffd\nnative' in " ".join(titles)
    assert "<script>alert" not in svg


def test_frames_under_the_minimum_share_are_left_out():
    small = int(1 / MIN_SHARE) * 2
    root = build_tree(profile_of(([WORK, MAIN], small), ([SYSCALL, MAIN], 1)))
    svg = render_svg(root, "title")
    assert "<title>work\n" in svg
    assert "<title>do_syscall_64\n" not in svg


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown format 'png': use one of html, svg, pprof"):
        render(profile_of(([MAIN], 1)), "png", "title")


def test_a_sample_pointing_at_a_missing_location_is_a_clear_error():
    profile = profile_of(([MAIN], 1))
    profile.sample[0].location_id.append(99)
    with pytest.raises(ValueError, match="missing location 99"):
        build_tree(profile)
