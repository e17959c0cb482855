"""agent.unwind.cfi on hand-built CFI: every DW_CFA opcode, the rules the table
cannot express, and malformed entries, which raise UnwindError and nothing else."""

from __future__ import annotations

import re
import struct
import subprocess

import pytest

from agent.unwind import CfaType, UnwindError, lookup
from agent.unwind.cfi import (
    RULE_EXPRESSION,
    RULE_NONE,
    RULE_OFFSET,
    RULE_REGISTER,
    RULE_SAME_VALUE,
    RULE_UNDEFINED,
    RULE_VAL_EXPRESSION,
    RULE_VAL_OFFSET,
    execute,
    parse_cfi,
    parse_eh_frame_hdr,
)
from agent.unwind.sections import read_cfi_sections
from agent.unwind.table import compile_table

SECTION_ADDRESS = 0x2000
# The CIE GCC writes: def_cfa rsp+8; offset ra at cfa-8.
CIE_INSTRUCTIONS = bytes([0x0C, 7, 8, 0x90, 1])
PLT_EXPRESSION = bytes([0x77, 8, 0x80, 0, 0x3F, 0x1A, 0x3B, 0x2A, 0x33, 0x24, 0x22])


def uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def sleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        done = (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40)
        out.append(byte | (0 if done else 0x80))
        if done:
            return bytes(out)


def cie(
    augmentation: bytes = b"zR",
    augmentation_data: bytes = b"\x1b",
    instructions: bytes = CIE_INSTRUCTIONS,
    version: int = 1,
    code_align: int = 1,
) -> bytes:
    body = bytes([version]) + augmentation + b"\0" + uleb(code_align) + sleb(-8) + bytes([16])
    if augmentation.startswith(b"z"):
        body += uleb(len(augmentation_data)) + augmentation_data
    body += instructions
    return struct.pack("<II", len(body) + 4, 0) + body


def fde(at: int, cie_at: int, begin: int, size: int, instructions: bytes) -> bytes:
    """An FDE at section offset ``at`` with a pcrel|sdata4 range, as GCC writes it."""
    field = SECTION_ADDRESS + at + 8
    pointer = (at + 4 - cie_at) & 0xFFFFFFFF
    body = struct.pack("<Iii", pointer, begin - field, size) + b"\0" + instructions
    return struct.pack("<I", len(body)) + body


def section(*fdes: tuple[int, int, bytes], common: bytes | None = None) -> bytes:
    """One CIE then FDEs of (begin, size, instructions), and the terminator."""
    data = bytearray(cie() if common is None else common)
    for begin, size, instructions in fdes:
        data += fde(len(data), 0, begin, size, instructions)
    return bytes(data) + b"\0\0\0\0"


def final_rules(instructions: bytes, common: bytes | None = None):
    (only,) = parse_cfi(section((0x1000, 0x100, instructions), common=common), SECTION_ADDRESS)
    rows, _ = execute(only)
    return rows[-1][1]


def test_a_gcc_style_fde_gives_its_range_and_rows():
    program = bytes([0x41, 0x0E, 16, 0x86, 2, 0x43, 0x0D, 6, 0x50, 0x0C, 7, 8])
    (entry,) = parse_cfi(section((0x1000, 0x60, program)), SECTION_ADDRESS)
    assert (entry.pc_begin, entry.pc_end) == (0x1000, 0x1060)
    rows, absolute = execute(entry)
    assert not absolute
    assert [(loc, rules[:2], rules[3:5]) for loc, rules in rows] == [
        (0, (7, 8), (RULE_NONE, 0)),
        (1, (7, 16), (RULE_OFFSET, -16)),
        (4, (6, 16), (RULE_OFFSET, -16)),
        (0x14, (7, 8), (RULE_OFFSET, -16)),
    ]


