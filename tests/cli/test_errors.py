"""Every bad input to `emberscope profile` is one clear line and a non-zero exit."""

from __future__ import annotations

import os
import shutil

import pytest


def unused_pid() -> int:
    pid = 4_000_000
    while os.path.exists(f"/proc/{pid}"):
        pid -= 1
    return pid


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--duration", "10x", "--all"], 2, "invalid duration '10x'"),
        (["--duration", "0s", "--all"], 2, "must be longer than 0"),
        (["--frobnicate", "--all"], 2, "unrecognized arguments: --frobnicate"),
        (["--sample-rate", "0", "--all"], 2, "invalid sample rate '0'"),
        (["--pid", "abc"], 2, "invalid pid 'abc'"),
        (["--duration", "1s"], 2, "choose exactly one of --pid PID, --all or -- COMMAND"),
        (["--all", "--pid", "1"], 2, "choose exactly one"),
        (["--all", "--no-user", "--no-kernel"], 2, "leave nothing to collect"),
    ],
)
def test_usage_errors(emberscope, args, code, message):
    result = emberscope("profile", *args)
    assert result.returncode == code
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.usefixtures("bpf_ready")
def test_no_such_pid(emberscope):
    pid = unused_pid()
    result = emberscope("profile", "--pid", str(pid), "--duration", "1s")
    assert result.returncode == 1
    assert result.stderr.strip() == f"emberscope: error: pid {pid}: no such process"


@pytest.mark.usefixtures("bpf_ready")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is missing")
def test_without_privileges_it_asks_for_root(emberscope):
    drop_all = ("setpriv", "--inh-caps=-all", "--bounding-set=-all", "--")
    result = emberscope("profile", "--all", "--duration", "1s", wrapper=drop_all)
    assert result.returncode == 1
    assert "emberscope needs root" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.usefixtures("bpf_ready")
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) is missing")
def test_without_btf_it_names_the_kernel_option(emberscope):
    hide_btf = (
        "unshare",
        "-m",
        "sh",
        "-c",
        'mount -t tmpfs none /sys/kernel/btf && exec "$@"',
        "sh",
    )
    result = emberscope("profile", "--all", "--duration", "1s", wrapper=hide_btf)
    assert result.returncode == 1
    assert "no BTF" in result.stderr and "CONFIG_DEBUG_INFO_BTF" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.usefixtures("bpf_ready")
def test_when_bpf_is_refused_it_says_so(emberscope, build_workload):
    deny_bpf = build_workload("deny_bpf")
    result = emberscope("profile", "--all", "--duration", "1s", wrapper=(str(deny_bpf),))
    assert result.returncode == 1
    assert "the kernel refused" in result.stderr and "CAP_BPF" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_command_that_does_not_exist(emberscope, bpf_ready):
    result = emberscope("profile", "--duration", "1s", "--", "/nonexistent/program")
    assert result.returncode == 1
    assert "cannot start '/nonexistent/program'" in result.stderr
