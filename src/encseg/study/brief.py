"""The report's prose: the one-line claims of "In brief", the ranking sentence, the protocol in words.

Each claim states its number with its interval and its caveats (few seeds, unconverged runs), read from the
statistics frames; the tables are ``study.tables``.
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
    unconverged,
)

UNCONVERGED_NOTE = (f"{DAGGER} Not every seed of this cell converged by the stopping criterion (or its convergence "
                    "was not recorded): the number may reflect the training budget rather than the encoder.")


def _efficiency_claim(r: pd.Series, scale: float) -> str:
    """How many labels an encoder needs to match the reference at its reference fraction, with the interval."""
    ref = f"{r['reference']}'s {pct(r['reference_fraction'])} mIoU ({num(r['target_miou'], scale)})"
    interval = f"95% seed-bootstrap interval {fraction_interval(r['fraction_low'], r['fraction_high'])}"
    if r["status"] == label_efficiency.REACHED:
        return (f"matches {ref} with {pct(r['fraction'])} of the labels ({r['factor']:.1f}x fewer; {interval}")
    if r["status"] == label_efficiency.BY_SMALLEST:
        return (f"matches {ref} already at the smallest fraction studied, {pct(r['fraction'])} "
                f"(at least {r['factor']:.1f}x fewer labels; {interval}")
    if r["status"] == label_efficiency.NOT_REACHED:
        if math.isinf(r["fraction_low"]):
            return f"does not reach {ref} at any fraction studied (nor in any seed-bootstrap resample"
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


def _gain_claim(r: pd.Series, base: pd.Series | None, scale: float, recorded: bool) -> str:
    at = f"at {plots.fraction_label(r['fraction'])}"
    if missing(r["gain_miou"]):
        return f"no paired comparison {at} ({r['gain_note']})"
    detail = [f"95% CI {interval(r['gain_ci_low'], r['gain_ci_high'], scale)}"]
    if not missing(r["gain_ci_low"]) and r["gain_ci_low"] <= 0.0 <= r["gain_ci_high"]:
        detail.append("includes 0")
    b = base if base is not None else {}
    unknown = [r.get("n_converged_unknown"), b.get("n_converged_unknown")] if recorded else []
    detail += _flags([r["gain_n"]], [r.get("n_unconverged"), b.get("n_unconverged")], unknown)
    return f"{num(r['gain_miou'], scale, sign=True)} mIoU points {at} ({'; '.join(detail)})"


def brief_sentences(summary: pd.DataFrame, ins: Insights, baseline: str, scale: float) -> list[str]:
    """One sentence per non-baseline series and in-domain dataset: gains at the smallest and largest fraction
    over the baseline, and the labels it needs to match the baseline's 100%; each claim with its interval."""
    items = []
    own = summary[summary["train_dataset"] == summary["eval_dataset"]]
    base_rows = own[own["gain_note"] == "baseline"].set_index(["train_dataset", "fraction"])
    for train in sorted(own["train_dataset"].unique()):
        g = own[(own["train_dataset"] == train) & (own["gain_note"] != "baseline")]
        for enc, regime in ordered_series(g, baseline):
            s = g[(g["encoder"] == enc) & (g["regime"] == regime)].sort_values("fraction")
            picks = [s.iloc[0]] if len(s) == 1 else [s.iloc[0], s.iloc[-1]]
            gains = [_gain_claim(r, base_rows.loc[(train, r["fraction"])] if (train, r["fraction"]) in
                                 base_rows.index else None, scale, ins.convergence_recorded) for r in picks]
            text = f"{plots.series_label(enc, regime)} on {train}: " + " and ".join(gains)
            e = ins.efficiency
            ref = label_efficiency.series_name((baseline, "finetune"))
            le = e[(e["train_dataset"] == train) & (e["eval_dataset"] == train) & (e["encoder"] == enc)
                   & (e["regime"] == regime) & ((e["reference"] == ref) | e["reference"].str.startswith(ref + ","))]
            if not le.empty:
                r = le.iloc[0]
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
            f"per run), ranks {ref['ranking']}. ")
    tau = f"Kendall's tau = {c.tau:.2f}, 95% bootstrap interval [{c.tau_low:.2f}, {c.tau_high:.2f}]"
    if c.setting is not None:
        cheap = st.settings[st.settings["setting"] == c.setting].iloc[0]
        return head + (f"The cheapest setting that ranks them the same is {c.setting} ({cheap['cost_s']:.0f} s "
                       f"per run; {tau}).")
    return head + ("No cheaper setting ranks them the same: " + c.reason
                   + (f" ({tau})." if not missing(c.tau) else "."))


