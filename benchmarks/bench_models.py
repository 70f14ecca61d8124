"""Benchmark: panel build and model fits on a synthetic 10,000 subjects × 365 days dataset.

Prints wall times for the panel, each model fit, the dose-response curves and the whole
``fit_models`` call, with peak RSS. Usage: ``python benchmarks/bench_models.py [N_SUBJECTS N_DAYS]``.
Not run in CI.
"""

from __future__ import annotations

import resource
import sys
import time


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(n_subjects: int = 10_000, n_days: int = 365, seed: int = 20261128) -> dict:
    from pipeline.features import build_panel
    from pipeline.models import effects as ef
    from pipeline.models.dose_response import fit_dose_response
    from pipeline.synth import generate

    figures: dict[str, float] = {}
    t = time.perf_counter()
    ds = generate(n_subjects, n_days, seed)
    figures["synth_s"] = time.perf_counter() - t
    daily, episodes, injuries = ds.daily.lazy(), ds.episodes.lazy(), ds.injuries.lazy()

    t = time.perf_counter()
    panel = build_panel(daily, episodes, injuries, custom_factors=ds.custom_factors)
    figures["panel_s"] = time.perf_counter() - t
    print(f"panel: {panel.summary['n_subject_days']:,} subject-days, "
          f"{panel.summary['n_episodes_on_logged_days']:,} episodes, "
          f"{len(panel.features)} features: {figures['panel_s']:.2f} s", flush=True)

    # Each stage separately (the same steps fit_models runs), then fit_models end to end.
    frame = ef.with_subject_codes(panel.frame)
    for model, conditional, features, reported in ef.model_specs(ds.custom_factors):
        t = time.perf_counter()
        design = ef.prepare_design(frame, panel, model, conditional, features, reported)
        prep = time.perf_counter() - t
        t = time.perf_counter()
        fit, failure = ef._fit(design)
        fit_s = time.perf_counter() - t
        figures[f"{model}_design_s"], figures[f"{model}_fit_s"] = prep, fit_s
        print(f"{model:27s} design {prep:6.2f} s  fit {fit_s:6.2f} s  "
              f"({design.n_subject_days:,} rows × {len(design.kept)} features"
              f"{'' if fit is not None else '; ' + str(failure)})", flush=True)
        if model == ef.fd.WITHIN_SUBJECT:
            t = time.perf_counter()
            fit_dose_response(design)
            figures["dose_response_s"] = time.perf_counter() - t
            print(f"{'dose_response':27s} {figures['dose_response_s']:6.2f} s", flush=True)

    t = time.perf_counter()
    ef.fit_models(panel, custom_factors=ds.custom_factors)
    figures["fit_models_s"] = time.perf_counter() - t
    figures["peak_rss_mib"] = _peak_rss_mib()
    print(f"fit_models end to end: {figures['fit_models_s']:.2f} s; "
          f"peak RSS {figures['peak_rss_mib']:,.0f} MiB", flush=True)
    return figures


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    main(*args)
