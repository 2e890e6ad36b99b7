"""Study plots (PNG), drawn on ``matplotlib.figure.Figure`` objects (Agg; no pyplot, no global state).

Every ``plot_*`` function takes tables from ``aggregate``/``stats`` and an output path, and returns the path
it wrote, or a ``Skip`` (falsy) holding the reason when the tables hold nothing to draw; the reason is also
logged, and the report lists it. Files are written atomically. A series is one (encoder, regime) pair,
labelled ``encoder (regime)`` with the same colour in every plot. Metrics in [0, 1] are drawn as percent.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from encseg.atomic import atomic_save_fig

log = logging.getLogger(__name__)

DPI = 110


@dataclass(frozen=True)
class Skip:
    """A plot that was not drawn, and why."""

    plot: str
    reason: str

    def __bool__(self) -> bool:
        return False


def _skip(out: str | Path, reason: str) -> Skip:
    name = Path(out).name
    log.warning("plot %s skipped: %s", name, reason)
    return Skip(name, reason)


def _save(fig: Figure, out: str | Path) -> Path:
    fig.tight_layout()
    return atomic_save_fig(Path(out), fig, dpi=DPI)


def percent_scale(values) -> float:
    """100 when the finite values all lie in [0, 1] (fractions, drawn as percent), else 1."""
    x = np.asarray(pd.to_numeric(pd.Series(values), errors="coerce"), dtype=float)
    x = x[np.isfinite(x)]
    return 100.0 if x.size == 0 or (x.min() >= 0.0 and x.max() <= 1.0) else 1.0


def series_label(encoder: str, regime: str, head: str | None = None) -> str:
    """``encoder (regime)``, or ``encoder (regime, <head> head)`` where a study trains several heads."""
    return f"{encoder} ({regime}" + (f", {head} head)" if head else ")")


def fraction_label(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def _labels(df: pd.DataFrame) -> pd.Series:
    if "head" in df and df["head"].nunique(dropna=False) > 1:
        return df["encoder"].astype(str) + " (" + df["regime"].astype(str) + ", " + df["head"].astype(str) + " head)"
    return df["encoder"].astype(str) + " (" + df["regime"].astype(str) + ")"


def _colours(labels) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {lab: cmap(i % 10) for i, lab in enumerate(sorted(set(labels)))}


def _grid(n: int, width: float = 4.6, height: float = 3.6, max_cols: int = 3) -> tuple[Figure, list]:
    cols = min(max_cols, max(1, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(width * cols, height * rows))
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def _in_domain(df: pd.DataFrame) -> pd.DataFrame:
    """Rows scored on the training dataset; all rows when the study has no such evaluation."""
    own = df[~df["cross"].astype(bool)] if "cross" in df else df[df["eval_dataset"] == df["train_dataset"]]
    return own if not own.empty else df


def _has(df: pd.DataFrame | None, cols: list[str]) -> str | None:
    if df is None or df.empty:
        return "no finished runs"
    missing = [c for c in cols if c not in df.columns]
    if missing:
        return f"the table lacks the columns {missing}"
    return None


# -------------------------------------------------------------------------------------------- plots
def plot_miou_vs_fraction(summary: pd.DataFrame, out: str | Path) -> Path | Skip:
    """mIoU (mean over seeds, error bars = std) against the labelled fraction, log x; panel per train/eval."""
    cols = ["encoder", "regime", "train_dataset", "eval_dataset", "fraction", "miou_mean", "miou_std"]
    if why := _has(summary, cols):
        return _skip(out, why)
    if summary["miou_mean"].isna().all():
        return _skip(out, "no mIoU values")
    scale = percent_scale(summary["miou_mean"])
    df = summary.assign(label=_labels(summary))
    colours = _colours(df["label"])
    panels = list(df.groupby(["train_dataset", "eval_dataset"], sort=True))
    fig, axes = _grid(len(panels))
    for ax, ((train_ds, eval_ds), g) in zip(axes, panels, strict=True):
        for label, s in g.groupby("label", sort=True):
            s = s.sort_values("fraction")
            ax.errorbar(s["fraction"], s["miou_mean"] * scale, yerr=s["miou_std"].fillna(0.0) * scale,
                        marker="o", capsize=3, label=label, color=colours[label])
            _hollow_unconverged(ax, s, "miou_mean", scale, colours[label])
        _efficiency_markers(ax, g, colours, scale)
        fracs = sorted(g["fraction"].unique())
        ax.set_xscale("log")
        ax.set_xticks(fracs, [fraction_label(f) for f in fracs])
        ax.minorticks_off()
        ax.set_xlabel("labelled fraction of the training set")
        ax.set_ylabel("mIoU (%)" if scale == 100 else "mIoU")
        ax.set_title(f"train {train_ds} -> eval {eval_ds}")
        ax.grid(alpha=0.3)
        _legend_with_unconverged(ax, g)
    return _save(fig, out)


def _efficiency_markers(ax, g: pd.DataFrame, colours: dict, scale: float) -> None:
    """Label efficiency against the baseline (``le_*`` columns of summary.csv), where the table has it.

    A star at the interpolated fraction where a series reaches the baseline's mIoU at 100% (a dotted line),
    with its bootstrap interval as a horizontal bar; a left triangle when the smallest fraction already
    reaches it. Series that never reach it get no marker.
    """
    if "le_status" not in g or "le_target_miou" not in g:
        return
    series = g.drop_duplicates("label")
    targets = series["le_target_miou"].dropna().unique()
    for t in targets:
        ax.axhline(t * scale, color="0.4", ls=":", lw=1)
    lo_f, hi_f = float(g["fraction"].min()), float(g["fraction"].max())
    for _, r in series.iterrows():
        if r["le_status"] not in ("reached", "by_smallest") or pd.isna(r["le_fraction"]):
            continue
        x, y = float(r["le_fraction"]), float(r["le_target_miou"]) * scale
        if r["le_status"] == "by_smallest":
            ax.plot([x], [y], marker="<", ms=11, color=colours[r["label"]], mec="black", ls="none", zorder=5)
            continue
        low = min(max(float(r["le_fraction_low"]), lo_f), x)
        high = max(min(float(r["le_fraction_high"]), hi_f), x)
        ax.errorbar([x], [y], xerr=[[x - low], [high - x]], marker="*", ms=13, color=colours[r["label"]],
                    mec="black", capsize=3, ls="none", zorder=5)


def plot_rank_agreement(settings: pd.DataFrame, pairs: pd.DataFrame, out: str | Path) -> Path | Skip:
    """Matrix of Kendall's tau between the encoder rankings of every two settings (``ranking`` tables).

    Settings that share at least 2 encoders with no other setting are left out.
    """
    if why := _has(settings, ["setting", "n_encoders"]):
        return _skip(out, why)
    if why := _has(pairs, ["setting_a", "setting_b", "tau"]):
        return _skip(out, "the study holds a single setting" if why == "no finished runs" else why)
    if pairs["tau"].isna().all():
        return _skip(out, "no two settings share 2 or more encoders")
    defined = pairs[pairs["tau"].notna()]
    shown = set(defined["setting_a"]) | set(defined["setting_b"])
    settings = settings[settings["setting"].isin(shown)]  # a setting no other can be compared with is noise
    names = list(settings["setting"])
    pos = {n: i for i, n in enumerate(names)}
    mat = np.full((len(names), len(names)), np.nan)
    for i, n_enc in enumerate(settings["n_encoders"]):
        mat[i, i] = 1.0 if n_enc >= 2 else np.nan
    for _, r in defined.iterrows():
        mat[pos[r["setting_a"]], pos[r["setting_b"]]] = mat[pos[r["setting_b"]], pos[r["setting_a"]]] = r["tau"]
    size = 0.55 * len(names) + 3.0
    fig = Figure(figsize=(size + 1.2, size))
    ax = fig.add_subplot(1, 1, 1)
    from matplotlib import colormaps

    cmap = colormaps["RdBu"].with_extremes(bad="0.85")
    im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=-1, vmax=1)
    if len(names) <= 30:
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, "–" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_title("Kendall's tau between encoder rankings")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, out)
def unconverged_mask(df: pd.DataFrame) -> pd.Series:
    """Rows (summary cells) with a seed that did not converge or did not record it; none without the column."""
    if "all_converged" not in df:
        return pd.Series(False, index=df.index)
    return ~df["all_converged"].fillna(False).astype(bool)


def _hollow_unconverged(ax, s: pd.DataFrame, col: str, scale: float, colour) -> None:
    """Redraw the markers of unconverged cells hollow (white fill) over the series' filled markers."""
    bad = s[unconverged_mask(s)]
    if not bad.empty:
        ax.plot(bad["fraction"], bad[col] * scale, linestyle="none", marker="o", markersize=8,
                markerfacecolor="white", markeredgecolor=colour, markeredgewidth=1.5, zorder=3)