def _budget_words(r) -> str:
    if r.budget == "converge":
        return f"until converged, at most {r.max_iters} iterations"
    return f"{r.max_iters} iterations" if r.budget == "iters" else f"{r.max_epochs} epochs"


def _convergence_protocol(results: pd.DataFrame) -> str:
    """The convergence criterion in one sentence, with how many runs met it."""
    runs = results.drop_duplicates("run_id")
    known, converged = stats.converged_flags(runs)
    criteria = distinct(c for c in runs.get("criterion", pd.Series(dtype=str)) if isinstance(c, str) and c)
    return (f"Convergence: judged by the engine's criterion on the dev-split curve, which also stops runs on the "
            f"converge budget (settings: {criteria}); "
            f"{int((known & converged).sum())} of {len(runs)} runs converged, "
            f"{int((known & ~converged).sum())} did not, {int((~known).sum())} did not record it. "
            "Epochs to converge = the optimiser step where the criterion fired / steps per epoch, shown only "
            f"for runs that converged; cells with an unconverged seed are marked {DAGGER}.")


def protocol_items(protocol: pd.DataFrame, results: pd.DataFrame, n_boot: int) -> list[str]:
    """The Protocol section's bullets: evaluation, fractions and budgets, seeds, recipe, convergence, statistics."""
    p = protocol
    evals = distinct(f"mode={r.eval_mode}, crop={r.eval_crop}, stride={r.eval_stride}, flip={r.eval_flip}, "
                     f"scales={r.eval_scales}, eval short side={r.eval_size}, split={r.eval_split}"
                     for r in p.itertuples())
    budget = []
    for f, g in p.groupby("fraction", sort=True):
        kinds = distinct(_budget_words(r) for r in g.itertuples())
        budget.append(f"{plots.fraction_label(f)}: {kinds}")
    n_seeds = results.groupby(["encoder", "regime", "train_dataset", "eval_dataset", "fraction"]).size()
    return [
        f"Evaluation: {evals}. Cross-dataset scores use the classes both taxonomies share (listed in the "
        "eval json of each run).",
        "Labelled fractions: nested subsets of the training split (each fraction takes a prefix of one "
        f"permutation drawn with subset_seed {distinct(sorted(p['subset_seed'].unique()))}), the same "
        "images "
        "for every encoder. Training budget per fraction: " + "; ".join(budget) + ".",
        f"Seeds: {distinct(sorted(p['seed'].unique()))} "
        f"({distinct(sorted(set(int(n) for n in n_seeds)))} finished per cell).",
        f"Recipe: batch {distinct(p['batch_size'])}, crop {distinct(p['crop_size'])}, "
        f"lr {distinct(p['lr'])}, weight decay {distinct(p['weight_decay'])}, "
        f"encoder lr multiplier {distinct(p['encoder_lr_mult'])}, "
        f"layer decay {distinct(p['layer_decay'])}.",
        _convergence_protocol(results),
        "Statistics: mean ± sample std (ddof = 1) over seeds; 95% Student-t intervals; gains are paired on "
        "(seed, subset_seed) with a two-sided paired t-test, plus a Wilcoxon signed-rank test from "
        f"{stats.MIN_WILCOXON} pairs; the per-image bootstrap ({n_boot} resamples of the evaluation images, "
        "per-image mIoU averaged over the paired seeds) measures the dependence on the evaluated images.",
    ]


def unconverged_note(summary: pd.DataFrame, extra: str = "") -> list[Block]:
    """The footnote under a table with marked cells; under the headline, the all-clear when there are none."""
    if not any(unconverged(r) for _, r in summary.iterrows()):
        return [] if extra else [Para("Every cell converged on every seed by the convergence criterion.")]
    return [Para(UNCONVERGED_NOTE + (f" Here {extra}." if extra else ""))]
