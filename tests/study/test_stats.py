"""Statistics on hand-made tables; expected numbers come from closed forms, not from the code under test."""

import math

import numpy as np
import pandas as pd
import pytest

from encseg.study import moderation
from encseg.study.stats import describe, holm, paired_test, summarize

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


def _table(head: str = "mask2former"):
    """random: 3 seeds per fraction; pre: seeds 0,1 only at 10% (n paired = 2), 3 seeds at 100%."""
    rows = []
    values = {
        ("random", 0.1): [0.50, 0.54, 0.52], ("random", 1.0): [0.80, 0.82, 0.81],
        ("pre", 0.1): [0.60, 0.66], ("pre", 1.0): [0.83, 0.84, 0.86],
    }
    for (enc, frac), mious in values.items():
        for seed, m in enumerate(mious):
            rows.append({"run_id": f"{enc}_{frac}_{seed}_{head}", "encoder": enc, "regime": "finetune",
                         "head": head,
                         "train_dataset": "a", "eval_dataset": "a", "cross": False, "fraction": frac,
                         "seed": seed, "subset_seed": 0, "miou": m, "macc": m + 0.1, "aacc": m + 0.2,
                         "fwiou": m, "epochs_to_converge": 10.0 + seed, "time_to_converge_s": 1.0,
                         "train_time_s": 2.0, "infer_ms_per_image": 5.0, "gflops": 1.0, "params_total": 10,
                         "params_trainable": 10})
    return pd.DataFrame(rows)


def test_summarize_gains_without_a_prior_are_the_plain_paired_t():
    """Two gains are too few to fit a prior: each keeps its own t interval and test (and says so)."""
    s = summarize(_table(), baseline="random").set_index(["encoder", "fraction"])
    base = s.loc[("random", 0.1)]
    assert base["n_seeds"] == 3 and base["miou_mean"] == pytest.approx(0.52)
    assert base["miou_std"] == pytest.approx(0.02)  # deviations -0.02, 0.02, 0 -> var 0.0004
    assert base["macc_mean"] == pytest.approx(0.62) and base["epochs_to_converge_mean"] == pytest.approx(11.0)
    assert base["gain_note"] == "baseline" and math.isnan(base["gain_miou"])

    small = s.loc[("pre", 0.1)]  # pairs on seeds 0 and 1: differences 0.10 and 0.12
    assert small["n_seeds"] == 2 and small["gain_n"] == 2
    assert small["gain_miou"] == pytest.approx(0.11)
    sd = math.sqrt(2 * 0.01**2)
    assert small["gain_ci_low"] == pytest.approx(0.11 - T975_DF1 * sd / math.sqrt(2))
    t = 0.11 / (sd / math.sqrt(2))
    assert small["gain_p"] == pytest.approx(1 - 2 * math.atan(t) / math.pi)  # df = 1
    assert small["gain_df"] == 1 and "Student t" in small["gain_method"] and "at least 3" in small["gain_method"]
    # the baseline columns describe the paired runs (seeds 0 and 1), not all three baseline seeds
    assert small["baseline_miou_mean"] == pytest.approx(0.52)
    assert small["baseline_miou_std"] == pytest.approx(math.sqrt(0.0008))

    full = s.loc[("pre", 1.0)]  # differences 0.03, 0.02, 0.05
    d = [0.03, 0.02, 0.05]
    mean = sum(d) / 3
    sd3 = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    assert full["gain_miou"] == pytest.approx(mean)
    assert full["gain_p"] == pytest.approx(_p_two_sided_df2(mean / (sd3 / math.sqrt(3))), rel=1e-6)
    assert math.isnan(full["gain_boot_low"]) and full["gain_boot_note"] == "no per-image areas given"


def test_summarize_cell_means_are_moderated_across_the_cells():
    s = summarize(_table(), baseline="random").set_index(["encoder", "fraction"])
    var = {("random", 0.1): 0.0004, ("random", 1.0): 0.0001, ("pre", 0.1): 0.0018, ("pre", 1.0): 0.07 ** 2 / 21}
    n = {("random", 0.1): 3, ("random", 1.0): 3, ("pre", 0.1): 2, ("pre", 1.0): 3}
    prior = moderation.fit_prior(np.array(list(var.values())), np.array([n[k] - 1 for k in var]),
                                 df_pooled=float(s["miou_df"].iloc[0]))
    assert prior.fitted and "moderated" in s["miou_ci_method"].iloc[0]
    post, df = moderation.moderate(np.array(list(var.values())), np.array([n[k] - 1.0 for k in var]), prior)
    for (key, v), p, d in zip(var.items(), post, df, strict=True):
        row = s.loc[key]
        assert row["miou_std"] == pytest.approx(math.sqrt(v))  # the cell's own std is still reported
        half = moderation.t_quantile(d, 0.95) * math.sqrt(p / n[key])
        assert row["miou_ci_high"] - row["miou_mean"] == pytest.approx(half)


