"""The report opens with the answer: one sentence per encoder with intervals and caveats, then label efficiency
and ranking stability, on a fake study whose answers are known (dino matches random's 100% at exactly 25%)."""

import pandas as pd
import pytest
from _fake_runs import FakeEval, default_summary, make_config, write_run

from encseg.engine.rundir import run_id
from encseg.study import stats
from encseg.study.brief import brief_sentences
from encseg.study.insights import compute_insights
from encseg.study.report import write_report

MIOU = {  # 2 seeds; the same seed offsets everywhere, so every seed resample crosses at 25% too
    "random": {0.1: [0.19, 0.21], 0.25: [0.29, 0.31], 1.0: [0.49, 0.51]},
    "dino": {0.1: [0.39, 0.41], 0.25: [0.49, 0.51], 1.0: [0.69, 0.71]},
    "mae": {0.1: [0.24, 0.26], 0.25: [0.27, 0.29], 1.0: [0.44, 0.46]},  # beats random at 10% only
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("brief")
    (root / "study.yaml").write_text("name: brief\nbaseline: random\nencoders: {}\n")
    for enc, curve in MIOU.items():
        for frac, values in curve.items():
            for seed, m in enumerate(values):
                cfg = make_config(enc, fraction=frac, seed=seed)
                write_run(root / "runs", cfg, evals={"synth_a": FakeEval(m)},
                          summary=default_summary(cfg, run_id(cfg), train_time_s=1000.0 * frac))
    write_report(root, n_boot=200)
    return root


def test_report_opens_with_one_sentence_per_encoder(study):
    md = (study / "report.md").read_text()
    assert md.index("## In brief") < md.index("## The question") < md.index("## Label efficiency")
    brief = md.split("## In brief")[1].split("## The question")[0]
    dino = next(line for line in brief.splitlines() if line.startswith("- dino (finetune)"))
    assert "+20.0 mIoU points at 10% (95% CI [+20.0, +20.0]; only 2 seeds)" in dino
    assert "matches random (finetune)'s 100% mIoU (50.0) with 25% of the labels (4.0x fewer" in dino
    assert "interval [25%, 25%]; only 2 seeds)" in dino
    mae = next(line for line in brief.splitlines() if line.startswith("- mae (finetune)"))
    assert "does not reach random (finetune)'s 100% mIoU (50.0) at any fraction studied" in mae
    assert "-5.0 mIoU points at 100%" in mae
    # the fake runs record convergence (all converged): no caveat about unrecorded or unconverged cells
    assert "do not record whether they converged" not in brief and "did not converge" not in brief
    # the most expensive setting is 100% (1000 s per run); 10% swaps mae and random, 25% agrees
    assert "most expensive setting, 100% (1000 s of training per run), ranks dino > random > mae" in brief
    assert "The cheapest setting that ranks them the same is 25% (250 s per run; Kendall's tau = 1.00" in brief


def test_summary_and_tables_hold_the_numbers_behind_the_sentences(study):
    s = pd.read_csv(study / "summary.csv")
    dino = s[s["encoder"] == "dino"]
    assert (dino["le_status"] == "reached").all() and dino["le_fraction"].to_numpy() == pytest.approx([0.25] * 3)
    assert dino["le_factor"].to_numpy() == pytest.approx([4.0] * 3)
    assert dict(zip(s[s["fraction"] == 0.1]["encoder"], s[s["fraction"] == 0.1]["rank"], strict=True)) == {
        "dino": 1, "mae": 2, "random": 3}
    assert (s["rank_of"] == 3).all() and (s["n_converged_unknown"] == 0).all() and (s["n_unconverged"] == 0).all()
    eff = pd.read_csv(study / "label_efficiency.csv")
    assert len(eff) == 6  # 3 series x 2 references each
    tau = pd.read_csv(study / "ranking_tau.csv")
    assert len(tau) == 3 and tau["tau"].min() == pytest.approx(1 / 3)
    assert (study / "plots" / "rank_tau.png").is_file()


def test_claims_resting_on_unconverged_cells_are_flagged(study):
    results = pd.read_csv(study / "results.csv")
    # the baseline's 100% cell did not converge on seed 1: every 100% gain and every efficiency claim rests on it
    bad = (results["encoder"] == "random") & (results["fraction"] == 1.0) & (results["seed"] == 1)
    results = results.assign(converged=~bad)
    summary, ins = compute_insights(results, stats.summarize(results), "random", n_boot=50, seed=0)
    flagged = summary[summary["n_unconverged"] > 0]
    assert flagged[["encoder", "fraction", "n_unconverged"]].values.tolist() == [["random", 1.0, 1]]
    sentences = brief_sentences(summary, ins, "random", 100.0)
    dino = next(s for s in sentences if s.startswith("dino"))
    at_10, at_100 = dino.split(" and ", 1)
    assert "unconverged" not in at_10  # the 10% gain uses no unconverged run
    assert at_100.count("rests on unconverged runs") == 2  # the 100% gain and the efficiency claim
    assert "convergence not recorded" not in dino
