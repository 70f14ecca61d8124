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
import subprocess
import sys
import textwrap

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
