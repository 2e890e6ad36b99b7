"""The study's comparisons and their moderated variances: cells, gains over the baseline, pairs of encoders.

A *group* is one ``(head, train_dataset, eval_dataset, fraction)``: its cells (one per encoder and regime) were
trained from the same seed units ``(seed, subset_seed)``, so values of one unit are paired across the group.
Three families of comparisons are moderated separately (``moderation``, docs/protocol.md "Moderated variances"):

- ``cells``: each cell's mean over its seeds (the seed variance includes the per-seed effects that the cells of
  a group share);
- ``gains``: each cell minus its group's baseline cell, paired by unit; every gain of a group shares the
  baseline's noise, so the gains are homogeneous when the baseline is the noisy cell;
- ``pairs``: two non-baseline cells of one regime (the ranking's comparisons); a pair with the baseline is a gain
  and reads the gains family, so a gain and the ranking never disagree about the same two cells.

The degrees of freedom of a family are capped at the *effective* residual degrees of freedom of its pooled
variance: comparisons of one group share cells, so their sample variances are correlated. For each group the
cap is Satterthwaite's ``nu tr(C)^2 / ||C||_F^2`` for the covariance ``C`` of the family's comparisons, built
from the cells' idiosyncratic variances (moment estimates from the group's pairwise differences) and, for the
cells family, the shared per-seed variance. The evaluations of one run on several datasets are the same runs,
so each run group counts once (its largest cap).
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import NamedTuple

import numpy as np
import pandas as pd

from encseg.study import moderation
from encseg.study.moderation import Prior

CELL = ["encoder", "regime"]
GROUP = ["head", "train_dataset", "eval_dataset", "fraction"]
RUN_GROUP = ["head", "train_dataset", "fraction"]
PAIR_COLUMNS = ["seed", "subset_seed"]
DEFAULT_HEAD = "mask2former"  # a results table without a head column comes from a single-head study


def with_head(results: pd.DataFrame) -> pd.DataFrame:
    """``results`` with a ``head`` column (the engine's default head when the table has none)."""
    if "head" in results.columns:
        return results.assign(head=results["head"].fillna(DEFAULT_HEAD))
    return results.assign(head=DEFAULT_HEAD)


# ------------------------------------------------------------------------------------------ arrays
def moments(diff: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, mean, sample variance) over the last axis, ignoring NaN; the variance is NaN below 2 values."""
    present = ~np.isnan(diff)
    n = present.sum(axis=-1)
    x = np.where(present, diff, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, x.sum(axis=-1) / np.maximum(n, 1), np.nan)
        dev = np.where(present, diff - mean[..., None], 0.0)
        var = np.where(n > 1, (dev * dev).sum(axis=-1) / np.maximum(n - 1, 1), np.nan)
    return n.astype(float), mean, var


def split_variances(pair_var: np.ndarray) -> np.ndarray:
    """Per-cell variances ``v`` with ``v_i + v_j`` closest to the symmetric pairwise variances ``pair_var``.

    With 3 or more cells, by moments: ``v_i = (sum_j pair_var_ij - sum v) / (k - 2)``; two cells cannot be told
    apart and get half each. Missing pairs (NaN) take the mean pair; floored at 1% of the mean cell variance.
    """
    k = pair_var.shape[0]
    i, j = np.triu_indices(k, 1)
    s2 = pair_var[i, j]
    if k < 2 or not np.isfinite(s2).any():
        return np.full(k, math.nan)
    s2 = np.where(np.isfinite(s2), s2, float(np.nanmean(s2)))
    if k == 2:
        return np.full(2, s2[0] / 2.0)
    mat = np.zeros((k, k))
    mat[i, j] = mat[j, i] = s2
    total = s2.mean() * k / 2.0
    return np.maximum((mat.sum(axis=1) - total) / (k - 2), 0.01 * total / k)


def idiosyncratic(values: np.ndarray) -> np.ndarray:
    """Each cell's own variance in a group (cells x units), from the variances of its paired differences."""
    k = values.shape[0]
    i, j = np.triu_indices(k, 1)
    mat = np.full((k, k), math.nan)
    mat[i, j] = mat[j, i] = moments(values[i] - values[j])[2]
    return split_variances(mat)


def effective_df(cov: np.ndarray, nu: float) -> float:
    """Satterthwaite's degrees of freedom of the pooled variance of comparisons with covariance ``cov``."""
    ss = float((cov * cov).sum())
    return nu * float(np.trace(cov)) ** 2 / ss if ss > 0 else nu * cov.shape[0]


def contrast_cov(contrasts: np.ndarray, var: np.ndarray, shared: float = 0.0) -> np.ndarray:
    """Covariance of ``contrasts @ cells`` for independent cell noise ``var`` plus a ``shared`` seed effect."""
    cov_cells = np.diag(var) + shared
    return contrasts @ cov_cells @ contrasts.T


def _nu(n: np.ndarray) -> float:
    n = n[n > 1]
    return float(np.median(n) - 1.0) if n.size else 0.0


# ---------------------------------------------------------------------------------------- families
class Family(NamedTuple):
    table: pd.DataFrame  # one row per comparison, with n, mean, std, s2, df_own, s2_mod, df_mod
    prior: Prior


def _moderate(table: pd.DataFrame, caps: dict[tuple, float]) -> Family:
    cap = float(sum(caps.values()))
    prior = moderation.fit_prior(table["s2"].to_numpy(), table["df_own"].to_numpy(), cap)
    post, df = moderation.moderate(table["s2"].to_numpy(), table["df_own"].to_numpy(), prior)
    return Family(table.assign(s2_mod=post, df_mod=df), prior)


def _cap(caps: dict[tuple, float], key: tuple, value: float) -> None:
    """Keep the largest cap per run group (eval datasets of one run group are the same runs)."""
    if value > 0 and not math.isnan(value):
        caps[key] = max(caps.get(key, 0.0), value)


class Groups(NamedTuple):
    keys: pd.DataFrame  # one row per cell: GROUP + CELL columns
    values: np.ndarray  # cells x units
    members: list[tuple[tuple, np.ndarray]]  # (group key, row indices into keys)


def groups(results: pd.DataFrame, value: str = "miou") -> Groups:
    """The study's cells as a (cells x seed units) matrix, and which rows form each group."""
    from encseg.study.stats import seed_matrix, seed_units

    results = with_head(results)
    units = seed_units(results)
    keys, values = seed_matrix(results, [*GROUP, *CELL], units, value)
    members = [(tuple(k) if isinstance(k, tuple) else (k,), idx.to_numpy())
               for k, idx in keys.groupby(GROUP, sort=True).groups.items()]
    return Groups(keys, values, members)


def _key_dict(key: tuple) -> dict:
    return dict(zip(GROUP, key, strict=True))


def cells(g: Groups) -> Family:
    """Every cell's mean over seeds with its moderated seed variance."""
    n, mean, s2 = moments(g.values)
    table = g.keys.assign(n=n, mean=mean, s2=s2, df_own=np.maximum(n - 1, 0))
    caps: dict[tuple, float] = {}
    for key, idx in g.members:
        own = idiosyncratic(g.values[idx]) if len(idx) > 1 else s2[idx]
        if np.isfinite(own).all() and np.isfinite(s2[idx]).any():
            # the cells' seed variance beyond their own is the per-seed effect they share
            shared = max(0.0, float(np.nanmean(s2[idx]) - own.mean())) if len(idx) > 1 else 0.0
            cov = contrast_cov(np.eye(len(idx)), own, shared)
            _cap(caps, tuple(_key_dict(key)[c] for c in RUN_GROUP), effective_df(cov, _nu(n[idx])))
    return _moderate(table, caps)


def _is_baseline(keys: pd.DataFrame, baseline: str, baseline_regime: str) -> np.ndarray:
    return ((keys["encoder"] == baseline) & (keys["regime"] == baseline_regime)).to_numpy()


def gains(g: Groups, baseline: str, baseline_regime: str) -> Family:
    """Every non-baseline cell minus its group's baseline cell, paired by seed unit (``mean`` = the gain)."""
    is_base = _is_baseline(g.keys, baseline, baseline_regime)
    rows, caps = [], {}
    for key, idx in g.members:
        base = idx[is_base[idx]]
        others = idx[~is_base[idx]]
        if base.size == 0 or others.size == 0:
            continue
        b = int(base[0])
        n, mean, s2 = moments(g.values[others] - g.values[b])
        rows.append(pd.DataFrame({"row": others, "base_row": b, "n": n, "mean": mean, "s2": s2}))
        local = np.concatenate([[b], others])
        var = idiosyncratic(g.values[local])
        if np.isfinite(var).all():
            contrasts = np.zeros((others.size, local.size))
            contrasts[:, 0], contrasts[np.arange(others.size), np.arange(1, local.size)] = -1.0, 1.0
            _cap(caps, tuple(_key_dict(key)[c] for c in RUN_GROUP),
                 effective_df(contrast_cov(contrasts, var), _nu(n)))
    return _moderate(_pair_table(rows), caps)


def pairs(g: Groups, baseline: str | None = None, baseline_regime: str | None = None) -> Family:
    """Every pair of non-baseline cells of one regime in a group (``mean`` = first minus second cell)."""
    is_base = (_is_baseline(g.keys, baseline, baseline_regime) if baseline is not None
               else np.zeros(len(g.keys), dtype=bool))
    rows, caps = [], {}
    for key, idx in g.members:
        members = idx[~is_base[idx]]
        regimes = g.keys.loc[members, "regime"].to_numpy()
        ij = [(a, b) for a, b in combinations(range(members.size), 2) if regimes[a] == regimes[b]]
        if not ij:
            continue
        a, b = (np.array(x) for x in zip(*ij, strict=True))
        n, mean, s2 = moments(g.values[members[a]] - g.values[members[b]])
        rows.append(pd.DataFrame({"row": members[a], "base_row": members[b], "n": n, "mean": mean, "s2": s2}))
        var = idiosyncratic(g.values[members])
        if np.isfinite(var).all():
            contrasts = np.zeros((a.size, members.size))
            contrasts[np.arange(a.size), a], contrasts[np.arange(a.size), b] = 1.0, -1.0
            _cap(caps, tuple(_key_dict(key)[c] for c in RUN_GROUP),
                 effective_df(contrast_cov(contrasts, var), _nu(n)))
    return _moderate(_pair_table(rows), caps)


def _pair_table(rows: list[pd.DataFrame]) -> pd.DataFrame:
    cols = ["row", "base_row", "n", "mean", "s2"]
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=cols)
    table["n"] = table["n"].astype(float)
    return table.assign(df_own=np.maximum(table["n"].to_numpy(dtype=float) - 1, 0))


# -------------------------------------------------------------------------------------- intervals
class Interval(NamedTuple):
    half: np.ndarray  # half-width of the two-sided interval (NaN where none)
    p: np.ndarray  # two-sided p-value of mean = 0
    se: np.ndarray  # standard error of the mean


def interval(family: Family, confidence: float) -> Interval:
    """The moderated t interval and test of each comparison's mean."""
    t = family.table
    n = t["n"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = np.sqrt(t["s2_mod"].to_numpy(dtype=float) / n)
        df = t["df_mod"].to_numpy(dtype=float)
        half = moderation.t_quantile(df, confidence) * se
        mean = t["mean"].to_numpy(dtype=float)
        stat = np.where(se > 0, mean / np.where(se > 0, se, 1.0), np.where(mean == 0, 0.0, np.inf))
        p = moderation.t_pvalue(stat, df)
    bad = ~(n >= 1) | ~np.isfinite(se)
    return Interval(np.where(bad, np.nan, half), np.where(bad, np.nan, p), np.where(bad, np.nan, se))
