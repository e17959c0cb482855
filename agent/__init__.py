"""Emberscope: a continuous eBPF CPU profiler."""

__version__ = "0.1.0"
