"""Statistics over seeds: descriptive intervals, paired tests against the baseline, per-image bootstrap.

Conventions
- Every function drops NaN values (or NaN pairs) before computing, and reports how many values it used.
- ``std`` is the sample standard deviation (``ddof=1``); confidence intervals of a mean are Student-t
  intervals ``mean +- t_{(1+c)/2, n-1} * std / sqrt(n)``. With one value there is no spread: ``std`` and the
  interval are NaN.
- A *gain* is ``encoder - baseline`` on values paired by (seed, subset_seed): both runs trained on the same
  images from the same initial random state of everything but the encoder weights. Differences are in the
  units of the inputs (fractions of 1 for the engine's mIoU).
- The per-image bootstrap resamples images of the evaluation set (paired: the same resampled images for both
  encoders). It measures how much the gain depends on which images were evaluated, not on the training seed,
  and its centre is the mean per-image mIoU gain, which is close to but not the same as the dataset-level
  mIoU gain (dataset mIoU pools pixels over all images before dividing).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as sps

log = logging.getLogger(__name__)

GROUP_COLUMNS = ["encoder", "regime", "train_dataset", "eval_dataset", "fraction"]
PAIR_COLUMNS = ["seed", "subset_seed"]
MIN_WILCOXON = 6  # below 6 pairs no two-sided signed-rank p-value can reach 0.05, so the test is not run
SUMMARY_COLUMNS = [
    *GROUP_COLUMNS, "cross", "n_seeds", "seeds",
    "miou_mean", "miou_std", "miou_ci_low", "miou_ci_high",
    "macc_mean", "aacc_mean", "fwiou_mean",
    "epochs_to_converge_mean", "epochs_to_converge_std", "time_to_converge_s_mean", "train_time_s_mean",
    "infer_ms_per_image_mean", "gflops_mean", "params_total", "params_trainable",
    "baseline", "baseline_miou_mean", "baseline_miou_std",
    "gain_n", "gain_miou", "gain_std", "gain_ci_low", "gain_ci_high", "gain_p_ttest", "gain_p_wilcoxon",
    "gain_boot_mean", "gain_boot_low", "gain_boot_high", "gain_boot_images", "gain_note",
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


# ---------------------------------------------------------------------------------------- bootstrap
class BootstrapCI(NamedTuple):
    mean_diff: float  # mean over images of a - b
    ci_low: float  # percentile interval of the resampled means
    ci_high: float
    n_images: int
    n_boot: int


def bootstrap_ci(per_image_a: Sequence[float] | np.ndarray, per_image_b: Sequence[float] | np.ndarray,
                 n: int = 10_000, seed: int = 0, confidence: float = 0.95) -> BootstrapCI:
    """Paired percentile bootstrap of the mean per-image difference ``a - b`` over the images.

    ``per_image_a[i]`` and ``per_image_b[i]`` must score the same image. Images where either score is NaN
    (no valid pixel) are dropped. Deterministic for a given ``seed``.
    """
    a = np.asarray(per_image_a, dtype=float).ravel()
    b = np.asarray(per_image_b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"bootstrap_ci needs per-image scores of the same images, got {a.size} and {b.size}")
    if n < 1:
        raise ValueError(f"bootstrap_ci: n (resamples) must be >= 1, got {n}")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    m = int(d.size)
    if m == 0:
        return BootstrapCI(math.nan, math.nan, math.nan, 0, n)
    rng = np.random.default_rng(seed)
    means = np.empty(n)
    chunk = max(1, 2_000_000 // m)  # bounds the index matrix to ~16 MB whatever the number of images
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        idx = rng.integers(0, m, size=(stop - start, m))
        means[start:stop] = d[idx].mean(axis=1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return BootstrapCI(float(d.mean()), float(low), float(high), m, n)


# ---------------------------------------------------------------------------------------- summarize
def _one_row_per_seed(g: pd.DataFrame) -> pd.DataFrame:
    """Average duplicated (seed, subset_seed) rows of one cell (the same cell run twice under two names)."""
    if not g.duplicated(PAIR_COLUMNS).any():
        return g
    cell = dict(zip(GROUP_COLUMNS, g.iloc[0][GROUP_COLUMNS], strict=True))
    log.warning("cell %s has several runs for one seed (%s); their numbers are averaged", cell,
                ", ".join(g["run_id"].astype(str)))
    numeric = g.select_dtypes("number").columns.difference(PAIR_COLUMNS)
    first = g.groupby(PAIR_COLUMNS, as_index=False, sort=True).first()
    means = g.groupby(PAIR_COLUMNS, as_index=False, sort=True)[list(numeric)].mean()
    return first.drop(columns=list(numeric)).merge(means, on=PAIR_COLUMNS)


def _per_image_mean(per_image: pd.DataFrame, run_ids: Sequence[str], dataset: str) -> np.ndarray | None:
    """Per-image mIoU averaged over ``run_ids`` (seeds) on ``dataset``; None if any run lacks the scores."""
    vectors = []
    for rid in run_ids:
        sel = per_image[(per_image["run_id"] == rid) & (per_image["eval_dataset"] == dataset)]
        if sel.empty:
            return None
        vectors.append(sel.sort_values("image")["miou"].to_numpy(dtype=float))
    if len({v.size for v in vectors}) != 1:
        log.warning("per-image scores on %s have different lengths across runs %s; no bootstrap", dataset,
                    list(run_ids))
        return None
    with np.errstate(invalid="ignore"):
        stacked = np.vstack(vectors)
        counts = (~np.isnan(stacked)).sum(axis=0)
        return np.where(counts > 0, np.nansum(stacked, axis=0) / np.maximum(counts, 1), np.nan)


def _nanmean(s: pd.Series) -> float:
    x = drop_nan(s)
    return float(x.mean()) if x.size else math.nan


def _cell_columns(key: tuple, cell: pd.DataFrame, confidence: float) -> dict[str, Any]:
    """The descriptive columns of one summary row (one row per seed in ``cell``)."""
    nan = math.nan
    d = describe(cell["miou"], confidence)
    ep = describe(cell["epochs_to_converge"]) if "epochs_to_converge" in cell else describe([])
    row = dict(zip(GROUP_COLUMNS, key, strict=True))
    row.update({
        "cross": bool(cell["cross"].iloc[0]) if "cross" in cell else row["train_dataset"] != row["eval_dataset"],
        "n_seeds": len(cell), "seeds": ",".join(str(s) for s in sorted(cell["seed"].unique())),
        "miou_mean": d.mean, "miou_std": d.std, "miou_ci_low": d.ci_low, "miou_ci_high": d.ci_high,
        "epochs_to_converge_mean": ep.mean, "epochs_to_converge_std": ep.std,
    })
    for col in ["macc", "aacc", "fwiou", "time_to_converge_s", "train_time_s", "infer_ms_per_image", "gflops"]:
        row[f"{col}_mean"] = _nanmean(cell[col]) if col in cell else nan
    for col in ["params_total", "params_trainable"]:
        row[col] = _nanmean(cell[col]) if col in cell else nan
    return row


def _paired_bootstrap(paired: pd.DataFrame, per_image: pd.DataFrame | None, eval_ds: str, n_boot: int, seed: int,
                      confidence: float):
    """The per-image bootstrap of the paired gain, or None when some paired run has no per-image scores."""
    if per_image is None or per_image.empty or paired.empty:
        return None
    a = _per_image_mean(per_image, list(paired["run_id"]), eval_ds)
    b = _per_image_mean(per_image, list(paired["run_id_base"]), eval_ds)
    if a is None or b is None or a.size != b.size:
        return None
    return bootstrap_ci(a, b, n=n_boot, seed=seed, confidence=confidence)


def _gain_columns(test, boot=None, note: str | None = None) -> dict[str, Any]:
    """The ``gain_*`` columns from a paired test and an optional bootstrap (NaN where absent)."""
    gain: dict[str, Any] = dict.fromkeys([c for c in SUMMARY_COLUMNS if c.startswith("gain_") and c != "gain_note"],
                                         math.nan)
    gain["gain_note"] = note
    if test is not None:
        gain.update({"gain_n": test.n, "gain_miou": test.mean_diff, "gain_std": test.std_diff,
                     "gain_ci_low": test.ci_low, "gain_ci_high": test.ci_high,
                     "gain_p_ttest": test.p_ttest, "gain_p_wilcoxon": test.p_wilcoxon, "gain_note": test.note})
    if boot is not None:
        gain.update({"gain_boot_mean": boot.mean_diff, "gain_boot_low": boot.ci_low,
                     "gain_boot_high": boot.ci_high, "gain_boot_images": boot.n_images})
    return gain


def summarize(results: pd.DataFrame, baseline: str = "random", baseline_regime: str = "finetune",
              per_image: pd.DataFrame | None = None, n_boot: int = 2000, seed: int = 0,
              confidence: float = 0.95) -> pd.DataFrame:
    """One row per (encoder, regime, train_dataset, eval_dataset, fraction) over seeds; ``SUMMARY_COLUMNS``.

    The gain columns compare each cell with the ``baseline`` encoder in ``baseline_regime`` at the same
    train dataset, eval dataset and fraction, paired on (seed, subset_seed), and ``baseline_miou_mean/std``
    describe those same paired baseline runs (so mean - baseline mean = gain when every seed pairs); the
    bootstrap columns are filled
    when ``per_image`` (``aggregate.collect_per_image``) has scores for every paired run.
    """
    missing = [c for c in [*GROUP_COLUMNS, *PAIR_COLUMNS, "run_id", "miou"] if c not in results.columns]
    if missing:
        raise ValueError(f"summarize: the results table lacks the columns {missing}")
    rows = []
    for key, cell in results.groupby(GROUP_COLUMNS, sort=True):
        cell = _one_row_per_seed(cell)
        enc, regime, train_ds, eval_ds, fraction = key
        row = _cell_columns(key, cell, confidence)
        base = results[(results["encoder"] == baseline) & (results["regime"] == baseline_regime)
                       & (results["train_dataset"] == train_ds) & (results["eval_dataset"] == eval_ds)
                       & (results["fraction"] == fraction)]
        is_baseline = enc == baseline and regime == baseline_regime
        paired = None if is_baseline or base.empty else cell.merge(
            _one_row_per_seed(base)[[*PAIR_COLUMNS, "run_id", "miou"]], on=PAIR_COLUMNS, suffixes=("", "_base"))
        # the baseline columns describe the very runs the gain pairs with (the cell itself for the baseline)
        base_d = describe(cell["miou"] if is_baseline else [] if paired is None else paired["miou_base"], confidence)
        row.update({"baseline": f"{baseline} ({baseline_regime})", "baseline_miou_mean": base_d.mean,
                    "baseline_miou_std": base_d.std})
        if is_baseline:
            row.update(_gain_columns(None, note="baseline"))
        elif paired is None:
            row.update(_gain_columns(None, note=f"no {baseline} ({baseline_regime}) runs in this cell"))
        else:
            boot = _paired_bootstrap(paired, per_image, eval_ds, n_boot, seed, confidence)
            row.update(_gain_columns(paired_test(paired["miou"], paired["miou_base"], confidence), boot))
        rows.append(row)
    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return out.sort_values(["train_dataset", "eval_dataset", "encoder", "regime", "fraction"], kind="stable",
                           ignore_index=True)


# --------------------------------------------------------------------------- bootstrap over seeds
def seed_units(results: pd.DataFrame) -> list[tuple]:
    """The study's training seeds as resampling units: the distinct (seed, subset_seed) pairs, sorted."""
    return sorted({tuple(k) for k in results[PAIR_COLUMNS].itertuples(index=False)})


