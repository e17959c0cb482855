"""agent.unwind.table against readelf --debug-dump=frames-interp, row by row, on the
files of this machine and on binaries built by the tests."""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
from bisect import bisect_right
from collections import Counter
from dataclasses import dataclass, field

import pytest

from agent.symbols import read_elf
from agent.unwind import ROW_FORMAT, CfaType, UnwindError, build_table, lookup

pytestmark = pytest.mark.skipif(
    shutil.which("readelf") is None, reason="binutils readelf is the oracle"
)

_SECTION = re.compile(r"^Contents of the (\S+) section")
_CIE = re.compile(r'^([0-9a-f]+) [0-9a-f]+ [0-9a-f]+ CIE "([^"]*)"')
_FDE = re.compile(
    r"^([0-9a-f]+) [0-9a-f]+ [0-9a-f]+ FDE cie=([0-9a-f]+) pc=([0-9a-f]+)\.\.([0-9a-f]+)"
)
_ROW = re.compile(r"^[0-9a-f]{16} ")
_UNSUPPORTED = (CfaType.UNSUPPORTED, 0, 0)


@dataclass
class OracleFde:
    """One FDE as readelf prints it: rows of (loc, {column: rule})."""

    begin: int
    end: int
    cie: int
    rows: list[tuple[int, dict[str, str]]] = field(default_factory=list)


