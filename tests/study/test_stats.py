"""Statistics on hand-made tables; expected numbers come from closed forms, not from the code under test."""

import math

import numpy as np
import pandas as pd
import pytest

from encseg.study.stats import bootstrap_ci, describe, paired_test, summarize

# Student-t quantiles t_{0.975, df} in closed form: df=1 is the Cauchy distribution, df=2 has
# F(t) = 1/2 + t / (2 sqrt(2 + t^2)); df=3 from printed tables.
T975_DF1 = math.tan(math.pi * (0.975 - 0.5))  # 12.7062
T975_DF2 = (2 * 0.975 - 1) / math.sqrt(2 * 0.975 * 0.025)  # 4.3027
T975_DF3 = 3.182446305


def _p_two_sided_df2(t):
    """Two-sided p-value of a t statistic with 2 degrees of freedom: 1 - |t| / sqrt(2 + t^2)."""
    return 1 - abs(t) / math.sqrt(2 + t * t)


def test_describe_known_mean_std_ci():
    d = describe([1.0, 2.0, 3.0, 4.0])
    assert d.n == 4 and d.mean == pytest.approx(2.5)
    std = math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3)  # sqrt(5/3)
    assert d.std == pytest.approx(std)
    half = T975_DF3 * std / 2
    assert (d.ci_low, d.ci_high) == (pytest.approx(2.5 - half, abs=1e-8), pytest.approx(2.5 + half, abs=1e-8))


def test_describe_two_and_three_values_use_t_quantile():
    d = describe([0.60, 0.70])
    std = math.sqrt(2 * 0.05**2)
    assert d.std == pytest.approx(std)
    assert d.ci_high - d.mean == pytest.approx(T975_DF1 * std / math.sqrt(2))
    d3 = describe([0.5, 0.6, 0.9])
    std3 = math.sqrt(((0.5 - 2 / 3) ** 2 + (0.6 - 2 / 3) ** 2 + (0.9 - 2 / 3) ** 2) / 2)
    assert d3.ci_low == pytest.approx(2 / 3 - T975_DF2 * std3 / math.sqrt(3))


def test_describe_ignores_nan_and_handles_one_and_zero_values():
    d = describe([0.4, float("nan"), 0.6])
    assert d.n == 2 and d.mean == pytest.approx(0.5)
    one = describe([0.7, np.nan])
    assert one.n == 1 and one.mean == pytest.approx(0.7)
    assert math.isnan(one.std) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    none = describe([])
    assert none.n == 0 and math.isnan(none.mean)


def test_paired_test_matches_hand_computation():
    a = [0.70, 0.72, 0.75]
    b = [0.60, 0.65, 0.66]
    d = [x - y for x, y in zip(a, b, strict=True)]  # 0.10, 0.07, 0.09
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    t = mean / (sd / math.sqrt(3))
    r = paired_test(a, b)
    assert r.n == 3
    assert r.mean_diff == pytest.approx(mean)
    assert r.std_diff == pytest.approx(sd)
    assert r.t_stat == pytest.approx(t)
    assert r.p_ttest == pytest.approx(_p_two_sided_df2(t), rel=1e-6)
    assert r.ci_low == pytest.approx(mean - T975_DF2 * sd / math.sqrt(3))
    assert r.ci_high == pytest.approx(mean + T975_DF2 * sd / math.sqrt(3))
    assert math.isnan(r.p_wilcoxon) and "Wilcoxon" in r.note  # fewer than 6 pairs
    # the sign follows a - b
    assert paired_test(b, a).mean_diff == pytest.approx(-mean)


def test_wilcoxon_exact_p_for_six_pairs():
    # all six differences positive with distinct sizes: W- = 0; exact two-sided p = 2 / 2^6
    b = np.zeros(6)
    a = np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    assert paired_test(a, b).p_wilcoxon == pytest.approx(2 / 64)
    # the smallest difference negative: W- = 1; P(W <= 1) = 2/64, two-sided 4/64
    a2 = a.copy()
    a2[0] = -0.01
    assert paired_test(a2, b).p_wilcoxon == pytest.approx(4 / 64)