def _legend_with_unconverged(ax, g: pd.DataFrame, bars: bool = False) -> None:
    """The series legend, plus an entry for the hollow markers (hatched bars) of unconverged cells."""
    handles, labels = ax.get_legend_handles_labels()
    if unconverged_mask(g).any():
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//") if bars else
                       Line2D([], [], linestyle="none", marker="o", markerfacecolor="white", markeredgecolor="black"))
        labels.append("hatched: k/n seeds converged" if bars else "hollow: not every seed converged")
    ax.legend(handles, labels, fontsize=8)


def plot_loss_curves(histories: pd.DataFrame, out: str | Path) -> Path | Skip:
    """Training loss by step, seed mean (band = std), a line per series; panel per dataset, fraction."""
    if why := _has(histories, ["encoder", "regime", "train_dataset", "fraction", "seed", "step", "loss"]):
        return _skip(out, why)
    df = histories[pd.to_numeric(histories["loss"], errors="coerce").notna()]
    if df.empty:
        return _skip(out, "history.csv has no training-loss rows")
    df = df.assign(label=_labels(df), loss=df["loss"].astype(float), step=df["step"].astype(float))
    colours = _colours(df["label"])
    panels = list(df.groupby(["train_dataset", "fraction"], sort=True))
    fig, axes = _grid(len(panels), max_cols=4)
    for ax, ((train_ds, fraction), g) in zip(axes, panels, strict=True):
        for label, s in g.groupby("label", sort=True):
            # seeds log the same steps; a step missing in one seed is averaged over the seeds that have it
            per_step = s.groupby("step")["loss"].agg(["mean", "std"]).sort_index()
            x = per_step.index.to_numpy()
            ax.plot(x, per_step["mean"], label=label, color=colours[label], lw=1.2)
            ax.fill_between(x, per_step["mean"] - per_step["std"].fillna(0), per_step["mean"]
                            + per_step["std"].fillna(0), color=colours[label], alpha=0.15, lw=0)
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title(f"{train_ds}, {fraction_label(fraction)} labels")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, out)