@pytest.mark.parametrize(
    ("instructions", "cfa", "rbp", "ra"),
    [
        (b"\x0c" + uleb(6) + uleb(16), (6, 16, None), (RULE_NONE, 0), (RULE_OFFSET, -8)),
        (b"\x12\x07" + sleb(-3), (7, 24, None), (RULE_NONE, 0), (RULE_OFFSET, -8)),
        (b"\x0d\x06", (6, 8, None), (RULE_NONE, 0), (RULE_OFFSET, -8)),
        (b"\x0e" + uleb(300), (7, 300, None), (RULE_NONE, 0), (RULE_OFFSET, -8)),
        (b"\x13" + sleb(-4), (7, 32, None), (RULE_NONE, 0), (RULE_OFFSET, -8)),
        (b"\x86\x03", (7, 8, None), (RULE_OFFSET, -24), (RULE_OFFSET, -8)),
        (b"\x05\x06\x02", (7, 8, None), (RULE_OFFSET, -16), (RULE_OFFSET, -8)),
        (b"\x11\x06" + sleb(-2), (7, 8, None), (RULE_OFFSET, 16), (RULE_OFFSET, -8)),
        (b"\x2f\x06\x02", (7, 8, None), (RULE_OFFSET, 16), (RULE_OFFSET, -8)),
        (b"\x86\x02\xc6", (7, 8, None), (RULE_NONE, 0), (RULE_OFFSET, -8)),
        (b"\x86\x02\x06\x06", (7, 8, None), (RULE_NONE, 0), (RULE_OFFSET, -8)),
        (b"\x07\x10", (7, 8, None), (RULE_NONE, 0), (RULE_UNDEFINED, 0)),
        (b"\x08\x06", (7, 8, None), (RULE_SAME_VALUE, 0), (RULE_OFFSET, -8)),
        (b"\x09\x06\x03", (7, 8, None), (RULE_REGISTER, 3), (RULE_OFFSET, -8)),
        (b"\x14\x06\x02", (7, 8, None), (RULE_VAL_OFFSET, -16), (RULE_OFFSET, -8)),
        (b"\x15\x10" + sleb(1), (7, 8, None), (RULE_NONE, 0), (RULE_VAL_OFFSET, -8)),
        (b"\x10\x06\x02\x77\x10", (7, 8, None), (RULE_EXPRESSION, b"\x77\x10"), (RULE_OFFSET, -8)),
        (b"\x16\x10\x01\x30", (7, 8, None), (RULE_NONE, 0), (RULE_VAL_EXPRESSION, b"\x30")),
        (b"\x0f\x02\x77\x08", (-1, 0, b"\x77\x08"), (RULE_NONE, 0), (RULE_OFFSET, -8)),
        (b"\x2e" + uleb(200) + b"\x00\x00", (7, 8, None), (RULE_NONE, 0), (RULE_OFFSET, -8)),
        (b"\x0a\x0e\x20\x86\x02\x0b", (7, 8, None), (RULE_NONE, 0), (RULE_OFFSET, -8)),
        (b"\x0a\x0e\x20\x0a\x86\x02\x0b\x0b", (7, 8, None), (RULE_NONE, 0), (RULE_OFFSET, -8)),
    ],
    ids=[
        "def_cfa",
        "def_cfa_sf",
        "def_cfa_register",
        "def_cfa_offset",
        "def_cfa_offset_sf",
        "offset",
        "offset_extended",
        "offset_extended_sf",
        "GNU_negative_offset_extended",
        "restore",
        "restore_extended",
        "undefined",
        "same_value",
        "register",
        "val_offset",
        "val_offset_sf",
        "expression",
        "val_expression",
        "def_cfa_expression",
        "GNU_args_size_and_nop",
        "remember_restore_state",
        "nested_state",
    ],
)
def test_each_opcode_sets_its_rule(instructions, cfa, rbp, ra):
    rules = final_rules(instructions)
    assert (rules[0:3], rules[3:5], rules[5:7]) == (cfa, rbp, ra)


