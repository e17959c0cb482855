"""The Python room: CPython interpreters found in processes, their frames
named and placed among the native ones."""

from agent.python.processes import PythonProcesses

__all__ = ["PythonProcesses"]
