"""The report's prose: the one-line claims of "In brief", the ranking sentence, the protocol in words.

Each claim states its number with its interval, what the interval resamples, and its caveats (few seeds,
unconverged runs), read from the statistics frames; the tables are ``study.tables``.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from encseg.study import label_efficiency, plots, stats
from encseg.study.insights import Insights
from encseg.study.render import Block, Para
from encseg.study.tables import (
    DAGGER,
    distinct,
    fraction_interval,
    interval,
    missing,
    num,
    ordered_series,
    pct,
    pvalue,
    series_rows,
    series_text,
    unconverged,
)

UNCONVERGED_NOTE = (f"{DAGGER} Not every seed of this cell converged by the stopping criterion (or its convergence "
                    "was not recorded): the number may reflect the training budget rather than the encoder.")


def _efficiency_claim(r: pd.Series, scale: float) -> str:
    """How many labels an encoder needs to match the reference at its reference fraction, with the interval."""
    ref = f"{r['reference']}'s {pct(r['reference_fraction'])} mIoU ({num(r['target_miou'], scale)})"
    interval = f"95% interval over training seeds {fraction_interval(r['fraction_low'], r['fraction_high'])}"
    if r["status"] == label_efficiency.REACHED:
        return (f"matches {ref} with {pct(r['fraction'])} of the labels ({r['factor']:.1f}x fewer; {interval}")
    if r["status"] == label_efficiency.BY_SMALLEST:
        return (f"matches {ref} already at the smallest fraction studied, {pct(r['fraction'])} "
                f"(at least {r['factor']:.1f}x fewer labels; {interval}")
    if r["status"] == label_efficiency.NOT_REACHED:
        if not missing(r["fraction_low"]) and math.isinf(r["fraction_low"]):
            return f"does not reach {ref} at any fraction studied (nor in 97.5% of the resamples"
        return f"does not reach {ref} at any fraction studied ({interval}"
    return f"has no {ref} to compare with (the reference lacks that fraction"


def _flags(n_seeds: list[Any], unconverged: list[Any], unknown: list[Any]) -> list[str]:
    """Caveats of a claim from the seeds and convergence counts of the cells it rests on.

    Pass ``unknown`` empty when no run records convergence: the brief says that once for all claims.
    """
    out = []
    counts = [int(n) for n in n_seeds if not missing(n)]
    if counts and min(counts) < 3:
        out.append(f"only {min(counts)} seed{'s' if min(counts) != 1 else ''}")
    if any(not missing(n) and n > 0 for n in unconverged):
        out.append("rests on unconverged runs")
    elif any(not missing(n) and n > 0 for n in unknown):
        out.append("convergence not recorded")
    return out


def _gain_claim(r: pd.Series, base: pd.Series | None, scale: float, recorded: bool, family: int) -> str:
    """One gain with its seed interval, its Holm-adjusted test over the ``family`` gains the brief states, and
    its caveats; "includes 0" only when the printed interval does."""
    at = f"at {plots.fraction_label(r['fraction'])}"
    if missing(r["gain_miou"]):
        return f"no paired comparison {at} ({r['gain_note']})"
    detail = [f"95% CI over training seeds {interval(r['gain_ci_low'], r['gain_ci_high'], scale)}"]
    if missing(r["gain_ci_low"]):
        detail[0] = "no interval (one paired seed and no prior)"
    elif r["gain_ci_low"] <= 0.0 <= r["gain_ci_high"]:
        detail.append("includes 0")
    elif not missing(r.get("gain_p_holm")):
        verdict = "significant" if r["gain_p_holm"] < 0.05 else "not significant"
        detail.append(f"{verdict} after Holm's adjustment over the {family} gains stated here, "
                      f"{pvalue(r['gain_p_holm'], 'p')}")
    b = base if base is not None else {}
    unknown = [r.get("n_converged_unknown"), b.get("n_converged_unknown")] if recorded else []
    detail += _flags([r["gain_n"]], [r.get("n_unconverged"), b.get("n_unconverged")], unknown)
    return f"{num(r['gain_miou'], scale, sign=True)} mIoU points {at} ({'; '.join(detail)})"


def _efficiency_row(ins: Insights, train: str, key: tuple, several_heads: bool) -> pd.Series | None:
    e = ins.efficiency
    ref = label_efficiency.series_name((ins.baseline, ins.baseline_regime, *([key[2]] if several_heads else [])))
    sel = e[(e["train_dataset"] == train) & (e["eval_dataset"] == train) & (e["encoder"] == key[0])
            & (e["regime"] == key[1]) & (e["reference"] == ref)]
    if several_heads:
        sel = sel[sel["head"] == key[2]]
    return None if sel.empty else sel.iloc[0]


def brief_sentences(summary: pd.DataFrame, ins: Insights, scale: float) -> list[str]:
    """One sentence per non-baseline series and in-domain dataset: the gains over the baseline that the brief
    states (``insights.claim_rows``), and the labels it needs to match the baseline's 100%."""
    items = []
    several = summary["head"].nunique(dropna=False) > 1
    stated = summary[summary["in_brief"].astype(bool)] if "in_brief" in summary else summary.iloc[0:0]
    family = int(stated["gain_p"].notna().sum()) if "gain_p" in stated else 0
    own = summary[summary["train_dataset"] == summary["eval_dataset"]]
    base_rows = own[own["gain_note"] == "baseline"].set_index(["train_dataset", "head", "fraction"])
    for train in sorted(own["train_dataset"].unique()):
        g = stated[stated["train_dataset"] == train]
        for key in ordered_series(g, ins.baseline):
            picks = series_rows(g, key).sort_values("fraction")
            gains = [_gain_claim(r, base_rows.loc[(train, key[2], r["fraction"])]
                                 if (train, key[2], r["fraction"]) in base_rows.index else None,
                                 scale, ins.convergence_recorded, family) for _, r in picks.iterrows()]
            text = f"{series_text(key, summary)} on {train}: " + " and ".join(gains)
            r = _efficiency_row(ins, train, key, several)
            if r is not None:
                flags = _flags([r["n_seeds"]], [1 if r["rests_on_unconverged"] == "yes" else 0],
                               [1 if r["rests_on_unconverged"] == "unknown" else 0] if ins.convergence_recorded
                               else [])
                text += "; it " + _efficiency_claim(r, scale) + "".join(f"; {f}" for f in flags) + ")"
            items.append(text + ".")
    return items


