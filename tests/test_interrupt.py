"""Ctrl-C ends a run within one bucket's work, not after every queued fit (issue 10).

Threads cannot be stopped from outside: ``execution.concurrently`` cancels the tasks not yet
started and makes the running ones stop at their next bucket (``execution.Cancelled``). This
matters most in a notebook's kernel, where "interrupt" would otherwise leave every queued fit of a
300,000-subject run (minutes of them) running behind the prompt; ``cramp run`` exits with code
130 within a second either way (measured by hand on 10,000 x 365 at several points). Checked
in a subprocess that interrupts its own main thread (SIGINT, as Ctrl-C does) while four tasks of
about 8 s each run on two threads: it must stop within 2 s of the signal, with at most a few
buckets run after it, and a second ``concurrently`` in the same process (a notebook's kernel)
must run normally.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pipeline import synth
from pipeline.run_dir import UNFINISHED

SCRIPT = textwrap.dedent("""
    import json, signal, threading, time
    from pipeline import execution

    done = []  # buckets finished, with their time

    def bucket(seconds):
        time.sleep(seconds)
        done.append(time.monotonic())

    def task():
        ex = execution.current()
        for _ in range(80):  # 80 passes of two 0.05 s buckets: about 4-8 s per task
            ex.map(bucket, [0.05, 0.05])
        return "finished"

    main = threading.main_thread().ident
    sent = []
    def interrupt():
        sent.append(time.monotonic())
        signal.pthread_kill(main, signal.SIGINT)
    threading.Timer(1.0, interrupt).start()
    start = time.monotonic()
    outcome = "no interrupt"
    with execution.using(execution.LocalExecutor(2)):
        try:
            execution.concurrently([task] * 4, workers=2)
        except KeyboardInterrupt:
            outcome = "interrupted"
        stopped = time.monotonic()
        again = execution.concurrently([lambda: execution.current().map(lambda h: h * 2, [1, 2])]
                                       * 2, workers=2)
    print(json.dumps({"outcome": outcome, "stop_after_signal": stopped - sent[0],
                      "buckets_after_signal": sum(t > sent[0] for t in done),
                      "total": stopped - start, "again": again}))
""")


def test_ctrl_c_stops_running_fits_at_their_next_bucket():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["outcome"] == "interrupted"
    # Without cancellation the queued and running tasks would take another ~15 s.
    assert out["stop_after_signal"] < 2.0, out
    # Each running task (2) may finish the pass it is in (2 buckets each, on 2 threads).
    assert out["buckets_after_signal"] <= 8, out
    assert out["again"] == [[2, 4], [2, 4]]


def test_ctrl_c_on_cramp_run_exits_130_with_one_line_and_marks_the_run_unfinished(tmp_path):
    """SIGINT to ``cramp run`` part-way: exit 130, one "aborted" line and no traceback, the
    scratch space removed, and the run directory marked unfinished (``run_dir.UNFINISHED``)."""
    data, out = tmp_path / "data", tmp_path / "out"
    synth.write_dataset(synth.generate(300, 120, 7), data, fmt="csv")
    env = {"PYTHONPATH": str(Path(__file__).resolve().parents[1]), "CRAMP_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--data", str(data),
                             "--out", str(out), "--no-report"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    # Wait until the models have started (the stage line of the panel), then interrupt.
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "panel" in line:
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    _, rest = proc.communicate(timeout=60)
    stopped = time.monotonic() - sent
    stderr = "".join(lines) + rest
    assert proc.returncode == 130, stderr
    assert "aborted (Ctrl-C)" in stderr and "Traceback" not in stderr, stderr
    assert stopped < 10, stopped
    assert (out / UNFINISHED).is_file()
    assert not any(p.name.startswith(".scratch-") for p in out.iterdir())
