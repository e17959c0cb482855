"""Call-frame information: CIEs, FDEs and their DW_CFA programs, read in bulk from
the bytes of .eh_frame, .eh_frame_hdr and .debug_frame (x86-64, little-endian)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from agent.errors import UnwindError

__all__ = [
    "Cie",
    "EhFrameHeader",
    "Fde",
    "UnwindError",
    "execute",
    "parse_cfi",
    "parse_eh_frame_hdr",
]

# DWARF x86-64 register numbers.
RBP = 6
RSP = 7

# Register rule kinds, the rules of DWARF's call frame table.
RULE_NONE = 0  # never given a rule in this FDE or its CIE
RULE_UNDEFINED = 1
RULE_SAME_VALUE = 2
RULE_OFFSET = 3  # saved at CFA + value
RULE_VAL_OFFSET = 4  # the value is CFA + value
RULE_REGISTER = 5  # held in register value
RULE_EXPRESSION = 6  # saved at the address an expression (value: its bytes) computes
RULE_VAL_EXPRESSION = 7

NO_CFA = -1  # cfa_register before any def_cfa

# The state before a CIE's initial instructions: no CFA, no rules.
_NO_RULES = (NO_CFA, 0, None, RULE_NONE, 0, RULE_NONE, 0)

_MASK64 = (1 << 64) - 1
_DW_EH_PE_OMIT = 0xFF
_DW_EH_PE_INDIRECT = 0x80
_DW_EH_PE_PCREL = 0x10
_DW_EH_PE_DATAREL = 0x30
_DW_EH_PE_ULEB128 = 0x01
_DW_EH_PE_SLEB128 = 0x09
# DW_EH_PE value formats of fixed size; absptr (0) is 8 bytes on x86-64.
_FIXED_FORMATS = {
    0x00: struct.Struct("<Q"),
    0x02: struct.Struct("<H"),
    0x03: struct.Struct("<I"),
    0x04: struct.Struct("<Q"),
    0x0A: struct.Struct("<h"),
    0x0B: struct.Struct("<i"),
    0x0C: struct.Struct("<q"),
}
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
# Augmentation letters that carry no data: S (signal frame), B and G (other
# architectures' markers, harmless here).
_PLAIN_AUGMENTATION = frozenset("SBG")
# What bulk decoding raises when a count or offset points past the data.
_DECODE_ERRORS = (IndexError, struct.error)


@dataclass(frozen=True, slots=True)
class Cie:
    """A Common Information Entry; ``initial`` holds the rules after its instructions
    (the layout of :func:`execute`'s rules)."""

    offset: int
    version: int
    augmentation: str
    code_align: int
    data_align: int
    ra_register: int
    fde_encoding: int
    signal: bool
    initial: tuple[Any, ...]


class Fde(NamedTuple):
    """A Frame Description Entry: ``[pc_begin, pc_end)`` and its instructions."""

    pc_begin: int
    pc_end: int
    cie: Cie
    instructions: bytes
    offset: int  # of the entry in its section
    address: int  # virtual address of the first instruction byte (for set_loc)


@dataclass(frozen=True, slots=True)
class EhFrameHeader:
    """.eh_frame_hdr: where .eh_frame is, and its sorted (pc, FDE address) table."""

    eh_frame_address: int
    table: tuple[tuple[int, int], ...]


# --- the entries ---------------------------------------------------------------------------


def parse_cfi(data: bytes, address: int, *, debug_frame: bool = False) -> list[Fde]:
    """Every FDE of an .eh_frame (or .debug_frame) section, in section order.

    ``address`` is the section's virtual address (pc-relative pointers are
    relative to it). A zero length ends .eh_frame. Raises UnwindError on any
    malformed entry.
    """
    try:
        return _parse_entries(data, address, debug_frame)
    except _DECODE_ERRORS as exc:
        raise UnwindError(f"truncated call-frame information: {exc}") from exc


def _parse_entries(data: bytes, address: int, debug_frame: bool) -> list[Fde]:
    cies: dict[int, Cie] = {}
    fdes: list[Fde] = []
    size = len(data)
    pos = 0
    while pos < size:
        start = pos
        if size - pos < 4:
            raise UnwindError(f"entry at {start:#x}: {size - pos} bytes left, too few for a length")
        (length,) = _U32.unpack_from(data, pos)
        pos += 4
        wide = length == 0xFFFFFFFF
        if wide:
            (length,) = _U64.unpack_from(data, pos)
            pos += 8
        if length == 0:
            if debug_frame:
                continue
            break  # the terminator of .eh_frame
        end = pos + length
        if end > size:
            raise UnwindError(f"entry at {start:#x}: length {length:#x} runs past the section")
        id_pos = pos
        if wide:
            (cie_id,) = _U64.unpack_from(data, pos)
            pos += 8
        else:
            (cie_id,) = _U32.unpack_from(data, pos)
            pos += 4
        if pos > end:
            raise UnwindError(f"entry at {start:#x}: length {length:#x} too short for its id")
        if debug_frame:
            is_cie = cie_id == (0xFFFFFFFFFFFFFFFF if wide else 0xFFFFFFFF)
            cie_offset = cie_id
        else:
            is_cie = cie_id == 0
            cie_offset = id_pos - cie_id
        if is_cie:
            if start not in cies:
                cies[start] = _parse_cie(data, start, pos, end, debug_frame)
        else:
            cie = cies.get(cie_offset)
            if cie is None:
                cie = _cie_at(data, cie_offset, start, debug_frame)
                cies[cie_offset] = cie
            fdes.append(_parse_fde(data, start, pos, end, cie, address, debug_frame))
        pos = end
    return fdes


def _cie_at(data: bytes, offset: int, fde_offset: int, debug_frame: bool) -> Cie:
    """Parse the CIE an FDE points to, checking that a CIE starts there."""
    if not 0 <= offset <= len(data) - 8:
        raise UnwindError(f"FDE at {fde_offset:#x}: CIE pointer {offset:#x} out of range")
    (length,) = _U32.unpack_from(data, offset)
    pos = offset + 4
    wide = length == 0xFFFFFFFF
    if wide:
        (length,) = _U64.unpack_from(data, pos)
        pos += 8
    end = pos + length
    (cie_id,) = (_U64 if wide else _U32).unpack_from(data, pos)
    pos += 8 if wide else 4
    expected = (0xFFFFFFFFFFFFFFFF if wide else 0xFFFFFFFF) if debug_frame else 0
    if length == 0 or end > len(data) or pos > end or cie_id != expected:
        raise UnwindError(f"FDE at {fde_offset:#x}: no CIE at {offset:#x}")
    return _parse_cie(data, offset, pos, end, debug_frame)


def _parse_cie(data: bytes, start: int, pos: int, end: int, debug_frame: bool) -> Cie:
    version = data[pos]
    pos += 1
    if version not in (1, 3, 4):
        raise UnwindError(f"CIE at {start:#x}: version {version} not supported")
    nul = data.find(b"\0", pos, end)
    if nul < 0:
        raise UnwindError(f"CIE at {start:#x}: augmentation string not terminated")
    augmentation = data[pos:nul].decode("ascii", "replace")
    pos = nul + 1
    if version == 4:
        address_size, segment_size = data[pos], data[pos + 1]
        pos += 2
        if address_size != 8 or segment_size != 0:
            raise UnwindError(
                f"CIE at {start:#x}: address size {address_size}, segment size {segment_size}"
            )
    code_align, pos = _uleb(data, pos)
    if code_align == 0:
        raise UnwindError(f"CIE at {start:#x}: code alignment factor 0")
    data_align, pos = _sleb(data, pos)
    if version == 1:
        ra_register = data[pos]
        pos += 1
    else:
        ra_register, pos = _uleb(data, pos)
    fde_encoding, signal, pos = _parse_augmentation(data, start, pos, end, augmentation)
    if debug_frame and augmentation:
        # .debug_frame pointers are plain addresses whatever the CIE says.
        fde_encoding = 0
    if pos > end:
        raise UnwindError(f"CIE at {start:#x}: fields run past its length")
    cie = Cie(start, version, augmentation, code_align, data_align, ra_register, 0, signal, ())
    _, initial, _ = _run(data[pos:end], cie, _NO_RULES, 0, 0, keep_rows=False)
    return replace(cie, fde_encoding=fde_encoding, initial=initial)


def _parse_augmentation(
    data: bytes, start: int, pos: int, end: int, augmentation: str
) -> tuple[int, bool, int]:
    """(FDE pointer encoding, signal frame, position after the augmentation data)."""
    fde_encoding = 0
    signal = False
    if not augmentation.startswith("z"):
        if set(augmentation) - _PLAIN_AUGMENTATION:
            raise UnwindError(f"CIE at {start:#x}: augmentation {augmentation!r} not supported")
        return fde_encoding, "S" in augmentation, pos
    length, pos = _uleb(data, pos)
    data_end = pos + length
    if data_end > end:
        raise UnwindError(f"CIE at {start:#x}: augmentation data runs past the entry")
    for letter in augmentation[1:]:
        if letter == "R":
            fde_encoding = data[pos]
            pos += 1
            _check_encoding(fde_encoding, start)
        elif letter == "L":
            pos += 1
        elif letter == "P":
            encoding = data[pos]
            pos = _skip_encoded(data, pos + 1, encoding, start)
        elif letter == "S":
            signal = True
        elif letter not in _PLAIN_AUGMENTATION:
            raise UnwindError(f"CIE at {start:#x}: augmentation {augmentation!r} not supported")
    if pos > data_end:
        raise UnwindError(f"CIE at {start:#x}: augmentation data longer than announced")
    return fde_encoding, signal, data_end


def _parse_fde(
    data: bytes, start: int, pos: int, end: int, cie: Cie, address: int, debug_frame: bool
) -> Fde:
    encoding = cie.fde_encoding
    if encoding == 0x1B:  # pcrel|sdata4: what GCC and LLVM emit
        begin, size = struct.unpack_from("<ii", data, pos)
        begin = (begin + address + pos) & _MASK64
        pos += 8
    elif debug_frame:
        begin, size = struct.unpack_from("<QQ", data, pos)
        pos += 16
    else:
        begin, pos = _read_encoded(data, pos, encoding, address, None, start)
        size, pos = _read_encoded(data, pos, encoding & 0x0F, address, None, start)
    if cie.augmentation.startswith("z"):
        length, pos = _uleb(data, pos)
        pos += length
    if pos > end:
        raise UnwindError(f"FDE at {start:#x}: fields run past its length")
    if size < 0 or begin + size > _MASK64:
        raise UnwindError(f"FDE at {start:#x}: range {begin:#x}+{size:#x} is not an address range")
    return Fde(begin, begin + size, cie, data[pos:end], start, address + pos)


# --- pointers ------------------------------------------------------------------------------


def _check_encoding(encoding: int, where: int) -> None:
    if encoding == _DW_EH_PE_OMIT:
        return
    if encoding & 0x0F not in _FIXED_FORMATS and encoding & 0x0F not in (
        _DW_EH_PE_ULEB128,
        _DW_EH_PE_SLEB128,
    ):
        raise UnwindError(f"entry at {where:#x}: pointer encoding {encoding:#04x} not valid")
    if encoding & 0x70 > 0x50:
        raise UnwindError(f"entry at {where:#x}: pointer encoding {encoding:#04x} not valid")


def _read_encoded(
    data: bytes, pos: int, encoding: int, address: int, datarel: int | None, where: int
) -> tuple[int, int]:
    """A DW_EH_PE-encoded pointer at ``pos``: (value, position after it).

    ``address`` is the virtual address of ``data[0]``; ``datarel`` the base of
    datarel pointers (.eh_frame_hdr's own address), None where they are not valid.
    """
    if encoding == _DW_EH_PE_OMIT or encoding & _DW_EH_PE_INDIRECT:
        raise UnwindError(f"entry at {where:#x}: pointer encoding {encoding:#04x} not usable here")
    field = pos
    fmt = encoding & 0x0F
    if fmt == _DW_EH_PE_ULEB128:
        value, pos = _uleb(data, pos)
    elif fmt == _DW_EH_PE_SLEB128:
        value, pos = _sleb(data, pos)
    else:
        layout = _FIXED_FORMATS.get(fmt)
        if layout is None:
            raise UnwindError(f"entry at {where:#x}: pointer encoding {encoding:#04x} not valid")
        (value,) = layout.unpack_from(data, pos)
        pos += layout.size
    application = encoding & 0x70
    if application == _DW_EH_PE_PCREL:
        value += address + field
    elif application == _DW_EH_PE_DATAREL and datarel is not None:
        value += datarel
    elif application:
        raise UnwindError(f"entry at {where:#x}: pointer encoding {encoding:#04x} not supported")
    return value & _MASK64, pos


def _skip_encoded(data: bytes, pos: int, encoding: int, where: int) -> int:
    """The position after a pointer we do not need (the personality routine)."""
    _check_encoding(encoding, where)
    if encoding == _DW_EH_PE_OMIT:
        return pos
    fmt = encoding & 0x0F
    if fmt in (_DW_EH_PE_ULEB128, _DW_EH_PE_SLEB128):
        return _uleb(data, pos)[1]
    return pos + _FIXED_FORMATS[fmt].size


def _uleb(data: bytes, pos: int) -> tuple[int, int]:
    value = data[pos]
    pos += 1
    if value < 0x80:
        return value, pos
    return _uleb_rest(data, pos, value)


def _uleb_rest(data: bytes, pos: int, first: int) -> tuple[int, int]:
    """The rest of an unsigned LEB128 whose first byte (``first``) had the high bit."""
    value = first & 0x7F
    shift = 7
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _sleb(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            if byte & 0x40:
                value -= 1 << shift
            return value, pos


def _block(data: bytes, pos: int) -> tuple[bytes, int]:
    """A DW_FORM_block: ULEB128 length, then that many bytes."""
    length, pos = _uleb(data, pos)
    if pos + length > len(data):
        raise UnwindError(f"expression of {length} bytes runs past its entry")
    return data[pos : pos + length], pos + length


# --- the instructions ----------------------------------------------------------------------


def execute(fde: Fde) -> tuple[list[tuple[int, tuple[Any, ...]]], bool]:
    """Run an FDE's program: (rows, depends on the FDE's position).

    Each row is ``(loc, rules)``: ``loc`` counts bytes from ``pc_begin``, and the
    rules hold from there to the next row's loc. ``rules`` is
    ``(cfa_register, cfa_offset, cfa_expression, rbp_rule, rbp_value, ra_rule,
    ra_value)``: the CFA is ``cfa_register + cfa_offset`` unless
    ``cfa_expression`` (bytes) is set; ``*_rule`` is a ``RULE_*`` kind, ``*_value``
    its offset from the CFA, register or expression bytes. Only rbp and the
    return address are followed: the walker recovers nothing else.

    The flag is True when DW_CFA_set_loc made the locs depend on where the
    FDE sits (the rows of equal programs may then differ).
    """
    try:
        rows, _, absolute = _run(
            fde.instructions, fde.cie, fde.cie.initial, fde.pc_begin, fde.address, keep_rows=True
        )
    except _DECODE_ERRORS as exc:
        raise UnwindError(f"FDE at {fde.offset:#x}: instructions truncated") from exc
    return rows, absolute


def _run(
    code: bytes,
    cie: Cie,
    initial: tuple[Any, ...],
    pc_begin: int,
    code_address: int,
    *,
    keep_rows: bool,
) -> tuple[list[tuple[int, tuple[Any, ...]]], tuple[Any, ...], bool]:
    """Interpret DW_CFA instructions from the ``initial`` rules.

    The hot loop of table building: opcodes are tested by frequency, the
    one-byte ULEB128 operands that compilers nearly always emit are decoded in
    line, and a row is one tuple.
    """
    cfa_reg, cfa_off, cfa_expr, rbp_k, rbp_v, ra_k, ra_v = initial
    ra_reg = cie.ra_register
    code_align = cie.code_align
    data_align = cie.data_align
    rows: list[tuple[int, tuple[Any, ...]]] = []
    stack: list[tuple[Any, ...]] = []
    loc = 0
    absolute = False
    pos = 0
    size = len(code)
    while pos < size:
        op = code[pos]
        pos += 1
        if op >= 0x40:
            low = op & 0x3F
            if op < 0x80:  # DW_CFA_advance_loc
                if keep_rows and low:  # a zero advance starts no row
                    rows.append((loc, (cfa_reg, cfa_off, cfa_expr, rbp_k, rbp_v, ra_k, ra_v)))
                loc += low * code_align
            elif op < 0xC0:  # DW_CFA_offset
                value = code[pos]
                pos += 1
                if value >= 0x80:
                    value, pos = _uleb_rest(code, pos, value)
                if low == RBP:
                    rbp_k, rbp_v = RULE_OFFSET, value * data_align
                elif low == ra_reg:
                    ra_k, ra_v = RULE_OFFSET, value * data_align
            elif low == RBP:  # DW_CFA_restore
                rbp_k, rbp_v = initial[3], initial[4]
            elif low == ra_reg:
                ra_k, ra_v = initial[5], initial[6]
            continue
        if op == 0x0E:  # DW_CFA_def_cfa_offset
            cfa_off = code[pos]
            pos += 1
            if cfa_off >= 0x80:
                cfa_off, pos = _uleb_rest(code, pos, cfa_off)
        elif op == 0x0A:  # DW_CFA_remember_state
            stack.append((cfa_reg, cfa_off, cfa_expr, rbp_k, rbp_v, ra_k, ra_v))
        elif op == 0x0B:  # DW_CFA_restore_state
            if not stack:
                raise UnwindError("DW_CFA_restore_state without a remembered state")
            cfa_reg, cfa_off, cfa_expr, rbp_k, rbp_v, ra_k, ra_v = stack.pop()
        elif op == 0x00:  # DW_CFA_nop
            pass
        elif op in (0x02, 0x03, 0x04):  # DW_CFA_advance_loc1/2/4
            if op == 0x02:
                delta = code[pos]
                pos += 1
            elif op == 0x03:
                (delta,) = _U16.unpack_from(code, pos)
                pos += 2
            else:
                (delta,) = _U32.unpack_from(code, pos)
                pos += 4
            if keep_rows and delta:
                rows.append((loc, (cfa_reg, cfa_off, cfa_expr, rbp_k, rbp_v, ra_k, ra_v)))
            loc += delta * code_align
        elif op == 0x0C or op == 0x12:  # DW_CFA_def_cfa, DW_CFA_def_cfa_sf
            cfa_reg, pos = _uleb(code, pos)
            if op == 0x0C:
                cfa_off, pos = _uleb(code, pos)
            else:
                cfa_off, pos = _sleb(code, pos)
                cfa_off *= data_align
            cfa_expr = None
        elif op == 0x0D:  # DW_CFA_def_cfa_register
            cfa_reg, pos = _uleb(code, pos)
            cfa_expr = None
        elif op == 0x13:  # DW_CFA_def_cfa_offset_sf
            cfa_off, pos = _sleb(code, pos)
            cfa_off *= data_align
        elif op == 0x0F:  # DW_CFA_def_cfa_expression
            cfa_expr, pos = _block(code, pos)
            cfa_reg, cfa_off = NO_CFA, 0
        elif op == 0x2E:  # DW_CFA_GNU_args_size
            _, pos = _uleb(code, pos)
        else:
            reg, kind, value, pos, new_loc = _rare(op, code, pos, cie, pc_begin, code_address)
            if new_loc is not None:  # DW_CFA_set_loc
                if new_loc < loc:
                    raise UnwindError(f"DW_CFA_set_loc to {new_loc:#x} goes backwards")
                if keep_rows and new_loc != loc:
                    rows.append((loc, (cfa_reg, cfa_off, cfa_expr, rbp_k, rbp_v, ra_k, ra_v)))
                loc, absolute = new_loc, True
            elif reg == RBP:
                if kind < 0:  # restore_extended
                    rbp_k, rbp_v = initial[3], initial[4]
                else:
                    rbp_k, rbp_v = kind, value
            elif reg == ra_reg:
                if kind < 0:
                    ra_k, ra_v = initial[5], initial[6]
                else:
                    ra_k, ra_v = kind, value
    rules = (cfa_reg, cfa_off, cfa_expr, rbp_k, rbp_v, ra_k, ra_v)
    if keep_rows:
        rows.append((loc, rules))
    return rows, rules, absolute


def _rare(
    op: int, code: bytes, pos: int, cie: Cie, pc_begin: int, code_address: int
) -> tuple[int, int, Any, int, int | None]:
    """The register-rule opcodes besides DW_CFA_offset, and DW_CFA_set_loc.

    Returns (register, rule kind or -1 for "restore", value, position, new loc
    of set_loc or None); register is -1 when no rule changes.
    """
    data_align = cie.data_align
    if op in (0x05, 0x11, 0x14, 0x15, 0x2F):
        # offset_extended, offset_extended_sf, val_offset, val_offset_sf,
        # GNU_negative_offset_extended: register, factored offset
        reg, pos = _uleb(code, pos)
        if op in (0x11, 0x15):
            offset, pos = _sleb(code, pos)
        else:
            offset, pos = _uleb(code, pos)
        if op == 0x2F:
            offset = -offset
        kind = RULE_VAL_OFFSET if op in (0x14, 0x15) else RULE_OFFSET
        return reg, kind, offset * data_align, pos, None
    if op in (0x06, 0x07, 0x08):  # restore_extended, undefined, same_value
        reg, pos = _uleb(code, pos)
        kind = {0x06: -1, 0x07: RULE_UNDEFINED, 0x08: RULE_SAME_VALUE}[op]
        return reg, kind, 0, pos, None
    if op == 0x09:  # DW_CFA_register
        reg, pos = _uleb(code, pos)
        other, pos = _uleb(code, pos)
        return reg, RULE_REGISTER, other, pos, None
    if op in (0x10, 0x16):  # DW_CFA_expression, DW_CFA_val_expression
        reg, pos = _uleb(code, pos)
        expression, pos = _block(code, pos)
        kind = RULE_EXPRESSION if op == 0x10 else RULE_VAL_EXPRESSION
        return reg, kind, expression, pos, None
    if op == 0x01:  # DW_CFA_set_loc
        address, pos = _read_encoded(code, pos, cie.fde_encoding, code_address, None, cie.offset)
        return -1, 0, 0, pos, address - pc_begin
    if op == 0x1D:  # DW_CFA_MIPS_advance_loc8, as GNU tools accept it
        raise UnwindError("DW_CFA_MIPS_advance_loc8 not supported")
    raise UnwindError(f"unknown call-frame instruction {op:#04x}")


# --- the sections of a file ----------------------------------------------------------------


def parse_eh_frame_hdr(data: bytes, address: int) -> EhFrameHeader:
    """.eh_frame_hdr at virtual address ``address``: the .eh_frame address and the
    binary-search table (empty when the linker left it out)."""
    try:
        return _parse_hdr(data, address)
    except _DECODE_ERRORS as exc:
        raise UnwindError(f".eh_frame_hdr truncated: {exc}") from exc


def _parse_hdr(data: bytes, address: int) -> EhFrameHeader:
    version, ptr_enc, count_enc, table_enc = data[0], data[1], data[2], data[3]
    if version != 1:
        raise UnwindError(f".eh_frame_hdr version {version} not supported")
    eh_frame, pos = _read_encoded(data, 4, ptr_enc, address, address, 0)
    if count_enc == _DW_EH_PE_OMIT or table_enc == _DW_EH_PE_OMIT:
        return EhFrameHeader(eh_frame, ())
    count, pos = _read_encoded(data, pos, count_enc, address, address, 0)
    if table_enc == 0x3B:  # datarel|sdata4, as every linker writes it
        if pos + 8 * count > len(data):
            raise UnwindError(f".eh_frame_hdr: {count} entries do not fit")
        pairs = struct.unpack_from(f"<{2 * count}i", data, pos)
        table = tuple(
            ((pc + address) & _MASK64, (fde + address) & _MASK64)
            for pc, fde in zip(pairs[0::2], pairs[1::2], strict=True)
        )
        return EhFrameHeader(eh_frame, table)
    entries = []
    for _ in range(count):
        pc, pos = _read_encoded(data, pos, table_enc, address, address, 0)
        fde, pos = _read_encoded(data, pos, table_enc, address, address, 0)
        entries.append((pc, fde))
    return EhFrameHeader(eh_frame, tuple(entries))
