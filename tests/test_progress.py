"""Progress lines: one per finished stage with its time when a person is watching (a terminal),
nothing otherwise; stages in threads (the parallel notebook renders) each get their line."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import threading
from pathlib import Path

from rich.console import Console

from pipeline import progress

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def _terminal() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, force_terminal=True, width=120, color_system=None), buffer


def _lines(buffer: io.StringIO) -> list[str]:
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue()).replace("\r", "\n")
    return [line.strip() for line in text.splitlines() if line.strip().startswith("✓")]


def test_each_finished_stage_prints_one_line_with_its_elapsed_time():
    console, buffer = _terminal()
    with progress.session(True, console=console):
        with progress.stage("red flags"):
            pass
        with progress.stage("read daily.csv", total=100) as bar:
            bar.advance(60)
            bar.advance(40)
        timer = progress.begin("fit model population")
        timer.end()
    lines = _lines(buffer)
    assert [re.sub(r" (<0\.1|\d+\.\d) s \(at \d+ s\)$", "", line) for line in lines] == [
        "✓ red flags", "✓ read daily.csv", "✓ fit model population"]


def test_a_stage_that_fails_prints_no_line_and_the_error_propagates():
    console, buffer = _terminal()
    try:
        with progress.session(True, console=console), progress.stage("panel"):
            raise ValueError("boom")
    except ValueError:
        pass
    else:  # pragma: no cover
        raise AssertionError("the error was swallowed")
    assert _lines(buffer) == []
    assert not progress.active()


def test_stages_in_threads_each_print_their_line():
    console, buffer = _terminal()

    def render(name):
        with progress.stage(f"render notebook {name}"):
            pass

    with progress.session(True, console=console):
        threads = [threading.Thread(target=render, args=(n,)) for n in ("01", "02", "03")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(line.split(" ")[3] for line in _lines(buffer)) == ["01", "02", "03"]


def test_nothing_is_shown_outside_a_session_or_when_disabled():
    console, buffer = _terminal()
    with progress.stage("red flags"):
        pass
    with progress.session(False, console=console), progress.stage("panel"):
        pass
    assert buffer.getvalue() == "" and not progress.active()


def test_cramp_run_prints_no_progress_when_not_on_a_terminal(tmp_path):
    """Under cron or a pipe the output is the job's summary only, no bars or control codes."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "--data", str(SAMPLE), "--out",
         str(tmp_path / "out"), "--no-report"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "✓" not in result.stdout + result.stderr
    assert "\x1b[" not in result.stdout + result.stderr


def test_human_bytes():
    assert [progress.human_bytes(n) for n in (512, 3 * 1024, 5 * 1024 ** 2, 2 * 1024 ** 3)] == [
        "512 B", "3.0 KB", "5.0 MB", "2.0 GB"]


def test_cramp_run_on_a_terminal_shows_a_line_per_stage(tmp_path):
    """Run under a pseudo-terminal, as a person would: every stage is named once, in order."""
    import os
    import pty

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", "--data", str(SAMPLE), "--out",
         str(tmp_path / "out"), "--no-report"],
        stdin=follower, stdout=follower, stderr=follower, env={**os.environ, "COLUMNS": "120"})
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    assert process.wait(timeout=300) == 0
    os.close(leader)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    done = [line.strip() for line in text.replace("\r", "\n").splitlines()
            if line.strip().startswith("✓")]
    names = [re.sub(r" (<0\.1|\d+\.\d) s \(at \d+ s\)$", "", line)[2:] for line in done]
    expected = ["read and validate daily.csv", "store accepted rows", "red flags", "panel",
                "fit model population", "fit model within_subject", "write model outputs"]
    found = [next((n for n in names if n.startswith(e)), None) for e in expected]
    assert None not in found, names
    assert [names.index(n) for n in found] == sorted(names.index(n) for n in found)
