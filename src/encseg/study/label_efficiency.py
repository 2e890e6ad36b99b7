"""Label efficiency: the smallest labelled fraction at which an encoder's mean mIoU reaches a reference mIoU.

Definitions (docs/protocol.md "Label efficiency")
- The *target* is the reference series' mean mIoU at the reference fraction (100% when the study has it, else
  its largest fraction, named in ``reference_fraction``).
- The encoder's mean mIoU curve (mean over seeds per fraction) is walked from the smallest fraction up; the
  *crossing* is the first point whose mean reaches the target, and the fraction is interpolated linearly in
  mIoU against log(fraction) between that point and the one before it. A curve that dips later does not
  matter: the first crossing is the smallest fraction that reached the target.
- ``status`` says how the answer is bounded, never extrapolating beyond the fractions the study ran:
  ``reached`` (interpolated between two studied fractions), ``by_smallest`` (the smallest studied fraction
  already reaches the target: the true crossing is at or below it, the factor a lower bound), ``not_reached``
  (no studied fraction reaches it: no fraction and no factor), ``no_reference`` (the reference has no mIoU at
  the reference fraction).
- ``factor = reference_fraction / fraction``: how many times fewer labels the encoder needs.
- The interval is a parametric bootstrap: each resample draws every cell mean from its moderated t
  distribution (``mean + se * T``, ``T`` Student t on the moderated degrees of freedom of the cells family,
  ``study.comparisons``) and recomputes the target and the crossing. Percentiles are taken on log(fraction)
  with the order statistics only, so censored resamples keep their meaning: ``fraction_low = 0`` means that
  the lower tail already reached the target at the smallest fraction (the study cannot bound the fraction from
  below), ``fraction_high = inf`` that the upper tail did not reach it at all (no upper bound). A cell without
  a variance (one seed and no prior) cannot be drawn: its claims have no interval (NaN, ``n_boot_used = 0``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pandas as pd

from encseg.study import comparisons, stats

REACHED, BY_SMALLEST, NOT_REACHED, NO_REFERENCE = "reached", "by_smallest", "not_reached", "no_reference"
PANEL = ["train_dataset", "eval_dataset"]
COLUMNS = [*PANEL, "encoder", "regime", "head", "reference", "reference_fraction", "target_miou", "status",
           "fraction", "fraction_low", "fraction_high", "factor", "factor_low", "factor_high", "n_seeds",
           "n_boot", "n_boot_used", "rests_on_unconverged", "interval_method", "cells"]


class Crossing(NamedTuple):
    status: str
    fraction: float  # interpolated crossing; the smallest fraction for by_smallest; NaN if not reached
    upper_index: int  # index (into the sorted finite points) of the first point at or above the target; -1


def crossing(fractions, means, target: float) -> Crossing:
    """First fraction where the mean curve reaches ``target``, interpolated on log(fraction).

    ``fractions`` and ``means`` are parallel; points with a NaN mean are left out.
    """
    f = np.asarray(fractions, dtype=float)
    m = np.asarray(means, dtype=float)
    keep = ~np.isnan(m) & ~np.isnan(f)
    order = np.argsort(f[keep], kind="stable")
    f, m = f[keep][order], m[keep][order]
    if math.isnan(target) or f.size == 0:
        return Crossing(NO_REFERENCE if math.isnan(target) else NOT_REACHED, math.nan, -1)
    above = np.flatnonzero(m >= target)
    if above.size == 0:
        return Crossing(NOT_REACHED, math.nan, -1)
    i = int(above[0])
    if i == 0:
        return Crossing(BY_SMALLEST, float(f[0]), 0)
    lo, hi = math.log(f[i - 1]), math.log(f[i])
    t = (target - m[i - 1]) / (m[i] - m[i - 1])
    return Crossing(REACHED, math.exp(lo + t * (hi - lo)), i)


def _log_value(c: Crossing) -> float:
    """Crossing on the log axis with censoring: -inf at or below the smallest fraction, +inf not reached."""
    if c.status == BY_SMALLEST:
        return -math.inf
    if c.status == NOT_REACHED:
        return math.inf
    return math.log(c.fraction) if c.status == REACHED else math.nan


def log_crossings(fractions, means: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``_log_value(crossing(...))`` for each row of ``means`` (resamples x fractions) and its target, at once.

    Rows with a NaN mean or target (a cell that cannot be drawn) go through ``crossing`` one by one.
    """
    f = np.asarray(fractions, dtype=float)
    order = np.argsort(f, kind="stable")
    f, m = f[order], np.asarray(means, dtype=float)[:, order]
    t = np.asarray(targets, dtype=float)
    out = np.full(m.shape[0], math.nan)
    clean = ~np.isnan(m).any(axis=1) & ~np.isnan(t)
    for b in np.flatnonzero(~clean):
        out[b] = _log_value(crossing(f, m[b], t[b]))
    mc, tc = m[clean], t[clean]
    above = mc >= tc[:, None]
    first = above.argmax(axis=1)
    rows = np.arange(mc.shape[0])
    prev = np.maximum(first - 1, 0)
    logf = np.log(f)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = (tc - mc[rows, prev]) / (mc[rows, first] - mc[rows, prev])
        vals = logf[prev] + frac * (logf[first] - logf[prev])
    vals = np.where(first == 0, -math.inf, vals)
    out[clean] = np.where(above.any(axis=1), vals, math.inf)
    return out


