"""Ranking stability on hand-made tables: known taus, a ranking that flips, ties, the cheapest agreeing setting."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from encseg.study.brief import ranking_sentence
from encseg.study.insights import Insights
from encseg.study.ranking import (
    cheapest_agreeing,
    kendall_tau_b,
    rank_columns,
    ranking_stability,
    tau_bounds,
    tie_groups,
)
from encseg.study.stats import summarize

NOISE = [(0.004, -0.003, -0.001), (-0.002, 0.003, -0.001), (0.001, 0.002, -0.003), (-0.004, 0.001, 0.003)]


def seeds(m: float, k: int) -> list[float]:
    """Three seeds around ``m`` with the k-th noise pattern (sd ~0.003: differences of 0.02 are resolved)."""
    return [m + e for e in NOISE[k % len(NOISE)]]


def table(cells: dict, cost: dict | None = None) -> pd.DataFrame:
    """``cells[(encoder, fraction[, regime, head, train, eval])] = [mIoU per seed]`` -> a results table.

    Without the last four: finetune, Mask2Former, trained and scored on ``a``.
    """
    rows = []
    for (enc, fraction, *rest), values in cells.items():
        regime, head, train, evaluate = rest or ("finetune", "mask2former", "a", "a")
        for seed, m in enumerate(values):
            rows.append({"run_id": f"{enc}_{fraction}_{regime}_{head}_{train}_{seed}", "encoder": enc,
                         "regime": regime, "head": head, "train_dataset": train, "eval_dataset": evaluate,
                         "fraction": fraction, "seed": seed, "subset_seed": seed, "miou": m,
                         "cross": train != evaluate,
                         "train_time_s": (cost or {}).get(fraction, 100.0 * fraction)})
    return pd.DataFrame(rows)


def pair(st, a: str, b: str) -> pd.Series:
    p = st.pairs
    sel = p[((p["setting_a"] == a) & (p["setting_b"] == b)) | ((p["setting_a"] == b) & (p["setting_b"] == a))]
    assert len(sel) == 1
    return sel.iloc[0]


def test_tau_b_hand_computed_and_equal_to_scipy():
    assert kendall_tau_b([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # pairs: 3 concordant, 1 discordant, one tie in x, one tie in y: (3 - 1) / sqrt(5 * 5)
    assert kendall_tau_b([1, 2, 2, 3], [1, 3, 2, 2]) == pytest.approx(0.4)
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.integers(0, 4, size=6).astype(float), rng.integers(0, 4, size=6).astype(float)
        expected = kendalltau(x, y).statistic
        got = kendall_tau_b(x, y)
        assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)
    assert math.isnan(kendall_tau_b([0.5, 0.5, 0.5], [1, 2, 3]))  # one ranking all tied: undefined
    batch = kendall_tau_b(np.array([[1, 2, 3], [3, 2, 1]]), np.array([[1, 2, 3], [1, 2, 3]]))
    assert batch == pytest.approx([1.0, -1.0])


def test_a_ranking_that_flips_between_two_fractions():
    st = ranking_stability(table({
        ("A", 0.1): seeds(0.50, 0), ("B", 0.1): seeds(0.40, 1), ("C", 0.1): seeds(0.30, 2),
        ("A", 0.5): seeds(0.60, 1), ("B", 0.5): seeds(0.50, 2), ("C", 0.5): seeds(0.55, 3),
        ("A", 1.0): seeds(0.60, 2), ("B", 1.0): seeds(0.70, 3), ("C", 1.0): seeds(0.80, 0),
    }))
    assert list(st.settings["setting"]) == ["10%", "50%", "100%"]
    assert list(st.settings["ranking"]) == ["A > B > C", "A > C > B", "C > B > A"]
    assert pair(st, "10%", "100%")["tau"] == pytest.approx(-1.0)
    assert pair(st, "10%", "50%")["tau"] == pytest.approx(1 / 3)  # one of three pairs swapped
    # every pair resolved in both settings: nothing is left open, the interval is the point
    p = pair(st, "10%", "100%")
    assert (p["tau_low"], p["tau_high"], p["n_open"]) == (pytest.approx(-1.0), pytest.approx(-1.0), 0)


def test_unresolved_encoders_are_tied_and_share_a_rank():
    cells = {("A", 0.1): seeds(0.501, 0), ("B", 0.1): seeds(0.500, 1), ("C", 0.1): seeds(0.30, 2),
             ("A", 1.0): seeds(0.70, 3), ("B", 1.0): seeds(0.60, 0), ("C", 1.0): seeds(0.50, 1)}
    st = ranking_stability(table(cells))
    assert list(st.settings["ranking"]) == ["A ≈ B > C", "A > B > C"]
    p = pair(st, "10%", "100%")
    # tau-b on the tie-aware orders: 2 concordant pairs of 3, one tie in x: 2 / sqrt(2 * 3)
    assert p["tau"] == pytest.approx(2 / math.sqrt(6))
    # the tied pair may go either way: [(2 - 1) / 3, (2 + 1) / 3]
    assert (p["tau_low"], p["tau_high"], p["n_open"]) == (pytest.approx(1 / 3), pytest.approx(1.0), 1)
    ranks = rank_columns(summarize(table(cells)), st)
    at10 = ranks[ranks["fraction"] == 0.1]
    assert dict(zip(at10["encoder"], at10["rank"], strict=True)) == {"A": 1, "B": 1, "C": 3}
    assert set(ranks["rank_of"]) == {3}


def test_a_tie_with_the_baseline_reads_the_gain_and_an_all_tied_ranking_has_no_tau():
    # the demo's 100%: a -1.2 point "loss" inside a seed spread of several points is a tie
    cells = {("random", 0.1): seeds(0.27, 0), ("pre", 0.1): seeds(0.46, 1),
             ("random", 1.0): [0.626 + 3 * e for e in NOISE[2]], ("pre", 1.0): [0.614 + 3 * e for e in NOISE[3]]}
    st = ranking_stability(table(cells), baseline="random")
    assert list(st.settings["ranking"]) == ["pre > random", "random ≈ pre"]
    s = summarize(table(cells), baseline="random").set_index(["encoder", "fraction"])
    assert s.loc[("pre", 1.0), "gain_ci_low"] < 0 < s.loc[("pre", 1.0), "gain_ci_high"]  # the same verdict
    assert s.loc[("pre", 0.1), "gain_ci_low"] > 0
    p = pair(st, "10%", "100%")
    assert math.isnan(p["tau"]) and "ties" in p["note"]
    assert (p["tau_low"], p["tau_high"]) == (pytest.approx(-1.0), pytest.approx(1.0))
    c = cheapest_agreeing(st)
    assert c.reference == "100%" and c.setting is None and "resolves none" in c.reason
    # the brief says the expensive setting resolves nothing; it does not claim cheaper settings disagree
    ins = Insights(pd.DataFrame(), st, c, True, "random", "finetune")
    text = ranking_sentence(ins)
    assert "ranks random ≈ pre" in text and "It resolves none of its encoders" in text
    assert "No cheaper setting ranks them the same" not in text


def test_groups_are_cut_only_where_everything_above_is_resolved_from_everything_below():
    means = np.array([0.9, 0.7, 0.5, 0.1])
    half = np.full((4, 4), 0.25)  # differences beyond 0.25 are resolved
    # 0.9-0.7 and 0.7-0.5 are not, 0.9-0.5 is: one chain, one group; 0.1 is resolved from all
    assert tie_groups(means, half)[0].tolist() == [0, 0, 0, 1]
    half[0, 1] = half[1, 0] = 0.1  # now 0.9 is resolved from 0.7 (and from 0.5, 0.1): a cut after it
    assert tie_groups(means, half)[0].tolist() == [0, 1, 1, 2]
    half[:] = np.nan  # no interval (one seed, no prior): nothing is resolved
    assert tie_groups(means, half)[0].tolist() == [0, 0, 0, 0]


def test_tau_bounds_by_hand():
    # x orders a > b > c; y ties a and b above c: 2 fixed concordant pairs and 1 open of 3
    assert tau_bounds(np.array([3.0, 2.0, 1.0]), np.array([1.0, 1.0, 0.0])) == (pytest.approx(1 / 3),
                                                                               pytest.approx(1.0), 1)
    assert tau_bounds(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == (pytest.approx(-1.0), pytest.approx(-1.0), 0)


def test_every_axis_makes_settings_and_too_few_common_encoders_are_named():
    cells = {("A", 1.0, "finetune", "mask2former", "a", "a"): seeds(0.7, 0),
             ("B", 1.0, "finetune", "mask2former", "a", "a"): seeds(0.6, 1),
             ("A", 1.0, "finetune", "linear", "a", "a"): seeds(0.5, 2),
             ("B", 1.0, "finetune", "linear", "a", "a"): seeds(0.55, 3),
             ("A", 1.0, "finetune", "mask2former", "a", "b"): seeds(0.4, 0),
             ("B", 1.0, "finetune", "mask2former", "a", "b"): seeds(0.3, 1),
             ("A", 1.0, "frozen", "mask2former", "a", "a"): seeds(0.5, 2)}
    st = ranking_stability(table(cells))
    names = set(st.settings["setting"])
    # one train dataset: only the eval dataset is named
    assert names == {"finetune, linear head, eval a", "finetune, mask2former head, eval a",
                     "finetune, mask2former head, eval b", "frozen, mask2former head, eval a"}
    m2f = "finetune, mask2former head, eval a"
    assert pair(st, "finetune, linear head, eval a", m2f)["tau"] == pytest.approx(-1)
    assert pair(st, "finetune, mask2former head, eval b", m2f)["tau"] == 1
    p = pair(st, "frozen, mask2former head, eval a", m2f)
    assert math.isnan(p["tau"]) and p["note"].startswith("1 encoder in common")


def test_cheapest_setting_agreeing_with_the_most_expensive_one():
    cells = {("A", 0.1): seeds(0.3, 0), ("B", 0.1): seeds(0.4, 1), ("C", 0.1): seeds(0.2, 2),  # B > A > C
             ("A", 0.3): seeds(0.5, 1), ("B", 0.3): seeds(0.4, 2), ("C", 0.3): seeds(0.3, 3),  # A > B > C
             ("A", 0.6): seeds(0.6, 2), ("B", 0.6): seeds(0.5, 3), ("C", 0.6): seeds(0.4, 0),  # agrees, dearer
             ("A", 1.0): seeds(0.7, 3), ("B", 1.0): seeds(0.6, 0), ("C", 1.0): seeds(0.5, 1)}
    c = cheapest_agreeing(ranking_stability(table(cells)))
    assert (c.reference, c.setting, c.tau) == ("100%", "30%", pytest.approx(1.0))
    # the measured cost decides, not the fraction: here 10% was the dearest run
    c = cheapest_agreeing(ranking_stability(table(cells, cost={0.1: 500.0})))
    assert c.reference == "10%" and c.setting is None
    assert "closest cheaper one is 30%" in c.reason and c.tau == pytest.approx(1 / 3)
    no_cost = table(cells).drop(columns=["train_time_s"])
    c = cheapest_agreeing(ranking_stability(no_cost))
    assert c.reference is None and "training time" in c.reason


def test_train_datasets_are_settings_too():
    cells = {("A", 1.0, "finetune", "mask2former", "a", "a"): seeds(0.7, 0),
             ("B", 1.0, "finetune", "mask2former", "a", "a"): seeds(0.6, 1),
             ("A", 1.0, "finetune", "mask2former", "b", "b"): seeds(0.5, 2),
             ("B", 1.0, "finetune", "mask2former", "b", "b"): seeds(0.55, 3),
             ("A", 1.0, "finetune", "mask2former", "b", "a"): seeds(0.45, 0),
             ("B", 1.0, "finetune", "mask2former", "b", "a"): seeds(0.35, 1)}
    st = ranking_stability(table(cells))
    assert list(st.settings["setting"]) == ["on a", "b→a", "on b"]
    assert pair(st, "on a", "on b")["tau"] == pytest.approx(-1.0)
    assert pair(st, "on a", "b→a")["tau"] == pytest.approx(1.0)