def test_paired_test_small_n_and_degenerate_cases():
    one = paired_test([0.5], [0.4])
    assert one.n == 1 and one.mean_diff == pytest.approx(0.1)
    assert math.isnan(one.p_ttest) and math.isnan(one.ci_low) and "at least 2" in one.note
    nan_pair = paired_test([0.5, np.nan], [0.4, 0.3])  # the NaN pair is dropped
    assert nan_pair.n == 1
    zero = paired_test([], [])
    assert zero.n == 0 and math.isnan(zero.mean_diff)
    same = paired_test([0.5, 0.6, 0.7], [0.4, 0.5, 0.6])  # every difference 0.1
    assert same.p_ttest == 0.0 and same.ci_low == pytest.approx(0.1) and "equal" in same.note
    with pytest.raises(ValueError, match="equally long"):
        paired_test([0.1, 0.2], [0.1])


def test_bootstrap_two_images_percentiles_are_the_two_differences():
    # with two images the resampled mean is d1 (p=1/4), (d1+d2)/2 (p=1/2) or d2 (p=1/4):
    # the 2.5% and 97.5% percentiles are d1 and d2
    r = bootstrap_ci([0.5, 0.9], [0.4, 0.6], n=4000, seed=1)  # d = 0.1, 0.3
    assert r.n_images == 2 and r.mean_diff == pytest.approx(0.2)
    assert r.ci_low == pytest.approx(0.1) and r.ci_high == pytest.approx(0.3)


def test_bootstrap_matches_normal_approximation_and_is_deterministic():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.3, 0.7, 400)
    d = rng.normal(0.05, 0.1, 400)
    a = b + d
    r = bootstrap_ci(a, b, n=4000, seed=3)
    se = d.std(ddof=0) / math.sqrt(400)  # the bootstrap's standard error of a mean
    assert r.mean_diff == pytest.approx(d.mean())
    assert r.ci_low == pytest.approx(d.mean() - 1.96 * se, abs=0.25 * se)
    assert r.ci_high == pytest.approx(d.mean() + 1.96 * se, abs=0.25 * se)
    assert bootstrap_ci(a, b, n=4000, seed=3) == r
    # constant difference: no uncertainty at all; NaN images are dropped
    c = bootstrap_ci([0.5, 0.6, np.nan, 0.8], [0.4, 0.5, 0.1, 0.7], n=500)
    assert c.n_images == 3 and c.ci_low == pytest.approx(0.1) and c.ci_high == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same images"):
        bootstrap_ci([0.1, 0.2], [0.1])


def _table():
    """random: 3 seeds per fraction; pre: seeds 0,1 only at 10% (n paired = 2), 3 seeds at 100%."""
    rows = []
    values = {
        ("random", 0.1): [0.50, 0.54, 0.52], ("random", 1.0): [0.80, 0.82, 0.81],
        ("pre", 0.1): [0.60, 0.66], ("pre", 1.0): [0.83, 0.84, 0.86],
    }
    for (enc, frac), mious in values.items():
        for seed, m in enumerate(mious):
            rows.append({"run_id": f"{enc}_{frac}_{seed}", "encoder": enc, "regime": "finetune",
                         "train_dataset": "a", "eval_dataset": "a", "cross": False, "fraction": frac,
                         "seed": seed, "subset_seed": 0, "miou": m, "macc": m + 0.1, "aacc": m + 0.2,
                         "fwiou": m, "epochs_to_converge": 10.0 + seed, "time_to_converge_s": 1.0,
                         "train_time_s": 2.0, "infer_ms_per_image": 5.0, "gflops": 1.0, "params_total": 10,
                         "params_trainable": 10})
    return pd.DataFrame(rows)


