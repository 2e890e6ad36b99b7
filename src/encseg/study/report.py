"""``encseg study report STUDY_DIR``: tables, statistics, plots, and one self-contained HTML page.

Writes into the study directory: ``results.csv`` / ``results.parquet`` (one row per run x eval dataset),
``per_class.csv``, ``summary.csv`` (``stats.summarize``), ``plots/*.png``, ``report.html`` and ``report.md``.
The page is built once as a list of blocks (headings, paragraphs, tables, figures) and rendered twice, so the
HTML and the Markdown always say the same thing. The HTML embeds every image as a base64 PNG data URI, carries
its CSS inline and needs no script or network; the Markdown links the PNGs by relative path.

Metrics are shown in percent (mIoU points) when the engine's values are fractions in [0, 1].
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from encseg.atomic import atomic_write_bytes, atomic_write_text
from encseg.study import aggregate, label_efficiency, plan, plots, ranking, stats

log = logging.getLogger(__name__)

DASH = "–"


# ------------------------------------------------------------------------------------------- blocks
@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, column) cells to emphasise


@dataclass
class Image:
    title: str
    result: Path | plots.Skip
    caption: str = ""


Block = Heading | Para | Bullets | Table | Image


# ------------------------------------------------------------------------------------------ numbers
def _isnan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def _f(v: Any, scale: float = 1.0, digits: int = 1, sign: bool = False) -> str:
    if _isnan(v):
        return DASH
    return f"{float(v) * scale:{'+' if sign else ''}.{digits}f}"


def _mean_std(mean: Any, std: Any, scale: float) -> str:
    if _isnan(mean):
        return DASH
    return _f(mean, scale) if _isnan(std) else f"{_f(mean, scale)} ± {_f(std, scale)}"


def _ci(low: Any, high: Any, scale: float) -> str:
    if _isnan(low) or _isnan(high):
        return DASH
    return f"[{_f(low, scale, sign=True)}, {_f(high, scale, sign=True)}]"


def _p(p: Any, prefix: str = "") -> str:
    """``0.034`` / ``< 0.001``; with ``prefix="p"``: ``p = 0.034`` / ``p < 0.001``."""
    if _isnan(p):
        return DASH
    if p < 0.001:
        return f"{prefix} < 0.001".strip()
    return f"{prefix} = {p:.3f}" if prefix else f"{p:.3f}"


def _int(v: Any) -> str:
    return DASH if _isnan(v) else f"{int(v)}"


def _sci(v: Any) -> str:
    if _isnan(v):
        return DASH
    v = float(v)
    return f"{v / 1e6:.2f}M" if abs(v) >= 1e5 else f"{v:g}"


def _distinct(values) -> str:
    seen = []
    for v in values:
        text = DASH if _isnan(v) else str(v)
        if text not in seen:
            seen.append(text)
    return ", ".join(seen) if seen else DASH


# ------------------------------------------------------------------------------------- convergence
DAGGER = "†"
UNCONVERGED_NOTE = (f"{DAGGER} Not every seed of this cell converged by the stopping criterion (or its convergence "
                    "was not recorded): the number may reflect the training budget rather than the encoder.")


def _unconverged(r: pd.Series | dict, baseline: bool = False) -> bool:
    """Whether a summary row (and, with ``baseline``, its baseline cell) has a seed that did not converge."""
    if not r.get("all_converged", False):
        return True
    return baseline and not r.get("baseline_all_converged", True)


def _mark(text: str, r: pd.Series | dict, baseline: bool = False) -> str:
    return f"{text} {DAGGER}" if text != DASH and _unconverged(r, baseline) else text


# -------------------------------------------------------------------------------------- study file
def read_study_meta(study_dir: Path) -> dict[str, Any]:
    """``name`` and ``baseline`` from ``<study_dir>/study.yaml`` when it has them.

    The study file's schema belongs to ``study.plan``; only these optional keys are read, and an unreadable
    file leaves the defaults (baseline ``random``) with a warning rather than stopping the report.
    """
    meta: dict[str, Any] = {"name": study_dir.resolve().name, "baseline": "random"}
    path = study_dir / "study.yaml"
    if not path.is_file():
        return meta
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, OSError) as e:
        log.warning("%s: unreadable (%s); using the default baseline 'random'", path, e)
        return meta
    if not isinstance(data, dict):
        return meta
    for key in ("name", "baseline"):
        value = data.get(key)
        if isinstance(value, str) and value.strip():
            meta[key] = value.strip()
    return meta


# ------------------------------------------------------------------------------------------ sections
def _pairs(summary: pd.DataFrame) -> list[tuple[str, str]]:
    """(train, eval) dataset pairs, in-domain before cross-dataset."""
    pairs = summary[["train_dataset", "eval_dataset"]].drop_duplicates().itertuples(index=False)
    return sorted(((t, e) for t, e in pairs), key=lambda p: (p[0], p[0] != p[1], p[1]))


def _ordered_labels(df: pd.DataFrame, baseline: str) -> list[tuple[str, str]]:
    keys = df[["encoder", "regime"]].drop_duplicates().itertuples(index=False)
    return sorted(((e, r) for e, r in keys), key=lambda k: (k[0] != baseline, k[0], k[1]))


def _pair_title(train: str, ev: str) -> str:
    return f"train {train} → eval {ev}" + ("" if train == ev else " (cross-dataset)")


def headline_tables(summary: pd.DataFrame, baseline: str, scale: float) -> list[Block]:
    """Per (train, eval) pair: rows = encoder (regime), columns = fractions, mean ± std mIoU; best in bold."""
    blocks: list[Block] = []
    for train, ev in _pairs(summary):
        g = summary[(summary["train_dataset"] == train) & (summary["eval_dataset"] == ev)]
        fracs = sorted(g["fraction"].unique())
        labels = _ordered_labels(g, baseline)
        rows, means = [], []
        for enc, regime in labels:
            s = g[(g["encoder"] == enc) & (g["regime"] == regime)].set_index("fraction")
            cells, row_means = [], []
            for f in fracs:
                if f in s.index:
                    cells.append(_mark(_mean_std(s.at[f, "miou_mean"], s.at[f, "miou_std"], scale), s.loc[f]))
                    row_means.append(s.at[f, "miou_mean"])
                else:
                    cells.append(DASH)
                    row_means.append(math.nan)
            seeds = _distinct(int(n) for n in s["n_seeds"])
            rows.append([plots.series_label(enc, regime), *cells, seeds])
            means.append(row_means)
        bold = set()
        for j in range(len(fracs)):
            col = [m[j] for m in means if not _isnan(m[j])]
            if col:
                best = max(col)
                bold |= {(i, j + 1) for i, m in enumerate(means) if not _isnan(m[j]) and m[j] == best}
        blocks.append(Heading(3, _pair_title(train, ev)))
        header = ["encoder (regime)", *[plots.fraction_label(f) for f in fracs], "seeds"]
        blocks.append(Table(header, rows, bold))
    return blocks


def gain_table(summary: pd.DataFrame, baseline: str, scale: float) -> Table:
    rows = []
    for train, ev in _pairs(summary):
        g = summary[(summary["train_dataset"] == train) & (summary["eval_dataset"] == ev)
                    & (summary["gain_note"] != "baseline")]
        for enc, regime in _ordered_labels(g, baseline):
            for _, r in g[(g["encoder"] == enc) & (g["regime"] == regime)].sort_values("fraction").iterrows():
                rows.append([
                    f"{train} → {ev}", plots.series_label(enc, regime), plots.fraction_label(r["fraction"]),
                    _int(r["gain_n"]), _mark(_f(r["gain_miou"], scale, sign=True), r, baseline=True),
                    _ci(r["gain_ci_low"], r["gain_ci_high"], scale), _p(r["gain_p_ttest"]),
                    _p(r["gain_p_wilcoxon"]), _ci(r["gain_boot_low"], r["gain_boot_high"], scale),
                    _mean_std(r["baseline_miou_mean"], r["baseline_miou_std"], scale), r["gain_note"] or "",
                ])
    return Table(["train → eval", "encoder (regime)", "fraction", "paired seeds", "gain (mIoU points)",
                  "95% CI (t)", "p (paired t)", "p (Wilcoxon)", "95% CI (per-image bootstrap)",
                  "baseline mIoU", "note"], rows)


# ------------------------------------------------- answer in brief, label efficiency, ranking stability
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


def _pct(f: float) -> str:
    return f"{f * 100:.3g}%"


def _fraction_interval(low: float, high: float) -> str:
    if _isnan(low) or _isnan(high):
        return DASH
    if math.isinf(low):
        return "not reached in any resample"
    if high == 0.0:
        return "at or below the smallest fraction in every resample"
    lo = "below the smallest fraction" if low == 0.0 else _pct(low)
    hi = "not reached" if math.isinf(high) else _pct(high)
    return f"[{lo}, {hi}]"


def _efficiency_claim(r: pd.Series, scale: float) -> str:
    """How many labels an encoder needs to match the reference at its reference fraction, with the interval."""
    ref = f"{r['reference']}'s {_pct(r['reference_fraction'])} mIoU ({_f(r['target_miou'], scale)})"
    interval = f"95% seed-bootstrap interval {_fraction_interval(r['fraction_low'], r['fraction_high'])}"
    if r["status"] == label_efficiency.REACHED:
        return (f"matches {ref} with {_pct(r['fraction'])} of the labels ({r['factor']:.1f}x fewer; {interval}")
    if r["status"] == label_efficiency.BY_SMALLEST:
        return (f"matches {ref} already at the smallest fraction studied, {_pct(r['fraction'])} "
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
    counts = [int(n) for n in n_seeds if not _isnan(n)]
    if counts and min(counts) < 3:
        out.append(f"only {min(counts)} seed{'s' if min(counts) != 1 else ''}")
    if any(not _isnan(n) and n > 0 for n in unconverged):
        out.append("rests on unconverged runs")
    elif any(not _isnan(n) and n > 0 for n in unknown):
        out.append("convergence not recorded")
    return out


def _gain_claim(r: pd.Series, base: pd.Series | None, scale: float, recorded: bool) -> str:
    at = f"at {plots.fraction_label(r['fraction'])}"
    if _isnan(r["gain_miou"]):
        return f"no paired comparison {at} ({r['gain_note']})"
    detail = [f"95% CI {_ci(r['gain_ci_low'], r['gain_ci_high'], scale)}"]
    if not _isnan(r["gain_ci_low"]) and r["gain_ci_low"] <= 0.0 <= r["gain_ci_high"]:
        detail.append("includes 0")
    b = base if base is not None else {}
    unknown = [r.get("n_converged_unknown"), b.get("n_converged_unknown")] if recorded else []
    detail += _flags([r["gain_n"]], [r.get("n_unconverged"), b.get("n_unconverged")], unknown)
    return f"{_f(r['gain_miou'], scale, sign=True)} mIoU points {at} ({'; '.join(detail)})"


def brief_sentences(summary: pd.DataFrame, ins: Insights, baseline: str, scale: float) -> list[str]:
    """One sentence per non-baseline series and in-domain dataset: gains at the smallest and largest fraction
    over the baseline, and the labels it needs to match the baseline's 100%; each claim with its interval."""
    items = []
    own = summary[summary["train_dataset"] == summary["eval_dataset"]]
    base_rows = own[own["gain_note"] == "baseline"].set_index(["train_dataset", "fraction"])
    for train in sorted(own["train_dataset"].unique()):
        g = own[(own["train_dataset"] == train) & (own["gain_note"] != "baseline")]
        for enc, regime in _ordered_labels(g, baseline):
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
                   + (f" ({tau})." if not _isnan(c.tau) else "."))


