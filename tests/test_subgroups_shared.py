"""The subgroup stage's shortcuts give the results of the plain computation, exactly.

- Interaction tests from a design shared by the features tested on the same subgroups
  (``_interaction_tests``) equal each feature's own test (``_interaction_test``: its own
  ``prepare_design``) bit for bit, on a dataset where the shared design applies and on one where
  a feature that fails a sufficiency check has missing days (the complete-case rows then change
  between rounds of checks, so the feature's own design is built instead).
- The fits run side by side on two threads or one after another: the same table, bit for bit.
"""

from __future__ import annotations

import dataclasses

import polars as pl
import pytest

from pipeline import execution, synth
from pipeline.features import build_panel
from pipeline.features import dictionary as fd
from pipeline.models import subgroups as S


def _data(seed: int, spoil: str | None = None):
    ds = synth.generate(240, 40, seed=seed, custom_factor=False)
    panel = build_panel(ds.daily.lazy(), ds.episodes.lazy(), ds.injuries.lazy(),
                        custom_factors=ds.custom_factors)
    if spoil is not None:
        # Yes on every recorded day (too few 'no' days for an estimate), missing on every 7th.
        day = pl.int_range(pl.len()) % 7
        panel = dataclasses.replace(panel, frame=panel.frame.with_columns(
            pl.when(day == 0).then(None).otherwise(1.0).alias(spoil)))
    frame = S.subgroup_frame(panel, ds.subjects.lazy(), ds.episodes.lazy())
    return ds, panel, frame


def _usable(frame):
    """Every sufficient subgroup of every variable, for every reported feature."""
    groups = S.define_subgroups(frame)
    features, reported = fd.model_features(S.MODEL)
    return features, reported, {
        (v, f.name): tuple(sg for sg in groups[v] if sg.sufficient)
        for v in S.VARIABLES for f in reported}


@pytest.mark.parametrize("spoil", [None, "poor_posture"])
def test_shared_interaction_designs_give_each_features_own_test(spoil, monkeypatch):
    ds, panel, frame = _data(4, spoil)
    features, reported, usable = _usable(frame)
    fixed = []
    shared_design = S._shared_design

    def recording(*args):
        shared = shared_design(*args)
        fixed.append(shared.rows_fixed)
        return shared

    monkeypatch.setattr(S, "_shared_design", recording)
    got = S._interaction_tests(frame, panel, features, reported, usable, None)
    by_name = {f.name: f for f in reported}
    expected = {(v, name): S._interaction_test(frame, panel, features, by_name[name], list(sgs),
                                               None)
                for (v, name), sgs in usable.items()}
    assert got == expected
    assert sum(p is not None for p, _ in got.values()) >= 20
    if spoil is None:
        assert fixed and all(fixed)  # the shortcut was taken
    else:
        assert fixed and not any(fixed)  # the feature's own design was built
        assert all(p is None and "not tested" in why for (v, name), (p, why) in got.items()
                   if name == spoil)


def test_fits_side_by_side_or_one_by_one_give_the_same_table(monkeypatch):
    ds, panel, _ = _data(6)
    out = {}
    for workers in (1, 2):
        monkeypatch.setenv(execution.THREADS_ENV, str(workers))
        out[workers] = S.fit_subgroups(panel, ds.subjects.lazy(), ds.episodes.lazy())
    assert out[1].equals(out[2])
    assert out[1]["p_interaction"].drop_nulls().len() >= 20
