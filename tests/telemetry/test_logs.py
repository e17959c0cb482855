"""The agent's log lines: logfmt or JSON, chosen by the logging block or the flags."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from datetime import datetime

import logfmtkv
import pytest

from agent.telemetry import LogFormatter
from tests.agent import REPO, parse_log, run_agent, wait_for

AWKWARD = 'a "quoted" word, key=value, back\\slash, tab\there, new\nline, ünïcödé, \x01'


def record(message: str, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord("agent.test", logging.WARNING, __file__, 1, message, (), exc_info)


@pytest.mark.parametrize("message", [AWKWARD, "", "plain", "=", '"'])
def test_any_message_is_one_logfmt_line_that_reads_back(message):
    line = LogFormatter("logfmt").format(record(message))
    assert "\n" not in line
    fields = logfmtkv.parse(line, strict=True, duplicates="error")
    assert fields["msg"] == message
    assert (fields["level"], fields["logger"]) == ("warn", "agent.test")


def test_a_traceback_stays_on_the_line_in_err():
    try:
        raise ValueError('bad "value"')
    except ValueError:
        exc_info = sys.exc_info()
    for log_format, read in (("logfmt", logfmtkv.parse), ("json", json.loads)):
        line = LogFormatter(log_format).format(record("failed", exc_info))
        assert "\n" not in line
        fields = read(line)
        assert fields["msg"] == "failed"
        assert fields["err"].startswith("Traceback") and 'ValueError: bad "value"' in fields["err"]


def test_timestamps_are_rfc3339_utc_with_milliseconds():
    entry = record("x")
    entry.created = 1_780_000_000.0125
    fields = json.loads(LogFormatter("json").format(entry))
    assert fields["ts"] == "2026-05-28T20:26:40.012Z"
    assert datetime.fromisoformat(fields["ts"]).timestamp() == 1_780_000_000.012


CONFIG = """logging {
  level  = "debug"
  format = "json"
}
discovery.process "p" {
  refresh_interval = "1s"
}
"""


def run_and_log(tmp_path, *flags: str) -> str:
    with run_agent(CONFIG, tmp_path, *flags) as agent:
        agent.wait_for_metrics()
        wait_for(lambda: "healthy" in agent.log, 10, "discovery's first scan")
        assert agent.stop() == 0
    return agent.log


def test_the_logging_block_sets_level_and_format(tmp_path):
    records = parse_log(run_and_log(tmp_path), "json")
    levels = {record["level"] for record in records}
    assert "debug" in levels and "info" in levels
    config = (tmp_path / "agent.alloy").resolve()
    assert records[0]["msg"] == f"configuration {config}, working directory {REPO}"


def test_the_flags_win_over_the_logging_block(tmp_path):
    text = run_and_log(tmp_path, "--log.format=logfmt", "--log.level=info")
    records = parse_log(text, "logfmt")
    assert {record["level"] for record in records} <= {"info", "warn", "error"}
    assert "agent started components=1" in [record["msg"] for record in records]


def test_a_reload_applies_a_changed_logging_block(tmp_path):
    with run_agent(CONFIG, tmp_path) as agent:
        agent.wait_for_metrics()
        wait_for(lambda: "healthy" in agent.log, 10, "discovery's first scan")
        quieter = CONFIG.replace('"debug"', '"info"').replace('"json"', '"logfmt"')
        (tmp_path / "agent.alloy").write_text(quieter)
        agent.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "configuration reloaded" in agent.log, 10, "the reload")
        time.sleep(2)  # two discovery scans: their debug lines, were they still written
        assert agent.stop() == 0
    lines = agent.log.splitlines()
    first_logfmt = next(n for n, line in enumerate(lines) if not line.startswith("{"))
    before = parse_log("\n".join(lines[:first_logfmt]), "json")
    after = parse_log("\n".join(lines[first_logfmt:]), "logfmt")  # every line after
    assert "debug" in {record["level"] for record in before}
    assert {record["level"] for record in after} <= {"info", "warn", "error"}
    assert after[0]["msg"] == "configuration reloaded components=1 started=none"
