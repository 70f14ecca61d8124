"""Benchmark: panel build and model fits on a synthetic 10,000 subjects × 365 days dataset.

The synthetic tables are generated once in a child process and cached as Parquet (so the peak RSS
printed here is that of panel + models alone), then read lazily as ``Store.read`` would. Prints
wall and CPU times for the panel, each model's design and fit, the dose-response curves and the
whole ``fit_models`` call, and peak RSS. CPU time is printed because on a shared machine the wall
time also measures the neighbours.

Usage: ``python benchmarks/bench_models.py [N_SUBJECTS N_DAYS] [--lags-only]`` (``--lags-only``:
the panel and the distributed-lag model only). Not run in CI.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(tempfile.gettempdir()) / "cramp-bench-models"
SEED = 20261128


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _dataset(n_subjects: int, n_days: int) -> Path:
    out = CACHE / f"{n_subjects}x{n_days}"
    if not (out / "done").exists():
        out.mkdir(parents=True, exist_ok=True)
        code = (
            "import sys; from pathlib import Path; from pipeline.synth import generate\n"
            f"ds = generate({n_subjects}, {n_days}, {SEED})\n"
            f"out = Path({str(out)!r})\n"
            "for name, frame in ds.tables().items(): frame.write_parquet(out / f'{name}.parquet')\n"
            "import json; (out / 'custom.json').write_text(json.dumps("
            "[c.__dict__ for c in ds.custom_factors]))\n"
            "(out / 'done').write_text('ok')\n"
        )
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        print(f"synth (child process, cached in {out}): {time.perf_counter() - t:.1f} s")
    return out


class _Timer:
    def __init__(self):
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return wall, cpu


def main(n_subjects: int = 10_000, n_days: int = 365, lags_only: bool = False) -> dict:
    import json

    import polars as pl

    from pipeline import schema
    from pipeline.features import build_panel
    from pipeline.models import effects as ef
    from pipeline.models.dose_response import fit_dose_response

    path = _dataset(n_subjects, n_days)
    custom = tuple(schema.CustomFactor(**c) for c in json.loads((path / "custom.json").read_text()))
    read = {name: pl.scan_parquet(path / f"{name}.parquet")
            for name in ("daily", "episodes", "injuries")}
    figures: dict[str, float] = {}

    timer = _Timer()
    panel = build_panel(read["daily"], read["episodes"], read["injuries"], custom_factors=custom)
    figures["panel_s"], figures["panel_cpu_s"] = timer.lap()
    print(f"panel: {panel.summary['n_subject_days']:,} subject-days, "
          f"{panel.summary['n_episodes_on_logged_days']:,} episodes, {len(panel.features)} "
          f"features: {figures['panel_s']:.2f} s wall, {figures['panel_cpu_s']:.2f} s CPU",
          flush=True)

    if lags_only:
        return _lag_model(panel, custom, figures, timer)
    # Each stage separately (the steps fit_models runs), then fit_models end to end.
    frame = ef.with_subject_codes(panel.frame)
    within: dict[str, float] = {}  # as fit_models: the secondary models start from these
    for model, conditional, features, reported in ef.model_specs(custom):
        timer.lap()
        design = ef.prepare_design(frame, panel, model, conditional, features, reported)
        prep = timer.lap()
        fit, failure = ef._fit(design, within if conditional else None)
        if model == ef.fd.WITHIN_SUBJECT and fit is not None:
            within = dict(zip(fit.names, (float(b) for b in fit.coef)))
        fit_s = timer.lap()
        figures[f"{model}_design_s"], figures[f"{model}_fit_s"] = prep[0], fit_s[0]
        print(f"{model:27s} design {prep[0]:6.2f} s ({prep[1]:5.2f} CPU)  fit {fit_s[0]:6.2f} s "
              f"({fit_s[1]:5.2f} CPU)  {design.n_subject_days:,} rows × {len(design.kept)} "
              f"features{'' if fit is not None else '; ' + str(failure)}", flush=True)
        if model == ef.fd.WITHIN_SUBJECT:
            timer.lap()
            _, notes = fit_dose_response(design, within)
            wall, cpu = timer.lap()
            figures["dose_response_s"] = wall
            subset = notes.get("subset") or {}
            print(f"{'dose_response':27s} {wall:6.2f} s ({cpu:5.2f} CPU)  "
                  f"{subset.get('n_subject_days', design.n_subject_days):,} rows", flush=True)
        del design, fit

    _lag_model(panel, custom, figures, timer)

    timer.lap()
    ef.fit_models(panel, custom_factors=custom)
    figures["fit_models_s"], figures["fit_models_cpu_s"] = timer.lap()
    ef.fit_models(panel, custom_factors=custom, dose_response=False)
    figures["fit_models_no_curves_s"], _ = timer.lap()
    figures["peak_rss_mib"] = _peak_rss_mib()
    print(f"fit_models end to end: {figures['fit_models_s']:.2f} s wall "
          f"({figures['fit_models_cpu_s']:.2f} s CPU); without dose-response curves "
          f"{figures['fit_models_no_curves_s']:.2f} s; peak RSS "
          f"{figures['peak_rss_mib']:,.0f} MiB", flush=True)
    with open("/proc/loadavg") as handle:
        print(f"load average during the run: {handle.read().split()[0]} (2 cores)")
    return figures


def _lag_model(panel, custom, figures: dict, timer: _Timer) -> dict:
    """The distributed-lag model (lags.csv), as cramp run fits it after fit_models: the time it
    adds to ``cramp run --no-report``."""
    from pipeline.models.lags import fit_lags

    timer.lap()
    lag_results = fit_lags(panel, custom_factors=custom)
    figures["lag_model_s"], figures["lag_model_cpu_s"] = timer.lap()
    d = lag_results.diagnostics
    subset = d["subset"] or {}
    print(f"{'within_subject_lags':27s} {figures['lag_model_s']:6.2f} s "
          f"({figures['lag_model_cpu_s']:5.2f} CPU)  {d['n_subject_days']:,} complete-window rows "
          f"of {d['n_subject_days_panel']:,} subject-days (subjects: "
          f"{subset.get('n_subjects', 'all')} of {subset.get('of_subjects', 'all')}); "
          f"adds {figures['lag_model_s']:.2f} s wall to cramp run --no-report", flush=True)
    return figures


if __name__ == "__main__":
    flags = [a for a in sys.argv[1:] if a.startswith("--")]
    main(*[int(a) for a in sys.argv[1:] if not a.startswith("--")][:2],
         lags_only="--lags-only" in flags)
