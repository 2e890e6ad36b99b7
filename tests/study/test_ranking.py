"""Ranking stability on hand-made tables: known taus, a ranking that flips, ties, the cheapest agreeing setting."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.stats import kendalltau

from encseg.study.ranking import cheapest_agreeing, kendall_tau_b, rank_columns, ranking_stability
from encseg.study.stats import summarize


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
                         "fraction": fraction, "seed": seed, "subset_seed": 0, "miou": m,
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
        ("A", 0.1): [0.50, 0.52], ("B", 0.1): [0.40, 0.42], ("C", 0.1): [0.30, 0.32],
        ("A", 0.5): [0.60, 0.62], ("B", 0.5): [0.50, 0.52], ("C", 0.5): [0.55, 0.57],
        ("A", 1.0): [0.60, 0.62], ("B", 1.0): [0.70, 0.72], ("C", 1.0): [0.80, 0.82],
    }), n_boot=200)
    assert list(st.settings["setting"]) == ["10%", "50%", "100%"]
    assert list(st.settings["ranking"]) == ["A > B > C", "A > C > B", "C > B > A"]
    assert pair(st, "10%", "100%")["tau"] == pytest.approx(-1.0)
    assert pair(st, "10%", "50%")["tau"] == pytest.approx(1 / 3)  # one of three pairs swapped
    # every seed keeps the same order, so every resample gives the same tau
    p = pair(st, "10%", "100%")
    assert (p["tau_low"], p["tau_high"]) == (pytest.approx(-1.0), pytest.approx(-1.0))
    assert p["n_boot_used"] == 200 and p["n_encoders"] == 3


def test_ties_lower_tau_b_and_an_all_tied_ranking_is_undefined():
    st = ranking_stability(table({
        ("A", 0.1): [0.5], ("B", 0.1): [0.5], ("C", 0.1): [0.3],
        ("A", 1.0): [0.7], ("B", 1.0): [0.6], ("C", 1.0): [0.5],
        ("A", 0.5): [0.4], ("B", 0.5): [0.4], ("C", 0.5): [0.4],
    }), n_boot=50)
    # 10% ties A and B: 2 concordant pairs of 3, one tie in x: 2 / sqrt(2 * 3)
    assert pair(st, "10%", "100%")["tau"] == pytest.approx(2 / math.sqrt(6))
    p = pair(st, "50%", "100%")
    assert math.isnan(p["tau"]) and "ties" in p["note"]
    ranks = rank_columns(summarize(table({("A", 0.1): [0.5], ("B", 0.1): [0.5], ("C", 0.1): [0.3]})),
                         ranking_stability(table({("A", 0.1): [0.5], ("B", 0.1): [0.5], ("C", 0.1): [0.3]}),
                                           n_boot=5))
    assert dict(zip(ranks["encoder"], ranks["rank"], strict=True)) == {"A": 1, "B": 1, "C": 3}
    assert set(ranks["rank_of"]) == {3}


def test_bootstrap_interval_over_seeds_has_the_known_extremes():
    # at 100% encoder A wins on seed 0 (0.7 vs 0.5) and loses on seed 1 (0.4 vs 0.5); at 10% it always wins
    st = ranking_stability(table({("A", 0.1): [0.6, 0.6], ("B", 0.1): [0.5, 0.5],
                                  ("A", 1.0): [0.7, 0.4], ("B", 1.0): [0.5, 0.5]}), n_boot=500)
    p = pair(st, "10%", "100%")
    assert p["tau"] == pytest.approx(1.0)  # the means: 0.55 > 0.5
    assert (p["tau_low"], p["tau_high"]) == (pytest.approx(-1.0), pytest.approx(1.0))


def test_every_axis_makes_settings_and_too_few_common_encoders_are_named():
    cells = {("A", 1.0, "finetune", "mask2former", "a", "a"): [0.7], ("B", 1.0, "finetune", "mask2former", "a", "a"):
             [0.6], ("A", 1.0, "finetune", "linear", "a", "a"): [0.5], ("B", 1.0, "finetune", "linear", "a", "a"):
             [0.55], ("A", 1.0, "finetune", "mask2former", "a", "b"): [0.4],
             ("B", 1.0, "finetune", "mask2former", "a", "b"): [0.3], ("A", 1.0, "frozen", "mask2former", "a", "a"):
             [0.5]}
    st = ranking_stability(table(cells), n_boot=20)
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
    cells = {("A", 0.1): [0.3], ("B", 0.1): [0.4], ("C", 0.1): [0.2],  # B > A > C: disagrees
             ("A", 0.3): [0.5], ("B", 0.3): [0.4], ("C", 0.3): [0.3],  # A > B > C: agrees
             ("A", 0.6): [0.6], ("B", 0.6): [0.5], ("C", 0.6): [0.4],  # agrees, dearer
             ("A", 1.0): [0.7], ("B", 1.0): [0.6], ("C", 1.0): [0.5]}
    c = cheapest_agreeing(ranking_stability(table(cells), n_boot=20))
    assert (c.reference, c.setting, c.tau) == ("100%", "30%", pytest.approx(1.0))
    # the measured cost decides, not the fraction: here 10% was the dearest run
    c = cheapest_agreeing(ranking_stability(table(cells, cost={0.1: 500.0}), n_boot=20))
    assert c.reference == "10%" and c.setting is None
    assert "closest cheaper one is 30%" in c.reason and c.tau == pytest.approx(1 / 3)
    no_cost = table(cells).drop(columns=["train_time_s"])
    c = cheapest_agreeing(ranking_stability(no_cost, n_boot=5))
    assert c.reference is None and "training time" in c.reason


def test_train_datasets_are_settings_too():
    cells = {("A", 1.0, "finetune", "mask2former", "a", "a"): [0.7], ("B", 1.0, "finetune", "mask2former", "a", "a"):
             [0.6], ("A", 1.0, "finetune", "mask2former", "b", "b"): [0.5],
             ("B", 1.0, "finetune", "mask2former", "b", "b"): [0.55],
             ("A", 1.0, "finetune", "mask2former", "b", "a"): [0.45],
             ("B", 1.0, "finetune", "mask2former", "b", "a"): [0.35]}
    st = ranking_stability(table(cells), n_boot=20)
    assert list(st.settings["setting"]) == ["on a", "b→a", "on b"]
    assert pair(st, "on a", "on b")["tau"] == pytest.approx(-1.0)
    assert pair(st, "on a", "b→a")["tau"] == pytest.approx(1.0)