def _interval(logs: np.ndarray, confidence: float) -> tuple[float, float]:
    logs = logs[~np.isnan(logs)]
    if logs.size == 0:
        return math.nan, math.nan
    tail = (1.0 - confidence) / 2.0 * 100.0
    low = float(np.percentile(logs, tail, method="lower"))
    high = float(np.percentile(logs, 100.0 - tail, method="higher"))
    return (0.0 if low == -math.inf else math.exp(low)), (math.inf if high == math.inf else math.exp(high))


def series_columns(results: pd.DataFrame) -> list[str]:
    """``encoder, regime``, plus ``head`` when the study trained more than one head type."""
    several_heads = "head" in results and results["head"].nunique(dropna=False) > 1
    return ["encoder", "regime", "head"] if several_heads else ["encoder", "regime"]


def series_name(key: tuple) -> str:
    """``encoder (regime)``, with ``, <head> head`` when the key carries the head."""
    return f"{key[0]} ({key[1]})" + (f", {key[2]} head" if len(key) > 2 else "")


def _claim_state(conv: dict[tuple, tuple[int, int]], cells: list[tuple]) -> str:
    """``yes`` if a cell the claim rests on has an unconverged run, ``unknown`` if one is unrecorded."""
    counts = [conv.get(c, (0, 1)) for c in cells]
    if any(n_false > 0 for n_false, _ in counts):
        return "yes"
    return "unknown" if any(n_unknown > 0 for _, n_unknown in counts) else "no"


def _convergence(panel: pd.DataFrame, cell_cols: list[str]) -> dict[tuple, tuple[int, int]]:
    counts = stats.convergence_counts(panel, cell_cols)
    return {(*r[:-3], float(r[-3])): (int(r[-2]), int(r[-1])) for r in counts.itertuples(index=False)}


