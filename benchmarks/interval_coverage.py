"""Coverage of every interval the study report prints, on simulated studies with a known truth.

``python benchmarks/interval_coverage.py [--studies N] [--seed S]`` simulates results tables (no training) and
runs them through the report's own functions: ``stats.summarize`` (cell means, gains over the baseline),
``label_efficiency.label_efficiency`` and ``ranking.ranking_stability``. It prints, per noise scenario and
number of seeds, how often each interval covers the truth and how wide it is, and how often the rankings
order a true tie or a 10-point gain. The numbers are in docs/protocol.md ("Coverage, measured").

The simulated study (mIoU in points): 7 encoders (``random`` is the baseline) x 3 fractions (10%, 30%, 100%),
one head, one dataset; seed s of every cell trains on subset s (per-seed subsets), so each (seed, fraction) has
a shared effect u[s, f] (initial state and subset; sd 2.0 / 1.5 / 1.0 points, correlated 0.5 across the nested
fractions of a seed), and every cell adds its own noise e ~ N(0, sigma[cell]^2):

- ``equal``: sigma = 1.5 everywhere;
- ``unequal``: per study a ratio r in [4, 6]; each cell's sigma = 0.6 r^U, U ~ Uniform(0, 1) (up to r x apart);
- ``noisy baseline``: the baseline's sigma is 4-6x everyone else's (0.6): every gain shares the noisy cell;
- ``one noisy encoder``: one non-baseline encoder 4-6x noisier than the rest.

True means (points at 10 / 30 / 100%): random 30 45 55; A 42 52 58; B 48 56 60; C = B (a true tie at every
fraction); D = B + 10 (a 10-point gain over B); E 35 45 50 (gain 0 at 30%, never reaches random's 100%);
F 40 50 55 (ties random at 100%). Label efficiency against random's 100% (55): A at 0.3^0.5 = 54.8%, B and C
at 0.1 * 3^0.875 = 26.1%, D already at or below 10%, E never, F at 100%.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import pandas as pd

from encseg.study import label_efficiency as le
from encseg.study import ranking, stats

FRACTIONS = np.array([0.1, 0.3, 1.0])
ENCODERS = ["random", "A", "B", "C", "D", "E", "F"]
MU = np.array([[30, 45, 55], [42, 52, 58], [48, 56, 60], [48, 56, 60], [58, 66, 70], [35, 45, 50],
               [40, 50, 55]], dtype=float)
TAU = np.array([2.0, 1.5, 1.0])
RHO = 0.5
SCENARIOS = ["equal", "unequal", "noisy baseline", "one noisy encoder"]
TIES = [("B", "C", None), ("F", "random", 1.0), ("E", "random", 0.3)]  # (a, b, fraction or every fraction)
STRONG = [("D", "B")]  # a 10-point gain at every fraction


def noise_sd(rng: np.random.Generator, scenario: str) -> np.ndarray:
    k = len(ENCODERS)
    if scenario == "equal":
        return np.full((k, 3), 1.5)
    if scenario == "unequal":
        return 0.6 * rng.uniform(4, 6) ** rng.uniform(0, 1, size=(k, 3))
    sd = np.full((k, 3), 0.6)
    sd[0 if scenario == "noisy baseline" else rng.integers(1, k)] *= rng.uniform(4, 6)
    return sd


def simulate(rng: np.random.Generator, n_seeds: int, scenario: str) -> pd.DataFrame:
    """One study's results table (the columns ``aggregate.collect_results`` gives), mIoU as fractions of 1."""
    cov = np.outer(TAU, TAU) * (RHO + (1 - RHO) * np.eye(3))
    shared = rng.multivariate_normal(np.zeros(3), cov, size=n_seeds)  # seeds x fractions
    values = MU[:, :, None] + shared.T[None] + rng.normal(size=(len(ENCODERS), 3, n_seeds)) \
        * noise_sd(rng, scenario)[:, :, None]
    e, f, s = np.meshgrid(np.arange(len(ENCODERS)), np.arange(3), np.arange(n_seeds), indexing="ij")
    e, f, s = e.ravel(), f.ravel(), s.ravel()
    return pd.DataFrame({
        "encoder": np.array(ENCODERS)[e], "regime": "finetune", "head": "mask2former", "train_dataset": "synth",
        "eval_dataset": "synth", "fraction": FRACTIONS[f], "seed": s, "subset_seed": s,
        "run_id": [f"{ENCODERS[a]}_{b}_{c}" for a, b, c in zip(e, f, s, strict=True)],
        "miou": values.ravel() / 100.0, "converged": True, "train_time_s": 100.0 * (1 + f)})


def true_log_crossing(enc: int) -> float:
    c = le.crossing(FRACTIONS, MU[enc], MU[0, 2])
    return {le.BY_SMALLEST: -math.inf, le.NOT_REACHED: math.inf}.get(c.status, math.log(c.fraction))


def true_tau(a: int, b: int) -> float:
    return float(ranking.kendall_tau_b(MU[:, a], MU[:, b]))


def _plain_gain_half(table: pd.DataFrame, enc: str, f: float) -> float:
    a = table[(table["encoder"] == enc) & (table["fraction"] == f)].sort_values("seed")["miou"].to_numpy()
    b = table[(table["encoder"] == "random") & (table["fraction"] == f)].sort_values("seed")["miou"].to_numpy()
    t = stats.paired_test(a, b)
    return (t.ci_high - t.ci_low) / 2.0