@pytest.mark.parametrize(
    ("advance", "loc"),
    [
        (b"\x45", 5),
        (b"\x02\xf0", 0xF0),
        (b"\x03" + struct.pack("<H", 0x1234), 0x1234),
        (b"\x04" + struct.pack("<I", 0x12345), 0x12345),
    ],
    ids=["advance_loc", "advance_loc1", "advance_loc2", "advance_loc4"],
)
def test_advances_move_the_location(advance, loc):
    (entry,) = parse_cfi(section((0x1000, 0x20000, advance + b"\x0e\x10")), SECTION_ADDRESS)
    rows, _ = execute(entry)
    assert [(row_loc, rules[1]) for row_loc, rules in rows] == [(0, 8), (loc, 16)]


def test_a_zero_advance_starts_no_row():
    (entry,) = parse_cfi(section((0x1000, 0x20, b"\x40\x0e\x10\x02\x00\x0e\x18")), SECTION_ADDRESS)
    rows, _ = execute(entry)
    assert [(loc, rules[1]) for loc, rules in rows] == [(0, 24)]


def test_set_loc_is_absolute_and_flagged():
    # DW_CFA_set_loc with the CIE's pcrel|sdata4 encoding: relative to the operand.
    data = bytearray(cie())
    at = len(data)
    operand = SECTION_ADDRESS + at + 4 + 4 + 8 + 1 + 1
    instructions = b"\x01" + struct.pack("<i", 0x1010 - operand) + b"\x0e\x10"
    data += fde(at, 0, 0x1000, 0x20, instructions) + b"\0\0\0\0"
    (entry,) = parse_cfi(bytes(data), SECTION_ADDRESS)
    rows, absolute = execute(entry)
    assert absolute
    assert [(loc, rules[1]) for loc, rules in rows] == [(0, 8), (0x10, 16)]


@pytest.mark.parametrize(
    ("instructions", "reason"),
    [
        (b"\x0c\x03\x08", "cfa_register"),
        (b"\x0f\x02\x77\x08", "cfa_expression"),
        (b"\x0e" + uleb(0x10000), "cfa_offset_range"),
        (b"\x90\x02", "ra_rule"),
        (b"\x08\x10", "ra_rule"),
        (b"\x10\x06\x02\x77\x10", "rbp_rule"),
        (b"\x09\x06\x03", "rbp_rule"),
        (b"\x11\x06" + sleb(-128), "rbp_offset_range"),
        (b"\x86" + uleb(200), "rbp_offset_range"),
    ],
)
def test_rules_the_table_cannot_express_are_counted(instructions, reason):
    fdes = parse_cfi(section((0x1000, 0x10, instructions)), SECTION_ADDRESS)
    table = compile_table(fdes)
    assert lookup(table, 0x1000)[1:] == (CfaType.UNSUPPORTED, 0, 0)
    assert table.unsupported == {reason: 1}


@pytest.mark.parametrize(
    ("instructions", "row"),
    [
        (b"", (CfaType.RSP, 0, 8)),
        (b"\x0c\x06\x10\x86\x02", (CfaType.RBP, -2, 16)),
        (b"\x86" + uleb(128), (CfaType.RSP, -128, 8)),
        (b"\x11\x06" + sleb(-127), (CfaType.RSP, 127, 8)),
        (b"\x0e" + uleb(0xFFFF), (CfaType.RSP, 0, 0xFFFF)),
        (b"\x08\x06", (CfaType.RSP, 0, 8)),
        (b"\x07\x10", (CfaType.END, 0, 0)),
        (b"\x0f" + uleb(len(PLT_EXPRESSION)) + PLT_EXPRESSION, (CfaType.PLT, 11, 8)),
    ],
)
def test_rows_encode_the_rules(instructions, row):
    table = compile_table(parse_cfi(section((0x1000, 0x10, instructions)), SECTION_ADDRESS))
    assert lookup(table, 0x1000) == (0x1000, *row)
    assert lookup(table, 0x1010) == (0x1010, CfaType.NONE, 0, 0)
    assert table.unsupported == {}


def test_signal_frames_come_from_the_augmentation():
    common = cie(b"zRS")
    fdes = parse_cfi(section((0x1000, 0x10, b"\x0f\x02\x77\x08"), common=common), SECTION_ADDRESS)
    table = compile_table(fdes)
    assert lookup(table, 0x1005)[1:] == (CfaType.SIGNAL, 0, 0)


