"""The scheduler examples in deploy/ call the real `cramp report` command with options it has."""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _report_options() -> str:
    return subprocess.run([sys.executable, "-m", "pipeline", "report", "--help"],
                          capture_output=True, text=True, timeout=60, check=True).stdout


def _cramp_args(command: str) -> list[str]:
    words = shlex.split(command)
    start = next(i for i, w in enumerate(words) if w.endswith("/cramp") or w == "cramp")
    return words[start + 1:]


def test_systemd_units_run_cramp_report_from_a_timer():
    service = configparser.ConfigParser(strict=False, interpolation=None)
    service.optionxform = str
    service.read(DEPLOY / "cramp-report.service")
    assert service["Service"]["Type"] == "oneshot"
    args = _cramp_args(service["Service"]["ExecStart"])
    assert args[0] == "report" and "--data" in args and "--reports" in args
    timer = configparser.ConfigParser(strict=False, interpolation=None)
    timer.optionxform = str
    timer.read(DEPLOY / "cramp-report.timer")
    assert timer["Timer"]["Unit"] == "cramp-report.service"
    assert timer["Timer"]["OnCalendar"]
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_cron_line_runs_cramp_report_nightly():
    lines = [ln for ln in (DEPLOY / "crontab.example").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert len(lines) == 1
    minute, hour, dom, month, dow, command = lines[0].split(None, 5)
    assert (dom, month, dow) == ("*", "*", "*") and minute.isdigit() and hour.isdigit()
    cramp = re.search(r"\S*cramp report .*?(?=>>|$)", command).group(0)
    args = _cramp_args(cramp)
    assert args[0] == "report" and "--data" in args and "--reports" in args


def test_the_options_the_examples_use_exist():
    help_text = _report_options()
    assert "--data" in help_text and "--reports" in help_text
