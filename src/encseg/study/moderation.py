"""Empirical-Bayes moderation of sample variances across the comparisons of a study (limma, Smyth 2004).

Model (docs/protocol.md "Moderated variances"). Each comparison g (a cell, or a paired difference of two cells)
has a true variance sigma_g^2 and a sample variance s_g^2 on d_g degrees of freedom, with
``d_g s_g^2 / sigma_g^2 ~ chi^2(d_g)``. The true variances are draws from a scaled inverse chi-square prior:
``1 / sigma_g^2 ~ chi^2(d0) / (d0 s0^2)``. Then

- the posterior mean of ``1 / sigma_g^2`` gives the moderated variance ``(d0 s0^2 + d_g s_g^2) / (d0 + d_g)``;
- ``(mean - true mean) / (moderated sd / sqrt(n))`` follows Student's t with ``d0 + d_g`` degrees of freedom.

``(d0, s0^2)`` are fitted by the method of moments on ``log s_g^2`` (limma's ``fitFDist``): the mean of
``log s^2 - digamma(d/2) + log(d/2)`` estimates ``log s0^2 - digamma(d0/2) + log(d0/2)`` and its variance in
excess of ``mean(trigamma(d/2))`` estimates ``trigamma(d0/2)``. When the observed spread is no more than the
sampling noise (no excess), the cells look homogeneous: ``d0 = inf`` and ``s0^2`` is the pooled variance.
Heterogeneous cells give a small ``d0``, and each comparison falls back towards its own variance.

As in limma's ``eBayes``, the total degrees of freedom never exceed the pooled residual degrees of freedom
``df_pooled`` that estimated the prior; the caller passes the number of *independent* residual degrees of
freedom (comparisons that share runs are not independent). A comparison without its own variance (one seed:
``d_g = 0``) gets the prior itself. With fewer than ``MIN_COMPARISONS`` comparisons that have a variance the
prior is not fitted and every comparison keeps its own variance and degrees of freedom (the plain t interval).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from scipy import special

MIN_COMPARISONS = 3  # a prior fitted to fewer sample variances has no measurable spread
ESTIMATOR = "empirical-Bayes moderated t (limma, Smyth 2004)"
PLAIN = "Student t on each comparison's own variance"


class Prior(NamedTuple):
    fitted: bool
    d0: float  # prior degrees of freedom (inf: the comparisons share one variance)
    s0_sq: float  # prior variance
    df_pooled: float  # cap on the total degrees of freedom
    n_used: int  # comparisons with a variance that the prior was fitted to
    reason: str  # why the prior was not fitted ("" when fitted)

    def describe(self) -> str:
        if not self.fitted:
            return f"{PLAIN} ({self.reason})"
        d0 = "inf" if math.isinf(self.d0) else f"{self.d0:.1f}"
        return f"{ESTIMATOR}: prior df d0 = {d0}, fitted to {self.n_used} sample variances"


def trigamma_inverse(x: float) -> float:
    """y with trigamma(y) = x, by Newton's method on 1/trigamma (limma's ``trigammaInverse``)."""
    if x > 1e7:
        return 1.0 / math.sqrt(x)
    if x < 1e-6:
        return 1.0 / x
    y = 0.5 + 1.0 / x
    for _ in range(50):
        tri = float(special.polygamma(1, y))
        dif = tri * (1.0 - tri / x) / float(special.polygamma(2, y))
        y += dif
        if -dif / y < 1e-8:
            break
    return y


def fit_prior(s2: np.ndarray, df: np.ndarray, df_pooled: float | None = None) -> Prior:
    """The scaled inverse chi-square prior of the variances ``s2`` (on ``df`` degrees of freedom each).

    Entries with ``df <= 0`` or a NaN variance carry no variance and are left out of the fit. ``df_pooled``
    defaults to the sum of the degrees of freedom used (independent comparisons).
    """
    s2 = np.asarray(s2, dtype=float).ravel()
    df = np.asarray(df, dtype=float).ravel()
    ok = (df > 0) & np.isfinite(s2) & (s2 >= 0)
    x, d = s2[ok], df[ok]
    pooled = float(d.sum()) if df_pooled is None else float(df_pooled)
    if x.size < MIN_COMPARISONS:
        return Prior(False, 0.0, math.nan, pooled, int(x.size),
                     f"{x.size} comparison{'s' if x.size != 1 else ''} with a seed variance; a prior needs "
                     f"at least {MIN_COMPARISONS}")
    median = float(np.median(x))
    if median <= 0.0:
        return Prior(False, 0.0, math.nan, pooled, int(x.size), "more than half of the seed variances are 0")
    x = np.maximum(x, 1e-5 * median)  # limma's offset for exact zeros
    e = np.log(x) - special.digamma(d / 2.0) + np.log(d / 2.0)
    excess = float(e.var(ddof=1)) - float(np.mean(special.polygamma(1, d / 2.0)))
    if excess > 0.0:
        d0 = 2.0 * trigamma_inverse(excess)
        s0 = math.exp(float(e.mean()) + float(special.digamma(d0 / 2.0)) - math.log(d0 / 2.0))
    else:
        d0, s0 = math.inf, float((d * x).sum() / d.sum())  # homogeneous: the pooled variance (its MLE)
    return Prior(True, d0, s0, pooled, int(x.size), "")


def moderate(s2: np.ndarray, df: np.ndarray, prior: Prior) -> tuple[np.ndarray, np.ndarray]:
    """(moderated variance, degrees of freedom) of each comparison under ``prior``.

    Without a fitted prior each comparison keeps its own (NaN variance and 0 df where it has none).
    """
    s2 = np.asarray(s2, dtype=float)
    df = np.asarray(df, dtype=float)
    own = np.isfinite(s2) & (df > 0)
    if not prior.fitted:
        return np.where(own, s2, np.nan), np.where(own, df, 0.0)
    d = np.where(own, df, 0.0)
    x = np.where(own, s2, 0.0)
    if math.isinf(prior.d0):
        post = np.full(s2.shape, prior.s0_sq)
    else:
        post = (prior.d0 * prior.s0_sq + d * x) / (prior.d0 + d)
    return post, np.minimum(prior.d0 + d, prior.df_pooled)


def t_quantile(df: np.ndarray | float, confidence: float) -> np.ndarray:
    """The two-sided ``confidence`` quantile of Student's t (the normal's where df is infinite); NaN for df <= 0."""
    df = np.asarray(df, dtype=float)
    with np.errstate(invalid="ignore"):
        q = special.stdtrit(np.where(df > 0, df, np.nan), 0.5 + confidence / 2.0)
    return np.where(np.isinf(df), special.ndtri(0.5 + confidence / 2.0), q)


def t_pvalue(t: np.ndarray | float, df: np.ndarray | float) -> np.ndarray:
    """Two-sided p-value of ``t`` on ``df`` degrees of freedom (normal where infinite)."""
    t = np.abs(np.asarray(t, dtype=float))
    df = np.asarray(df, dtype=float)
    with np.errstate(invalid="ignore"):
        p = 2.0 * special.stdtr(np.where(df > 0, df, np.nan), -t)
    return np.where(np.isinf(df), 2.0 * special.ndtr(-t), p)