def ranking_sentence(ins: Insights) -> str:
    """The cheapest setting that ranks the encoders like the most expensive one, or that none does."""
    c, st = ins.cheapest, ins.stability
    if c.reference is None:
        return f"Ranking stability: {c.reason}."
    ref = st.settings[st.settings["setting"] == c.reference].iloc[0]
    head = (f"Ranking stability: the most expensive setting, {c.reference} ({ref['cost_s']:.0f} s of training "
            f"per run), ranks {ref['ranking']} (≈: not resolved at 95%). ")
    tau = (f"Kendall's tau = {c.tau:.2f}, 95% interval from the pairwise tests "
           f"[{c.tau_low:.2f}, {c.tau_high:.2f}]")
    if c.setting is not None:
        cheap = st.settings[st.settings["setting"] == c.setting].iloc[0]
        return head + (f"The cheapest setting that ranks them the same is {c.setting} ({cheap['cost_s']:.0f} s "
                       f"per run; {tau}).")
    if " > " not in str(ref["ranking"]):
        return head + c.reason[0].upper() + c.reason[1:] + "."
    return head + ("No cheaper setting ranks them the same: " + c.reason
                   + (f" ({tau})." if not missing(c.tau) else "."))


def _budget_words(r) -> str:
    if r.budget == "converge":
        return f"until converged, at most {r.max_iters} iterations"
    return f"{r.max_iters} iterations" if r.budget == "iters" else f"{r.max_epochs} epochs"


def _convergence_protocol(results: pd.DataFrame) -> str:
    """The convergence criterion in one sentence, with how many runs met it (its settings: ``criterion_table``)."""
    runs = results.drop_duplicates("run_id")
    known, converged = stats.converged_flags(runs)
    return ("Convergence: judged by the engine's criterion on the dev-split curve, which also stops runs on the "
            "converge budget (its settings: the table below); "
            f"{int((known & converged).sum())} of {len(runs)} runs converged, "
            f"{int((known & ~converged).sum())} did not, {int((~known).sum())} did not record it. "
            "Epochs to converge = the optimiser step where the criterion fired / steps per epoch, shown only "
            f"for runs that converged; cells with an unconverged seed are marked {DAGGER}.")