def plot_epochs_to_converge(summary: pd.DataFrame, out: str | Path) -> Path | Skip:
    """Bars of epochs to converge (mean over seeds, error = std) by fraction and series; panel per dataset."""
    cols = ["encoder", "regime", "train_dataset", "fraction", "epochs_to_converge_mean",
            "epochs_to_converge_std"]
    if why := _has(summary, cols):
        return _skip(out, why)
    df = _in_domain(summary)
    # epochs_to_converge is NaN for runs that did not converge (aggregate): only converged seeds are averaged,
    # and a cell where none converged keeps its place with a 0/n label instead of a bar
    if df["epochs_to_converge_mean"].isna().all():
        return _skip(out, "no run converged (epochs to converge are shown for converged runs only)")
    df = df[df["epochs_to_converge_mean"].notna() | unconverged_mask(df)]
    # a run property repeated for every eval dataset: keep one row per (series, dataset, fraction)
    df = df.drop_duplicates(["encoder", "regime", "train_dataset", "fraction"])
    df = df.assign(label=_labels(df))
    colours = _colours(df["label"])
    panels = list(df.groupby("train_dataset", sort=True))
    fig, axes = _grid(len(panels), width=5.5)
    for ax, (train_ds, g) in zip(axes, panels, strict=True):
        fracs = sorted(g["fraction"].unique())
        labels = sorted(g["label"].unique())
        width = 0.8 / len(labels)
        for i, label in enumerate(labels):
            s = g[g["label"] == label].set_index("fraction").reindex(fracs)
            x = np.arange(len(fracs)) + (i - (len(labels) - 1) / 2) * width
            bars = ax.bar(x, s["epochs_to_converge_mean"], width, yerr=s["epochs_to_converge_std"].fillna(0),
                          capsize=3, label=label, color=colours[label])
            _mark_partial_bars(ax, bars, s)
        ax.set_xticks(np.arange(len(fracs)), [fraction_label(f) for f in fracs])
        ax.set_xlabel("labelled fraction")
        ax.set_ylabel("epochs to converge (converged seeds)")
        ax.set_title(f"train {train_ds}")
        ax.grid(alpha=0.3, axis="y")
        _legend_with_unconverged(ax, g, bars=True)
    return _save(fig, out)


def _mark_partial_bars(ax, bars, s: pd.DataFrame) -> None:
    """Hatch, and label ``k/n``, the bars of cells where only some seeds converged (their mean is over k)."""
    if "n_converged" not in s:
        return
    for bar, (_, r) in zip(bars, s.iterrows(), strict=True):
        if pd.notna(r.get("n_converged")) and pd.notna(r.get("n_seeds")) and r["n_converged"] < r["n_seeds"]:
            colour = bar.get_facecolor()
            bar.set_facecolor("white")
            bar.set_edgecolor(colour)
            bar.set_hatch("//")
            height = 0.0 if math.isnan(bar.get_height()) else bar.get_height()
            ax.annotate(f"{int(r['n_converged'])}/{int(r['n_seeds'])}", (bar.get_x() + bar.get_width() / 2,
                        height), ha="center", va="bottom", fontsize=7, xytext=(0, 2), textcoords="offset points")