def efficiency_table(ins: Insights, baseline: str, scale: float) -> Table:
    rows = []
    for _, r in ins.efficiency.iterrows():
        fraction = DASH if _isnan(r["fraction"]) else _pct(r["fraction"])
        factor = DASH if _isnan(r["factor"]) else f"{r['factor']:.1f}x"
        if r["status"] == label_efficiency.BY_SMALLEST:
            fraction, factor = f"≤ {fraction}", f"≥ {factor}"
        rows.append([f"{r['train_dataset']} → {r['eval_dataset']}",
                     label_efficiency.series_name((r["encoder"], r["regime"], *([] if _isnan(r["head"])
                                                                                else [r["head"]]))),
                     r["reference"], _f(r["target_miou"], scale), r["status"].replace("_", " "), fraction,
                     _fraction_interval(r["fraction_low"], r["fraction_high"]), factor, _int(r["n_seeds"]),
                     r["rests_on_unconverged"]])
    return Table(["train → eval", "encoder (regime)", "reference", "reference mIoU at 100%", "status",
                  "fraction needed", "95% interval (seed bootstrap)", "fewer labels", "seeds",
                  "rests on unconverged runs"], rows)


def stability_blocks(ins: Insights, image: Image) -> list[Block]:
    st = ins.stability
    blocks: list[Block] = [Para(ranking_sentence(ins))]
    blocks.append(Table(["setting", "ranking (best first)", "encoders", "training s per run", "runs"],
                        [[r["setting"], r["ranking"] or DASH, str(r["n_encoders"]), _f(r["cost_s"], 1, 0),
                          str(r["n_runs"])] for _, r in st.settings.iterrows()]))
    defined = st.pairs[st.pairs["tau"].notna()]
    rows = [[r["setting_a"], r["setting_b"], str(r["n_encoders"]), _f(r["tau"], 1, 2),
             DASH if _isnan(r["tau_low"]) else f"[{r['tau_low']:.2f}, {r['tau_high']:.2f}]",
             f"{r['n_boot_used']} of {r['n_boot']}"] for _, r in defined.iterrows()]
    if len(defined) < len(st.pairs):
        blocks.append(Para(f"{len(st.pairs) - len(defined)} of {len(st.pairs)} pairs of settings have no "
                           "defined tau (fewer than 2 encoders in common, or all tied); ranking_tau.csv lists "
                           "them with the reason."))
    if rows:
        blocks.append(Table(["setting A", "setting B", "common encoders", "Kendall's tau-b",
                             "95% interval (seed bootstrap)", "resamples with a defined tau"], rows))
    blocks.append(image)
    return blocks