def test_adjacent_fdes_share_no_gap_row_and_identical_rows_merge():
    fdes = parse_cfi(
        section((0x1000, 0x10, b""), (0x1010, 0x10, b"\x41\x0e\x10"), (0x1030, 0x10, b"")),
        SECTION_ADDRESS,
    )
    table = compile_table(fdes)
    rows = [lookup(table, pc) for pc in sorted(set(table.pcs()))]
    assert rows == [
        (0x1000, CfaType.RSP, 0, 8),
        (0x1011, CfaType.RSP, 0, 16),
        (0x1020, CfaType.NONE, 0, 0),
        (0x1030, CfaType.RSP, 0, 8),
        (0x1040, CfaType.NONE, 0, 0),
    ]
    assert list(table.functions) == [0x1000, 0x1010, 0x1030]
    assert table.function_at(0x1025) is None
    assert table.function_at(0x1015) == (0x1010, 0x1020)


def test_overlapping_fdes_keep_the_later_one_from_its_start():
    fdes = parse_cfi(section((0x1000, 0x40, b"\x0e\x20"), (0x1020, 0x10, b"")), SECTION_ADDRESS)
    table = compile_table(fdes)
    assert table.overlaps == 1
    assert lookup(table, 0x101F)[1:] == (CfaType.RSP, 0, 0x20)
    assert lookup(table, 0x1020)[1:] == (CfaType.RSP, 0, 8)
    assert lookup(table, 0x1030)[1:] == (CfaType.NONE, 0, 0)


def test_code_above_4_gib_is_refused():
    # The same bytes at a section address 4 GiB higher put the function there.
    fdes = parse_cfi(section((0x1000, 0x20, b"")), SECTION_ADDRESS + (1 << 32))
    with pytest.raises(UnwindError, match="4 GiB"):
        compile_table(fdes)


def test_a_64_bit_length_is_read():
    # A 64-bit entry: 0xffffffff, an 8-byte length, an 8-byte CIE id or pointer.
    body = cie()[8:]
    data = bytearray(struct.pack("<IQQ", 0xFFFFFFFF, len(body) + 8, 0) + body)
    at = len(data)
    field = SECTION_ADDRESS + at + 20
    fde_body = struct.pack("<ii", 0x1000 - field, 0x10) + b"\0" + b"\x0e\x10"
    data += struct.pack("<IQQ", 0xFFFFFFFF, len(fde_body) + 8, at + 12) + fde_body
    wide = parse_cfi(bytes(data) + b"\0\0\0\0", SECTION_ADDRESS)
    fixed = parse_cfi(section((0x1000, 0x10, b"\x0e\x10")), SECTION_ADDRESS)
    assert [(f.pc_begin, f.pc_end) for f in wide] == [(0x1000, 0x1010)]
    assert execute(wide[0])[0] == execute(fixed[0])[0]


def test_the_zero_terminator_ends_eh_frame():
    data = section((0x1000, 0x10, b"")) + b"\xff" * 7
    assert len(parse_cfi(data, SECTION_ADDRESS)) == 1


