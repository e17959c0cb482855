"""Build pprof CPU profiles from symbolized stacks, read them back and merge them."""

from agent.pprof.builder import ProfileBuilder, encode_profile
from agent.pprof.merge import merge_profiles
from agent.pprof.read import read_profile, value_index
from agent.pprof.summary import FunctionShare, format_table, top_functions

__all__ = [
    "FunctionShare",
    "ProfileBuilder",
    "encode_profile",
    "format_table",
    "merge_profiles",
    "read_profile",
    "top_functions",
    "value_index",
]