def insight_blocks(ins: Insights, summary: pd.DataFrame, baseline: str, scale: float,
                   tau_image: Image) -> tuple[list[Block], list[Block]]:
    """(the opening "In brief" blocks, the label-efficiency and ranking-stability sections)."""
    brief: list[Block] = [Heading(2, "In brief")]
    brief.append(Para(f"Per encoder, in-domain: the paired gain over {baseline} (finetune) at the smallest and "
                      "largest fraction, and the labels it needs to match the baseline at 100%; each claim "
                      "with its 95% interval and its caveats."
                      + ("" if ins.convergence_recorded else " The runs do not record whether they "
                         "converged (no converged column), so no claim can be checked against it.")))
    brief.append(Bullets([*brief_sentences(summary, ins, baseline, scale), ranking_sentence(ins)]))
    sections: list[Block] = [
        Heading(2, "Label efficiency"),
        Para("The smallest labelled fraction at which an encoder's mean mIoU reaches a reference's mean mIoU at "
             "100% (the largest fraction when the study has no 100%), interpolated on log(fraction) between the "
             "two studied fractions around the first crossing; never extrapolated beyond the studied fractions. "
             "Intervals: percentile bootstrap over training seeds (docs/protocol.md)."),
        efficiency_table(ins, baseline, scale),
        Heading(2, "Ranking stability"),
        Para("Kendall's tau-b between the encoder rankings (by mean mIoU) of every pair of settings; 1 = the "
             "same order, −1 = reversed. Intervals: percentile bootstrap over training seeds."),
        *stability_blocks(ins, tau_image),
    ]
    return brief, sections