def _many_gains(n_seeds=3, offsets=(0.0, 0.01, -0.01)):
    """A baseline and 4 encoders at one fraction; encoder e gains 0.05 * e with its own seed noise."""
    rng = np.random.default_rng(0)
    rows = []
    for e in range(5):
        for seed in range(n_seeds):
            rows.append({"run_id": f"e{e}_{seed}", "encoder": "random" if e == 0 else f"e{e}", "regime": "finetune",
                         "head": "mask2former", "train_dataset": "a", "eval_dataset": "a", "fraction": 1.0,
                         "seed": seed, "subset_seed": seed,
                         "miou": 0.5 + 0.05 * e + offsets[seed % len(offsets)] + 0.01 * rng.standard_normal()})
    return pd.DataFrame(rows)


def test_moderated_gains_borrow_degrees_of_freedom_from_the_other_gains():
    table = _many_gains()
    s = summarize(table, baseline="random").set_index("encoder")
    gains = s.drop(index="random")
    assert "moderated" in gains["gain_method"].iloc[0]
    assert (gains["gain_df"] > 2).all()  # more than the 2 of each gain's own seeds ...
    assert (gains["gain_df"] <= 4 * 2).all()  # ... never more than the group's (k - 1)(n - 1) residual df
    own_widths = []
    for enc, r in gains.iterrows():
        own = paired_test(table[table["encoder"] == enc]["miou"], table[table["encoder"] == "random"]["miou"])
        assert r["gain_miou"] == pytest.approx(own.mean_diff)
        own_widths.append(own.ci_high - own.ci_low)
        half = moderation.t_quantile(r["gain_df"], 0.95) * r["gain_std_moderated"] / math.sqrt(3)
        assert r["gain_ci_high"] - r["gain_miou"] == pytest.approx(half)
        assert r["gain_p"] == pytest.approx(moderation.t_pvalue(r["gain_miou"] / (r["gain_std_moderated"] / math.sqrt(3)),
                                                                r["gain_df"]))
    # shrinking towards the shared variance: narrower on average (a gain with a lucky small variance widens)
    assert (gains["gain_ci_high"] - gains["gain_ci_low"]).mean() < np.mean(own_widths)


def test_one_seed_cells_get_the_prior_and_missing_seeds_pair_what_is_there():
    table = _many_gains()
    table = table[~((table["encoder"] == "e1") & (table["seed"] > 0))]  # e1 has seed 0 only
    table = table[~((table["encoder"] == "e2") & (table["seed"] == 2))]  # e2 lacks seed 2
    s = summarize(table, baseline="random").set_index("encoder")
    one = s.loc["e1"]
    assert one["gain_n"] == 1 and math.isnan(one["gain_std"]) and "prior" in one["gain_note"]
    assert one["gain_ci_low"] < one["gain_miou"] < one["gain_ci_high"]  # an interval from the prior alone
    assert one["n_seeds"] == 1 and math.isfinite(one["miou_ci_low"])
    assert s.loc["e2", "gain_n"] == 2


def test_head_is_part_of_the_cell_and_of_the_baseline_match():
    table = pd.concat([_table("mask2former"), _table("linear")], ignore_index=True)
    table.loc[table["head"] == "linear", "miou"] -= 0.2
    s = summarize(table, baseline="random")
    assert len(s) == 8 and set(s["head"]) == {"mask2former", "linear"}
    lin = s[(s["head"] == "linear") & (s["encoder"] == "random") & (s["fraction"] == 0.1)].iloc[0]
    assert lin["miou_mean"] == pytest.approx(0.32)  # not averaged with the Mask2Former cell
    gain = s[(s["head"] == "linear") & (s["encoder"] == "pre") & (s["fraction"] == 0.1)].iloc[0]
    assert gain["gain_miou"] == pytest.approx(0.11) and gain["baseline_miou_mean"] == pytest.approx(0.32)
    no_head = summarize(_table().drop(columns=["head"]), baseline="random")
    assert set(no_head["head"]) == {"mask2former"}


def test_baseline_regime_is_a_setting():
    table = _table()
    frozen = table[table["encoder"] == "random"].assign(regime="frozen", miou=lambda d: d["miou"] - 0.1,
                                                        run_id=lambda d: d["run_id"] + "_frozen")
    table = pd.concat([table, frozen], ignore_index=True)
    s = summarize(table, baseline="random", baseline_regime="frozen").set_index(["encoder", "regime", "fraction"])
    assert s.loc[("random", "frozen", 0.1), "gain_note"] == "baseline"
    assert s.loc[("random", "finetune", 0.1), "gain_miou"] == pytest.approx(0.1)
    assert s.loc[("pre", "finetune", 1.0), "baseline"] == "random (frozen)"


def test_summarize_missing_baseline_and_columns():
    table = _table()
    no_base = summarize(table[table["encoder"] == "pre"], baseline="random")
    assert no_base["gain_miou"].isna().all()
    assert no_base["gain_note"].str.contains("no random").all()
    with pytest.raises(ValueError, match="miou"):
        summarize(table.drop(columns=["miou"]))


def test_holm_step_down_by_hand():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 with m = 4: 0.04, 0.09, max(0.09, 0.08) = 0.09, max(0.09, 0.5) = 0.5
    assert holm(p)[[0, 2, 1, 4]] == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert math.isnan(holm(p)[3])
    assert holm(np.array([0.6, 0.7])) == pytest.approx([1.0, 1.0])  # capped at 1
