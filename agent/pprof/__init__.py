"""Build pprof CPU profiles from symbolized stacks, and read them back."""

from agent.pprof.builder import ProfileBuilder
from agent.pprof.summary import FunctionShare, format_table, read_profile, top_functions

__all__ = ["FunctionShare", "ProfileBuilder", "format_table", "read_profile", "top_functions"]
