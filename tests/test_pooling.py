"""Stage two: REML random-effects pooling (``pooling.py``) against references.

- metafor's published results for the BCG vaccine trials (dat.bcg, log relative risks;
  ``rma(yi, vi, data=dat)`` and ``confint()``, printed to 4 decimals: we match to 5e-5):
  tau² = 0.3132 (Q-profile 95% CI 0.1197 to 1.1115), mu = −0.7145 (SE 0.1798), Q = 152.2330.
- a brute-force grid maximisation of the restricted likelihood (independent of the optimiser);
- the defining equations of the Q-profile bounds and the BLUP.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pipeline.models.pooling import pool, q_generalised, reml_loglik, reml_tau2

# Colditz et al. 1994 (metafor's dat.bcg): TB cases / non-cases, vaccinated and not.
TPOS = np.array([4, 6, 3, 62, 33, 180, 8, 505, 29, 17, 186, 5, 27.])
TNEG = np.array([119, 300, 228, 13536, 5036, 1361, 2537, 87886, 7470, 1699, 50448, 2493, 16886.])
CPOS = np.array([11, 29, 11, 248, 47, 372, 10, 499, 45, 65, 141, 3, 29.])
CNEG = np.array([128, 274, 209, 12619, 5761, 1079, 619, 87892, 7232, 1600, 27197, 2338, 17825.])


def bcg():
    y = np.log(TPOS / (TPOS + TNEG)) - np.log(CPOS / (CPOS + CNEG))
    v = 1 / TPOS - 1 / (TPOS + TNEG) + 1 / CPOS - 1 / (CPOS + CNEG)
    return y, v


def test_reml_matches_metafor_on_the_bcg_trials():
    fit = pool(*bcg())
    assert fit.tau2 == pytest.approx(0.3132, abs=5e-5)
    assert fit.tau2_low == pytest.approx(0.1197, abs=5e-5)
    assert fit.tau2_high == pytest.approx(1.1115, abs=5e-5)
    assert fit.mu == pytest.approx(-0.7145, abs=5e-5)
    assert fit.mu_se == pytest.approx(0.1798, abs=5e-5)
    assert fit.q == pytest.approx(152.2330, abs=5e-4)


@pytest.mark.parametrize("seed, tau", [(1, 0.0), (2, 0.05), (3, 0.3), (4, 1.0)])
def test_reml_is_the_maximiser_of_the_restricted_likelihood_on_a_grid(seed, tau):
    rng = np.random.default_rng(seed)
    k = 40
    v = rng.uniform(0.01, 0.5, k)
    y = 0.2 + rng.normal(0, tau, k) + rng.normal(0, np.sqrt(v))
    est = reml_tau2(y, v)
    # The restricted log-likelihood written out independently, on a grid of step 1e-4.
    grid = np.linspace(0, 3, 30_001)[:, None]
    w = 1 / (v + grid)
    mu = (w * y).sum(1, keepdims=True) / w.sum(1, keepdims=True)
    ll = -0.5 * (np.log(v + grid).sum(1) + np.log(w.sum(1)) + (w * (y - mu) ** 2).sum(1))
    best = grid[np.argmax(ll), 0]
    assert est == pytest.approx(best, abs=1e-4)
    assert reml_loglik(est, y, v) >= ll.max() - 1e-9


def test_q_profile_bounds_solve_their_equations():
    y, v = bcg()
    fit = pool(y, v)
    k = y.size
    assert q_generalised(fit.tau2_low, y, v) == pytest.approx(stats.chi2.ppf(0.975, k - 1))
    assert q_generalised(fit.tau2_high, y, v) == pytest.approx(stats.chi2.ppf(0.025, k - 1))


def test_homogeneous_estimates_give_tau_zero_and_blups_equal_to_the_centre():
    rng = np.random.default_rng(0)
    v = rng.uniform(0.05, 0.2, 30)
    y = 0.1 + rng.normal(0, np.sqrt(v)) * 0.3  # less spread than sampling error implies
    fit = pool(y, v)
    assert fit.tau2 == 0.0 and fit.tau2_low == 0.0
    theta, se = fit.blup(y, v, centre=0.12, centre_se=0.01)
    np.testing.assert_array_equal(theta, np.full(30, 0.12))
    np.testing.assert_allclose(se, 0.01)


def test_blup_shrinks_by_tau2_over_total_variance():
    y, v = bcg()
    fit = pool(y, v)
    theta, se = fit.blup(y, v)
    B = fit.tau2 / (fit.tau2 + v)
    np.testing.assert_allclose(theta, fit.mu + B * (y - fit.mu))
    np.testing.assert_allclose(se ** 2, fit.tau2 * (1 - B) + (1 - B) ** 2 * fit.mu_se ** 2)
    # Each shrunken estimate lies between the person's own estimate and the centre.
    assert np.all((theta - y) * (theta - fit.mu) <= 1e-15)


def test_pool_refuses_too_few_or_invalid_inputs():
    with pytest.raises(ValueError):
        pool(np.array([0.1]), np.array([0.1]))
    with pytest.raises(ValueError):
        pool(np.array([0.1, 0.2]), np.array([0.1, 0.0]))


def test_integrating_tau_widens_intervals_most_where_tau_is_uncertain():
    from pipeline.models.pooling import shrink_integrated

    y, v = bcg()
    fit = pool(y, v)
    point, se = shrink_integrated(fit, y, v, fit.mu, fit.mu_se, y, v)
    plain, se_plain = fit.blup(y, v)
    np.testing.assert_allclose(point, plain)  # the point is the shrinkage at tau-hat
    assert np.all(se >= se_plain * (1 - 1e-9))
    # With tau-hat = 0 the estimate stays at the centre and the interval widens beyond its SE.
    rng = np.random.default_rng(0)
    v0 = rng.uniform(0.05, 0.2, 30)
    y0 = 0.1 + rng.normal(0, np.sqrt(v0)) * 0.3
    fit0 = pool(y0, v0)
    point0, se0 = shrink_integrated(fit0, y0, v0, 0.12, 0.01, y0, v0)
    np.testing.assert_array_equal(point0, np.full(30, 0.12))
    assert np.all(se0 > 0.01)