def readelf_frames(path: str) -> dict[str, tuple[list[OracleFde], set[int]]]:
    """Per section: its FDEs, and the offsets of its signal-frame CIEs ('S')."""
    out = subprocess.run(
        ["readelf", "--wide", "--debug-dump=no-follow-links,frames-interp", path],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    sections: dict[str, tuple[list[OracleFde], set[int]]] = {}
    cie_rows: dict[int, dict[str, str]] = {}
    fdes: list[OracleFde] = []
    signal: set[int] = set()
    columns: list[str] = []
    owner: OracleFde | int | None = None
    for line in out.splitlines():
        if match := _SECTION.match(line):
            fdes, signal = sections.setdefault(match.group(1), ([], set()))
            cie_rows = {}
        elif match := _CIE.match(line):
            owner = int(match.group(1), 16)
            if "S" in match.group(2):
                signal.add(owner)
        elif match := _FDE.match(line):
            cie = int(match.group(2), 16)
            owner = OracleFde(int(match.group(3), 16), int(match.group(4), 16), cie)
            fdes.append(owner)
            # readelf prints no rows for an FDE without instructions: the CIE's hold.
            if cie in cie_rows:
                owner.rows.append((owner.begin, cie_rows[cie]))
        elif line.lstrip().startswith("LOC"):
            columns = line.split()[1:]
        elif _ROW.match(line):
            # A register rule prints as "r9 (r9)": keep one word.
            values = re.sub(r" \(\w+\)", "", line).split()
            rules = dict(zip(columns, values[1:], strict=True))
            if isinstance(owner, OracleFde):
                loc = int(values[0], 16)
                if owner.rows and owner.rows[-1][0] == loc:
                    owner.rows.pop()  # a later row at one address wins
                owner.rows.append((loc, rules))
            elif owner is not None:
                cie_rows[owner] = rules
    return sections


def expected_row(rules: dict[str, str], signal: bool) -> tuple[tuple[int, int, int] | str, str]:
    """The row readelf's rules call for, (cfa_type, rbp_offset, cfa_offset), or "exp"
    where the CFA is an expression (a PLT row or an unsupported one); and the reason
    when the row is unsupported."""
    if signal:
        return (CfaType.SIGNAL, 0, 0), ""
    ra = rules.get("ra", "u")
    if ra == "u":
        return (CfaType.END, 0, 0), ""
    if ra != "c-8":
        return _UNSUPPORTED, "ra_rule"
    if rules["CFA"] == "exp":
        return "exp", "cfa_expression"
    register, offset = re.fullmatch(r"(\w+?)([+-]\d+)", rules["CFA"]).groups()
    if register not in ("rsp", "rbp"):
        return _UNSUPPORTED, "cfa_register"
    if not 0 <= int(offset) <= 0xFFFF:
        return _UNSUPPORTED, "cfa_offset_range"
    cfa_type = CfaType.RSP if register == "rsp" else CfaType.RBP
    rbp = rules.get("rbp", "u")
    if rbp in ("u", "s"):
        return (cfa_type, 0, int(offset)), ""
    saved = re.fullmatch(r"c([+-]\d+)", rbp)
    if saved is None:
        return _UNSUPPORTED, "rbp_rule"
    slot = int(saved.group(1))
    if slot % 8 or not -1024 <= slot <= 1016 or slot == 0:
        return _UNSUPPORTED, "rbp_offset_range"
    return (cfa_type, slot // 8, int(offset)), ""


def compare(table, fdes: list[OracleFde], signal: set[int]) -> tuple[int, list[str], Counter]:
    """Check every address range readelf describes against our rows: the row at its
    start and every row of ours that starts inside it.

    Returns the rows compared, the mismatches, and the unsupported CFI rows by reason.
    """
    rows = list(struct.iter_unpack(ROW_FORMAT, table.rows))
    pcs = [row[0] for row in rows]
    starts = {fde.begin for fde in fdes}
    compared = 0
    wrong = []
    reasons: Counter[str] = Counter()
    for fde in fdes:
        spans = [(loc, rules) for loc, rules in fde.rows if loc < fde.end]
        for index, (loc, rules) in enumerate(spans):
            stop = spans[index + 1][0] if index + 1 < len(spans) else fde.end
            want, reason = expected_row(rules, fde.cie in signal)
            inside = [lookup(table, loc)]
            at = bisect_right(pcs, loc)
            while at < len(rows) and pcs[at] < stop:
                inside.append(rows[at])
                at += 1
            if want != "exp" or inside[0][1] == CfaType.UNSUPPORTED:
                reasons[reason] += 1
            for ours in inside:
                compared += 1
                if want == "exp":
                    ok = ours[1] in (CfaType.PLT, CfaType.UNSUPPORTED)
                else:
                    ok = tuple(ours[1:]) == want
                if not ok:
                    wrong.append(f"{ours[0]:#x} in {loc:#x}..{stop:#x}: {ours} != {want} {rules}")
        if fde.end not in starts:
            end_row = lookup(table, fde.end)
            if end_row[1] != CfaType.NONE:
                wrong.append(f"{fde.end:#x}, the end of an FDE, is {end_row}")
    del reasons[""]
    return compared, wrong, reasons


def _ldd(binary: str) -> list[str]:
    if not os.path.exists(binary) or shutil.which("ldd") is None:
        return []
    out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    paths = []
    for line in out.splitlines():
        words = line.split()
        if "=>" in words and words.index("=>") + 1 < len(words):
            paths.append(words[words.index("=>") + 1])
        elif words and words[0].startswith("/"):
            paths.append(words[0])
    return [path for path in paths if path.startswith("/")]


def system_files() -> list[str]:
    """python3.11, xz, gzip, the libraries python3.11 and ls map, libc, ld.so, liblzma, libz."""
    wanted = ["/usr/bin/python3.11", "/usr/bin/xz", "/usr/bin/gzip"]
    wanted += _ldd("/usr/bin/python3.11") + _ldd("/bin/ls")
    wanted += [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/ld-linux-x86-64.so.2",
        "/lib/x86_64-linux-gnu/liblzma.so.5",
        "/lib/x86_64-linux-gnu/libz.so.1",
    ]
    unique: dict[str, str] = {}
    for path in wanted:
        if os.path.exists(path):
            unique.setdefault(os.path.realpath(path), path)
    return sorted(unique.values())


@pytest.mark.parametrize("path", system_files())
def test_rows_match_readelf_on_system_files(path):
    table = build_table(open(path, "rb"))
    fdes, signal = readelf_frames(path)[".eh_frame"]
    fdes = [fde for fde in fdes if fde.end > fde.begin]
    assert table.overlaps == 0
    assert list(table.functions) == sorted(fde.begin for fde in fdes)
    compared, wrong, reasons = compare(table, fdes, signal)
    assert not wrong, f"{len(wrong)} of {compared} rows differ:\n" + "\n".join(wrong[:20])
    assert compared >= len(fdes)
    assert table.unsupported == reasons


def test_rows_are_sorted_merged_and_packed():
    table = build_table(open("/usr/bin/python3.11", "rb"))
    rows = list(struct.iter_unpack(ROW_FORMAT, table.rows))
    assert len(table.rows) == 8 * table.row_count == 8 * len(rows)
    assert all(a[0] < b[0] for a, b in zip(rows, rows[1:], strict=False))
    assert all(a[1:] != b[1:] for a, b in zip(rows, rows[1:], strict=False))
    assert lookup(table, table.functions[0] - 1)[1] == CfaType.NONE


def test_restore_rt_is_a_signal_frame():
    path = "/lib/x86_64-linux-gnu/libc.so.6"
    fdes, signal = readelf_frames(path)[".eh_frame"]
    (trampoline,) = [fde for fde in fdes if fde.cie in signal]
    # The FDE starts one byte early; __restore_rt is `mov $15, %rax; syscall`.
    elf = read_elf(open(path, "rb"))
    segment = next(s for s in elf.load_segments if s.vaddr <= trampoline.begin < s.vaddr + s.filesz)
    with open(path, "rb") as file:
        file.seek(trampoline.begin + 1 - segment.vaddr + segment.offset)
        assert file.read(9) == bytes.fromhex("48c7c00f0000000f05")
    table = build_table(open(path, "rb"))
    assert lookup(table, trampoline.begin + 1)[1:] == (CfaType.SIGNAL, 0, 0)
    assert table.function_at(trampoline.begin + 1) == (trampoline.begin, trampoline.end)


def _plt_thresholds(path) -> list[int]:
    """The DW_OP_litN of every PLT CFA expression, as readelf decodes it."""
    out = subprocess.run(
        ["readelf", "--debug-dump=frames", str(path)], check=True, capture_output=True, text=True
    ).stdout
    return [
        int(n)
        for n in re.findall(
            r"DW_CFA_def_cfa_expression \(DW_OP_breg7 \(rsp\): 8; DW_OP_breg16 \(rip\): 0; "
            r"DW_OP_lit15; DW_OP_and; DW_OP_lit(\d+); DW_OP_ge; DW_OP_lit3; DW_OP_shl; "
            r"DW_OP_plus\)",
            out,
        )
    ]


def _plt_entries(path) -> range:
    """Addresses of the lazy PLT entries (after PLT0's 16 bytes)."""
    out = subprocess.run(["readelf", "-SW", str(path)], check=True, capture_output=True, text=True)
    match = re.search(r"\] \.plt\s+PROGBITS\s+([0-9a-f]+) [0-9a-f]+ ([0-9a-f]+)", out.stdout)
    start, size = int(match.group(1), 16), int(match.group(2), 16)
    return range(start + 16, start + size)


@pytest.mark.parametrize(
    ("flags", "classic"),
    [(("-fcf-protection=none",), True), (("-fcf-protection", "-Wl,-z,ibtplt"), False)],
    ids=["classic", "ibt"],
)
def test_plt_rows_carry_the_threshold_of_the_expression(compile_c, flags, classic):
    binary = compile_c("unwind_plt", "-O2", *flags)
    (threshold,) = _plt_thresholds(binary)
    assert (threshold == 11) == classic
    table = build_table(open(binary, "rb"))
    for address in _plt_entries(binary):
        assert lookup(table, address)[1:] == (CfaType.PLT, threshold, 8)


def test_python_plt_is_classic():
    table = build_table(open("/usr/bin/python3.11", "rb"))
    entries = _plt_entries("/usr/bin/python3.11")
    assert _plt_thresholds("/usr/bin/python3.11") == [11]
    assert lookup(table, entries.start)[1:] == (CfaType.PLT, 11, 8)
    assert lookup(table, entries.stop - 1)[1:] == (CfaType.PLT, 11, 8)


@pytest.mark.parametrize("compression", ["-gz=none", "-gz=zlib"])
def test_debug_frame_fills_code_without_eh_frame(compile_c, compression):
    binary = compile_c(
        "unwind_chain",
        "-O2",
        "-fomit-frame-pointer",
        "-fno-optimize-sibling-calls",
        "-g",
        compression,
        "-fno-asynchronous-unwind-tables",
        "-fno-unwind-tables",
    )
    sections = readelf_frames(str(binary))
    eh_fdes, _ = sections[".eh_frame"]
    debug_fdes, _ = sections[".debug_frame"]
    symbols = read_elf(open(binary, "rb")).symbols
    named = {symbols.lookup(fde.begin): fde for fde in debug_fdes}
    # The functions of the program are in .debug_frame only.
    assert {"main", "drive", "mid", "leaf"} <= named.keys()
    assert not any(fde.begin == named["leaf"].begin for fde in eh_fdes)
    table = build_table(open(binary, "rb"))
    compared, wrong, _ = compare(table, eh_fdes + debug_fdes, set())
    assert not wrong, "\n".join(wrong)
    assert compared >= len(eh_fdes) + len(debug_fdes)
    # leaf keeps a 64-word buffer on its stack: a CFA far above rsp after the prologue.
    leaf = named["leaf"]
    assert max(lookup(table, pc)[3] for pc in range(leaf.begin, leaf.end)) > 256


def test_separate_debug_file_gives_the_debug_frame(compile_c, tmp_path):
    if shutil.which("objcopy") is None:
        pytest.skip("objcopy is needed")
    binary = compile_c(
        "unwind_chain", "-O2", "-g", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables"
    )
    debug, stripped = tmp_path / "chain.debug", tmp_path / "chain"
    subprocess.run(["objcopy", "--only-keep-debug", binary, debug], check=True)
    subprocess.run(["objcopy", "--strip-debug", binary, stripped], check=True)
    alone = build_table(open(stripped, "rb"))
    whole = build_table(open(stripped, "rb"), debug_stream=open(debug, "rb"))
    assert whole == build_table(open(binary, "rb"))
    assert len(whole.functions) > len(alone.functions)


@pytest.mark.parametrize("path", ["/usr/bin/gzip", "/lib/x86_64-linux-gnu/libc.so.6"])
def test_without_section_headers_eh_frame_is_found_through_its_header(path):
    data = bytearray(open(path, "rb").read())
    struct.pack_into("<Q", data, 0x28, 0)  # e_shoff
    struct.pack_into("<HH", data, 0x3C, 0, 0)  # e_shnum, e_shstrndx
    headerless = build_table(io.BytesIO(bytes(data)))
    assert headerless == build_table(open(path, "rb"))
    assert headerless.row_count > 1000


def test_a_headerless_file_with_a_huge_eh_frame_segment_is_refused():
    data = bytearray(open("/usr/bin/gzip", "rb").read())
    struct.pack_into("<Q", data, 0x28, 0)
    struct.pack_into("<HH", data, 0x3C, 0, 0)
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    (phnum,) = struct.unpack_from("<H", data, 0x38)
    for at in range(phoff, phoff + 56 * phnum, 56):
        if struct.unpack_from("<I", data, at)[0] == 0x6474E550:  # PT_GNU_EH_FRAME
            struct.pack_into("<Q", data, at + 32, 1 << 60)  # p_filesz
    with pytest.raises(UnwindError, match="past the end of the file"):
        build_table(io.BytesIO(bytes(data)))