def seed_matrix(results: pd.DataFrame, cell_columns: list[str], units: list[tuple],
                value: str = "miou") -> tuple[pd.DataFrame, np.ndarray]:
    """Cells (one row per distinct ``cell_columns`` tuple) x seed units of ``value``; NaN where absent.

    Two rows of one cell and unit (the same cell run twice under two names) are averaged.
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
    with np.errstate(invalid="ignore"):
        return keys, np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def seed_weights(n_units: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """Row 0: every seed once (the point estimate); rows 1..n_boot: multinomial resamples of the seeds.

    The same resampled seeds serve every cell of a resample, so the bootstrap keeps the pairing of cells
    trained from one seed (same data order and initial state).
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_units, size=(n_boot, n_units))
    weights = np.zeros((n_boot + 1, n_units))
    weights[0] = 1.0
    for j in range(n_units):
        weights[1:, j] = (draws == j).sum(axis=1)
    return weights


def weighted_means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(resamples, cells) means of ``values`` (cells x seeds, NaN = absent) under seed ``weights``."""
    present = ~np.isnan(values)
    num = weights @ np.where(present, values, 0.0).T
    den = weights @ present.T.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


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


def add_convergence(summary: pd.DataFrame, results: pd.DataFrame, baseline: str = "random",
                    baseline_regime: str = "finetune") -> pd.DataFrame:
    """``summary`` with ``CONVERGENCE_COLUMNS``: how many seeds of each cell converged, whether all did, and
    whether all of its baseline cell (same train/eval dataset and fraction) did.

    A run whose convergence was not recorded (``converged`` missing) counts as unconverged: a number is only
    presented as converged when the engine said so. A cell without baseline runs has
    ``baseline_all_converged`` True (there is no baseline number to doubt).
    """
    if summary.empty:
        return summary.assign(**{c: pd.Series(dtype=object) for c in CONVERGENCE_COLUMNS})
    conv = converged_flags(results)[1]
    # one value per run and cell: a run is scored on several eval datasets with the same convergence
    per_run = results.assign(_conv=conv).drop_duplicates([*GROUP_COLUMNS, *PAIR_COLUMNS])
    cells = per_run.groupby(GROUP_COLUMNS, sort=False)["_conv"].agg(n_converged="sum", all_converged="all")
    out = summary.merge(cells.reset_index(), on=GROUP_COLUMNS, how="left")
    out["n_converged"] = out["n_converged"].fillna(0).astype(int)
    out["all_converged"] = out["all_converged"].fillna(False).astype(bool)
    base = cells.reset_index()
    base = base[(base["encoder"] == baseline) & (base["regime"] == baseline_regime)]
    keys = ["train_dataset", "eval_dataset", "fraction"]
    base = base[[*keys, "all_converged"]].rename(columns={"all_converged": "baseline_all_converged"})
    out = out.merge(base, on=keys, how="left")
    out["baseline_all_converged"] = out["baseline_all_converged"].fillna(True).astype(bool)
    return out
