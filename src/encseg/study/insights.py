"""The statistics behind the report's brief: label efficiency, ranking stability, convergence counts, Holm.

``compute_insights`` runs them once on the per-run table and adds their columns to the summary; the tables
(``study.tables``) and the prose (``study.brief``) only read the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from encseg.study import comparisons, label_efficiency, ranking, stats


@dataclass
class Insights:
    """Label efficiency (``label_efficiency.COLUMNS``), ranking stability and its cheapest agreement."""

    efficiency: pd.DataFrame
    stability: ranking.Stability
    cheapest: ranking.CheapestAgreement
    convergence_recorded: bool
    baseline: str
    baseline_regime: str

    @property
    def baseline_label(self) -> str:
        return f"{self.baseline} ({self.baseline_regime})"


def claim_rows(summary: pd.DataFrame) -> pd.Series:
    """Which summary rows the brief states as gains: in-domain, not the baseline, at each series' smallest and
    largest fraction (one row when the series has one fraction). These form the family of Holm's adjustment."""
    own = (summary["train_dataset"] == summary["eval_dataset"]) & (summary["gain_note"] != "baseline")
    keys = ["train_dataset", "encoder", "regime", "head"]
    lo = summary[own].groupby(keys)["fraction"].transform("min")
    hi = summary[own].groupby(keys)["fraction"].transform("max")
    picked = pd.Series(False, index=summary.index)
    picked[own] = (summary.loc[own, "fraction"] == lo) | (summary.loc[own, "fraction"] == hi)
    return picked


def add_holm(summary: pd.DataFrame) -> pd.DataFrame:
    """``summary`` with ``in_brief`` (``claim_rows``) and ``gain_p_holm``: Holm-adjusted over those gains."""
    picked = claim_rows(summary)
    adjusted = pd.Series(float("nan"), index=summary.index)
    adjusted[picked] = stats.holm(summary.loc[picked, "gain_p"].to_numpy(dtype=float))
    return summary.assign(in_brief=picked, gain_p_holm=adjusted)


def compute_insights(results: pd.DataFrame, summary: pd.DataFrame, baseline: str, baseline_regime: str,
                     n_boot: int, seed: int) -> tuple[pd.DataFrame, Insights | None]:
    """Both statistics from the per-run table, and ``summary`` with the columns behind the brief."""
    if results.empty:
        return summary, None
    eff = label_efficiency.label_efficiency(results, n_boot=n_boot, seed=seed)
    st = ranking.ranking_stability(results, baseline=baseline, baseline_regime=baseline_regime)
    conv = stats.convergence_counts(comparisons.with_head(results), stats.GROUP_COLUMNS)
    summary = summary.drop(columns=[c for c in ("n_unconverged", "n_converged_unknown") if c in summary])
    summary = summary.merge(conv, on=stats.GROUP_COLUMNS, how="left")
    summary = label_efficiency.summary_columns(summary, eff, baseline, baseline_regime)
    summary = add_holm(ranking.rank_columns(summary, st))
    return summary, Insights(eff, st, ranking.cheapest_agreeing(st), "converged" in results.columns, baseline,
                             baseline_regime)
