"""Ranking stability: Kendall's tau between the encoder rankings of every pair of settings a study holds.

Definitions (docs/protocol.md "Ranking stability")
- A *setting* is one combination of the axes ``regime, head, train_dataset, eval_dataset, fraction``; within a
  setting the encoders (study labels) are ordered by mean mIoU over seeds, *with ties*: two encoders are
  resolved when the moderated t interval of their paired difference (``study.comparisons``: the gains family
  for a pair with the baseline, the pairs family otherwise) excludes 0. The encoders sorted by mean are cut
  into groups wherever every encoder above the cut is resolved from every encoder below it; the ``ranking``
  string joins groups with `` > `` and the members of a group with `` ≈ `` (``dinov2 > clip ≈ mae > random``).
- Two settings are compared on the encoders both hold, with Kendall's tau-b on the group orders (tied members
  tie). Fewer than 2 common encoders, or an order where every common encoder ties, leaves tau undefined (NaN,
  with the reason in ``note``).
- The interval inverts the pairwise tests: two encoders in different groups keep the order of their groups,
  two in one group may come in either order, and the interval runs from the most discordant to the most
  concordant pair of orders that this allows, ``[(fixed - open) / n0, (fixed + open) / n0]`` where ``fixed``
  sums concordant minus discordant pairs ordered in both settings, ``open`` counts the pairs left open in
  either, and ``n0 = n(n-1)/2``. It covers the tau of the true means whenever the groups order no true pair
  the wrong way (docs/protocol.md, measured coverage), and a setting that resolves nothing gives [-1, 1].
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

from encseg.study import comparisons, stats

SETTING_AXES = ["regime", "head", "train_dataset", "eval_dataset", "fraction"]
PAIR_COLUMNS = ["setting_a", "setting_b", "n_encoders", "tau", "tau_low", "tau_high", "n_open", "note"]
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
    ranks: pd.DataFrame  # setting x encoder rank: 1 + the encoders in strictly better groups (NaN: absent)


def _varying(results: pd.DataFrame, axes: list[str]) -> list[str]:
    varying = [a for a in axes if results[a].nunique(dropna=False) > 1]
    if "eval_dataset" in axes and "eval_dataset" not in varying and (
            results["eval_dataset"] != results["train_dataset"]).any():
        varying.append("eval_dataset")  # a single cross-dataset evaluation must still be named
    return varying


def tie_groups(means: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Group index (0 = best) of each encoder for every row of ``means`` (draws x encoders).

    ``half[i, j]``: the half-width beyond which ``means_i - means_j`` is resolved (NaN: never resolved). The
    encoders sorted by mean are cut after position p when every encoder above is resolved from every one below.
    """
    means = np.atleast_2d(means)
    n_draws, k = means.shape
    order = np.argsort(-means, axis=1, kind="stable")
    sorted_means = np.take_along_axis(means, order, axis=1)
    h = half[order[:, :, None], order[:, None, :]]  # draws x k x k in sorted order
    with np.errstate(invalid="ignore"):
        resolved = (sorted_means[:, :, None] - sorted_means[:, None, :]) > h
    cuts = np.zeros((n_draws, k), dtype=int)
    for p in range(k - 1):
        cuts[:, p + 1] = resolved[:, : p + 1, p + 1:].all(axis=(1, 2))
    groups = np.empty((n_draws, k), dtype=int)
    np.put_along_axis(groups, order, np.cumsum(cuts, axis=1), axis=1)
    return groups


def ranking_text(names: list[str], means: np.ndarray, groups: np.ndarray) -> str:
    """``a > b ≈ c``: groups best first, members of a group by mean."""
    order = sorted(range(len(names)), key=lambda i: (groups[i], -means[i]))
    out = ""
    for pos, i in enumerate(order):
        if pos:
            out += " ≈ " if groups[i] == groups[order[pos - 1]] else " > "
        out += names[i]
    return out


class _Setting(NamedTuple):
    key: dict
    rows: np.ndarray  # rows of the groups' keys (the setting's encoders)
    encoders: list[str]
    mean: np.ndarray
    half: np.ndarray  # encoders x encoders: interval half-width of the paired difference


def _pair_lookup(fams: list[comparisons.Family], confidence: float) -> dict[tuple[int, int], float]:
    """(row a, row b) -> the half-width of the moderated interval of their paired difference, both orders."""
    out = {}
    for fam in fams:
        iv = comparisons.interval(fam, confidence)
        for a, b, h in zip(fam.table["row"], fam.table["base_row"], iv.half, strict=True):
            out[(int(a), int(b))] = out[(int(b), int(a))] = float(h)
    return out


def _settings(results: pd.DataFrame, axes: list[str], confidence: float, baseline: str | None,
              baseline_regime: str | None) -> list[_Setting]:
    g = comparisons.groups(results)
    fams = [comparisons.pairs(g, baseline, baseline_regime)]
    if baseline is not None:
        fams.append(comparisons.gains(g, baseline, baseline_regime))
    lookup = _pair_lookup(fams, confidence)
    _, mean, _ = comparisons.moments(g.values)
    out = []
    for key, idx in g.keys.groupby(axes, sort=True, dropna=False).groups.items():
        rows = np.asarray(idx)
        half = np.full((rows.size, rows.size), np.nan)
        for a, b in combinations(range(rows.size), 2):
            half[a, b] = half[b, a] = lookup.get((int(rows[a]), int(rows[b])), np.nan)
        out.append(_Setting(dict(zip(axes, key if isinstance(key, tuple) else (key,), strict=True)), rows,
                            list(g.keys.loc[rows, "encoder"]), mean[rows], half))
    return out


