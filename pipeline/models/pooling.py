"""Stage two of the per-patient estimates: normal–normal random-effects pooling across persons.

Each person i contributes an own log rate ratio y_i with variance v_i (``per_subject.py``). The
model is y_i ~ N(theta_i, v_i), theta_i ~ N(mu, tau²): people differ in their true log rate ratio by
a between-person SD tau. For one feature at a time (univariate: the own estimates of one person are
correlated across features, and a multivariate model would borrow strength across them, but the
univariate marginal model is correct for each feature on its own):

- **tau² by REML** (restricted maximum likelihood; Viechtbauer 2005, Stat Med 24:3, the default of
  R's metafor). statsmodels' ``combine_effects`` offers only the method-of-moments estimators
  (DerSimonian–Laird, Paule–Mandel), so REML is implemented here as a bounded one-dimensional
  maximisation of the restricted log-likelihood, tested against a grid maximisation and against
  metafor's published result for the BCG vaccine trials (``tests/test_pooling.py``).
- **95% CI for tau**: the Q-profile method (Viechtbauer 2007, Stat Med 26:37): the tau² values at
  which the generalised Q statistic equals the 2.5% and 97.5% chi-square quantiles on k − 1 df.
- **Test of no heterogeneity**: Cochran's Q on k − 1 df.
- **Per-person estimate**: the empirical-Bayes best linear unbiased predictor (BLUP),
  theta_i = mu + B_i (y_i − mu) with B_i = tau² / (tau² + v_i), shrunk toward the random-effects
  mean mu by as much as the person's own estimate is uncertain relative to how much people differ.
  Given tau, its variance is tau²(1 − B_i) + (1 − B_i)² Var(centre) (Raudenbush & Bryk 2002,
  eq. 3.60; metafor's ``blup``). The uncertainty of tau itself is integrated over a grid weighted by
  the restricted likelihood (:func:`shrink_integrated`): the interval is the point at tau-hat ± 1.96
  root-mean-square error under that mixture. It matters most where tau-hat = 0 but the data cannot
  rule out that people differ: the estimate is then the centre, its interval wider than the
  centre's.

**Centre: the cohort's ``within_subject`` estimate** (``effects.csv``; its subject-clustered
variance in place of Var(mu)), not the random-effects mean mu of the own estimates. Two reasons:
it is the estimate the whole report leads with, so "no sign that people differ" means every person's
estimate *is* the cohort's; and it is a one-stage fit on every person's days, including people too
sparse for an own fit. The inverse-variance mean of per-person log rate ratios is biased toward 1
when own data are sparse, because a person's variance depends on their own estimate (fewer
episodes on the exposed days: a lower estimate *and* a larger variance, hence less weight); on
planted data mu drifted visibly for binary features (electrolytes: mu 0.93 against a planted 0.88
and a within-subject 0.88). The cost: when people differ, the conditional Poisson estimate weights
them by their number of episodes rather than 1/(v_i + tau²); both are shown in
``heterogeneity.csv``. The covariance between a person's own estimate and the cohort estimate
(their own days are among the cohort's) is ignored: it is of order 1/(number of persons).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

#: Fewer persons with an own estimate than this: no pooling (tau cannot be estimated usefully).
MIN_SUBJECTS_FOR_POOLING = 5
Z95 = float(stats.norm.ppf(0.975))


@dataclass(frozen=True)
class Pooled:
    """One feature's random-effects fit."""

    n: int
    mu: float
    mu_se: float
    tau2: float
    tau2_low: float
    tau2_high: float
    q: float
    q_p_value: float
    #: Fixed-effect (inverse-variance, tau = 0) mean, for comparison.
    mu_fixed: float

    @property
    def tau(self) -> float:
        return float(np.sqrt(self.tau2))

    def blup(self, y: np.ndarray, v: np.ndarray, centre: float | None = None,
             centre_se: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Shrunken estimates and their standard errors for own estimates ``y`` (variances
        ``v``), shrunk toward ``centre`` (standard error ``centre_se``; default: mu)."""
        m = self.mu if centre is None else centre
        m_se = self.mu_se if centre_se is None else centre_se
        B = self.tau2 / (self.tau2 + v)
        theta = m + B * (y - m)
        var = self.tau2 * (1 - B) + (1 - B) ** 2 * m_se ** 2
        return theta, np.sqrt(var)


#: Points of the grid over tau on which the uncertainty of tau is integrated.
TAU_GRID_POINTS = 41
#: Persons per block of :func:`shrink_integrated`.
SHRINK_BLOCK = 8_192


def shrink_integrated(fit: Pooled, y: np.ndarray, v: np.ndarray, centre: float,
                      centre_se: float, y_all: np.ndarray, v_all: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Shrunken estimates at tau-hat, with standard errors that also count the uncertainty of tau.

    tau is integrated over a grid with weights proportional to the restricted likelihood (the
    marginal likelihood of tau² once mu is integrated out under a flat prior; a uniform prior on
    tau over [0, 2 × the upper Q-profile bound]). The returned SE is the root-mean-square error of
    the point estimate (the shrinkage at tau-hat) under that mixture: sqrt(E[V(tau)] +
    E[(theta(tau) − theta(tau-hat))²]). So when tau-hat = 0 a person's estimate is still the
    centre, but their interval is wider than the centre's by as much as the data cannot rule out
    that people differ. ``y_all``/``v_all``: every own estimate (the likelihood's data).
    """
    point, _ = fit.blup(y, v, centre, centre_se)
    top = 2.0 * max(np.sqrt(fit.tau2_high), np.sqrt(fit.tau2), 1e-3)
    taus = np.linspace(0.0, top, TAU_GRID_POINTS)
    ll = np.array([reml_loglik(t * t, y_all, v_all) for t in taus])  # a few dozen points
    w = np.exp(ll - ll.max())
    w /= w.sum()
    t2 = (taus ** 2)[:, None]
    mse = np.empty(y.shape)
    # Persons in blocks: a block's grid × persons temporaries stay small (the whole cohort at
    # once would be 41 × 300,000 × 8 bytes per temporary).
    for lo in range(0, y.size, SHRINK_BLOCK):
        b = slice(lo, lo + SHRINK_BLOCK)
        B = t2 / (t2 + v[None, b])
        theta = centre + B * (y[None, b] - centre)
        var = t2 * (1 - B) + (1 - B) ** 2 * centre_se ** 2
        mse[b] = (w[:, None] * (var + (theta - point[None, b]) ** 2)).sum(axis=0)
    return point, np.sqrt(mse)


def _weights_mean(y, v, tau2):
    w = 1.0 / (v + tau2)
    return w, float(np.sum(w * y) / np.sum(w))


def reml_loglik(tau2: float, y: np.ndarray, v: np.ndarray) -> float:
    """Restricted log-likelihood of tau² (up to a constant)."""
    w, mu = _weights_mean(y, v, tau2)
    return float(-0.5 * (np.sum(np.log(v + tau2)) + np.log(np.sum(w)) + np.sum(w * (y - mu) ** 2)))


def q_generalised(tau2: float, y: np.ndarray, v: np.ndarray) -> float:
    """Sum of w_i (y_i − mu(tau²))², w_i = 1/(v_i + tau²): Cochran's Q at tau² = 0."""
    w, mu = _weights_mean(y, v, tau2)
    return float(np.sum(w * (y - mu) ** 2))


def reml_tau2(y: np.ndarray, v: np.ndarray) -> float:
    """REML estimate of tau² (≥ 0): bounded Brent maximisation, with the boundary 0 compared
    explicitly (the likelihood may peak at tau² = 0, where Brent only approaches the bound)."""
    upper = _upper_bound(y, v)
    res = optimize.minimize_scalar(lambda t: -reml_loglik(t, y, v), bounds=(0.0, upper),
                                   method="bounded", options={"xatol": 1e-12 * max(upper, 1.0)})
    best = float(res.x)
    if reml_loglik(0.0, y, v) >= reml_loglik(best, y, v):
        return 0.0
    return best


def _upper_bound(y, v) -> float:
    # tau² above ten times the total spread of the estimates is never the maximiser.
    return float(10.0 * (np.var(y) + np.max(v)) + 1e-8)


def q_profile_ci(y: np.ndarray, v: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Q-profile confidence interval for tau² (bounds truncated at 0)."""
    k = y.size
    alpha = 1 - level
    hi_target = stats.chi2.ppf(alpha / 2, k - 1)   # Q(tau²) = this at the upper bound
    lo_target = stats.chi2.ppf(1 - alpha / 2, k - 1)  # ... and = this at the lower bound
    q0 = q_generalised(0.0, y, v)

    def solve(target):
        if q0 <= target:
            return 0.0
        hi = max(_upper_bound(y, v), 1e-6)
        while q_generalised(hi, y, v) > target:  # Q(tau²) decreases to 0 as tau² grows
            hi *= 4.0
        return float(optimize.brentq(lambda t: q_generalised(t, y, v) - target, 0.0, hi,
                                     xtol=1e-14, rtol=1e-12))

    return solve(lo_target), solve(hi_target)


def pool(y: np.ndarray, v: np.ndarray) -> Pooled:
    """Random-effects fit of own estimates ``y`` with variances ``v`` (at least 2)."""
    y, v = np.asarray(y, float), np.asarray(v, float)
    if y.size < 2 or y.size != v.size or not np.all(v > 0):
        raise ValueError("pool needs at least two estimates with positive variances")
    tau2 = reml_tau2(y, v)
    w, mu = _weights_mean(y, v, tau2)
    _, mu_fixed = _weights_mean(y, v, 0.0)
    q = q_generalised(0.0, y, v)
    low, high = q_profile_ci(y, v)
    return Pooled(n=int(y.size), mu=mu, mu_se=float(1 / np.sqrt(np.sum(w))), tau2=tau2,
                  tau2_low=low, tau2_high=high, q=q,
                  q_p_value=float(stats.chi2.sf(q, y.size - 1)), mu_fixed=mu_fixed)
