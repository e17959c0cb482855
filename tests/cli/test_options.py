"""The command line as a new user meets it: global options anywhere, the version,
usage errors (exit 2), readable names in `profile`'s table, cut to the terminal."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent import __version__
from agent.pprof import read_profile, top_functions

LONG_NAMES = r"""
#include <stdlib.h>
#include <time.h>
namespace a_namespace_whose_name_is_rather_long {
template <typename T> struct Accumulator_with_a_long_and_descriptive_name {
    T burn_cpu_in_a_function_whose_name_is_long(T n) {
        volatile T sum = 0;
        for (T i = 0; i < n; i++) sum += i;
        return sum;
    }
};
}
int main(int argc, char **argv) {
    a_namespace_whose_name_is_rather_long::Accumulator_with_a_long_and_descriptive_name<long> a;
    time_t end = time(NULL) + (argc > 1 ? atoi(argv[1]) : 3);
    while (time(NULL) < end) a.burn_cpu_in_a_function_whose_name_is_long(1000000);
    return 0;
}
"""
NAMESPACE = "a_namespace_whose_name_is_rather_long"
LONG_NAME = (
    f"{NAMESPACE}::Accumulator_with_a_long_and_descriptive_name<long>"
    "::burn_cpu_in_a_function_whose_name_is_long"
)
MANGLED_PREFIX = "_ZN37a_namespace_whose_name_is_rather_long"


@pytest.fixture(scope="module")
def long_names(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("long-names")
    (root / "long_names.cpp").write_text(LONG_NAMES)
    binary = root / "long_names"
    subprocess.run(
        ["g++", "-O0", "-fno-omit-frame-pointer", "-o", str(binary), str(root / "long_names.cpp")],
        check=True,
    )
    return binary


@pytest.mark.parametrize("args", [("--version",), ("version",)])
def test_the_version_both_ways(emberscope, args):
    result = emberscope(*args)
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"emberscope {__version__}\n",
        "",
    )


@pytest.mark.parametrize(
    "args",
    [
        ("-v", "profile"),
        ("profile", "-v"),
        ("profile", "-vv", "--log.level", "debug"),
        ("--log.format", "json", "profile", "--log.level=error"),
    ],
)
def test_global_options_are_accepted_before_and_after_the_command(emberscope, args):
    # Parsed, then refused for want of a target: not "unrecognized arguments".
    result = emberscope(*args)
    assert result.returncode == 2
    assert result.stderr == (
        "emberscope profile: error: choose exactly one of --pid PID, --all or -- COMMAND\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run",), "emberscope run: error: the following arguments are required: config"),
        (("profile", "--log.level", "loud"), "argument --log.level: invalid choice: 'loud'"),
        (("--log.format=xml", "version"), "argument --log.format: invalid choice: 'xml'"),
        (("frobnicate",), "argument command: invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors_exit_2_in_one_line(emberscope, args, message):
    result = emberscope(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_help_documents_every_profile_option(emberscope):
    result = emberscope("profile", "--help")
    assert result.returncode == 0
    for option in ("--demangle", "default templates", "--log.level", "--log.format", "-v"):
        assert option in result.stdout


@pytest.mark.usefixtures("bpf_ready")
def test_the_table_shows_demangled_names_cut_to_the_terminal_with_the_whole_name_in_the_pprof(
    emberscope, long_names, tmp_path, monkeypatch
):
    monkeypatch.setenv("COLUMNS", "60")
    output = tmp_path / "long.pb.gz"
    result = emberscope(
        "profile", "--duration", "5s", "--output", str(output), "--", str(long_names), "2"
    )
    assert result.returncode == 0, result.stderr
    table = result.stdout.splitlines()[:-1]  # the last line says what was written
    assert all(len(line) <= 60 for line in table), table
    hottest = table[1]
    assert hottest.startswith(NAMESPACE[:20]) and "…" in hottest, table
    assert hottest.split()[0].endswith("whose_name_is_long"), table
    assert "_ZN" not in result.stdout
    (top,) = top_functions(read_profile(output.read_bytes()), 1)
    assert top.name == LONG_NAME


@pytest.mark.usefixtures("bpf_ready")
def test_demangle_none_keeps_the_linkers_names_and_a_pipe_gets_them_whole(
    emberscope, long_names, tmp_path, monkeypatch
):
    monkeypatch.delenv("COLUMNS", raising=False)
    output = tmp_path / "mangled.pb.gz"
    result = emberscope(
        "profile",
        "--demangle=none",
        "--duration",
        "5s",
        "--output",
        str(output),
        "--",
        str(long_names),
        "1",
    )
    assert result.returncode == 0, result.stderr
    (top,) = top_functions(read_profile(output.read_bytes()), 1)
    assert top.name.startswith(MANGLED_PREFIX)
    assert result.stdout.splitlines()[1].split()[0] == top.name  # stdout is a pipe here
