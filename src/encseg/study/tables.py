"""Numbers into report tables: formatting rules and one function per table of the study report.

Every function here returns ``render`` blocks (mostly ``Table``) built from the statistics frames
(``stats.summarize``, ``label_efficiency``, ``ranking``, ``aggregate``); none writes a file or a sentence of
prose (``study.brief`` holds the prose). Metrics are shown in percent (mIoU points) when the engine's values are
fractions in [0, 1]: ``scale`` is 100 then.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from encseg.study import aggregate, label_efficiency, plots
from encseg.study.insights import Insights
from encseg.study.render import Block, Heading, Table

DASH = "–"


# ------------------------------------------------------------------------------------------ numbers
def missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA


def num(v: Any, scale: float = 1.0, digits: int = 1, sign: bool = False) -> str:
    if missing(v):
        return DASH
    return f"{float(v) * scale:{'+' if sign else ''}.{digits}f}"


def mean_std(mean: Any, std: Any, scale: float) -> str:
    if missing(mean):
        return DASH
    return num(mean, scale) if missing(std) else f"{num(mean, scale)} ± {num(std, scale)}"


def interval(low: Any, high: Any, scale: float) -> str:
    if missing(low) or missing(high):
        return DASH
    return f"[{num(low, scale, sign=True)}, {num(high, scale, sign=True)}]"


def pvalue(p: Any, prefix: str = "") -> str:
    """``0.034`` / ``< 0.001``; with ``prefix="p"``: ``p = 0.034`` / ``p < 0.001``."""
    if missing(p):
        return DASH
    if p < 0.001:
        return f"{prefix} < 0.001".strip()
    return f"{prefix} = {p:.3f}" if prefix else f"{p:.3f}"


def integer(v: Any) -> str:
    return DASH if missing(v) else f"{int(v)}"


def sci(v: Any) -> str:
    if missing(v):
        return DASH
    v = float(v)
    return f"{v / 1e6:.2f}M" if abs(v) >= 1e5 else f"{v:g}"


def distinct(values) -> str:
    seen = []
    for v in values:
        text = DASH if missing(v) else str(v)
        if text not in seen:
            seen.append(text)
    return ", ".join(seen) if seen else DASH


def pct(f: float) -> str:
    return f"{f * 100:.3g}%"


def fraction_interval(low: float, high: float) -> str:
    """A label-efficiency interval; a side the study cannot bound says so instead of a number."""
    if missing(low) or missing(high):
        return "no interval (a cell has one seed and the study no prior)"
    if math.isinf(low):
        return "not reached in 97.5% of the resamples"
    if high == 0.0:
        return "at or below the smallest fraction in 97.5% of the resamples"
    lo = "no lower bound (below the smallest fraction)" if low == 0.0 else pct(low)
    hi = "no upper bound (not reached)" if math.isinf(high) else pct(high)
    return f"[{lo}, {hi}]"


# ------------------------------------------------------------------------------------- convergence
DAGGER = "†"


def unconverged(r: pd.Series | dict, baseline: bool = False) -> bool:
    """Whether a summary row (and, with ``baseline``, its baseline cell) has a seed that did not converge."""
    if not r.get("all_converged", False):
        return True
    return baseline and not r.get("baseline_all_converged", True)


def mark(text: str, r: pd.Series | dict, baseline: bool = False) -> str:
    return f"{text} {DAGGER}" if text != DASH and unconverged(r, baseline) else text


# ------------------------------------------------------------------------------------------ sections
def dataset_pairs(summary: pd.DataFrame) -> list[tuple[str, str]]:
    """(train, eval) dataset pairs, in-domain before cross-dataset."""
    pairs = summary[["train_dataset", "eval_dataset"]].drop_duplicates().itertuples(index=False)
    return sorted(((t, e) for t, e in pairs), key=lambda p: (p[0], p[0] != p[1], p[1]))


Series = tuple[str, str, str]  # (encoder, regime, head)


def ordered_series(df: pd.DataFrame, baseline: str) -> list[Series]:
    """The (encoder, regime, head) series of a summary frame, the baseline encoder first."""
    keys = df[["encoder", "regime", "head"]].drop_duplicates().itertuples(index=False)
    return sorted(((e, r, h) for e, r, h in keys), key=lambda k: (k[0] != baseline, k[0], k[1], k[2]))


def series_rows(df: pd.DataFrame, s: Series) -> pd.DataFrame:
    return df[(df["encoder"] == s[0]) & (df["regime"] == s[1]) & (df["head"] == s[2])]


def series_text(s: Series, summary: pd.DataFrame) -> str:
    """``encoder (regime)``; the head is named when the study trains several."""
    several = summary["head"].nunique(dropna=False) > 1
    return plots.series_label(s[0], s[1], s[2] if several else None)


def pair_title(train: str, ev: str) -> str:
    return f"train {train} → eval {ev}" + ("" if train == ev else " (cross-dataset)")


def headline_tables(summary: pd.DataFrame, baseline: str, scale: float) -> list[Block]:
    """Per (train, eval) pair: rows = encoder (regime), columns = fractions, mean ± std mIoU; best in bold."""
    blocks: list[Block] = []
    for train, ev in dataset_pairs(summary):
        g = summary[(summary["train_dataset"] == train) & (summary["eval_dataset"] == ev)]
        fracs = sorted(g["fraction"].unique())
        labels = ordered_series(g, baseline)
        rows, means = [], []
        for key in labels:
            s = series_rows(g, key).set_index("fraction")
            cells, row_means = [], []
            for f in fracs:
                if f in s.index:
                    cells.append(mark(mean_std(s.at[f, "miou_mean"], s.at[f, "miou_std"], scale), s.loc[f]))
                    row_means.append(s.at[f, "miou_mean"])
                else:
                    cells.append(DASH)
                    row_means.append(math.nan)
            seeds = distinct(int(n) for n in s["n_seeds"])
            rows.append([series_text(key, summary), *cells, seeds])
            means.append(row_means)
        bold = set()
        for j in range(len(fracs)):
            col = [m[j] for m in means if not missing(m[j])]
            if col:
                best = max(col)
                bold |= {(i, j + 1) for i, m in enumerate(means) if not missing(m[j]) and m[j] == best}
        blocks.append(Heading(3, pair_title(train, ev)))
        header = ["encoder (regime)", *[plots.fraction_label(f) for f in fracs], "seeds"]
        blocks.append(Table(header, rows, bold))
    return blocks


def gain_table(summary: pd.DataFrame, baseline: str, scale: float) -> Table:
    rows = []
    for train, ev in dataset_pairs(summary):
        g = summary[(summary["train_dataset"] == train) & (summary["eval_dataset"] == ev)
                    & (summary["gain_note"] != "baseline")]
        for key in ordered_series(g, baseline):
            for _, r in series_rows(g, key).sort_values("fraction").iterrows():
                rows.append([
                    f"{train} → {ev}", series_text(key, summary), plots.fraction_label(r["fraction"]),
                    integer(r["gain_n"]), mark(num(r["gain_miou"], scale, sign=True), r, baseline=True),
                    interval(r["gain_ci_low"], r["gain_ci_high"], scale), pvalue(r["gain_p"]),
                    pvalue(r["gain_p_wilcoxon"]), interval(r["gain_boot_low"], r["gain_boot_high"], scale),
                    mean_std(r["baseline_miou_mean"], r["baseline_miou_std"], scale),
                    "; ".join(n for n in (r["gain_note"], r.get("gain_boot_note")) if not missing(n) and n),
                ])
    return Table(["train → eval", "encoder (regime)", "fraction", "paired seeds", "gain (mIoU points)",
                  "95% CI (training seeds)", "p (moderated t)", "p (Wilcoxon)", "95% CI (evaluation images)",
                  "baseline mIoU", "note"], rows)


def efficiency_table(ins: Insights, scale: float) -> Table:
    rows = []
    for _, r in ins.efficiency.iterrows():
        fraction = DASH if missing(r["fraction"]) else pct(r["fraction"])
        factor = DASH if missing(r["factor"]) else f"{r['factor']:.1f}x"
        if r["status"] == label_efficiency.BY_SMALLEST:
            fraction, factor = f"≤ {fraction}", f"≥ {factor}"
        rows.append([f"{r['train_dataset']} → {r['eval_dataset']}",
                     label_efficiency.series_name((r["encoder"], r["regime"], *([] if missing(r["head"])
                                                                                else [r["head"]]))),
                     r["reference"], num(r["target_miou"], scale), r["status"].replace("_", " "), fraction,
                     fraction_interval(r["fraction_low"], r["fraction_high"]), factor, integer(r["n_seeds"]),
                     r["rests_on_unconverged"]])
    return Table(["train → eval", "encoder (regime)", "reference", "reference mIoU at 100%", "status",
                  "fraction needed", "95% interval (moderated t, parametric bootstrap)", "fewer labels", "seeds",
                  "rests on unconverged runs"], rows)


def per_seed_table(results: pd.DataFrame, scale: float) -> Table:
    several = "head" in results and results["head"].nunique(dropna=False) > 1
    rows = [[r["run_id"], plots.series_label(r["encoder"], r["regime"], r["head"] if several else None),
             r["train_dataset"],
             r["eval_dataset"], plots.fraction_label(r["fraction"]), str(r["seed"]),
             *[num(r[m], scale) for m in aggregate.METRIC_COLUMNS],
             num(r["epochs_to_converge"]), num(r["train_time_s"], 1, 0), num(r["infer_ms_per_image"], 1, 2),
             latency_setting(r), num(r["gflops"], 1, 2), *_run_convergence_cells(r)] for _, r in results.iterrows()]
    return Table(["run", "encoder (regime)", "train", "eval", "fraction", "seed", "mIoU", "mAcc", "aAcc",
                  "fwIoU", "epochs to converge", "train time (s)", "ms / image", "timed on", "GFLOPs", "iterations",
                  "converged"], rows)


def latency_setting(r) -> str:
    """Where a latency was measured: ``cpu, 32-true``, ``cuda, bf16-mixed`` (the run's own precision)."""
    device, prec = r.get("latency_device"), r.get("latency_precision")
    if missing(device) and missing(prec):
        return DASH
    return ", ".join(str(x) for x in (device, prec) if not missing(x))


def _run_convergence_cells(r: pd.Series) -> list[str]:
    """``iterations trained / cap`` and ``yes`` / ``no †`` / ``not recorded †`` for one run."""
    iters = DASH if missing(r.get("iters_trained")) else f"{integer(r['iters_trained'])} / {integer(r.get('max_iters'))}"
    conv = r.get("converged")
    return [iters, "yes" if conv is True else (f"no {DAGGER}" if conv is False else f"not recorded {DAGGER}")]


def identity_cells(r: pd.Series) -> list[str]:
    label = DASH if missing(r.get("encoder")) else plots.series_label(r["encoder"], r["regime"])
    frac = DASH if missing(r.get("fraction")) else plots.fraction_label(r["fraction"])
    return [str(r["run_id"]), label, "" if missing(r.get("train_dataset")) else str(r["train_dataset"]), frac,
            integer(r.get("seed"))]


def failure_tables(failures: pd.DataFrame, incomplete: pd.DataFrame) -> list[Block]:
    """The failed and the incomplete runs, each under its own heading (nothing for an empty frame)."""
    blocks: list[Block] = []
    if not failures.empty:
        blocks.append(Heading(3, f"Failed ({len(failures)})"))
        blocks.append(Table(["run", "encoder (regime)", "train", "fraction", "seed", "error"],
                            [[*identity_cells(r), str(r["error"])] for _, r in failures.iterrows()]))
    if not incomplete.empty:
        blocks.append(Heading(3, f"Incomplete ({len(incomplete)})"))
        blocks.append(Table(["run", "encoder (regime)", "train", "fraction", "seed", "state", "reason"],
                            [[*identity_cells(r), str(r["state"]), str(r["reason"])]
                             for _, r in incomplete.iterrows()]))
    return blocks


def ranking_settings_table(ins: Insights) -> Table:
    return Table(["setting", "ranking (best first)", "encoders", "training s per run", "runs"],
                 [[r["setting"], r["ranking"] or DASH, str(r["n_encoders"]), num(r["cost_s"], 1, 0),
                   str(r["n_runs"])] for _, r in ins.stability.settings.iterrows()])


def ranking_tau_table(ins: Insights) -> Table | None:
    """Kendall's tau of every pair of settings where it is defined; None when it is defined for none."""
    defined = ins.stability.pairs[ins.stability.pairs["tau"].notna()]
    rows = [[r["setting_a"], r["setting_b"], str(r["n_encoders"]), num(r["tau"], 1, 2),
             DASH if missing(r["tau_low"]) else f"[{r['tau_low']:.2f}, {r['tau_high']:.2f}]",
             str(r["n_open"])] for _, r in defined.iterrows()]
    if not rows:
        return None
    return Table(["setting A", "setting B", "common encoders", "Kendall's tau-b (tie-aware orders)",
                  "95% interval (pairwise tests)", "pairs left open by ties"], rows)


def encoder_table(protocol: pd.DataFrame, results: pd.DataFrame) -> Table:
    """Per encoder and regime: what was loaded, its normalisation, and its parameter counts."""
    rows = []
    for (enc, regime), g in protocol.groupby(["encoder", "regime"], sort=True):
        sel = results[(results["encoder"] == enc) & (results["regime"] == regime)]
        mean = distinct(_triple(m) for m in g["norm_mean"])
        std = distinct(_triple(s) for s in g["norm_std"])
        source = distinct(v for v in g["norm_source"] if v is not None)
        rows.append([plots.series_label(enc, regime), distinct(g["architecture"]),
                     distinct("entry default" if w is None else w for w in g["weights"]),
                     "not recorded" if mean == DASH else mean, "not recorded" if std == DASH else std,
                     "" if source == DASH else source,
                     distinct(sci(v) for v in sel["params_total"]),
                     distinct(sci(v) for v in sel["params_trainable"])])
    return Table(["encoder (regime)", "architecture", "weights", "normalisation mean", "normalisation std",
                  "normalisation read from", "params", "trainable params"], rows)


CRITERION_OUTCOMES = ("fired_at", "anneal_end", "best_dev_miou", "best_dev_step", "stopped_by")  # per run


def criterion_table(results: pd.DataFrame) -> Table | None:
    """The convergence criterion's settings (one row per distinct setting) with how its runs stopped.

    ``results["criterion"]`` is each run's criterion record as compact JSON; what the criterion found in a run
    (``CRITERION_OUTCOMES``) is a result, not a setting, and stays out of the columns.
    """
    runs = results.drop_duplicates("run_id") if "run_id" in results else results
    records = [json.loads(c) for c in runs.get("criterion", pd.Series(dtype=str)) if isinstance(c, str) and c]
    if not records:
        return None
    keys = sorted({k for r in records for k in r if k not in CRITERION_OUTCOMES})
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(tuple(str(r.get(k, DASH)) for k in keys), []).append(r)
    rows = []
    for settings, members in groups.items():
        stopped = pd.Series([m.get("stopped_by", "not recorded") for m in members]).value_counts()
        rows.append([*settings, str(len(members)), ", ".join(f"{k}: {v}" for k, v in stopped.items())])
    return Table([*keys, "runs", "stopped by"], rows)


def compute_table(compute: pd.DataFrame) -> Table:
    """``aggregate.compute_used`` per (train dataset, fraction) and over all runs."""
    rows = [_compute_row(f"{train} {plots.fraction_label(fraction)}", g)
            for (train, fraction), g in compute.groupby(["train_dataset", "fraction"], sort=True)]
    rows.append(_compute_row("all runs", compute))
    return Table(["cells", "runs", "iterations used", "fixed-schedule iterations", "used / fixed",
                  "train wall time used, incl. validation (h)", "GPU-hours used", "GPU-hours on the fixed schedule"], rows)


def _triple(values: list[float] | None) -> str | None:
    return None if values is None else "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _hours(v: float) -> str:
    return f"{v:.1f}" if v >= 1 else f"{v:.2g}"


def _compute_row(name: str, g: pd.DataFrame) -> list[str]:
    used, fixed = float(g["iters_trained"].sum()), float(g["fixed_iters"].sum())
    return [name, str(len(g)), f"{used:.0f}", f"{fixed:.0f}", f"{used / fixed:.0%}" if fixed else DASH,
            _hours(g["train_wall_s"].sum() / 3600.0), _hours(g["gpu_hours"].sum()),
            _hours(g["fixed_gpu_hours"].sum())]
