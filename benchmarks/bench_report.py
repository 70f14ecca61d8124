"""Report benchmark: time to execute the report notebooks and render report.html for the bundled
sample's run, its size, and peak RSS (this process and its kernels). Run by hand; not in CI.

    .venv/bin/python benchmarks/bench_report.py
"""

from __future__ import annotations

import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _peak_rss_mib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    from pipeline.report.render import render_report
    from pipeline.report.sample import ensure_sample_run

    started = time.perf_counter()
    sample = ensure_sample_run()
    print(f"sample run (cached or built): {time.perf_counter() - started:6.1f} s")
    for identifiers in (True, False):
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            shutil.copytree(sample, run_dir, ignore=shutil.ignore_patterns("store"))
            started = time.perf_counter()
            path = render_report(run_dir, identifiers=identifiers, store_dir=sample / "store")
            elapsed = time.perf_counter() - started
            size = path.stat().st_size / 1024
            print(f"render_report(identifiers={identifiers!s:5}): {elapsed:6.1f} s, "
                  f"report.html {size:,.0f} KiB")
    print(f"peak RSS: this process {_peak_rss_mib(resource.RUSAGE_SELF):,.0f} MiB, "
          f"largest kernel {_peak_rss_mib(resource.RUSAGE_CHILDREN):,.0f} MiB")


if __name__ == "__main__":
    main()