def _good() -> bytes:
    return section((0x1000, 0x10, b"\x41\x0e\x10"))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_good()[:-10], "runs past"),
        (_good()[:2], "too few for a length"),
        (struct.pack("<I", 0xFFFFFFFF) + b"\x10", "truncated"),
        (struct.pack("<IQ", 0xFFFFFFFF, 1 << 40), "runs past"),
        (struct.pack("<I", 2) + b"\0" * 8, "too short"),
        (section((0x1000, 0x10, b""), common=cie(augmentation_data=b"\x0f")), "encoding"),
        (section((0x1000, 0x10, b""), common=cie(augmentation_data=b"\x6b")), "encoding"),
        (section((0x1000, 0x10, b""), common=cie(augmentation_data=b"\x9b")), "encoding"),
        (section((0x1000, 0x10, b""), common=cie(augmentation_data=b"\x2b")), "encoding"),
        (section((0x1000, 0x10, b""), common=cie(b"zX")), "augmentation"),
        (section((0x1000, 0x10, b""), common=cie(b"eh")), "augmentation"),
        (section((0x1000, 0x10, b""), common=cie(augmentation_data=b"")), "augmentation"),
        (section((0x1000, 0x10, b""), common=cie(version=2)), "version"),
        (section((0x1000, 0x10, b""), common=cie(code_align=0)), "code alignment"),
        (cie() + fde(len(cie()), 0x1000, 0x1000, 0x10, b""), "out of range"),
        (cie() + fde(len(cie()), -4, 0x1000, 0x10, b""), "out of range"),
        (cie() + fde(len(cie()), len(cie()) - 8, 0x1000, 0x10, b""), "no CIE"),
        (section((0x1000, -0x10, b"")), "not an address range"),
    ],
    ids=[
        "truncated_entry",
        "truncated_length",
        "truncated_64_bit_length",
        "64_bit_length_past_end",
        "length_shorter_than_id",
        "bad_value_format",
        "bad_application",
        "indirect_pc",
        "textrel_pc",
        "unknown_augmentation",
        "eh_augmentation",
        "augmentation_data_too_short",
        "cie_version",
        "code_alignment_0",
        "cie_pointer_wraps",
        "cie_pointer_before_start",
        "cie_pointer_not_at_a_cie",
        "negative_range",
    ],
)
def test_malformed_entries_raise_unwind_error(data, message):
    with pytest.raises(UnwindError, match=message):
        parse_cfi(data, SECTION_ADDRESS)


@pytest.mark.parametrize(
    "instructions",
    [
        b"\x0b",  # restore_state with nothing remembered
        b"\x0c\x07",  # def_cfa without its offset
        b"\x0e\x80",  # an unterminated ULEB128
        b"\x03\x01",  # advance_loc2 with one byte
        b"\x0f\x05\x77",  # an expression longer than the program
        b"\x1d" + b"\0" * 8,  # DW_CFA_MIPS_advance_loc8
        b"\x3c",  # not an opcode
        b"\x01\x00\x00",  # set_loc truncated
        b"\x01" + struct.pack("<i", 0x0F00 - (SECTION_ADDRESS + len(cie()) + 18)),  # backwards
    ],
)
def test_malformed_instructions_raise_unwind_error(instructions):
    fdes = parse_cfi(section((0x1000, 0x10, instructions)), SECTION_ADDRESS)
    with pytest.raises(UnwindError):
        compile_table(fdes)


def test_eh_frame_hdr_table_lists_every_fde_of_python():
    path = "/usr/bin/python3.11"
    headers = subprocess.run(["readelf", "-SW", path], check=True, capture_output=True, text=True)
    match = re.search(
        r"\] \.eh_frame_hdr\s+PROGBITS\s+([0-9a-f]+) ([0-9a-f]+) ([0-9a-f]+)", headers.stdout
    )
    address, offset, size = (int(group, 16) for group in match.groups())
    with open(path, "rb") as file:
        file.seek(offset)
        hdr = parse_eh_frame_hdr(file.read(size), address)
    eh_frame = next(s for s in read_cfi_sections(open(path, "rb")) if s.name == ".eh_frame")
    assert hdr.eh_frame_address == eh_frame.address
    fdes = parse_cfi(eh_frame.data, eh_frame.address)
    by_offset = {fde.offset: fde.pc_begin for fde in fdes}
    assert len(hdr.table) == len(fdes) > 10000
    assert [pc for pc, _ in hdr.table] == sorted(by_offset.values())
    assert all(by_offset[fde_address - eh_frame.address] == pc for pc, fde_address in hdr.table)


def test_truncated_eh_frame_hdr_raises_unwind_error():
    with pytest.raises(UnwindError):
        parse_eh_frame_hdr(b"\x01\x1b\x03\x3b\x00\x00\x00\x00\x10\x00\x00\x00", 0x1000)
    with pytest.raises(UnwindError, match="version"):
        parse_eh_frame_hdr(b"\x02\x1b\x03\x3b", 0x1000)
