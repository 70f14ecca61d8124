"""The report stage: notebooks executed with papermill against a run directory, rendered into one
self-contained ``report.html``, and the scheduled job that keeps dated reports and an index.

Public API::

    render_report(run_dir, *, identifiers=True, store_dir=None, rules_path=None,
                  previous_run_dir=None) -> Path     # RUN/report.html, or RUN/share/report.html
    scheduled_report(data_dir, reports_dir, *, now=None, identifiers=True) -> Path
    ensure_sample_run() -> Path                                              # sample's run dir
    new_flags(current_run_dir, previous_run_dir) -> pl.DataFrame  # firings not in the previous

Imports are lazy: a notebook kernel that only needs ``pipeline.report.views`` should not pay for
papermill and nbformat (about two seconds) on every start.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "render_report": "pipeline.report.render",
    "scheduled_report": "pipeline.report.schedule",
    "write_index": "pipeline.report.schedule",
    "ensure_sample_run": "pipeline.report.sample",
    "new_flags": "pipeline.report.changes",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipeline.report' has no attribute {name!r}")