def per_seed_table(results: pd.DataFrame, scale: float) -> Table:
    rows = [[r["run_id"], plots.series_label(r["encoder"], r["regime"]), r["train_dataset"],
             r["eval_dataset"], plots.fraction_label(r["fraction"]), str(r["seed"]),
             *[_f(r[m], scale) for m in aggregate.METRIC_COLUMNS],
             _f(r["epochs_to_converge"]), _f(r["train_time_s"], 1, 0), _f(r["infer_ms_per_image"], 1, 2),
             _f(r["gflops"], 1, 2), *_run_convergence_cells(r)] for _, r in results.iterrows()]
    return Table(["run", "encoder (regime)", "train", "eval", "fraction", "seed", "mIoU", "mAcc", "aAcc",
                  "fwIoU", "epochs to converge", "train time (s)", "ms / image", "GFLOPs", "iterations",
                  "converged"], rows)


def _run_convergence_cells(r: pd.Series) -> list[str]:
    """``iterations trained / cap`` and ``yes`` / ``no †`` / ``not recorded †`` for one run."""
    iters = DASH if _isnan(r.get("iters_trained")) else f"{_int(r['iters_trained'])} / {_int(r.get('max_iters'))}"
    conv = r.get("converged")
    return [iters, "yes" if conv is True else (f"no {DAGGER}" if conv is False else f"not recorded {DAGGER}")]


def _identity_cells(r: pd.Series) -> list[str]:
    label = DASH if _isnan(r.get("encoder")) else plots.series_label(r["encoder"], r["regime"])
    frac = DASH if _isnan(r.get("fraction")) else plots.fraction_label(r["fraction"])
    return [str(r["run_id"]), label, "" if _isnan(r.get("train_dataset")) else str(r["train_dataset"]), frac,
            _int(r.get("seed"))]


def _triple(values: list[float] | None) -> str | None:
    return None if values is None else "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _budget_words(r) -> str:
    if r.budget == "converge":
        return f"until converged, at most {r.max_iters} iterations"
    return f"{r.max_iters} iterations" if r.budget == "iters" else f"{r.max_epochs} epochs"


