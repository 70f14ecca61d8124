"""The ``cramp run`` job: ingest → red flags → panel → models → report, into one run directory.

Red flags are evaluated before the models so that a dataset too small to model still gets every
flagged episode written: no statistics ever stand between a clinician and a red flag.
"""

from __future__ import annotations

from pathlib import Path

from pipeline import atomic, progress as stages
from pipeline.errors import UserError


def run_job(
    data_dir: Path,
    out_dir: Path,
    *,
    store_dir: Path | None = None,
    rules_path: Path | None = None,
    report: bool = True,
    identifiers: bool = True,
    progress: bool = False,
    previous_run_dir: Path | None = None,
    executor: str = "local",
    scheduler: str | None = None,
) -> dict:
    """Run the whole job on ``data_dir`` and write every output into ``out_dir``.

    Returns ``{"summary": <summary.json content>, "messages": [lines for the user]}``. Raises
    ``UserError`` for problems with the input or options (the CLI exits 2). ``progress``: show
    one line per stage (``pipeline.progress``; the CLI turns it on only on a terminal). The
    whole job holds the run directory's lock (``pipeline.run_dir``): a second run on the same
    ``out_dir`` stops. The per-bucket work (red flags, every model pass) runs on ``executor``:
    ``local`` (threads here) or ``dask`` (the scheduler at ``scheduler`` or
    $DASK_SCHEDULER_ADDRESS, else a LocalCluster), see pipeline/execution.py, docs/scaling.md.
    """
    from pipeline import execution
    from pipeline.ingest.dataset import check_not_inside
    from pipeline.run_dir import mark_started, run_dir_lock

    # Every path is made absolute once, here: nothing later depends on the working directory.
    data_dir, out_dir = Path(data_dir).resolve(), Path(out_dir).resolve()
    if not data_dir.is_dir():
        raise UserError("dataset directory not found (expected a directory of tables)",
                        path=str(data_dir))
    check_not_inside(data_dir, out_dir, "the output directory (--out)")
    from pipeline import scratch

    with execution.session(executor, scheduler), stages.session(progress), \
            run_dir_lock(out_dir):
        scratch.clean_stale(out_dir)
        mark_started(out_dir)
        with scratch.session(out_dir):
            return _run_job_locked(data_dir, out_dir, store_dir=store_dir, rules_path=rules_path,
                                   report=report, identifiers=identifiers,
                                   progress=progress, previous_run_dir=previous_run_dir)


