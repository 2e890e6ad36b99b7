"""Statistics over seeds: per-cell summaries, moderated gains over the baseline, Holm's adjustment.

Conventions (docs/protocol.md "Statistics")
- Every function drops NaN values (or NaN pairs) before computing, and reports how many values it used.
- ``std`` is the sample standard deviation (``ddof=1``). The intervals of ``summarize`` are *moderated* t
  intervals (``study.comparisons``, ``study.moderation``): each cell's or gain's seed variance is shrunk towards
  a prior fitted to all the cells (or all the gains) of the study, with the degrees of freedom that the prior
  adds; ``describe`` and ``paired_test`` are the plain Student-t versions on one comparison's own seeds.
- A *gain* is ``encoder - baseline`` on values paired by (seed, subset_seed): both runs trained on the same
  images from the same initial state of everything but the encoder weights. Differences are in the units of
  the inputs (fractions of 1 for the engine's mIoU).
- The image bootstrap (``study.image_bootstrap``) resamples evaluation images and recomputes the dataset-level
  mIoU gain that is printed; it covers the choice of evaluated images, not the training seeds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as sps

from encseg.study import comparisons, image_bootstrap

log = logging.getLogger(__name__)

GROUP_COLUMNS = ["encoder", "regime", "head", "train_dataset", "eval_dataset", "fraction"]
PAIR_COLUMNS = ["seed", "subset_seed"]
MIN_WILCOXON = 6  # below 6 pairs no two-sided signed-rank p-value can reach 0.05, so the test is not run
ImageAreaReader = Callable[[str, str], "image_bootstrap.Areas | None"]  # (run id, eval dataset) -> areas
SUMMARY_COLUMNS = [
    *GROUP_COLUMNS, "cross", "n_seeds", "seeds",
    "miou_mean", "miou_std", "miou_ci_low", "miou_ci_high", "miou_df", "miou_ci_method",
    "macc_mean", "aacc_mean", "fwiou_mean",
    "epochs_to_converge_mean", "epochs_to_converge_std", "time_to_converge_s_mean", "train_time_s_mean",
    "infer_ms_per_image_mean", "gflops_mean", "params_total", "params_trainable",
    "baseline", "baseline_miou_mean", "baseline_miou_std",
    "gain_n", "gain_miou", "gain_std", "gain_std_moderated", "gain_df", "gain_ci_low", "gain_ci_high",
    "gain_p", "gain_p_wilcoxon", "gain_method", "gain_boot_low", "gain_boot_high", "gain_boot_images",
    "gain_boot_note", "gain_note",
]


def drop_nan(values: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return x[~np.isnan(x)]


def _t_half_width(std: float, n: int, confidence: float) -> float:
    return float(sps.t.ppf(0.5 + confidence / 2.0, n - 1)) * std / math.sqrt(n)


# ---------------------------------------------------------------------------------------- describe
class Description(NamedTuple):
    mean: float
    std: float
    n: int
    ci_low: float
    ci_high: float


def describe(values: Sequence[float] | np.ndarray | pd.Series, confidence: float = 0.95) -> Description:
    """Mean, sample std, count and Student-t confidence interval of the non-NaN values."""
    x = drop_nan(values)
    n = int(x.size)
    if n == 0:
        return Description(math.nan, math.nan, 0, math.nan, math.nan)
    mean = float(x.mean())
    if n == 1:
        return Description(mean, math.nan, 1, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = _t_half_width(std, n, confidence)
    return Description(mean, std, n, mean - half, mean + half)


# -------------------------------------------------------------------------------------- paired test
class PairedTest(NamedTuple):
    n: int  # pairs used (both values present)
    mean_diff: float  # mean of a - b
    std_diff: float
    ci_low: float  # Student-t interval of the mean difference
    ci_high: float
    t_stat: float
    p_ttest: float  # two-sided paired t-test
    w_stat: float
    p_wilcoxon: float  # two-sided Wilcoxon signed-rank; NaN when n < MIN_WILCOXON
    note: str


def paired_test(a: Sequence[float] | np.ndarray | pd.Series, b: Sequence[float] | np.ndarray | pd.Series,
                confidence: float = 0.95) -> PairedTest:
    """Compare ``a`` with ``b``, element i of each from the same seed; differences are ``a - b``.

    Fewer than 2 complete pairs: the mean difference is given (NaN for none) and every test statistic is NaN,
    with ``note`` saying why. When all differences are equal the t statistic is infinite (p = 0) or, if they
    are all zero, undefined (p = 1); the note says so.
    """
    a_arr = np.asarray(a, dtype=float).ravel()
    b_arr = np.asarray(b, dtype=float).ravel()
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired_test needs equally long inputs, got {a_arr.size} and {b_arr.size} values")
    keep = ~(np.isnan(a_arr) | np.isnan(b_arr))
    d = a_arr[keep] - b_arr[keep]
    n = int(d.size)
    nan = math.nan
    if n < 2:
        mean = float(d.mean()) if n else nan
        return PairedTest(n, mean, nan, nan, nan, nan, nan, nan, nan,
                          f"{n} paired seed{'s' if n != 1 else ''}: a test needs at least 2")
    mean = float(d.mean())
    std = float(d.std(ddof=1))
    notes = []
    if std <= 1e-12 * max(1.0, abs(mean)):  # equal differences up to rounding: t is not defined by data
        half = 0.0
        t_stat, p_t = (nan, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
        notes.append("all paired differences are equal")
    else:
        half = _t_half_width(std, n, confidence)
        res = sps.ttest_rel(a_arr[keep], b_arr[keep])
        t_stat, p_t = float(res.statistic), float(res.pvalue)
    w_stat = p_w = nan
    if n >= MIN_WILCOXON:
        if np.all(d == 0.0):
            w_stat, p_w = 0.0, 1.0
        else:
            res_w = sps.wilcoxon(d)
            w_stat, p_w = float(res_w.statistic), float(res_w.pvalue)
    else:
        notes.append(f"Wilcoxon needs >= {MIN_WILCOXON} pairs")
    return PairedTest(n, mean, std, mean - half, mean + half, t_stat, p_t, w_stat, p_w, "; ".join(notes))


# ---------------------------------------------------------------------------------------- summarize
def _nanmean(s: pd.Series) -> float:
    x = drop_nan(s)
    return float(x.mean()) if x.size else math.nan


def _cell_columns(key: tuple, cell: pd.DataFrame) -> dict[str, Any]:
    """The descriptive columns of one summary row that do not come from the moderated families."""
    nan = math.nan
    ep = describe(cell["epochs_to_converge"]) if "epochs_to_converge" in cell else describe([])
    row = dict(zip(GROUP_COLUMNS, key, strict=True))
    row.update({
        "cross": bool(cell["cross"].iloc[0]) if "cross" in cell else row["train_dataset"] != row["eval_dataset"],
        "seeds": ",".join(str(s) for s in sorted(cell["seed"].unique())),
        "epochs_to_converge_mean": ep.mean, "epochs_to_converge_std": ep.std,
    })
    for col in ["macc", "aacc", "fwiou", "time_to_converge_s", "train_time_s", "infer_ms_per_image", "gflops"]:
        row[f"{col}_mean"] = _nanmean(cell[col]) if col in cell else nan
    for col in ["params_total", "params_trainable"]:
        row[col] = _nanmean(cell[col]) if col in cell else nan
    return row


def _mean_columns(fam: comparisons.Family, iv: comparisons.Interval, i: int) -> dict[str, Any]:
    t = fam.table.iloc[i]
    std = math.sqrt(t["s2"]) if t["n"] > 1 else math.nan
    return {"n_seeds": int(t["n"]), "miou_mean": t["mean"], "miou_std": std,
            "miou_ci_low": t["mean"] - iv.half[i], "miou_ci_high": t["mean"] + iv.half[i],
            "miou_df": t["df_mod"], "miou_ci_method": fam.prior.describe()}


def _wilcoxon(d: np.ndarray) -> float:
    d = drop_nan(d)
    if d.size < MIN_WILCOXON:
        return math.nan
    return 1.0 if np.all(d == 0.0) else float(sps.wilcoxon(d).pvalue)


def _gain_columns(fam: comparisons.Family, iv: comparisons.Interval, j: int, d: np.ndarray,
                  base: np.ndarray) -> dict[str, Any]:
    """The ``gain_*`` and baseline columns of gain ``j`` (``d``: its paired differences, ``base``: the paired
    baseline values)."""
    t = fam.table.iloc[j]
    n = int(t["n"])
    b = describe(base)
    notes = []
    if n < 2:
        notes.append(f"{n} paired seed{'s' if n != 1 else ''}: no own seed variance"
                     + ("; the interval uses the prior" if fam.prior.fitted and n == 1 else ""))
    elif t["s2"] <= 1e-24:
        notes.append("all paired differences are equal")
    if n < MIN_WILCOXON:
        notes.append(f"Wilcoxon needs >= {MIN_WILCOXON} pairs")
    return {"baseline_miou_mean": b.mean, "baseline_miou_std": b.std, "gain_n": n, "gain_miou": t["mean"],
            "gain_std": math.sqrt(t["s2"]) if n > 1 else math.nan,
            "gain_std_moderated": math.sqrt(t["s2_mod"]) if np.isfinite(t["s2_mod"]) else math.nan,
            "gain_df": t["df_mod"], "gain_ci_low": t["mean"] - iv.half[j], "gain_ci_high": t["mean"] + iv.half[j],
            "gain_p": iv.p[j], "gain_p_wilcoxon": _wilcoxon(d), "gain_note": "; ".join(notes),
            "gain_method": fam.prior.describe()}


def _image_columns(pair_runs: list[tuple[str, str]], eval_ds: str, image_areas: ImageAreaReader | None,
                   n_boot: int, seed: int, confidence: float, cache: dict) -> dict[str, Any]:
    """The image-bootstrap columns of one gain, or the reason it has none in ``gain_boot_note``."""
    if image_areas is None:
        return {"gain_boot_note": "no per-image areas given"}
    enc, base = [], []
    for run, base_run in pair_runs:
        a, b = image_areas(run, eval_ds), image_areas(base_run, eval_ds)
        if a is None or b is None:
            return {"gain_boot_note": f"no per-image areas stored for {run if a is None else base_run}"}
        enc.append(a)
        base.append(b)
    shapes = {x[0].shape for x in (*enc, *base)}
    if len(shapes) != 1:
        return {"gain_boot_note": f"the runs scored different images on {eval_ds}"}
    n_images = next(iter(shapes))[0]
    key = (n_images, n_boot, seed)
    if key not in cache:
        cache[key] = image_bootstrap.image_weights(n_images, n_boot, seed)
    r = image_bootstrap.paired_gain(enc, base, confidence=confidence, weights=cache[key])
    return {"gain_boot_low": r.low, "gain_boot_high": r.high, "gain_boot_images": r.n_images, "gain_boot_note": ""}


def _run_ids(results: pd.DataFrame, units: list[tuple]) -> dict[tuple, dict[tuple, str]]:
    """cell key (GROUP_COLUMNS) -> seed unit -> run id (the first run when a cell ran twice)."""
    out: dict[tuple, dict[tuple, str]] = {}
    for row in results[[*GROUP_COLUMNS, *PAIR_COLUMNS, "run_id"]].itertuples(index=False):
        out.setdefault(tuple(row[:len(GROUP_COLUMNS)]), {}).setdefault(tuple(row[len(GROUP_COLUMNS):-1]),
                                                                        str(row[-1]))
    return out


def summarize(results: pd.DataFrame, baseline: str = "random", baseline_regime: str = "finetune",
              image_areas: ImageAreaReader | None = None, n_boot: int = 2000, seed: int = 0,
              confidence: float = 0.95) -> pd.DataFrame:
    """One row per (encoder, regime, head, train_dataset, eval_dataset, fraction) over seeds; ``SUMMARY_COLUMNS``.

    Mean intervals are moderated t intervals over the cells family, gain intervals over the gains family
    (``study.comparisons``): each cell against the ``baseline`` encoder in ``baseline_regime`` with the same
    head, train and eval dataset and fraction, paired on (seed, subset_seed). ``baseline_miou_mean/std``
    describe those same paired baseline runs (so mean - baseline mean = gain when every seed pairs). The
    ``gain_boot_*`` columns are the evaluation-image bootstrap (``image_bootstrap``) when ``image_areas``
    (``aggregate.image_area_reader``) has the per-image areas of every paired run.
    """
    missing = [c for c in [*GROUP_COLUMNS, *PAIR_COLUMNS, "run_id", "miou"]
               if c not in results.columns and c != "head"]
    if missing:
        raise ValueError(f"summarize: the results table lacks the columns {missing}")
    results = comparisons.with_head(results)
    g = comparisons.groups(results)
    cells = comparisons.cells(g)
    cell_iv = comparisons.interval(cells, confidence)
    gains = comparisons.gains(g, baseline, baseline_regime)
    gain_iv = comparisons.interval(gains, confidence)
    gain_of = {int(r): j for j, r in enumerate(gains.table["row"])}
    units = seed_units(results)
    runs = _run_ids(results, units)
    index = {tuple(k): i for i, k in enumerate(g.keys[GROUP_COLUMNS].itertuples(index=False))}
    weights: dict = {}
    rows = []
    for key, cell in results.groupby(GROUP_COLUMNS, sort=True):
        i = index[key]
        row = {**_cell_columns(key, cell), **_mean_columns(cells, cell_iv, i),
               "baseline": f"{baseline} ({baseline_regime})"}
        is_baseline = key[0] == baseline and key[1] == baseline_regime
        if is_baseline:
            b = describe(g.values[i])
            row.update({"baseline_miou_mean": b.mean, "baseline_miou_std": b.std, "gain_note": "baseline"})
        elif i not in gain_of:
            row["gain_note"] = f"no {baseline} ({baseline_regime}) runs in this cell"
        else:
            j = gain_of[i]
            b_row = int(gains.table.at[j, "base_row"])
            both = ~np.isnan(g.values[i]) & ~np.isnan(g.values[b_row])
            row.update(_gain_columns(gains, gain_iv, j, g.values[i][both] - g.values[b_row][both],
                                     g.values[b_row][both]))
            base_key = tuple(g.keys.loc[b_row, GROUP_COLUMNS])
            pair_runs = [(runs[key][u], runs[base_key][u]) for u, ok in zip(units, both, strict=True) if ok]
            row.update(_image_columns(pair_runs, key[4], image_areas, n_boot, seed, confidence, weights))
        rows.append(row)
    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return out.sort_values(["train_dataset", "eval_dataset", "encoder", "regime", "head", "fraction"],
                           kind="stable", ignore_index=True)


def holm(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control); NaN entries stay NaN and do not count."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    running = 0.0
    for rank, k in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[k]))
        out[k] = running
    return out


# ------------------------------------------------------------------------------------- seed units
def seed_units(results: pd.DataFrame) -> list[tuple]:
    """The study's training seeds as resampling units: the distinct (seed, subset_seed) pairs, sorted."""
    return sorted({tuple(k) for k in results[PAIR_COLUMNS].itertuples(index=False)})


