"""Empirical-Bayes moderation (limma's fitFDist / squeezeVar) and the study's families of comparisons."""

import math

import numpy as np
import pytest
from scipy import special, stats

from encseg.study import comparisons
from encseg.study.moderation import (
    MIN_COMPARISONS,
    fit_prior,
    moderate,
    t_pvalue,
    t_quantile,
    trigamma_inverse,
)


def test_trigamma_inverse_inverts_trigamma():
    for y in (0.3, 1.0, 2.5, 40.0):
        assert trigamma_inverse(float(special.polygamma(1, y))) == pytest.approx(y, rel=1e-7)


def test_homogeneous_variances_give_an_infinite_prior_df_and_the_pooled_variance():
    # log s^2 spread well below chi-square sampling noise (trigamma(1) = 1.64 for 2 df): no excess spread
    s2 = np.array([1.0, 1.1, 0.9, 1.05, 0.95])
    prior = fit_prior(s2, np.full(5, 2.0), df_pooled=7.0)
    assert prior.fitted and math.isinf(prior.d0)
    assert prior.s0_sq == pytest.approx(s2.mean())  # equal df: the pooled variance is the mean
    post, df = moderate(s2, np.full(5, 2.0), prior)
    assert post == pytest.approx(np.full(5, s2.mean()))
    assert df == pytest.approx(np.full(5, 7.0))  # capped at the pooled residual df


def test_heterogeneous_variances_fit_the_method_of_moments_by_hand():
    s2 = np.array([0.01, 0.1, 1.0, 10.0, 100.0, 0.5])
    d = np.full(6, 3.0)
    e = np.log(s2) - special.digamma(1.5) + math.log(1.5)
    excess = e.var(ddof=1) - special.polygamma(1, 1.5)
    prior = fit_prior(s2, d)
    assert prior.d0 == pytest.approx(2 * trigamma_inverse(excess))
    assert prior.s0_sq == pytest.approx(math.exp(e.mean() + special.digamma(prior.d0 / 2) - math.log(prior.d0 / 2)))
    post, df = moderate(s2, d, prior)
    assert post == pytest.approx((prior.d0 * prior.s0_sq + 3 * s2) / (prior.d0 + 3))
    assert df == pytest.approx(np.minimum(prior.d0 + 3, 18.0))  # default cap: the summed df


def test_one_seed_comparisons_get_the_prior_and_too_few_comparisons_keep_their_own():
    s2 = np.array([1.0, 2.0, 1.5, np.nan])
    d = np.array([2.0, 2.0, 2.0, 0.0])  # the last comparison has one seed: no own variance
    prior = fit_prior(s2, d, df_pooled=6.0)
    assert prior.n_used == 3
    post, df = moderate(s2, d, prior)
    assert post[3] == pytest.approx(prior.s0_sq) and df[3] == pytest.approx(min(prior.d0, 6.0))
    few = fit_prior(s2[:2], d[:2])
    assert not few.fitted and str(MIN_COMPARISONS) in few.reason and "Student t" in few.describe()
    post, df = moderate(np.array([1.0, np.nan]), np.array([2.0, 0.0]), few)
    assert post[0] == 1.0 and df[0] == 2.0 and math.isnan(post[1]) and df[1] == 0.0


def test_t_helpers_match_scipy_and_the_normal_limit():
    assert t_quantile(3.0, 0.95) == pytest.approx(stats.t.ppf(0.975, 3))
    assert t_quantile(np.inf, 0.95) == pytest.approx(stats.norm.ppf(0.975))
    assert t_pvalue(2.5, 4.0) == pytest.approx(2 * stats.t.sf(2.5, 4))
    assert t_pvalue(2.5, np.inf) == pytest.approx(2 * stats.norm.sf(2.5))


def test_split_variances_recovers_cell_variances_from_pairs():
    v = np.array([4.0, 1.0, 2.0, 0.5])
    pair = v[:, None] + v[None, :]
    assert comparisons.split_variances(pair) == pytest.approx(v)
    assert comparisons.split_variances(np.array([[np.nan, 3.0], [3.0, np.nan]])) == pytest.approx([1.5, 1.5])


def test_effective_df_of_gains_sharing_their_baseline():
    # m gains over one baseline, every cell with variance 1: Satterthwaite gives 4 m (n - 1) / (m + 3)
    m, nu = 5, 2.0
    contrasts = np.hstack([-np.ones((m, 1)), np.eye(m)])
    cov = comparisons.contrast_cov(contrasts, np.ones(m + 1))
    assert comparisons.effective_df(cov, nu) == pytest.approx(4 * m * nu / (m + 3))
    # a baseline that carries all the noise: the gains hold one seed variance's worth of information
    noisy = comparisons.contrast_cov(contrasts, np.array([1.0, *np.zeros(m)]))
    assert comparisons.effective_df(noisy, nu) == pytest.approx(nu)
