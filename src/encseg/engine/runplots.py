"""Per-run plots: loss curves, validation mIoU curve, normalised confusion matrix.

Figures are built with ``matplotlib.figure.Figure`` directly (no pyplot, no display, no global figure
registry, safe in worker processes and on headless nodes) and written with ``atomic_save_fig``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from encseg.atomic import atomic_save_fig
from encseg.engine.dynamics import validation_rows

__all__ = ["plot_losses", "plot_val_curve", "plot_confusion", "normalize_confusion"]

_DPI = 120
_CELL_TEXT_MAX = 25  # above this many classes, per-cell numbers are unreadable
_ALL_TICKS_MAX = 60  # above this many classes, label every k-th class only


def _require(df: pd.DataFrame, *cols: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(f"history has no column(s) {missing} (columns: {list(df.columns)})")


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)


def plot_losses(history: pd.DataFrame, path: str | Path) -> Path:
    """Train ``loss`` and each ``loss_<term>`` against step (log y when all positive), plus ``val_loss``."""
    _require(history, "step")
    fig = Figure(figsize=(8, 5), dpi=_DPI)
    ax = fig.add_subplot()
    train = history[history["loss"].notna()] if "loss" in history.columns else history.iloc[0:0]
    terms = sorted(c for c in history.columns if c.startswith("loss_"))
    plotted: list[np.ndarray] = []
    if not train.empty:
        ax.plot(train["step"], train["loss"], color="black", lw=1.6, label="loss (train)")
        plotted.append(train["loss"].to_numpy(float))
        for col in terms:
            rows = history[history[col].notna()]
            if not rows.empty:
                ax.plot(rows["step"], rows[col], lw=0.9, alpha=0.85, label=col)
                plotted.append(rows[col].to_numpy(float))
    if "val_loss" in history.columns:
        val = history[history["val_loss"].notna()]
        if not val.empty:
            ax.plot(val["step"], val["val_loss"], "o-", color="tab:red", lw=1.2, ms=3, label="loss (val)")
            plotted.append(val["val_loss"].to_numpy(float))
    if plotted:
        values = np.concatenate(plotted)
        values = values[np.isfinite(values)]
        if values.size and (values > 0).all():
            ax.set_yscale("log")
        ax.legend(fontsize=8, loc="upper right")
    else:
        _empty(ax, "no loss rows logged")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return atomic_save_fig(path, fig)


def plot_val_curve(history: pd.DataFrame, path: str | Path, x: str = "step") -> Path:
    """Validation mIoU (and mAcc, aAcc when logged) against ``x`` (``step`` or ``epoch``); best marked."""
    _require(history, "step")
    if x not in ("step", "epoch"):
        raise ValueError(f"x must be 'step' or 'epoch', got {x!r}")
    if x == "epoch":
        _require(history, "epoch")
    val = validation_rows(history)
    fig = Figure(figsize=(7, 4.5), dpi=_DPI)
    ax = fig.add_subplot()
    if val.empty:
        _empty(ax, "no validation rows logged")
    else:
        xs = val[x].to_numpy(float)
        ax.plot(xs, val["val_miou"], "o-", color="tab:blue", lw=1.6, ms=4, label="mIoU")
        for col, color, label in (("val_macc", "tab:green", "mAcc"), ("val_aacc", "tab:gray", "aAcc")):
            if col in val.columns and val[col].notna().any():
                ax.plot(xs, val[col], ".--", color=color, lw=1.0, label=label)
        best = int(val["val_miou"].to_numpy().argmax())
        ax.scatter([xs[best]], [val["val_miou"].iloc[best]], s=80, facecolors="none", edgecolors="tab:red",
                   zorder=3, label=f"best {val['val_miou'].iloc[best]:.4f} @ {x} {xs[best]:g}")
        ax.set_ylim(0, max(1.0, float(np.nanmax(val["val_miou"]))))
        ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel(x)
    ax.set_ylabel("validation score")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return atomic_save_fig(path, fig)


def normalize_confusion(cm: np.ndarray, normalize: str | None = "true") -> np.ndarray:
    """``true``: rows (ground truth) sum to 1 (the diagonal is per-class accuracy); ``pred``: columns;
    ``all``: the whole matrix; ``none``/None: raw counts. Empty rows/columns become NaN (drawn blank)."""
    cm = np.asarray(cm, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        if normalize == "true":
            sums = cm.sum(axis=1, keepdims=True)
        elif normalize == "pred":
            sums = cm.sum(axis=0, keepdims=True)
        elif normalize == "all":
            sums = np.array(cm.sum())
        elif normalize in (None, "none"):
            return cm
        else:
            raise ValueError(f"normalize must be 'true', 'pred', 'all' or 'none', got {normalize!r}")
        return np.where(sums > 0, cm / sums, np.nan)


def plot_confusion(cm: np.ndarray, class_names: Sequence[str] | None, path: str | Path,
                   normalize: str | None = "true", title: str | None = None) -> Path:
    """Heat map of the confusion matrix (rows = ground truth), readable up to ~150 classes.

    Up to 25 classes each cell carries its value; up to 60 every class is labelled; beyond that every k-th
    class is labelled so that about 60 labels remain. Classes absent from the ground truth are blank rows.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {cm.shape}")
    n = cm.shape[0]
    names = [str(i) for i in range(n)] if class_names is None else [str(c) for c in class_names]
    if len(names) != n:
        raise ValueError(f"{len(names)} class names for a {n}-class confusion matrix")
    data = normalize_confusion(cm, normalize)

    side = float(np.clip(3.0 + 0.13 * n, 5.0, 22.0))
    fig = Figure(figsize=(side + 1.2, side), dpi=_DPI)
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(data)
    vmax = 1.0 if normalize not in (None, "none") else (float(masked.max()) if masked.count() else 1.0)
    im = ax.imshow(masked, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest", aspect="equal")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)

    step = 1 if n <= _ALL_TICKS_MAX else math.ceil(n / _ALL_TICKS_MAX)
    ticks = np.arange(0, n, step)
    font = float(np.clip(11 - n / 12, 5, 10))
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize=font)
    ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if n <= _CELL_TEXT_MAX:
        fmt = "{:.2f}" if normalize not in (None, "none") else "{:.0f}"
        for i in range(n):
            for j in range(n):
                v = data[i, j]
                if np.isfinite(v) and (v > 0 or i == j):
                    bright = v > 0.6 * vmax
                    ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=max(5.0, font - 2),
                            color="black" if bright else "white")
    norm = {"true": "rows = ground truth, normalised per row", "pred": "normalised per predicted class",
            "all": "normalised over all pixels"}.get(str(normalize), "pixel counts")
    ax.set_title(title or f"confusion matrix ({norm})", fontsize=10)
    fig.tight_layout()
    return atomic_save_fig(path, fig)