def seed_matrix(results: pd.DataFrame, cell_columns: list[str], units: list[tuple],
                value: str = "miou") -> tuple[pd.DataFrame, np.ndarray]:
    """Cells (one row per distinct ``cell_columns`` tuple) x seed units of ``value``; NaN where absent.

    Two rows of one cell and unit (the same cell run twice under two names) are averaged, with a warning.
    """
    keys = results[cell_columns].drop_duplicates().sort_values(cell_columns, kind="stable",
                                                               ignore_index=True)
    unit_index = {u: j for j, u in enumerate(units)}
    cell_index = {tuple(k): i for i, k in enumerate(keys.itertuples(index=False))}
    sums = np.zeros((len(keys), len(units)))
    counts = np.zeros((len(keys), len(units)))
    for row in results[[*cell_columns, *PAIR_COLUMNS, value]].itertuples(index=False):
        v = float(row[-1])
        if math.isnan(v):
            continue
        i = cell_index[tuple(row[:len(cell_columns)])]
        j = unit_index[tuple(row[len(cell_columns):-1])]
        sums[i, j] += v
        counts[i, j] += 1
    for i, j in zip(*np.nonzero(counts > 1), strict=True):
        log.warning("cell %s has %d runs for seed unit %s; their %s values are averaged",
                    dict(zip(cell_columns, keys.iloc[i], strict=True)), int(counts[i, j]), units[j], value)
    with np.errstate(invalid="ignore"):
        return keys, np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def convergence_counts(results: pd.DataFrame, cell_columns: list[str]) -> pd.DataFrame:
    """Per cell: ``n_unconverged`` runs (``converged`` False) and ``n_converged_unknown`` (no value).

    A table without the ``converged`` column gives every run as unknown.
    """
    known, converged = converged_flags(results)
    false = known & ~converged
    df = results[cell_columns].assign(n_unconverged=false.astype(int), n_converged_unknown=(~known).astype(int))
    return df.groupby(cell_columns, as_index=False, sort=True)[["n_unconverged", "n_converged_unknown"]].sum()


