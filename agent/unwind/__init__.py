"""The unwind room: a file's call-frame information in, compact unwind tables out."""

from agent.unwind.cache import CACHE_VERSION, TableCache
from agent.unwind.cfi import UnwindError
from agent.unwind.processes import DEFAULT_CACHE_DIRECTORY, NativeUnwinder, open_table_cache
from agent.unwind.table import ROW_FORMAT, CfaType, UnwindTable, build_table, lookup

__all__ = [
    "CACHE_VERSION",
    "CfaType",
    "DEFAULT_CACHE_DIRECTORY",
    "NativeUnwinder",
    "ROW_FORMAT",
    "TableCache",
    "UnwindError",
    "UnwindTable",
    "build_table",
    "lookup",
    "open_table_cache",
]