def _convergence_protocol(results: pd.DataFrame) -> str:
    """The convergence criterion in one sentence, with how many runs met it."""
    runs = results.drop_duplicates("run_id")
    conv = (runs["converged"] if "converged" in runs else pd.Series(pd.NA, index=runs.index)).astype("boolean")
    criteria = _distinct(c for c in runs.get("criterion", pd.Series(dtype=str)) if isinstance(c, str) and c)
    return (f"Convergence: judged by the engine's criterion on the dev-split curve, which also stops runs on the "
            f"converge budget (settings: {criteria}); "
            f"{int(conv.fillna(False).sum())} of {len(runs)} runs converged, "
            f"{int((~conv.fillna(True)).sum())} did not, {int(conv.isna().sum())} did not record it. "
            "Epochs to converge = the optimiser step where the criterion fired / steps per epoch, shown only "
            f"for runs that converged; cells with an unconverged seed are marked {DAGGER}.")


def protocol_blocks(protocol: pd.DataFrame, results: pd.DataFrame, n_boot: int) -> list[Block]:
    if protocol.empty:
        return [Para("No finished run to read the protocol from.")]
    p = protocol
    evals = _distinct(f"mode={r.eval_mode}, crop={r.eval_crop}, stride={r.eval_stride}, flip={r.eval_flip}, "
                      f"scales={r.eval_scales}, eval short side={r.eval_size}, split={r.eval_split}"
                      for r in p.itertuples())
    budget = []
    for f, g in p.groupby("fraction", sort=True):
        kinds = _distinct(_budget_words(r) for r in g.itertuples())
        budget.append(f"{plots.fraction_label(f)}: {kinds}")
    n_seeds = results.groupby(["encoder", "regime", "train_dataset", "eval_dataset", "fraction"]).size()
    items = [
        f"Evaluation: {evals}. Cross-dataset scores use the classes both taxonomies share (listed in the "
        "eval json of each run).",
        "Labelled fractions: nested subsets of the training split (each fraction takes a prefix of one "
        f"permutation drawn with subset_seed {_distinct(sorted(p['subset_seed'].unique()))}), the same "
        "images "
        "for every encoder. Training budget per fraction: " + "; ".join(budget) + ".",
        f"Seeds: {_distinct(sorted(p['seed'].unique()))} "
        f"({_distinct(sorted(set(int(n) for n in n_seeds)))} finished per cell).",
        f"Recipe: batch {_distinct(p['batch_size'])}, crop {_distinct(p['crop_size'])}, "
        f"lr {_distinct(p['lr'])}, weight decay {_distinct(p['weight_decay'])}, "
        f"encoder lr multiplier {_distinct(p['encoder_lr_mult'])}, "
        f"layer decay {_distinct(p['layer_decay'])}.",
        _convergence_protocol(results),
        "Statistics: mean ± sample std (ddof = 1) over seeds; 95% Student-t intervals; gains are paired on "
        "(seed, subset_seed) with a two-sided paired t-test, plus a Wilcoxon signed-rank test from "
        f"{stats.MIN_WILCOXON} pairs; the per-image bootstrap ({n_boot} resamples of the evaluation images, "
        "per-image mIoU averaged over the paired seeds) measures the dependence on the evaluated images.",
    ]
    enc_rows = []
    for (enc, regime), g in p.groupby(["encoder", "regime"], sort=True):
        sel = results[(results["encoder"] == enc) & (results["regime"] == regime)]
        mean = _distinct(_triple(m) for m in g["norm_mean"])
        std = _distinct(_triple(s) for s in g["norm_std"])
        source = _distinct(v for v in g["norm_source"] if v is not None)
        enc_rows.append([plots.series_label(enc, regime), _distinct(g["encoder_name"]),
                         _distinct("entry default" if w is None else w for w in g["weights"]),
                         "not recorded" if mean == DASH else mean, "not recorded" if std == DASH else std,
                         "" if source == DASH else source,
                         _distinct(_sci(v) for v in sel["params_total"]),
                         _distinct(_sci(v) for v in sel["params_trainable"])])
    return [Bullets(items), Heading(3, "Encoders"),
            Table(["encoder (regime)", "encoder", "weights", "normalisation mean", "normalisation std",
                   "normalisation read from", "params", "trainable params"], enc_rows)]


