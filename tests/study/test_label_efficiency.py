"""Label efficiency on hand-made result tables whose crossings are known in closed form."""

import math

import numpy as np
import pandas as pd
import pytest

from encseg.study.label_efficiency import (
    BY_SMALLEST,
    NOT_REACHED,
    REACHED,
    _interval,
    _log_value,
    crossing,
    draw_means,
    label_efficiency,
    log_crossings,
    summary_columns,
)
from encseg.study.stats import summarize


def table(curves: dict, converged: dict | None = None, train="a", evaluate="a") -> pd.DataFrame:
    """``curves[(encoder, regime)][fraction] = [mIoU of seed 0, seed 1, ...]`` -> a results table."""
    rows = []
    for (enc, regime), by_fraction in curves.items():
        for fraction, values in by_fraction.items():
            for seed, m in enumerate(values):
                row = {"run_id": f"{enc}_{regime}_{fraction}_{seed}", "encoder": enc, "regime": regime,
                       "head": "mask2former", "train_dataset": train, "eval_dataset": evaluate,
                       "fraction": fraction, "seed": seed, "subset_seed": 0, "miou": m, "cross": train != evaluate,
                       "train_time_s": 100.0 * fraction}
                if converged is not None:
                    row["converged"] = converged.get((enc, regime, fraction), True)
                rows.append(row)
    return pd.DataFrame(rows)


def row(eff: pd.DataFrame, encoder: str, reference: str = "random (finetune)") -> pd.Series:
    sel = eff[(eff["encoder"] == encoder) & (eff["regime"] == "finetune") & (eff["reference"] == reference)]
    assert len(sel) == 1
    return sel.iloc[0]


BASE = {0.1: [0.19, 0.21, 0.20], 0.25: [0.29, 0.31, 0.30], 0.5: [0.39, 0.41, 0.40], 1.0: [0.49, 0.51, 0.50]}


def test_an_encoder_matching_the_baseline_at_exactly_25_percent():
    good = {0.1: [0.39, 0.41, 0.40], 0.25: [0.49, 0.51, 0.50], 0.5: [0.59, 0.61, 0.60], 1.0: [0.69, 0.71, 0.70]}
    eff = label_efficiency(table({("random", "finetune"): BASE, ("dino", "finetune"): good}), n_boot=300)
    r = row(eff, "dino")
    assert r["status"] == REACHED
    assert r["target_miou"] == pytest.approx(0.50) and r["reference_fraction"] == 1.0
    assert r["fraction"] == pytest.approx(0.25) and r["factor"] == pytest.approx(4.0)
    # seed sd 0.01 on a curve that rises 0.1 per step: the crossing is known to within the neighbouring steps
    assert 0.1 < r["fraction_low"] < 0.25 < r["fraction_high"] < 0.5
    assert r["factor_low"] == pytest.approx(1.0 / r["fraction_high"]) and "moderated" in r["interval_method"]
    assert r["n_seeds"] == 3 and r["n_boot_used"] == 300
    # the baseline against dino's 70% at 100%: never reached within the study, and not extrapolated
    back = row(eff, "random", "dino (finetune)")
    assert back["status"] == NOT_REACHED and math.isnan(back["fraction"]) and math.isnan(back["factor"])
    assert back["fraction_low"] == math.inf  # not reached in any resample either


def test_interpolation_is_linear_in_log_fraction():
    # 0.4 at 10%, 0.6 at 100%: the target 0.5 is half-way on the log axis, at sqrt(0.1)
    c = crossing([0.1, 1.0], [0.4, 0.6], 0.5)
    assert c.status == REACHED and c.fraction == pytest.approx(math.sqrt(0.1))
    # a quarter of the way: 10 ** (-1 + 0.25)
    assert crossing([1.0, 0.1], [0.6, 0.4], 0.45).fraction == pytest.approx(10 ** -0.75)  # order-free input


def test_first_crossing_counts_and_nan_points_are_skipped():
    # reaches at 30%, dips below at 60%: the smallest fraction that reached the target is the answer
    c = crossing([0.1, 0.3, 0.6, 1.0], [0.2, 0.5, 0.4, 0.7], 0.5)
    assert c.status == REACHED and c.fraction == pytest.approx(0.3) and c.upper_index == 1
    assert crossing([0.1, 0.3, 1.0], [0.2, math.nan, 0.8], 0.5).fraction == pytest.approx(
        math.exp(math.log(0.1) + 0.5 * (math.log(1.0) - math.log(0.1))))


def test_reached_at_the_smallest_fraction_is_a_bound_not_a_guess():
    c = crossing([0.1, 0.5, 1.0], [0.55, 0.6, 0.7], 0.5)
    assert c.status == BY_SMALLEST and c.fraction == 0.1
    strong = {0.1: [0.54, 0.56, 0.55], 1.0: [0.79, 0.81, 0.80]}
    eff = label_efficiency(table({("random", "finetune"): {0.1: [0.2] * 3, 1.0: [0.5] * 3},
                                  ("dino", "finetune"): strong}), n_boot=100)
    r = row(eff, "dino")
    assert r["status"] == BY_SMALLEST and r["fraction"] == 0.1 and r["factor"] == pytest.approx(10.0)
    assert r["fraction_low"] == 0.0 and r["factor_high"] == math.inf  # no lower bound inside the study