def one_study(table: pd.DataFrame) -> dict[str, list]:
    """Every coverage / width / order indicator of one simulated study."""
    out: dict[str, list] = {k: [] for k in ["gain", "gain_frac", "gain_width", "plain_width", "mean", "le",
                                            "le_censored", "tie", "strong", "tau", "tau_width"]}
    s = stats.summarize(table, baseline="random", baseline_regime="finetune")
    for _, r in s.iterrows():
        e, f = ENCODERS.index(r["encoder"]), list(FRACTIONS).index(r["fraction"])
        out["mean"].append(r["miou_ci_low"] <= MU[e, f] / 100 <= r["miou_ci_high"])
        if r["encoder"] == "random":
            continue
        truth = (MU[e, f] - MU[0, f]) / 100
        out["gain"].append(r["gain_ci_low"] <= truth <= r["gain_ci_high"])
        out["gain_frac"].append(f)
        out["gain_width"].append(r["gain_ci_high"] - r["gain_ci_low"])
        out["plain_width"].append(2 * _plain_gain_half(table, r["encoder"], r["fraction"]))
    eff = le.label_efficiency(table)
    for _, r in eff[eff["reference"] == "random (finetune)"].iterrows():
        truth = true_log_crossing(ENCODERS.index(r["encoder"]))
        low, high = (_log(r["fraction_low"]), _log(r["fraction_high"]))
        out["le"].append(low <= truth <= high)
        out["le_censored"].append(math.isinf(truth))
    st = ranking.ranking_stability(table)
    for _, r in st.settings.iterrows():
        order = _groups(r["ranking"])
        for a, b, frac in TIES:
            if frac is None or math.isclose(r["fraction"], frac):
                out["tie"].append(order[a] != order[b])
        for a, b in STRONG:
            out["strong"].append(order[a] < order[b])
    names = list(st.settings["setting"])
    for _, p in st.pairs.iterrows():
        a, b = names.index(p["setting_a"]), names.index(p["setting_b"])
        truth = true_tau(a, b)
        if not math.isnan(p["tau_low"]):
            out["tau"].append(p["tau_low"] - 1e-9 <= truth <= p["tau_high"] + 1e-9)
            out["tau_width"].append(p["tau_high"] - p["tau_low"])
    return out


def _log(f: float) -> float:
    """log of a bound on the censored scale: 0 is below the smallest fraction, inf is never reached."""
    return -math.inf if f == 0 else math.log(f)


def _groups(text: str) -> dict[str, int]:
    """Encoder -> group position (0 = best) of a ``ranking`` string."""
    return {name: g for g, part in enumerate(text.split(" > ")) for name in part.split(" ≈ ")}


def run(scenario: str, n_seeds: int, n_studies: int, seed: int) -> dict[str, float]:
    rng = np.random.default_rng([seed, SCENARIOS.index(scenario), n_seeds])
    acc: dict[str, list] = {}
    for _ in range(n_studies):
        for k, v in one_study(simulate(rng, n_seeds, scenario)).items():
            acc.setdefault(k, []).extend(v)
    gain, frac = np.array(acc["gain"]), np.array(acc["gain_frac"])
    le_ok, cens = np.array(acc["le"]), np.array(acc["le_censored"])
    return {"gain": gain.mean(), "gain_min_frac": min(gain[frac == f].mean() for f in range(3)),
            "width_ratio": np.mean(acc["gain_width"]) / np.mean(acc["plain_width"]),
            "gain_width": 100 * np.mean(acc["gain_width"]), "mean": np.mean(acc["mean"]),
            "le": le_ok.mean(), "le_bracketed": le_ok[~cens].mean(), "tie": np.mean(acc["tie"]),
            "strong": np.mean(acc["strong"]), "tau": np.mean(acc["tau"]) if acc["tau"] else math.nan,
            "tau_width": np.mean(acc["tau_width"]) if acc["tau_width"] else math.nan}


HEADER = ("| noise | seeds | gain cov. | worst fraction | gain width (pts) | width / plain t | mean cov. | "
          "label-eff. cov. (bracketed) | tie ordered | 10-pt ordered | tau cov. (width) |")


def row(scenario: str, n: int, r: dict[str, float]) -> str:
    return (f"| {scenario} | {n} | {r['gain']:.1%} | {r['gain_min_frac']:.1%} | {r['gain_width']:.1f} | "
            f"{r['width_ratio']:.2f} | {r['mean']:.1%} | {r['le']:.1%} ({r['le_bracketed']:.1%}) | "
            f"{r['tie']:.1%} | {r['strong']:.1%} | {r['tau']:.1%} ({r['tau_width']:.2f}) |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=150, help="simulated studies per scenario and seed count")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default="2,3,5", help="seed counts, comma-separated")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = ap.parse_args(argv)
    t0 = time.time()
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    for scenario in args.scenarios.split(","):
        for n in (int(x) for x in args.seeds.split(",")):
            print(row(scenario, n, run(scenario, n, args.studies, args.seed)), flush=True)
    print(f"\n{args.studies} studies per row, {time.time() - t0:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