def build_blocks(study_dir: Path, meta: dict, results: pd.DataFrame, summary: pd.DataFrame,
                 figures: list[Image], failures: pd.DataFrame, incomplete: pd.DataFrame,
                 protocol: pd.DataFrame, n_boot: int, insights: Insights | None = None,
                 tau_image: Image | None = None, compute: pd.DataFrame | None = None) -> list[Block]:
    baseline = meta["baseline"]
    scale = plots.percent_scale(results["miou"]) if not results.empty else 100.0
    unit = "mIoU in %" if scale == 100 else "mIoU"
    blocks: list[Block] = [Heading(1, f"Encoder study: {meta['name']}")]
    n_runs = results["run_id"].nunique() if not results.empty else 0
    blocks.append(Para(f"Study directory: {study_dir.resolve().name} (paths below are relative to it). "
                       f"{n_runs} finished runs, {len(failures)} failed, {len(incomplete)} incomplete."))
    brief, insight_sections = (insight_blocks(insights, summary, baseline, scale, tau_image)
                               if insights is not None and tau_image is not None else ([], []))
    blocks.extend(brief)
    blocks.append(Heading(2, "The question"))
    blocks.append(Para(f"How much does each pretrained encoder improve Mask2Former semantic segmentation "
                       f"over the {baseline} baseline (the same architecture with a randomly initialised "
                       "encoder, fine-tuned), at each fraction of labelled training images? The segmentation "
                       "head, neck and recipe are fixed; only the encoder and its training regime change."))
    if results.empty:
        blocks.append(Para("No run has finished yet: there is nothing to summarise."))
    else:
        if not ((results["encoder"] == baseline) & (results["regime"] == "finetune")).any():
            blocks.append(Para(f"No finished {baseline} (finetune) run: gains cannot be computed."))
        blocks.append(Heading(2, f"Headline: {unit}, mean ± std over seeds"))
        blocks.append(Para("Best mean per column in bold."))
        blocks.extend(headline_tables(summary, baseline, scale))
        blocks.extend(_unconverged_note(summary))
        blocks.append(Heading(2, f"Gain over {baseline} (finetune)"))
        blocks.append(Para("Gain = encoder − baseline on runs paired by seed and subset seed, in mIoU "
                           "points; p-values two-sided."))
        blocks.append(gain_table(summary, baseline, scale))
        blocks.extend(_unconverged_note(summary, "a gain is marked when the cell or its baseline did not converge"))
        blocks.extend(insight_sections)
    blocks.append(Heading(2, "Plots"))
    blocks.extend(figures)
    blocks.append(Heading(2, "Per-seed results"))
    blocks.append(per_seed_table(results, scale) if not results.empty else Para("None."))
    blocks.append(Heading(2, "Failed and incomplete runs"))
    if failures.empty and incomplete.empty:
        blocks.append(Para("None: every run finished."))
    if not failures.empty:
        blocks.append(Heading(3, f"Failed ({len(failures)})"))
        blocks.append(Table(["run", "encoder (regime)", "train", "fraction", "seed", "error"],
                            [[*_identity_cells(r), str(r["error"])] for _, r in failures.iterrows()]))
    if not incomplete.empty:
        blocks.append(Heading(3, f"Incomplete ({len(incomplete)})"))
        blocks.append(Table(["run", "encoder (regime)", "train", "fraction", "seed", "state", "reason"],
                            [[*_identity_cells(r), str(r["state"]), str(r["reason"])]
                             for _, r in incomplete.iterrows()]))
    blocks.extend(compute_blocks(compute))
    blocks.append(Heading(2, "Protocol"))
    blocks.extend(protocol_blocks(protocol, results, n_boot))
    blocks.append(Heading(2, "Files"))
    blocks.append(Para("results.csv / results.parquet (one row per run x eval dataset), per_class.csv, "
                       "summary.csv (statistics per cell), label_efficiency.csv, ranking_settings.csv, "
                       "ranking_tau.csv, plots/*.png, report.md."))
    return blocks


def _unconverged_note(summary: pd.DataFrame, extra: str = "") -> list[Block]:
    """The footnote under a table with marked cells; under the headline, the all-clear when there are none."""
    if not any(_unconverged(r) for _, r in summary.iterrows()):
        return [] if extra else [Para("Every cell converged on every seed by the convergence criterion.")]
    return [Para(UNCONVERGED_NOTE + (f" Here {extra}." if extra else ""))]


def _hours(v: float) -> str:
    return f"{v:.1f}" if v >= 1 else f"{v:.2g}"


def compute_blocks(compute: pd.DataFrame | None) -> list[Block]:
    """What the study used (iterations, wall time, GPU-hours) against what the fixed schedule would have cost.

    ``compute`` is ``plan.compute_used``: the fixed schedule of a converge run is its ``max_iters`` cap at the
    run's own measured seconds per iteration.
    """
    if compute is None or compute.empty:
        return []
    rows = []
    for (train, fraction), g in compute.groupby(["train_dataset", "fraction"], sort=True):
        rows.append(_compute_row(f"{train} {plots.fraction_label(fraction)}", g))
    rows.append(_compute_row("all runs", compute))
    conv = compute[compute["budget"] == "converge"]
    text = (f"{len(conv)} of {len(compute)} runs trained on the converge budget; each stopped where its dev "
            "curve converged or at max_iters. The fixed schedule is max_iters for every converge run, costed at "
            "the run's own measured seconds per iteration; a run on a fixed budget used its fixed schedule. "
            "Validation and the final evaluations are not counted.")
    return [Heading(2, "Compute used vs the fixed schedule"), Para(text),
            Table(["cells", "runs", "iterations used", "fixed-schedule iterations", "used / fixed",
                   "train wall time used (h)", "GPU-hours used", "GPU-hours on the fixed schedule"], rows)]


