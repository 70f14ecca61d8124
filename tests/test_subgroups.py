"""Subgroups and effect modification (subgroups.csv).

- A subgroup's estimates are the within_subject fit on the subgroup's rows (fit_models on a panel
  holding only them): rtol 1e-8, same estimator and design code on the same rows.
- The interaction test equals a statsmodels GLM (Poisson, subject dummies, feature × subgroup term,
  cluster-robust by subject) after the documented df factor ((N−p)/(N−p−G): the dummy GLM counts
  the G subject effects in K, we do not): Wald statistic to rtol 1e-5 (both converge to 1e-10 or
  better; 1e-5 leaves room for the GLM's IRLS stopping rule). Likewise for the muscle group on the
  stacked days (a dummy per subject and outcome, clusters = subjects).
- Planted effect modification (``cramp synth --effect-modification``: sitting only at 60+) is found,
  and datasets without one find none more often than chance allows (slow: over seeds).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from pipeline import synth
from pipeline.features import build_panel
from pipeline.features import dictionary as fd
from pipeline.models import subgroups as S
from pipeline.models.effects import fit_models
from pipeline.models.estimation import single_threaded_blas


def _panel(ds):
    return build_panel(ds.daily.lazy(), ds.episodes.lazy(), ds.injuries.lazy(),
                       custom_factors=ds.custom_factors)


@pytest.fixture(scope="module")
def small():
    ds = synth.generate(260, 45, seed=3, custom_factor=False)
    panel = _panel(ds)
    return ds, panel, S.fit_subgroups(panel, ds.subjects.lazy(), ds.episodes.lazy())


def test_columns_are_exactly_the_declared_ones(small):
    *_, out = small
    assert out.columns == ["model", "factor", "feature", "unit", "subgroup_variable", "subgroup",
                           "irr", "ci_low", "ci_high", "p_interaction", "q_interaction",
                           "n_subjects", "n_subject_days", "n_episodes", "note"]
    assert set(out["subgroup_variable"]) == {"age_band", "sex", "muscle_group"}


def test_age_bands_are_merged_until_each_group_is_large_enough(small):
    ds, panel, out = small
    frame = S.subgroup_frame(panel, ds.subjects.lazy(), ds.episodes.lazy())
    groups = S.define_subgroups(frame)["age_band"]
    assert [b for g in groups for b in g.levels] == list(S.schema.AGE_BANDS)
    assert all(g.n_informative >= S.MIN_SUBGROUP_SUBJECTS for g in groups)
    assert out.filter(pl.col("subgroup_variable") == "age_band")["subgroup"].unique(
        maintain_order=True).to_list() == [g.label for g in groups]


def test_a_too_small_subgroup_gets_no_estimate_and_a_reason(small):
    *_, out = small
    x = out.filter((pl.col("subgroup_variable") == "sex") & (pl.col("subgroup") == "X"))
    assert x.height and x["irr"].is_null().all()
    assert x["note"].str.contains(f"need at least {S.MIN_SUBGROUP_SUBJECTS}").all()


def test_subgroup_estimates_equal_the_within_subject_fit_on_the_subgroups_rows(small):
    ds, panel, out = small
    female = ds.subjects.filter(pl.col("sex") == "F")["subject_id"]
    rows = panel.frame.filter(pl.col("subject_id").is_in(female.implode()))
    ref = fit_models(dataclasses.replace(panel, frame=rows), dose_response=False).effects
    ref = ref.filter(pl.col("model") == fd.WITHIN_SUBJECT)
    got = out.filter((pl.col("subgroup_variable") == "sex") & (pl.col("subgroup") == "F"))
    joined = got.join(ref, on="feature", suffix="_ref")
    assert joined.height == ref.height
    shown = joined.filter(pl.col("irr").is_not_null())
    assert shown.height >= 8
    np.testing.assert_allclose(shown["irr"], shown["irr_ref"], rtol=1e-8)
    np.testing.assert_allclose(shown["ci_low"], shown["ci_low_ref"], rtol=1e-8)
    assert (joined["n_subject_days"] == joined["n_subject_days_ref"]).all()


def test_calf_foot_outcome_counts_only_those_episodes(small):
    ds, panel, out = small
    mg = out.filter(pl.col("subgroup_variable") == "muscle_group")
    n = dict(zip(mg["subgroup"], mg["n_episodes"]))
    frame = S.subgroup_frame(panel, ds.subjects.lazy(), ds.episodes.lazy())
    assert frame["_episodes_calf_foot"].sum() + frame["_episodes_other"].sum() == \
        frame["episodes"].sum()
    assert n[S.CALF_FOOT_LABEL] <= frame["_episodes_calf_foot"].sum()
    assert n[S.CALF_FOOT_LABEL] > n[S.OTHER_LABEL]


def test_interaction_test_equals_a_statsmodels_glm_with_subject_dummies_and_the_product():
    from scipy.stats import chi2
    from statsmodels.genmod import families
    from statsmodels.genmod.generalized_linear_model import GLM

    from pipeline.models.design import prepare_design

    ds = synth.generate(60, 40, seed=5, custom_factor=False)
    panel = _panel(ds)
    frame = S.subgroup_frame(panel, ds.subjects.lazy(), ds.episodes.lazy())
    frame = frame.filter(pl.col("sex").is_in(["F", "M"]))
    features, _ = fd.model_features(S.MODEL)
    sitting = fd.FEATURES["sitting_h"]
    male = S.Subgroup("sex", "M", ("M",), S.MIN_SUBGROUP_SUBJECTS)
    female = S.Subgroup("sex", "F", ("F",), S.MIN_SUBGROUP_SUBJECTS)
    p_ours, why = S._interaction_test(frame, panel, features, sitting, [female, male], None)
    assert why is None

    design = prepare_design(frame, panel, S.MODEL, True, features, features)
    used = [f.name for f in design.kept]
    data = frame.drop_nulls(used).filter(pl.col("episodes").sum().over("subject_id") > 0)
    X = data.select(*used, (pl.col("sitting_h") * (pl.col("sex") == "M")).alias("x")).to_numpy()
    codes = data["_subject"].to_numpy()
    _, codes = np.unique(codes, return_inverse=True)
    dummies = np.eye(codes.max() + 1)[codes]
    with single_threaded_blas():  # a small problem: threads only contend on a shared machine
        ref = GLM(data["episodes"].to_numpy(), np.column_stack([X, dummies]),
                  family=families.Poisson()).fit(cov_type="cluster", cov_kwds={"groups": codes},
                                                 tol=1e-13, maxiter=300)
    j = len(used)
    n, k, g = X.shape[0], X.shape[1], dummies.shape[1]
    wald_glm = ref.params[j] ** 2 / ref.cov_params()[j, j]
    wald_ours = chi2.isf(p_ours, 1)
    assert wald_ours == pytest.approx(wald_glm * (n - k) / (n - k - g), rel=1e-5)


def test_default_synth_is_unchanged_and_the_modified_one_differs_only_in_episodes():
    a = synth.generate(30, 20, seed=9)
    b = synth.generate(30, 20, seed=9, effect_modification=True)
    assert a.daily.equals(b.daily) and a.subjects.equals(b.subjects)
    assert "effect_modification" not in a.truth and "effect_modification" not in a.truth["args"]
    assert b.truth["effect_modification"]["modified_age_bands"] == ["60-69", "70-79", "80+"]
    assert b.truth["planted"]["sitting_h"]["irr"] == 1.0


@pytest.mark.slow
def test_planted_effect_modification_is_found():
    """Sitting raises the rate only at 60+ (IRR 1.15 per hour there, 1.00 below): the age
    interaction survives the FDR correction, groups from 60 up have CIs above 1 and covering the
    planted 1.15, groups under 60 CIs covering 1."""
    from pipeline.synth import modification as m

    ds = synth.generate(400, 60, seed=1, effect_modification=True)
    out = S.fit_subgroups(_panel(ds), ds.subjects.lazy(), ds.episodes.lazy(),
                          custom_factors=ds.custom_factors)
    rows = out.filter((pl.col("feature") == m.FEATURE) & (pl.col("subgroup_variable")
                                                          == "age_band"))
    assert rows["q_interaction"][0] < S.FDR_LEVEL
    for r in rows.to_dicts():
        lower = int(r["subgroup"].split("-")[0].rstrip("+"))
        truth = m.IRR_IN_MODIFIED_GROUP if lower >= 60 else m.IRR_ELSEWHERE
        assert r["ci_low"] <= truth <= r["ci_high"], r
        if lower >= 60:
            assert r["ci_low"] > 1.0, r


@pytest.mark.slow
def test_without_effect_modification_findings_are_no_more_frequent_than_chance():
    """Six default datasets (no modification anywhere): a dataset 'finds' something when any of
    its ~36 interaction tests has q < 0.05. Benjamini-Hochberg keeps that chance at about 5% under
    the global null, so 3 or more of 6 (probability 0.002 under Binomial(6, 0.05)) fails."""
    found = []
    for seed in range(6):
        ds = synth.generate(200, 60, seed=seed)
        out = S.fit_subgroups(_panel(ds), ds.subjects.lazy(), ds.episodes.lazy(),
                              custom_factors=ds.custom_factors)
        found.append(bool((out["q_interaction"] < S.FDR_LEVEL).any()))
    assert sum(found) <= 2, found


def test_muscle_group_interaction_equals_a_glm_on_the_stacked_days():
    """Each subject-day twice (calf/foot episodes; other episodes), a dummy per subject and
    outcome, the product sitting × other, clusters = subjects (both copies of a day together)."""
    from scipy.stats import chi2
    from statsmodels.genmod import families
    from statsmodels.genmod.generalized_linear_model import GLM

    from pipeline.models.design import prepare_design

    ds = synth.generate(50, 40, seed=8, custom_factor=False)
    panel = _panel(ds)
    frame = S.subgroup_frame(panel, ds.subjects.lazy(), ds.episodes.lazy())
    features, _ = fd.model_features(S.MODEL)
    both = [S.Subgroup("muscle_group", S.CALF_FOOT_LABEL, S.CALF_FOOT, S.MIN_SUBGROUP_SUBJECTS),
            S.Subgroup("muscle_group", S.OTHER_LABEL, ("other",), S.MIN_SUBGROUP_SUBJECTS)]
    p_ours, why = S._interaction_test(frame, panel, features, fd.FEATURES["sitting_h"], both, None)
    assert why is None

    used = [f.name for f in prepare_design(frame, panel, S.MODEL, True, features,
                                           features).kept]
    stacked = pl.concat([
        frame.with_columns(pl.col(c).alias("y"), pl.lit(t).alias("type"))
        for t, c in enumerate(("_episodes_calf_foot", "_episodes_other"))
    ]).drop_nulls(used).filter(pl.col("y").sum().over("subject_id", "type") > 0)
    X = stacked.select(*used, (pl.col("sitting_h") * pl.col("type")).alias("x")).to_numpy()
    _, cell = np.unique(stacked.select(pl.col("_subject") * 2 + pl.col("type")).to_series(),
                        return_inverse=True)
    _, subject = np.unique(stacked["_subject"].to_numpy(), return_inverse=True)
    dummies = np.eye(cell.max() + 1)[cell]
    with single_threaded_blas():
        ref = GLM(stacked["y"].to_numpy(), np.column_stack([X, dummies]),
                  family=families.Poisson()).fit(cov_type="cluster",
                                                 cov_kwds={"groups": subject}, tol=1e-13,
                                                 maxiter=300)
    j, n, k, g = len(used), X.shape[0], X.shape[1], dummies.shape[1]
    wald_glm = ref.params[j] ** 2 / ref.cov_params()[j, j]
    assert chi2.isf(p_ours, 1) == pytest.approx(wald_glm * (n - k) / (n - k - g), rel=1e-5)


def test_a_large_panel_is_fitted_on_a_stated_subject_subset(small, monkeypatch):
    """Above MAX_SUBJECT_DAYS the subgroup fits use a hash-chosen subset of whole subjects, and
    every row's note says how many subjects that is."""
    ds, panel, full = small
    n_days = panel.frame.height if isinstance(panel.frame, pl.DataFrame) else \
        panel.frame.select(pl.len()).collect().item()
    monkeypatch.setattr(S, "MAX_SUBJECT_DAYS", n_days // 2)
    out = S.fit_subgroups(panel, ds.subjects.lazy(), ds.episodes.lazy())
    assert out.columns == full.columns  # fewer subjects may merge more age bands: fewer rows
    n_all = ds.subjects.height
    assert out["note"].str.contains(f" of {n_all:,} subjects: each subgroup model is fitted on "
                                    "the subjects of a hash-based subset").all()
    assert out["n_subjects"].max() < full["n_subjects"].max()
    assert out["n_subject_days"].sum() < full["n_subject_days"].sum()