def test_parametric_draws_follow_the_moderated_t():
    rng_means = draw_means(np.array([0.5, 0.3, 0.7]), np.array([0.1, 0.02, np.nan]), np.array([np.inf, 5.0, 2.0]),
                           n_boot=40_000, seed=0)
    assert rng_means[0] == pytest.approx([0.5, 0.3, 0.7])  # row 0: the point estimate
    assert rng_means[1:, 0].std() == pytest.approx(0.1, rel=0.02)  # normal where df is infinite
    assert rng_means[1:, 1].var() == pytest.approx(0.02**2 * 5 / 3, rel=0.05)  # t(5): variance 5/3
    assert np.isnan(rng_means[1:, 2]).all()  # no standard error: the cell cannot be drawn


def test_interval_percentiles_keep_censoring():
    logs = np.concatenate([np.full(30, -np.inf), np.log(np.linspace(0.2, 0.8, 940)), np.full(30, np.inf)])
    low, high = _interval(logs, 0.95)
    assert low == 0.0 and high == math.inf  # more than 2.5% censored on each side: no bound there
    low, high = _interval(logs[30:-30], 0.95)
    assert 0.2 < low < 0.25 and 0.75 < high < 0.8


def test_censored_resamples_keep_their_meaning():
    # seed 1 alone reaches the target already at 10%; seed 0 alone never reaches it
    base = {1.0: [0.5, 0.5]}
    enc = {0.1: [0.2, 0.55], 1.0: [0.45, 0.65]}
    r = row(label_efficiency(table({("random", "finetune"): base, ("dino", "finetune"): enc}), n_boot=2000),
            "dino")
    assert r["status"] == REACHED  # the mean curve: 0.375 at 10%, 0.55 at 100%
    assert r["fraction_low"] == 0.0 and r["fraction_high"] == math.inf


def test_no_100_percent_uses_the_largest_fraction_as_reference():
    eff = label_efficiency(table({("random", "finetune"): {0.1: [0.2], 0.5: [0.4]},
                                  ("dino", "finetune"): {0.1: [0.3], 0.5: [0.6]}}), n_boot=10)
    r = row(eff, "dino")
    assert r["reference_fraction"] == 0.5 and r["target_miou"] == pytest.approx(0.4)
    assert r["fraction"] == pytest.approx(0.1 * 5 ** (1 / 3))  # a third of the way from 0.3 to 0.6
    assert r["factor"] == pytest.approx(0.5 / r["fraction"]) and r["n_seeds"] == 1
    # one seed per cell and no prior (no cell has a seed variance): the study cannot bound the fraction
    assert math.isnan(r["fraction_low"]) and math.isnan(r["fraction_high"]) and r["n_boot_used"] == 0


def test_claims_say_when_they_rest_on_unconverged_cells():
    good = {0.1: [0.4] * 3, 0.25: [0.5] * 3, 1.0: [0.7] * 3}
    curves = {("random", "finetune"): {0.1: [0.2] * 3, 0.25: [0.3] * 3, 1.0: [0.5] * 3},
              ("dino", "finetune"): good}
    # dino's 100% cell lies beyond its crossing at 25%: the claim does not rest on it
    eff = label_efficiency(table(curves, converged={("dino", "finetune", 1.0): False}), n_boot=10)
    assert row(eff, "dino")["rests_on_unconverged"] == "no"
    eff = label_efficiency(table(curves, converged={("random", "finetune", 1.0): False}), n_boot=10)
    assert row(eff, "dino")["rests_on_unconverged"] == "yes"  # the reference cell itself
    eff = label_efficiency(table(curves, converged={("dino", "finetune", 0.1): False}), n_boot=10)
    assert row(eff, "dino")["rests_on_unconverged"] == "yes"
    assert row(label_efficiency(table(curves), n_boot=10), "dino")["rests_on_unconverged"] == "unknown"


def test_summary_gains_the_baseline_columns_and_bad_input_is_named():
    good = {0.1: [0.39, 0.41, 0.40], 0.25: [0.49, 0.51, 0.50], 1.0: [0.69, 0.71, 0.70]}
    results = table({("random", "finetune"): BASE, ("dino", "finetune"): good})
    out = summary_columns(summarize(results), label_efficiency(results, n_boot=10), "random", "finetune")
    dino = out[out["encoder"] == "dino"]
    assert len(dino) == 3 and (dino["le_status"] == REACHED).all()
    assert dino["le_factor"].to_numpy() == pytest.approx([4.0] * 3)
    assert out[out["encoder"] == "random"]["le_status"].isna().all()
    with pytest.raises(ValueError, match="miou"):
        label_efficiency(results.drop(columns=["miou"]))


def test_vectorised_crossings_agree_with_the_one_by_one_definition():
    rng = np.random.default_rng(1)
    fractions = [0.5, 0.05, 0.1, 1.0, 0.25]
    means = rng.uniform(0.0, 1.0, size=(400, 5))
    means[::37, 2] = np.nan  # a fraction without a drawn seed in some resamples
    targets = rng.uniform(0.0, 1.0, size=400)
    targets[5] = np.nan
    got = log_crossings(fractions, means, targets)
    expected = np.array([_log_value(crossing(fractions, m, t)) for m, t in zip(means, targets, strict=True)])
    np.testing.assert_allclose(got, expected)
    assert {-np.inf, np.inf} <= set(got[np.isinf(got)])  # both censored kinds occur in this draw