def test_summarize_means_cis_and_paired_gain():
    s = summarize(_table(), baseline="random").set_index(["encoder", "fraction"])
    base = s.loc[("random", 0.1)]
    assert base["n_seeds"] == 3 and base["miou_mean"] == pytest.approx(0.52)
    assert base["miou_std"] == pytest.approx(0.02)  # deviations -0.02, 0.02, 0 -> var 0.0004
    assert base["miou_ci_high"] == pytest.approx(0.52 + T975_DF2 * 0.02 / math.sqrt(3))
    assert base["macc_mean"] == pytest.approx(0.62) and base["epochs_to_converge_mean"] == pytest.approx(11.0)
    assert base["gain_note"] == "baseline" and math.isnan(base["gain_miou"])

    small = s.loc[("pre", 0.1)]  # pairs on seeds 0 and 1: differences 0.10 and 0.12
    assert small["n_seeds"] == 2 and small["gain_n"] == 2
    assert small["gain_miou"] == pytest.approx(0.11)
    sd = math.sqrt(2 * 0.01**2)
    assert small["gain_ci_low"] == pytest.approx(0.11 - T975_DF1 * sd / math.sqrt(2))
    t = 0.11 / (sd / math.sqrt(2))
    # df = 1: two-sided p = 1 - 2 atan(|t|) / pi
    assert small["gain_p_ttest"] == pytest.approx(1 - 2 * math.atan(t) / math.pi)
    # the baseline columns describe the paired runs (seeds 0 and 1), not all three baseline seeds
    assert small["baseline_miou_mean"] == pytest.approx(0.52)
    assert small["baseline_miou_std"] == pytest.approx(math.sqrt(0.0008))

    full = s.loc[("pre", 1.0)]  # differences 0.03, 0.02, 0.05
    d = [0.03, 0.02, 0.05]
    mean = sum(d) / 3
    sd3 = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    assert full["gain_miou"] == pytest.approx(mean)
    assert full["gain_p_ttest"] == pytest.approx(_p_two_sided_df2(mean / (sd3 / math.sqrt(3))), rel=1e-6)
    assert math.isnan(full["gain_boot_low"])  # no per-image scores given


def test_baseline_columns_describe_the_runs_the_gain_pairs_with():
    """The baseline has a third seed the encoder lacks: mean - baseline mean must still equal the gain."""
    table = _table()
    table.loc[(table["encoder"] == "random") & (table["fraction"] == 0.1) & (table["seed"] == 2), "miou"] = 0.90
    s = summarize(table, baseline="random").set_index(["encoder", "fraction"])
    row = s.loc[("pre", 0.1)]
    assert row["gain_n"] == 2 and row["baseline_miou_mean"] == pytest.approx(0.52)
    assert row["miou_mean"] - row["baseline_miou_mean"] == pytest.approx(row["gain_miou"])
    assert s.loc[("random", 0.1), "baseline_miou_mean"] == pytest.approx((0.50 + 0.54 + 0.90) / 3)  # itself


def test_summarize_bootstrap_and_missing_baseline():
    table = _table()
    per_image = []
    for rid in table["run_id"]:
        offset = 0.1 if rid.startswith("pre") else 0.0
        per_image += [{"run_id": rid, "eval_dataset": "a", "image": i, "miou": 0.5 + offset + 0.01 * i}
                      for i in range(5)]
    s = summarize(table, per_image=pd.DataFrame(per_image), n_boot=300).set_index(["encoder", "fraction"])
    row = s.loc[("pre", 0.1)]
    # every image gains exactly 0.1 -> a degenerate interval at 0.1
    assert row["gain_boot_images"] == 5
    assert row["gain_boot_low"] == pytest.approx(0.1) and row["gain_boot_high"] == pytest.approx(0.1)

    no_base = summarize(table[table["encoder"] == "pre"], baseline="random")
    assert no_base["gain_miou"].isna().all()
    assert no_base["gain_note"].str.contains("no random").all()
    with pytest.raises(ValueError, match="miou"):
        summarize(table.drop(columns=["miou"]))