def plot_efficiency(summary: pd.DataFrame, out: str | Path) -> Path | Skip:
    """mIoU against inference ms/image and against GFLOPs, one labelled point per series and dataset.

    Uses the largest fraction of each train dataset and the in-domain evaluation.
    """
    cols = ["encoder", "regime", "train_dataset", "fraction", "miou_mean", "infer_ms_per_image_mean",
            "gflops_mean"]
    if why := _has(summary, cols):
        return _skip(out, why)
    df = _in_domain(summary)
    df = df[df["fraction"] == df.groupby("train_dataset")["fraction"].transform("max")]
    xs = [("infer_ms_per_image_mean", "inference ms / image"), ("gflops_mean", "GFLOPs / image")]
    if all(df[c].isna().all() for c, _ in xs):
        return _skip(out, "no run recorded inference time or GFLOPs")
    scale = percent_scale(df["miou_mean"])
    df = df.assign(label=_labels(df))
    colours = _colours(df["label"])
    fig, axes = _grid(2, width=5.2)
    several = df["train_dataset"].nunique() > 1
    for ax, (col, name) in zip(axes, xs, strict=True):
        pts = df[df[col].notna() & df["miou_mean"].notna()]
        if pts.empty:
            ax.text(0.5, 0.5, f"{name}: not measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        for _, r in pts.iterrows():
            ax.scatter(r[col], r["miou_mean"] * scale, color=colours[r["label"]], s=40)
            text = f"{r['label']} / {r['train_dataset']}" if several else r["label"]
            ax.annotate(text, (r[col], r["miou_mean"] * scale), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
        ax.set_xlabel(name)
        ax.set_ylabel("mIoU (%)" if scale == 100 else "mIoU")
        fracs = ", ".join(fraction_label(f) for f in sorted(pts["fraction"].unique()))
        ax.set_title(f"mIoU vs {name} ({fracs} labels)")
        ax.grid(alpha=0.3)
    return _save(fig, out)


def plot_cross_dataset(summary: pd.DataFrame, out: str | Path) -> Path | Skip:
    """Heatmap of mean mIoU, train dataset (rows) x eval dataset (columns), one panel per series, at 100%.

    When no run used the full training set, the largest fraction present is used and named in the title.
    """
    cols = ["encoder", "regime", "train_dataset", "eval_dataset", "fraction", "miou_mean"]
    if why := _has(summary, cols):
        return _skip(out, why)
    if (summary["train_dataset"] == summary["eval_dataset"]).all():
        return _skip(out, "no cross-dataset evaluation in this study")
    fraction = 1.0 if (summary["fraction"] == 1.0).any() else float(summary["fraction"].max())
    df = summary[summary["fraction"] == fraction].assign(label=lambda d: _labels(d))
    scale = percent_scale(df["miou_mean"])
    trains = sorted(df["train_dataset"].unique())
    evals = sorted(df["eval_dataset"].unique())
    panels = list(df.groupby("label", sort=True))
    fig, axes = _grid(len(panels), width=1.2 * len(evals) + 2.6, height=0.9 * len(trains) + 2.0, max_cols=3)
    vmax = float(np.nanmax(df["miou_mean"] * scale))
    for ax, (label, g) in zip(axes, panels, strict=True):
        mat = g.pivot_table(index="train_dataset", columns="eval_dataset", values="miou_mean",
                            aggfunc="mean").reindex(index=trains, columns=evals).to_numpy(dtype=float) * scale
        im = ax.imshow(mat, cmap="viridis", vmin=0, vmax=vmax, aspect="auto")
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, "-" if np.isnan(v) else f"{v:.1f}", ha="center", va="center", fontsize=9,
                    color="white" if np.isnan(v) or v < 0.6 * vmax else "black")
        ax.set_xticks(range(len(evals)), evals, rotation=30, ha="right")
        ax.set_yticks(range(len(trains)), trains)
        ax.set_xlabel("eval dataset")
        ax.set_ylabel("train dataset")
        ax.set_title(f"{label}, {fraction_label(fraction)} labels", fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, out)


def plot_per_class_iou(per_class: pd.DataFrame, out: str | Path) -> Path | Skip:
    """Heatmap of per-class IoU (mean over seeds), series x classes; in-domain, largest fraction."""
    cols = ["encoder", "regime", "train_dataset", "eval_dataset", "fraction", "class", "iou"]
    if why := _has(per_class, cols):
        return _skip(out, why)
    df = _in_domain(per_class)
    df = df[df["fraction"] == df.groupby("train_dataset")["fraction"].transform("max")]
    if df["iou"].isna().all():
        return _skip(out, "no per-class IoU values")
    df = df.assign(label=_labels(df))
    scale = percent_scale(df["iou"])
    panels = list(df.groupby(["train_dataset", "eval_dataset"], sort=True))
    n_cls = max(g["class"].nunique() for _, g in panels)
    n_lab = max(g["label"].nunique() for _, g in panels)
    fig, axes = _grid(len(panels), width=min(0.55 * n_cls + 3.5, 24), height=0.45 * n_lab + 2.2, max_cols=1)
    for ax, ((train_ds, eval_ds), g) in zip(axes, panels, strict=True):
        classes = list(dict.fromkeys(g["class"]))  # the dataset's class order, as the engine listed them
        mat = g.pivot_table(index="label", columns="class", values="iou", aggfunc="mean",
                            dropna=False).reindex(columns=classes)
        values = mat.to_numpy(dtype=float) * scale
        im = ax.imshow(values, cmap="viridis", vmin=0, vmax=100 if scale == 100 else None, aspect="auto")
        if values.size <= 400:
            for (i, j), v in np.ndenumerate(values):
                ax.text(j, i, "-" if np.isnan(v) else f"{v:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if np.isnan(v) or v < 60 else "black")
        small = 8 if len(classes) <= 40 else 5
        ax.set_xticks(range(len(classes)), classes, rotation=60, ha="right", fontsize=small)
        ax.set_yticks(range(len(mat.index)), list(mat.index), fontsize=8)
        fraction = float(g["fraction"].iloc[0])
        ax.set_title(f"per-class IoU, train {train_ds} -> eval {eval_ds}, {fraction_label(fraction)} labels")
        fig.colorbar(im, ax=ax, fraction=0.03, pad=0.02)
    return _save(fig, out)


def best_runs(results: pd.DataFrame) -> pd.DataFrame:
    """The in-domain row with the highest mIoU per (encoder, regime, train_dataset)."""
    df = _in_domain(results)
    df = df[df["miou"].notna()]
    if df.empty:
        return df
    idx = df.groupby(["encoder", "regime", "train_dataset"], sort=True)["miou"].idxmax()
    return df.loc[idx.to_numpy()].reset_index(drop=True)


def plot_confusions(results: pd.DataFrame, confusions: dict[tuple[str, str], tuple[np.ndarray, list[str]]],
                    out: str | Path) -> Path | Skip:
    """Row-normalised confusion matrices (rows = ground truth) of the best run per series and dataset.

    ``confusions`` maps ``(run_id, eval_dataset)`` to ``(matrix, class_names)``, as
    ``aggregate.collect_confusions`` returns them.
    """
    if why := _has(results, ["run_id", "encoder", "regime", "train_dataset", "eval_dataset", "miou"]):
        return _skip(out, why)
    best = best_runs(results)
    keys = list(zip(best["run_id"], best["eval_dataset"], strict=True))
    best = best[[k in confusions for k in keys]]
    if best.empty:
        return _skip(out, "no confusion matrix saved for the best runs")
    n_cls = max(confusions[k][0].shape[0] for k in keys if k in confusions)
    side = min(max(3.2, 0.4 * n_cls + 1.8), 12)
    fig, axes = _grid(len(best), width=side + 0.8, height=side, max_cols=3)
    for ax, (_, r) in zip(axes, best.iterrows(), strict=True):
        cm, classes = confusions[(r["run_id"], r["eval_dataset"])]
        cm = np.asarray(cm, dtype=float)
        totals = cm.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            norm = np.where(totals > 0, cm / totals, np.nan)
        im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        if norm.shape[0] <= 12:
            for (i, j), v in np.ndenumerate(norm):
                if not np.isnan(v):
                    ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v > 0.5 else "black")
        ticks = range(len(classes))
        fontsize = 8 if len(classes) <= 30 else 5
        ax.set_xticks(ticks, classes, rotation=60, ha="right", fontsize=fontsize)
        ax.set_yticks(ticks, classes, fontsize=fontsize)
        ax.set_xlabel("predicted")
        ax.set_ylabel("ground truth")
        scale = percent_scale([r["miou"]])
        ax.set_title(f"{r['encoder']} ({r['regime']}), {r['train_dataset']} {fraction_label(r['fraction'])}, "
                     f"seed {r['seed']}\nmIoU {r['miou'] * scale:.1f}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, out)
