"""The unwind room: a file's call-frame information in, compact unwind tables out."""

from agent.unwind.cfi import UnwindError
from agent.unwind.table import ROW_FORMAT, CfaType, UnwindTable, build_table, lookup

__all__ = ["ROW_FORMAT", "CfaType", "UnwindError", "UnwindTable", "build_table", "lookup"]