def _compute_row(name: str, g: pd.DataFrame) -> list[str]:
    used, fixed = float(g["iters_trained"].sum()), float(g["fixed_iters"].sum())
    return [name, str(len(g)), f"{used:.0f}", f"{fixed:.0f}", f"{used / fixed:.0%}" if fixed else DASH,
            _hours(g["train_wall_s"].sum() / 3600.0), _hours(g["gpu_hours"].sum()),
            _hours(g["fixed_gpu_hours"].sum())]


# ----------------------------------------------------------------------------------------- renderers
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;line-height:1.45;padding:0 1em;overflow-wrap:anywhere}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #bbb;margin-top:2em}
table{border-collapse:collapse;margin:0.6em 0 1.2em;font-size:0.9em}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:right;overflow-wrap:normal}th{background:#f0f0f0}
table{max-width:100%}td.wrap{overflow-wrap:anywhere}
td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}img{max-width:100%;border:1px solid #ddd}figcaption{color:#555;font-size:0.9em}
.skipped{color:#a33}
"""


def relative_paths(blocks: list[Block], study_dir: Path) -> list[Block]:
    """The same blocks with the study directory's absolute path dropped from their text (error lines and
    protocol entries quote files), so a report reads the same wherever the study was run or moved to."""
    prefixes = sorted({str(study_dir.resolve()) + "/", str(study_dir.absolute()) + "/"}, key=len, reverse=True)

    def rel(text: str) -> str:
        for prefix in prefixes:
            text = text.replace(prefix, "")
        return text

    out: list[Block] = []
    for b in blocks:
        if isinstance(b, Para):
            b = Para(rel(b.text))
        elif isinstance(b, Bullets):
            b = Bullets([rel(i) for i in b.items])
        elif isinstance(b, Table):
            b = Table([rel(h) for h in b.header], [[rel(str(c)) for c in row] for row in b.rows], b.bold)
        out.append(b)
    return out


def _html_table(t: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = []
    for i, row in enumerate(t.rows):
        cells = []
        for j, cell in enumerate(row):
            text = html.escape(str(cell))
            # run ids and long messages may break anywhere, so a wide table fits the page; numbers never do
            td = "<td>" if j and len(text) < 40 else '<td class="wrap">'
            cells.append(f"{td}<b>{text}</b></td>" if (i, j) in t.bold else f"{td}{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def render_html(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            out.append(f"<p>{html.escape(b.text)}</p>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            out.append(_html_table(b))
        elif isinstance(b, Image):
            out.append(f"<h3>{html.escape(b.title)}</h3>")
            if isinstance(b.result, Path):
                data = base64.b64encode(b.result.read_bytes()).decode("ascii")
                out.append(f'<figure><img alt="{html.escape(b.title)}" src="data:image/png;base64,{data}">'
                           f"<figcaption>{html.escape(b.caption)}</figcaption></figure>")
            else:
                out.append(f'<p class="skipped">Skipped: {html.escape(b.result.reason)}.</p>')
    title = next((b.text for b in blocks if isinstance(b, Heading)), "encseg study report")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(out) + "\n</body></html>\n")


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block], base: Path) -> str:
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}\n")
        elif isinstance(b, Para):
            out.append(f"{b.text}\n")
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {i}" for i in b.items) + "\n")
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(_md_cell(h) for h in b.header) + " |",
                     "|" + "|".join("---" for _ in b.header) + "|"]
            for i, row in enumerate(b.rows):
                cells = [f"**{_md_cell(c)}**" if (i, j) in b.bold else _md_cell(c) for j, c in enumerate(row)]
                lines.append("| " + " | ".join(cells) + " |")
            out.append("\n".join(lines) + "\n")
        elif isinstance(b, Image):
            out.append(f"### {b.title}\n")
            if isinstance(b.result, Path):
                out.append(f"![{b.title}]({b.result.relative_to(base).as_posix()})\n\n{b.caption}\n")
            else:
                out.append(f"Skipped: {b.result.reason}.\n")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- main
def _write_tables(study_dir: Path, results: pd.DataFrame, per_class: pd.DataFrame,
                  summary: pd.DataFrame) -> None:
    atomic_write_text(study_dir / "results.csv", results.to_csv(index=False))
    buf = io.BytesIO()
    results.to_parquet(buf, index=False)
    atomic_write_bytes(study_dir / "results.parquet", buf.getvalue())
    atomic_write_text(study_dir / "per_class.csv", per_class.to_csv(index=False))
    atomic_write_text(study_dir / "summary.csv", summary.to_csv(index=False))


def _write_insight_tables(study_dir: Path, ins: Insights | None) -> None:
    if ins is None:
        return
    atomic_write_text(study_dir / "label_efficiency.csv", ins.efficiency.to_csv(index=False))
    atomic_write_text(study_dir / "ranking_settings.csv", ins.stability.settings.to_csv(index=False))
    atomic_write_text(study_dir / "ranking_tau.csv", ins.stability.pairs.to_csv(index=False))


def _figures(study_dir: Path, results, summary, per_class, histories) -> list[Image]:
    d = study_dir / "plots"
    best = plots.best_runs(results) if not results.empty else results
    confusions = aggregate.collect_confusions(study_dir, list(zip(best.get("run_id", []),
                                                                  best.get("eval_dataset", []), strict=True)))
    return [
        Image("mIoU vs labelled fraction", plots.plot_miou_vs_fraction(summary, d / "miou_vs_fraction.png"),
              "Mean over seeds; error bars = std; log x axis. Stars: where a series reaches the baseline's "
              "mIoU at 100% (dotted line), horizontal bar = 95% seed-bootstrap interval; a left triangle: "
              "reached already at the smallest fraction."),
        Image("Training loss", plots.plot_loss_curves(histories, d / "loss_curves.png"),
              "Mean over seeds; band = std."),
        Image("Epochs to converge", plots.plot_epochs_to_converge(summary, d / "epochs_to_converge.png"),
              "Mean over seeds; error bars = std; in-domain validation."),
        Image("mIoU vs inference cost", plots.plot_efficiency(summary, d / "efficiency.png"),
              "Largest fraction, in-domain evaluation; time and GFLOPs as measured by the engine."),
        Image("Cross-dataset matrix", plots.plot_cross_dataset(summary, d / "cross_dataset.png"),
              "Mean mIoU over seeds; cross-dataset cells are scored on the shared classes."),
        Image("Per-class IoU", plots.plot_per_class_iou(per_class, d / "per_class_iou.png"),
              "Mean over seeds; largest fraction, in-domain evaluation."),
        Image("Confusion matrices of the best runs", plots.plot_confusions(results, confusions,
                                                                           d / "confusion_best.png"),
              "Row-normalised (each ground-truth class sums to 1); the best in-domain run per encoder "
              "and regime."),
    ]


def write_report(study_dir: str | Path, n_boot: int = 2000, seed: int = 0) -> Path:
    """Aggregate the study's run directories and write every report file; returns the path of report.html."""
    study_dir = Path(study_dir)
    results = aggregate.collect_results(study_dir)  # raises FileNotFoundError for a missing study / runs dir
    meta = read_study_meta(study_dir)
    per_class = aggregate.collect_per_class(study_dir)
    per_image = aggregate.collect_per_image(study_dir)
    histories = aggregate.collect_histories(study_dir)
    failures = aggregate.collect_failures(study_dir)
    incomplete = aggregate.collect_incomplete(study_dir)
    protocol = aggregate.collect_protocol(study_dir)
    summary = stats.summarize(results, baseline=meta["baseline"], per_image=per_image, n_boot=n_boot,
                              seed=seed)
    summary = stats.add_convergence(summary, results, baseline=meta["baseline"])
    summary, insights = compute_insights(results, summary, meta["baseline"], n_boot, seed)
    _write_tables(study_dir, results, per_class, summary)
    _write_insight_tables(study_dir, insights)
    figures = _figures(study_dir, results, summary, per_class, histories)
    tau_image = None if insights is None else Image(
        "Ranking stability", plots.plot_rank_agreement(insights.stability.settings, insights.stability.pairs,
                                                        study_dir / "plots" / "rank_tau.png"),
        "Kendall's tau-b between the encoder rankings of two settings; '–' where fewer than 2 encoders are shared.")
    blocks = build_blocks(study_dir, meta, results, summary, figures, failures, incomplete, protocol, n_boot,
                          insights, tau_image, compute=plan.compute_used(study_dir))
    blocks = relative_paths(blocks, study_dir)
    atomic_write_text(study_dir / "report.md", render_markdown(blocks, study_dir))
    return atomic_write_text(study_dir / "report.html", render_html(blocks))


def report_cli(study_dir: str | Path) -> int:
    """``encseg study report DIR``: write the report and print the path of report.html."""
    print(write_report(study_dir))
    return 0