def _run_job_locked(data_dir: Path, out_dir: Path, *, store_dir: Path | None,
                    rules_path: Path | None, report: bool, identifiers: bool, progress: bool,
                    previous_run_dir: Path | None) -> dict:
    with stages.stage("load the toolkit's libraries"):
        from pipeline.dataset_config import load_dataset_config
        from pipeline import scratch
        from pipeline.features.panel import build_panel_from_store
        from pipeline.ingest import ingest_dataset, write_ingest_outputs
        from pipeline.models import fit_models, write_model_outputs
        from pipeline.redflags import load_rules, write_flag_outputs
        from pipeline.redflags.buckets import evaluate_store
        from pipeline.store import Store, remove_store

    from pipeline.acceptance import check_usable

    rules_path = Path(rules_path).resolve() if rules_path is not None else None
    if store_dir is None:
        # The default store belongs to this run directory: rebuilt on every run, so the run's
        # summary, quarantine and data-quality section describe the whole dataset, not only the
        # files that are new since the last run. A --store given by the user is incremental.
        store_dir = out_dir / "store"
        fresh_store = True
    else:
        store_dir = Path(store_dir).resolve()
        fresh_store = False
    # Fail fast on bad options before touching the store.
    rules = load_rules(rules_path)
    config = load_dataset_config(data_dir)

    if fresh_store:
        remove_store(store_dir)  # refuses a directory cramp did not make
    result = ingest_dataset(data_dir, store_dir, progress=progress)
    write_ingest_outputs(result, out_dir)
    summary = dict(result.summary)
    messages: list[str] = []

    store = Store(store_dir)
    check_usable(result, store, out_dir)  # "all rows quarantined" says so, here
    # What the rest of the run needs from the ingest is its summary: the accepted rows are in
    # the store now, and keeping this ingest's frames alive would hold a second copy of the
    # dataset in memory through every later stage.
    ingest_store_totals = result.summary.get("store_totals")
    del result
    with stages.stage("red flags"):
        flags = evaluate_store(store, rules)
        write_flag_outputs(flags, out_dir)
    n_flagged = flags.flags.height
    messages.append(f"Red flags: {n_flagged:,} rule firings written to red_flags.csv.")

    # No injuries file ever ingested means injuries were not logged (recent_injury unknown),
    # which is not the same as "no injuries".
    injuries_logged = any(f.table == "injuries" for f in store.manifest.files)
    if injuries_logged and not sum(f.accepted for f in store.manifest.files
                                   if f.table == "injuries"):
        messages.append("Injuries: the injuries table is empty, read as no injuries logged "
                        "(recent_injury is 'no' on every day).")
    with stages.stage("panel"):
        # One subject bucket of the store at a time, each part kept in the run's scratch space
        # (memory holds one bucket; a store of one bucket gives the panel in memory).
        panel = build_panel_from_store(store, injuries=injuries_logged,
                                       custom_factors=config.custom_factors,
                                       directory=scratch.new_directory("panel"))
    summary["panel"] = panel.summary
    summary["data_dir"] = str(data_dir)
    summary["store_dir"] = str(store_dir)
    summary["store_totals"] = ingest_store_totals or store_totals(store)
    # The report reads the rules a run used from here (None: the shipped rules).
    summary["rules_path"] = str(Path(rules_path).resolve()) if rules_path is not None else None
    atomic.write_json(out_dir / "summary.json", summary)
    if panel.summary.get("episodes_outside_logged_days"):
        messages.append(
            f"{panel.summary['episodes_outside_logged_days']:,} episode(s) fell on days with no "
            "daily row: counted in summary.json and left out of the models."
        )

    models = fit_models(panel, custom_factors=config.custom_factors,  # a line per model
                        analysis=config.analysis)
    from pipeline.describe import write_describe_outputs
    from pipeline.execution import concurrently
    from pipeline.models.lags import fit_lags, write_lags

    # Three stages that each need only the panel and the fitted effects run side by side: each
    # is a series of fits on a subset or on buckets of subjects, too small on its own to keep
    # every core busy (outputs and messages are in a fixed order whatever finishes first).
    def lag_stage():
        with stages.stage("fit model within_subject_lags"):
            return fit_lags(panel, custom_factors=config.custom_factors,
                            analysis=config.analysis)

    def per_person_stage():
        with stages.stage("per-person estimates"):
            return write_per_patient(panel, models, out_dir, config.custom_factors)

    def describe_stage():
        with stages.stage("cohort table and subgroups"):
            return write_describe_outputs(store, panel, flags, models.effects, out_dir,
                                          custom_factors=config.custom_factors)

    lags, per_person_message, describe_messages = concurrently(
        [lag_stage, per_person_stage, describe_stage])
    models.diagnostics["lags"] = lags.diagnostics
    with stages.stage("write model outputs"):
        write_lags(lags, out_dir)
        write_model_outputs(models, out_dir)
    messages.append("Models: effects.csv, lags.csv, dose_response.csv and diagnostics.json "
                    "written.")
    messages.append(per_person_message)
    messages += describe_messages
    from pipeline.run_dir import mark_finished

    mark_finished(out_dir)  # every data output is written; the report reads them
    if report:
        from pipeline.report import render_report

        path = render_report(out_dir, identifiers=identifiers, store_dir=store_dir,
                             rules_path=rules_path, previous_run_dir=previous_run_dir)
        messages.append(f"Report: {path}")
    return {"summary": summary, "messages": messages}


def write_per_patient(panel, models, out_dir: Path, custom_factors) -> str:
    """Per-person estimates (subject_effects.csv, heterogeneity.csv; issue 13)."""
    from pipeline.models.subject_effects import fit_subject_effects, write_subject_effects

    write_subject_effects(fit_subject_effects(panel, models.effects,
                                              custom_factors=custom_factors), out_dir)
    return "Per-person estimates: subject_effects.csv and heterogeneity.csv written."


def store_totals(store) -> dict[str, dict[str, int]]:
    """Per table, every file the store holds (this run's and earlier ones): files, rows read,
    rows accepted. ``summary.tables`` counts only what this run read; with an incremental store
    (``--store``, ``cramp report``) the two differ."""
    totals: dict[str, dict[str, int]] = {}
    for f in store.manifest.files:
        t = totals.setdefault(f.table, {"files": 0, "rows": 0, "accepted": 0})
        t["files"] += 1
        t["rows"] += f.rows
        t["accepted"] += f.accepted
    return dict(sorted(totals.items()))
