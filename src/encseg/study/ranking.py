"""Ranking stability: Kendall's tau between the encoder rankings of every pair of settings a study holds.

Definitions (docs/protocol.md "Ranking stability")
- A *setting* is one combination of the axes ``regime, head, train_dataset, eval_dataset, fraction``; within a
  setting the encoders (study labels) are ranked by mean mIoU over seeds.
- Two settings are compared on the encoders both hold, with Kendall's tau-b (ties in either ranking reduce it;
  scipy's default). Fewer than 2 common encoders, or a ranking where every common encoder ties, leaves tau
  undefined (NaN, with the reason in ``note``).
- The interval is a percentile bootstrap over training seeds: each resample draws the seeds with replacement
  (the same draw for every cell, keeping cells of one seed paired) and recomputes every mean and every tau;
  resamples where a tau is undefined are left out of that pair's interval (``n_boot_used``).
- The *cost* of a setting is the mean measured training time per run (``train_time_s``) of the runs behind
  it, so settings with different numbers of encoders compare fairly; settings that differ only in the
  evaluation dataset share their runs and their cost.
- A setting *agrees* with another when it ranks every encoder of the other and its tau is 1 (the same order,
  ties included). The *reference* is the most expensive setting (in-domain preferred on equal cost); the
  answer is the cheapest strictly cheaper setting that agrees with it, or none.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import NamedTuple

import numpy as np
import pandas as pd

from encseg.study import stats

SETTING_AXES = ["regime", "head", "train_dataset", "eval_dataset", "fraction"]
PAIR_COLUMNS = ["setting_a", "setting_b", "n_encoders", "tau", "tau_low", "tau_high", "n_boot", "n_boot_used",
                "note"]
SETTING_COLUMNS = ["setting", *SETTING_AXES, "n_encoders", "ranking", "cost_s", "n_runs"]
_TIE = 1e-12


def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b between the last axes of ``x`` and ``y`` (shape (..., n)); NaN where undefined.

    tau-b = (concordant - discordant) / sqrt((n0 - ties_x) (n0 - ties_y)), n0 = n(n-1)/2, counting pairs.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    n = x.shape[-1]
    i, j = np.triu_indices(n, k=1)
    dx, dy = x[..., i] - x[..., j], y[..., i] - y[..., j]
    sx = np.where(np.abs(dx) <= _TIE, 0.0, np.sign(dx))
    sy = np.where(np.abs(dy) <= _TIE, 0.0, np.sign(dy))
    untied_x, untied_y = np.abs(sx).sum(axis=-1), np.abs(sy).sum(axis=-1)
    denom = np.sqrt(untied_x * untied_y)
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = np.where(denom > 0, (sx * sy).sum(axis=-1) / np.where(denom > 0, denom, 1.0), np.nan)
    invalid = np.isnan(x).any(axis=-1) | np.isnan(y).any(axis=-1)
    return np.where(invalid, np.nan, tau)


def setting_axes(results: pd.DataFrame) -> list[str]:
    return [a for a in SETTING_AXES if a in results.columns]


def setting_name(key: dict, varying: list[str]) -> str:
    """The axes that vary in the study, e.g. ``finetune, synth_a→synth_b, 10%``."""
    parts = []
    for axis in varying:
        v = key[axis]
        if axis == "fraction":
            parts.append(f"{v * 100:g}%")
        elif axis == "eval_dataset":
            continue
        elif axis == "train_dataset":
            parts.append(f"{v}→{key['eval_dataset']}" if key["eval_dataset"] != v else f"on {v}")
        elif axis == "head":
            parts.append(f"{v} head")
        else:
            parts.append(str(v))
    if "eval_dataset" in varying and "train_dataset" not in varying:
        parts.append(f"eval {key['eval_dataset']}")
    return ", ".join(parts) if parts else "the only setting"


class Stability(NamedTuple):
    settings: pd.DataFrame  # SETTING_COLUMNS, one row per setting
    pairs: pd.DataFrame  # PAIR_COLUMNS, one row per unordered pair of settings
    means: pd.DataFrame  # setting x encoder point means (NaN where the setting lacks the encoder)


def _varying(results: pd.DataFrame, axes: list[str]) -> list[str]:
    varying = [a for a in axes if results[a].nunique(dropna=False) > 1]
    if "eval_dataset" in axes and "eval_dataset" not in varying and (
            results["eval_dataset"] != results["train_dataset"]).any():
        varying.append("eval_dataset")  # a single cross-dataset evaluation must still be named
    return varying


def _settings_table(results: pd.DataFrame, axes: list[str], keys: pd.DataFrame,
                    point: np.ndarray) -> pd.DataFrame:
    varying = _varying(results, axes)
    cost_col = next((c for c in ("train_time_s", "train_wall_s") if c in results), None)
    rows = []
    for key, g in results.groupby(axes, sort=True, dropna=False):
        key = dict(zip(axes, key, strict=True))
        sel = (keys[axes] == pd.Series(key)).all(axis=1).to_numpy()
        order = sorted(((m, e) for m, e in zip(point[sel], keys.loc[sel, "encoder"], strict=True)
                        if not math.isnan(m)), key=lambda t: -t[0])
        runs = g.drop_duplicates("run_id") if "run_id" in g else g
        cost = stats.drop_nan(runs[cost_col]) if cost_col else np.array([])
        rows.append({"setting": setting_name(key, varying), **key, "n_encoders": len(order),
                     "ranking": " > ".join(e for _, e in order),
                     "cost_s": float(cost.mean()) if cost.size else math.nan, "n_runs": len(runs)})
    return pd.DataFrame(rows, columns=["setting", *axes, "n_encoders", "ranking", "cost_s", "n_runs"])


def ranking_stability(results: pd.DataFrame, n_boot: int = 2000, seed: int = 0,
                      confidence: float = 0.95) -> Stability:
    """Tau with its seed-bootstrap interval for every pair of settings; see the module docstring."""
    missing = [c for c in ["encoder", "miou", *stats.PAIR_COLUMNS] if c not in results.columns]
    if missing:
        raise ValueError(f"ranking_stability: the results table lacks the columns {missing}")
    axes = setting_axes(results)
    units = stats.seed_units(results)
    keys, values = stats.seed_matrix(results, [*axes, "encoder"], units)
    means = stats.weighted_means(values, stats.seed_weights(len(units), n_boot, seed))
    settings = _settings_table(results, axes, keys, means[0])
    encoders = sorted(keys["encoder"].unique())
    col = {e: j for j, e in enumerate(encoders)}
    cube = np.full((means.shape[0], len(settings), len(encoders)), np.nan)  # resample x setting x encoder
    setting_index = {tuple(r): i for i, r in enumerate(settings[axes].itertuples(index=False))}
    for c, k in enumerate(keys.itertuples(index=False)):
        cube[:, setting_index[tuple(k[:-1])], col[k[-1]]] = means[:, c]
    rows = [_pair(cube, a, b, settings, confidence) for a, b in combinations(range(len(settings)), 2)]
    point = pd.DataFrame(cube[0], index=settings["setting"], columns=encoders)
    return Stability(settings, pd.DataFrame(rows, columns=PAIR_COLUMNS), point)


def _pair(cube: np.ndarray, a: int, b: int, settings: pd.DataFrame, confidence: float) -> dict:
    common = ~np.isnan(cube[0, a]) & ~np.isnan(cube[0, b])
    n = int(common.sum())
    row = {"setting_a": settings.at[a, "setting"], "setting_b": settings.at[b, "setting"], "n_encoders": n,
           "tau": math.nan, "tau_low": math.nan, "tau_high": math.nan, "n_boot": cube.shape[0] - 1,
           "n_boot_used": 0, "note": ""}
    if n < 2:
        row["note"] = f"{n} encoder{'s' if n != 1 else ''} in common: no ranking to compare"
        return row
    taus = kendall_tau_b(cube[:, a, common], cube[:, b, common])
    row["tau"] = float(taus[0])
    if math.isnan(row["tau"]):
        row["note"] = "every common encoder ties in one of the settings"
    boot = taus[1:][~np.isnan(taus[1:])]
    row["n_boot_used"] = int(boot.size)
    if boot.size:
        tail = (1.0 - confidence) / 2.0 * 100.0
        row["tau_low"], row["tau_high"] = (float(v) for v in np.percentile(boot, [tail, 100.0 - tail]))
    return row


class CheapestAgreement(NamedTuple):
    reference: str | None  # the most expensive setting; None when no cost was measured
    setting: str | None  # the cheapest strictly cheaper setting that agrees; None when none does
    tau: float
    tau_low: float
    tau_high: float
    reason: str  # the sentence's reason when setting is None


def _tau_between(pairs: pd.DataFrame, a: str, b: str) -> pd.Series | None:
    sel = pairs[((pairs["setting_a"] == a) & (pairs["setting_b"] == b))
                | ((pairs["setting_a"] == b) & (pairs["setting_b"] == a))]
    return None if sel.empty else sel.iloc[0]


def cheapest_agreeing(st: Stability) -> CheapestAgreement:
    """The cheapest setting ranking every encoder like the most expensive one (tau = 1), or why none does."""
    s = st.settings[st.settings["cost_s"].notna() & (st.settings["n_encoders"] >= 2)]
    nan = math.nan
    if s.empty:
        return CheapestAgreement(None, None, nan, nan, nan,
                                 "no setting with at least 2 encoders has a measured training time")
    own = (s["train_dataset"] == s["eval_dataset"]) if "eval_dataset" in s else pd.Series(True, index=s.index)
    s = s.assign(_own=own).sort_values(["cost_s", "_own"], ascending=[False, False], kind="stable")
    ref = s.iloc[0]
    cands = []
    for _, cand in s[s["cost_s"] < ref["cost_s"]].sort_values(["cost_s", "_own"], ascending=[True, False],
                                                              kind="stable").iterrows():
        p = _tau_between(st.pairs, ref["setting"], cand["setting"])
        if p is not None and p["n_encoders"] >= ref["n_encoders"] and not math.isnan(p["tau"]):
            cands.append((cand["setting"], p))
    for name, p in cands:
        if p["tau"] >= 1.0 - _TIE:
            return CheapestAgreement(ref["setting"], name, p["tau"], p["tau_low"], p["tau_high"], "")
    if not cands:
        return CheapestAgreement(ref["setting"], None, nan, nan, nan,
                                 "no cheaper setting ranks all of its encoders")
    name, p = max(cands, key=lambda c: c[1]["tau"])  # max keeps the first (cheapest) of equal taus
    return CheapestAgreement(ref["setting"], None, p["tau"], p["tau_low"], p["tau_high"],
                             f"none ranks its encoders identically; the closest cheaper one is {name}")


def rank_columns(summary: pd.DataFrame, st: Stability) -> pd.DataFrame:
    """``summary`` with ``rank`` (1 = best mean mIoU in its setting, ties share the best rank) and ``rank_of``."""
    axes = [a for a in SETTING_AXES if a in st.settings.columns and a in summary.columns]
    means = st.means.copy()
    ranks = means.rank(axis=1, ascending=False, method="min")
    lookup = {}
    for (_, srow), (_, rrow) in zip(st.settings.iterrows(), ranks.iterrows(), strict=True):
        for enc, r in rrow.items():
            if not math.isnan(r):
                lookup[(*[srow[a] for a in axes], enc)] = (int(r), int(srow["n_encoders"]))
    got = [lookup.get((*[row[a] for a in axes], row["encoder"]), (None, None)) for _, row in summary.iterrows()]
    return summary.assign(rank=[g[0] for g in got], rank_of=[g[1] for g in got])