def _settings_table(results: pd.DataFrame, axes: list[str], settings: list[_Setting],
                    groups: list[np.ndarray]) -> pd.DataFrame:
    """SETTING_COLUMNS: the setting's name and axes, its tie-aware ranking, its measured cost."""
    varying = _varying(results, axes)
    cost_col = next((c for c in ("train_time_s", "train_wall_s") if c in results), None)
    rows = []
    for st, grp in zip(settings, groups, strict=True):
        sel = (results[axes] == pd.Series(st.key)).all(axis=1)
        g = results[sel]
        runs = g.drop_duplicates("run_id") if "run_id" in g else g
        cost = stats.drop_nan(runs[cost_col]) if cost_col else np.array([])
        rows.append({"setting": setting_name(st.key, varying), **st.key, "n_encoders": len(st.encoders),
                     "ranking": ranking_text(st.encoders, st.mean, grp),
                     "cost_s": float(cost.mean()) if cost.size else math.nan, "n_runs": len(runs)})
    return pd.DataFrame(rows, columns=["setting", *axes, "n_encoders", "ranking", "cost_s", "n_runs"])


def ranking_stability(results: pd.DataFrame, confidence: float = 0.95, baseline: str | None = "random",
                      baseline_regime: str | None = "finetune") -> Stability:
    """Tie-aware rankings per setting, and tau with its interval for every pair of settings (module docstring).

    ``baseline`` names the study's baseline (its pairs read the gains family, as in ``stats.summarize``);
    None, or a baseline absent from ``results``, puts every pair in the pairs family.
    """
    missing = [c for c in ["encoder", "miou", *stats.PAIR_COLUMNS] if c not in results.columns]
    if missing:
        raise ValueError(f"ranking_stability: the results table lacks the columns {missing}")
    results = comparisons.with_head(results)
    if baseline is not None and not ((results["encoder"] == baseline) & (results["regime"] == baseline_regime)).any():
        baseline = baseline_regime = None
    axes = setting_axes(results)
    settings = _settings(results, axes, confidence, baseline, baseline_regime)
    groups = [tie_groups(st.mean, st.half)[0] for st in settings]
    table = _settings_table(results, axes, settings, groups)
    encoders = sorted({e for st in settings for e in st.encoders})
    col = {e: j for j, e in enumerate(encoders)}
    shape = (len(settings), len(encoders))
    order, means, ranks = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    for s, (st, grp) in enumerate(zip(settings, groups, strict=True)):
        for i, e in enumerate(st.encoders):
            order[s, col[e]] = -grp[i]
            means[s, col[e]] = st.mean[i]
            ranks[s, col[e]] = 1 + int((grp < grp[i]).sum())
    rows = [_pair(order, a, b, table) for a, b in combinations(range(len(table)), 2)]
    index = table["setting"]
    return Stability(table, pd.DataFrame(rows, columns=PAIR_COLUMNS),
                     pd.DataFrame(means, index=index, columns=encoders),
                     pd.DataFrame(ranks, index=index, columns=encoders))


def tau_bounds(x: np.ndarray, y: np.ndarray) -> tuple[float, float, int]:
    """(low, high, open pairs): tau over the orders that keep every pair the groups ``x``, ``y`` order.

    ``x`` and ``y`` are group orders (higher = better; equal = one group); a pair tied in either may take
    either sign, a pair ordered in both keeps its sign.
    """
    i, j = np.triu_indices(x.size, k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    fixed = (sx != 0) & (sy != 0)
    agree = float((sx * sy)[fixed].sum())
    n_open = int((~fixed).sum())
    return (agree - n_open) / i.size, (agree + n_open) / i.size, n_open


def _pair(order: np.ndarray, a: int, b: int, settings: pd.DataFrame) -> dict:
    common = ~np.isnan(order[a]) & ~np.isnan(order[b])
    n = int(common.sum())
    row = {"setting_a": settings.at[a, "setting"], "setting_b": settings.at[b, "setting"], "n_encoders": n,
           "tau": math.nan, "tau_low": math.nan, "tau_high": math.nan, "n_open": 0, "note": ""}
    if n < 2:
        row["note"] = f"{n} encoder{'s' if n != 1 else ''} in common: no ranking to compare"
        return row
    x, y = order[a, common], order[b, common]
    row["tau"] = float(kendall_tau_b(x, y))
    row["tau_low"], row["tau_high"], row["n_open"] = tau_bounds(x, y)
    if math.isnan(row["tau"]):
        row["note"] = "every common encoder ties in one of the settings"
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
    if " > " not in str(ref["ranking"]):
        return CheapestAgreement(ref["setting"], None, nan, nan, nan,
                                 "it resolves none of its encoders at 95%, so there is no order for a cheaper setting to reproduce")
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
    """``summary`` with ``rank`` (1 + the encoders resolved better in its setting; tied encoders share a rank)
    and ``rank_of`` (the setting's encoders)."""
    axes = [a for a in SETTING_AXES if a in st.settings.columns and a in summary.columns]
    lookup = {}
    for (_, srow), (_, rrow) in zip(st.settings.iterrows(), st.ranks.iterrows(), strict=True):
        for enc, r in rrow.items():
            if not math.isnan(r):
                lookup[(*[srow[a] for a in axes], enc)] = (int(r), int(srow["n_encoders"]))
    got = [lookup.get((*[row[a] for a in axes], row["encoder"]), (None, None)) for _, row in summary.iterrows()]
    return summary.assign(rank=[g[0] for g in got], rank_of=[g[1] for g in got])