def converged_flags(results: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per run: (``converged`` was recorded, the run converged); an unrecorded run counts as not converged.

    The one reading of the ``converged`` column (a nullable boolean from ``aggregate``, or strings from a CSV).
    """
    if "converged" not in results:
        absent = pd.Series(False, index=results.index)
        return absent, absent
    conv = results["converged"].astype(object).map({True: True, False: False, "True": True, "False": False})
    return conv.notna(), conv.fillna(False).astype(bool)


# -------------------------------------------------------------------------------------- convergence
CONVERGENCE_COLUMNS = ["n_converged", "all_converged", "baseline_all_converged"]


def add_convergence(summary: pd.DataFrame, results: pd.DataFrame, baseline: str,
                    baseline_regime: str) -> pd.DataFrame:
    """``summary`` with ``CONVERGENCE_COLUMNS``: how many seeds of each cell converged, whether all did, and
    whether all of its baseline cell (same head, train/eval dataset and fraction) did.

    A run whose convergence was not recorded (``converged`` missing) counts as unconverged: a number is only
    presented as converged when the engine said so. A cell without baseline runs has
    ``baseline_all_converged`` True (there is no baseline number to doubt).
    """
    if summary.empty:
        return summary.assign(**{c: pd.Series(dtype=object) for c in CONVERGENCE_COLUMNS})
    results = comparisons.with_head(results)
    conv = converged_flags(results)[1]
    # one value per run and cell: a run is scored on several eval datasets with the same convergence
    per_run = results.assign(_conv=conv).drop_duplicates([*GROUP_COLUMNS, *PAIR_COLUMNS])
    cells = per_run.groupby(GROUP_COLUMNS, sort=False)["_conv"].agg(n_converged="sum", all_converged="all")
    out = summary.merge(cells.reset_index(), on=GROUP_COLUMNS, how="left")
    out["n_converged"] = out["n_converged"].fillna(0).astype(int)
    out["all_converged"] = out["all_converged"].fillna(False).astype(bool)
    base = cells.reset_index()
    base = base[(base["encoder"] == baseline) & (base["regime"] == baseline_regime)]
    keys = ["head", "train_dataset", "eval_dataset", "fraction"]
    base = base[[*keys, "all_converged"]].rename(columns={"all_converged": "baseline_all_converged"})
    out = out.merge(base, on=keys, how="left")
    out["baseline_all_converged"] = out["baseline_all_converged"].fillna(True).astype(bool)
    return out