def _subsets_protocol(p: pd.DataFrame, budget: list[str]) -> str:
    per_seed = bool((p["subset_seed"] == p["seed"]).all()) and p["seed"].nunique() > 1
    draw = ("drawn per training seed (subset_seed = seed): each seed of a cell trains on its own subsets, so the "
            "seed intervals include the choice of the labelled images"
            if per_seed else
            f"drawn with subset_seed {distinct(sorted(p['subset_seed'].unique()))}: the seeds share these subsets, "
            "so the seed intervals do not cover the choice of the labelled images")
    return ("Labelled fractions: nested subsets of the training split (each fraction takes a prefix of one "
            f"permutation, {draw}); one seed's subsets are the same for every encoder. Training budget per "
            "fraction: " + "; ".join(budget) + ".")


def statistics_protocol(summary: pd.DataFrame, ins: Insights | None, n_boot: int) -> str:
    """What every interval of the report resamples, and the estimator behind it (docs/protocol.md)."""
    methods = distinct(m for m in summary.get("gain_method", pd.Series(dtype=object)) if isinstance(m, str))
    cells = distinct(m for m in summary.get("miou_ci_method", pd.Series(dtype=object)) if isinstance(m, str))
    text = (f"Statistics: mean ± sample std (ddof = 1) over seeds. Intervals over training seeds (which include "
            f"the seeds' subsets under per-seed subsets): the means use {cells}; the gains are paired on "
            f"(seed, subset_seed) and use {methods} (the prior is fitted to the study's gains, so a gain's "
            "variance borrows strength from the other gains). Two-sided p-values from the same t; a Wilcoxon "
            f"signed-rank test from {stats.MIN_WILCOXON} pairs. The claims in brief are tested with "
            "Holm-adjusted p-values over the gains they state. The evaluation-image interval resamples the "
            f"evaluation images ({n_boot} resamples, the same images for both runs of a pair) and recomputes "
            "the dataset-level mIoU gain that is printed; it does not cover the training seeds.")
    if ins is not None:
        text += (" Label efficiency: a parametric bootstrap from the cell means' moderated t distributions "
                 f"({n_boot} resamples). Rankings: two encoders are ordered when their paired difference's "
                 "moderated interval excludes 0, else tied (≈); the tau intervals invert those tests.")
    return text


def protocol_items(protocol: pd.DataFrame, results: pd.DataFrame, summary: pd.DataFrame,
                   ins: Insights | None, n_boot: int) -> list[str]:
    """The Protocol section's bullets: evaluation, fractions and budgets, seeds, recipe, convergence, statistics."""
    p = protocol
    evals = distinct(f"mode={r.eval_mode}, crop={r.eval_crop}, stride={r.eval_stride}, flip={r.eval_flip}, "
                     f"scales={r.eval_scales}, eval short side={r.eval_size}, split={r.eval_split}"
                     for r in p.itertuples())
    budget = []
    for f, g in p.groupby("fraction", sort=True):
        kinds = distinct(_budget_words(r) for r in g.itertuples())
        budget.append(f"{plots.fraction_label(f)}: {kinds}")
    n_seeds = results.groupby(["encoder", "regime", "head", "train_dataset", "eval_dataset", "fraction"],
                              dropna=False).size()
    return [
        f"Evaluation: {evals}. Cross-dataset scores use the classes both taxonomies share (listed in the "
        "eval json of each run).",
        _subsets_protocol(p, budget),
        f"Seeds: {distinct(sorted(p['seed'].unique()))} "
        f"({distinct(sorted(set(int(n) for n in n_seeds)))} finished per cell).",
        f"Recipe: batch {distinct(p['batch_size'])}, crop {distinct(p['crop_size'])}, "
        f"lr {distinct(p['lr'])}, weight decay {distinct(p['weight_decay'])}, "
        f"encoder lr multiplier {distinct(p['encoder_lr_mult'])}, "
        f"layer decay {distinct(p['layer_decay'])}.",
        _convergence_protocol(results),
        statistics_protocol(summary, ins, n_boot),
    ]


def unconverged_note(summary: pd.DataFrame, extra: str = "") -> list[Block]:
    """The footnote under a table with marked cells; under the headline, the all-clear when there are none."""
    if not any(unconverged(r) for _, r in summary.iterrows()):
        return [] if extra else [Para("Every cell converged on every seed by the convergence criterion.")]
    return [Para(UNCONVERGED_NOTE + (f" Here {extra}." if extra else ""))]
