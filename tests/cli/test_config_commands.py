"""`emberscope check-config` and the refusals of `emberscope run`, through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WRITE = 'pyroscope.write "w" {\n  endpoint {\n    url = "http://127.0.0.1:4040"\n  }\n}\n'


@pytest.mark.parametrize(
    "name", ["deploy/k8s.alloy", "examples/docker.alloy", "examples/local.alloy"]
)
def test_the_shipped_configurations_are_valid(emberscope, name):
    result = emberscope("check-config", name)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{name}: valid"


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ('pyroscope.ebpf "a" {\n  targets = [\n', "3:1", "expected"),
        ('pyroscope.nope "a" {\n}\n', "1:1", "pyroscope.nope"),
        ('pyroscope.ebpf "a" {\n  forward_to = []\n}\n', "1:1", '"targets"'),
        (
            'pyroscope.ebpf "a" {\n  targets = []\n  forward_to = []\n  demangle = "all"\n}\n',
            "4:3",
            "demangle",
        ),
        (
            'pyroscope.ebpf "a" {\n  targets = "x"\n  forward_to = []\n}\n',
            "2:13",
            "expected array, got string",
        ),
        (
            'pyroscope.ebpf "a" {\n  targets = []\n  forward_to = []\n  bogus = 1\n}\n',
            "4:3",
            "bogus",
        ),
        ('logging {\n  level = "loud"\n}\n', "2:3", "level: must be one of debug,"),
        ('logging {\n  format = "text"\n}\n', "2:3", "format: must be one of logfmt, json"),
        ('logging "main" {\n}\n', "1:1", 'block "logging" requires empty label'),
        ("logging {\n}\nlogging {\n}\n", "3:1", "block logging already declared at"),
        ("logging {\n  write_to = []\n}\n", "2:3", 'unrecognized attribute name "write_to"'),
        (
            'logging {\n  level = discovery.process.p.targets\n}\ndiscovery.process "p" {\n}\n',
            "2:11",
            'component "discovery.process.p.targets" does not exist or is out of scope',
        ),
        # A reference is type-checked at load, before the component it names runs.
        (
            'pyroscope.ebpf "a" {\n  targets = []\n  forward_to = pyroscope.write.w.receiver\n}\n'
            + WRITE,
            "3:16",
            "expected array, got capsule",
        ),
        (
            'pyroscope.ebpf "a" {\n  targets = []\n  forward_to = [discovery.relabel.r.output]\n}\n'
            'discovery.relabel "r" {\n  targets = []\n}\n',
            "3:17",
            "expected capsule, got array",
        ),
        (
            'pyroscope.ebpf "a" {\n  targets = pyroscope.write.w.receiver\n  forward_to = []\n}\n'
            + WRITE,
            "2:13",
            "expected array, got capsule",
        ),
        (
            'pyroscope.ebpf "a" {\n  targets = [pyroscope.write.w.receiver]\n  forward_to = []\n}\n'
            + WRITE,
            "2:14",
            "expected object, got capsule",
        ),
        (
            'discovery.relabel "a" {\n  targets = discovery.process.p.targets\n'
            "  rule {\n    action = discovery.process.p.targets\n  }\n}\n"
            'discovery.process "p" {\n}\n',
            "4:14",
            "expected string, got array",
        ),
        (
            'discovery.relabel "a" {\n  targets = discovery.relabel.b.output\n}\n'
            'discovery.relabel "b" {\n  targets = discovery.relabel.a.output\n}\n',
            "1:1",
            "cycle: discovery.relabel.a, discovery.relabel.b",
        ),
    ],
)
def test_each_error_names_file_line_column_and_exits_1(emberscope, tmp_path, text, where, message):
    config = tmp_path / "bad.alloy"
    config.write_text(text)
    result = emberscope("check-config", str(config))
    assert result.returncode == 1
    assert result.stderr.startswith(f"emberscope: {config}:")
    assert f"{config}:{where}:" in result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_logging_block_is_checked_and_may_read_the_environment(emberscope, tmp_path):
    config = tmp_path / "logging.alloy"
    config.write_text('logging {\n  level = sys.env("NO_SUCH_VARIABLE") + "warn"\n}\n')
    result = emberscope("check-config", str(config))
    assert (result.returncode, result.stdout) == (0, f"{config}: valid\n"), result.stderr


def test_a_missing_file_is_one_line(emberscope, tmp_path):
    result = emberscope("check-config", str(tmp_path / "nowhere.alloy"))
    assert result.returncode == 1
    assert "nowhere.alloy" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("nesting", "where"),
    [
        # Each of these raised RecursionError, a traceback of thousands of lines.
        ("  targets = " + "[" * 300 + "]" * 300 + "\n", "2:112"),
        ("".join(f"  b{i} {{\n" for i in range(1000)) + "  }\n" * 1000, "101:7"),
        ('  targets = json_decode("' + "[" * 10**5 + "]" * 10**5 + '")\n', "2:25"),
    ],
)
def test_a_deeply_nested_config_is_one_line_and_exits_1(emberscope, tmp_path, nesting, where):
    config = tmp_path / "deep.alloy"
    config.write_text(f'pyroscope.ebpf "a" {{\n{nesting}  forward_to = []\n}}\n')
    result = emberscope("check-config", str(config))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"emberscope: {config}:{where}: "
        + ("encoding.from_json: JSON " if "json" in nesting else "")
        + "nested more than 100 levels deep"
    ]


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_an_unknown_component_kind_is_named(emberscope, tmp_path, command):
    """The kinds' modules load on demand; a name that has none is refused as it always was."""
    config = tmp_path / "bad.alloy"
    config.write_text('discovery.process "p" {\n}\n\npyroscope.nope "a" {\n}\n')
    result = emberscope(command, str(config))
    assert result.returncode == 1
    assert result.stderr == (
        f'emberscope: {config}:4:1: cannot find the definition of component name "pyroscope.nope"\n'
    )
