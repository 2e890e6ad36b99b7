"""The statistics behind the report's brief: label efficiency, ranking stability, convergence counts.

``compute_insights`` runs them once on the per-run table and adds their columns to the summary; the tables
(``study.tables``) and the prose (``study.brief``) only read the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from encseg.study import label_efficiency, ranking, stats


@dataclass
class Insights:
    """Label efficiency (``label_efficiency.COLUMNS``), ranking stability and its cheapest agreement."""

    efficiency: pd.DataFrame
    stability: ranking.Stability
    cheapest: ranking.CheapestAgreement
    convergence_recorded: bool


def compute_insights(results: pd.DataFrame, summary: pd.DataFrame, baseline: str, n_boot: int,
                     seed: int) -> tuple[pd.DataFrame, Insights | None]:
    """Both statistics from the per-run table, and ``summary`` with the columns behind the brief."""
    if results.empty:
        return summary, None
    eff = label_efficiency.label_efficiency(results, n_boot=n_boot, seed=seed)
    st = ranking.ranking_stability(results, n_boot=n_boot, seed=seed)
    conv = stats.convergence_counts(results, stats.GROUP_COLUMNS)
    summary = summary.drop(columns=[c for c in ("n_unconverged", "n_converged_unknown") if c in summary])
    summary = summary.merge(conv, on=stats.GROUP_COLUMNS, how="left")
    summary = label_efficiency.summary_columns(summary, eff, baseline)
    summary = ranking.rank_columns(summary, st)
    return summary, Insights(eff, st, ranking.cheapest_agreeing(st), "converged" in results.columns)