def draw_means(mean: np.ndarray, se: np.ndarray, df: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(1 + n_boot, cells): row 0 the means, then draws ``mean + se * T`` with ``T`` Student t on ``df``
    (normal where df is infinite); NaN for a cell without a standard error."""
    rng = np.random.default_rng(seed)
    t = np.empty((n_boot, mean.size))
    for c in range(mean.size):
        if not (np.isfinite(se[c]) and df[c] > 0):
            t[:, c] = np.nan
        else:
            t[:, c] = rng.standard_normal(n_boot) if math.isinf(df[c]) else rng.standard_t(df[c], n_boot)
    return np.vstack([mean, mean + se * t])


def _panel_rows(panel: pd.DataFrame, family: comparisons.Family, series_cols: list[str], n_boot: int,
                seed: int, confidence: float) -> list[dict]:
    cell_cols = [*series_cols, "fraction"]
    table = family.table
    keys = table[cell_cols].reset_index(drop=True)
    se = np.sqrt(table["s2_mod"].to_numpy(dtype=float) / table["n"].to_numpy(dtype=float))
    means = draw_means(table["mean"].to_numpy(dtype=float), se, table["df_mod"].to_numpy(dtype=float), n_boot,
                       seed)
    n_present = {(*k[:-1], float(k[-1])): int(n) for k, n in
                 zip(keys.itertuples(index=False), table["n"], strict=True)}
    conv = _convergence(panel, cell_cols)
    ref_frac = 1.0 if (keys["fraction"] == 1.0).any() else float(keys["fraction"].max())
    by_series: dict[tuple, list[int]] = {}
    for i, k in enumerate(keys[series_cols].itertuples(index=False)):
        by_series.setdefault(tuple(k), []).append(i)
    rows = []
    for ref, ref_idx in by_series.items():
        at = [i for i in ref_idx if keys.at[i, "fraction"] == ref_frac]
        targets = means[:, at[0]] if at else np.full(means.shape[0], math.nan)
        for s, idx in by_series.items():
            if s == ref:
                continue
            fracs = keys.loc[idx, "fraction"].to_numpy(dtype=float)
            point = crossing(fracs, means[0, idx], targets[0])
            logs = log_crossings(fracs, means[1:, idx], targets[1:])
            logs[np.isnan(means[1:, idx]).any(axis=1) | np.isnan(targets[1:])] = math.nan  # undrawable cells
            cells = _claim_cells(s, ref, fracs, point, ref_frac, bool(at))
            row = _row(s, ref, ref_frac, float(targets[0]), point, logs, confidence)
            row.update({"train_dataset": panel["train_dataset"].iloc[0],
                        "eval_dataset": panel["eval_dataset"].iloc[0],
                        "n_seeds": min(n_present[c] for c in cells),
                        "rests_on_unconverged": _claim_state(conv, cells),
                        "interval_method": family.prior.describe(),
                        "cells": ", ".join(plot_fraction(c[-1]) + ("" if c[:-1] == s else " of the reference")
                                           for c in cells)})
            rows.append(row)
    return rows


def _claim_cells(s: tuple, ref: tuple, fracs: np.ndarray, point: Crossing, ref_frac: float,
                 has_ref: bool) -> list[tuple]:
    """The cells a claim rests on: the reference cell and the encoder's points up to the crossing."""
    used = np.sort(fracs)
    if point.status in (REACHED, BY_SMALLEST):
        used = used[: point.upper_index + 1]
    return [(*s, float(f)) for f in used] + ([(*ref, ref_frac)] if has_ref else [])


def _row(s: tuple, ref: tuple, ref_frac: float, target: float, point: Crossing, logs: np.ndarray,
         confidence: float) -> dict:
    low, high = _interval(logs, confidence) if point.status != NO_REFERENCE else (math.nan, math.nan)
    return {
        "encoder": s[0], "regime": s[1], "head": s[2] if len(s) > 2 else None,
        "reference": series_name(ref), "reference_fraction": ref_frac, "target_miou": target,
        "status": point.status, "fraction": point.fraction, "fraction_low": low, "fraction_high": high,
        "factor": _ratio(ref_frac, point.fraction), "factor_low": _ratio(ref_frac, high),
        "factor_high": _ratio(ref_frac, low), "n_boot": len(logs),
        "n_boot_used": int((~np.isnan(logs)).sum()),
    }


def _ratio(num: float, den: float) -> float:
    if math.isnan(den):
        return math.nan
    if den == 0.0:
        return math.inf
    return 0.0 if den == math.inf else num / den


def plot_fraction(f: float) -> str:
    return f"{f * 100:g}%"


def label_efficiency(results: pd.DataFrame, n_boot: int = 2000, seed: int = 0,
                     confidence: float = 0.95) -> pd.DataFrame:
    """One row per (train, eval) pair x encoder series x reference series (every other series); ``COLUMNS``.

    ``results`` is the study's per-run table (``aggregate.collect_results``: one row per run x eval dataset).
    The cell variances are moderated over every cell of the study (``comparisons.cells``).
    """
    missing = [c for c in [*PANEL, "encoder", "regime", "fraction", "miou", *stats.PAIR_COLUMNS]
               if c not in results.columns]
    if missing:
        raise ValueError(f"label_efficiency: the results table lacks the columns {missing}")
    if n_boot < 1:
        raise ValueError(f"label_efficiency: n_boot (resamples) must be >= 1, got {n_boot}")
    results = comparisons.with_head(results)
    family = comparisons.cells(comparisons.groups(results))
    series_cols = series_columns(results)
    rows = []
    for panel_key, panel in results.groupby(PANEL, sort=True):
        sel = ((family.table["train_dataset"] == panel_key[0])
               & (family.table["eval_dataset"] == panel_key[1])).to_numpy()
        part = comparisons.Family(family.table[sel].reset_index(drop=True), family.prior)
        rows.extend(_panel_rows(panel, part, series_cols, n_boot, seed, confidence))
    return pd.DataFrame(rows, columns=COLUMNS)


def summary_columns(summary: pd.DataFrame, efficiency: pd.DataFrame, baseline: str,
                    baseline_regime: str) -> pd.DataFrame:
    """``summary`` with the label efficiency against the baseline (``le_*``) on every row of each series.

    With several heads a series is (encoder, regime, head) and its reference the baseline with the same head.
    """
    ref = series_name((baseline, baseline_regime))
    eff = efficiency[(efficiency["reference"] == ref) | efficiency["reference"].str.startswith(ref + ",")]
    cols = {"status": "le_status", "fraction": "le_fraction", "fraction_low": "le_fraction_low",
            "fraction_high": "le_fraction_high", "factor": "le_factor", "factor_low": "le_factor_low",
            "factor_high": "le_factor_high", "reference_fraction": "le_reference_fraction",
            "target_miou": "le_target_miou", "rests_on_unconverged": "le_rests_on_unconverged",
            "n_seeds": "le_n_seeds"}
    keys = [*PANEL, "encoder", "regime"]
    if eff["head"].notna().any():
        eff = eff[eff["reference"] == eff["head"].map(lambda h: series_name((baseline, baseline_regime, h)))]
        keys.append("head")
    part = eff[[*keys, *cols]].rename(columns=cols).drop_duplicates(keys)
    out = summary.drop(columns=[c for c in cols.values() if c in summary.columns])
    return out.merge(part, on=keys, how="left")
