"""The report opens with the answer: one sentence per encoder with intervals and caveats, then label efficiency
and ranking stability, on a fake study whose answers are known (dino matches random's 100% at exactly 25%)."""

import re

import pandas as pd
import pytest
from _fake_runs import FakeEval, default_summary, make_config, pooled_areas, write_run

from encseg.engine.rundir import run_id
from encseg.study import stats
from encseg.study.brief import brief_sentences
from encseg.study.insights import compute_insights
from encseg.study.report import write_report

NOISE = [(0.004, -0.003, -0.001), (-0.002, 0.003, -0.001), (0.001, 0.002, -0.003), (-0.004, 0.001, 0.003)]
MEANS = {  # 3 seeds around these means
    "random": {0.1: 0.20, 0.25: 0.30, 1.0: 0.50},
    "dino": {0.1: 0.40, 0.25: 0.50, 1.0: 0.70},
    "mae": {0.1: 0.25, 0.25: 0.28, 1.0: 0.499},  # beats random at 10%; ties it at 100%
}
IMAGES = 20


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("brief")
    (root / "study.yaml").write_text("name: brief\nbaseline: {encoder: random, regime: finetune}\nencoders: {}\n")
    for k, (enc, curve) in enumerate(MEANS.items()):
        for j, (frac, mean) in enumerate(curve.items()):
            for seed, e in enumerate(NOISE[(k + j) % len(NOISE)]):
                m = round(mean + e, 3)
                cfg = make_config(enc, fraction=frac, seed=seed, subset_seed=seed)
                ev = FakeEval(m, areas=pooled_areas(m, IMAGES, shift=k) if frac != 0.25 else None)
                write_run(root / "runs", cfg, evals={"synth_a": ev},
                          summary=default_summary(cfg, run_id(cfg), train_time_s=1000.0 * frac))
    write_report(root, n_boot=200)
    return root


def _brief(study) -> str:
    md = (study / "report.md").read_text()
    assert md.index("## In brief") < md.index("## The question") < md.index("## Label efficiency")
    return md.split("## In brief")[1].split("## The question")[0]


def test_report_opens_with_one_sentence_per_encoder(study):
    brief = _brief(study)
    dino = next(line for line in brief.splitlines() if line.startswith("- dino (finetune)"))
    assert re.search(r"\+20\.0 mIoU points at 10% \(95% CI over training seeds \[\+19\.\d, \+20\.\d\]; "
                     r"significant after Holm's adjustment over the 4 gains stated here, p < 0\.001\)", dino)
    assert "matches random (finetune)'s 100% mIoU (50.0) with 25% of the labels (4.0x fewer" in dino
    mae = next(line for line in brief.splitlines() if line.startswith("- mae (finetune)"))
    assert "does not reach random (finetune)'s 100% mIoU (50.0) at any fraction studied" in mae
    assert "-0.1 mIoU points at 100% (95% CI over training seeds [-" in mae and "includes 0" in mae
    # the fake runs record convergence (all converged): no caveat about unrecorded or unconverged cells
    assert "do not record whether they converged" not in brief and "did not converge" not in brief
    # the most expensive setting is 100%: mae ties random there; 10% orders all three
    assert "most expensive setting, 100% (1000 s of training per run), ranks dino > random ≈ mae" in brief


def test_no_claim_says_includes_0_beside_an_interval_that_excludes_it(study):
    for line in _brief(study).splitlines():
        for low, high, rest in re.findall(r"\[([-+]\d+\.\d), ([-+]\d+\.\d)\]([^;)]*[;)][^;)]*)", line):
            if "includes 0" in rest:
                assert float(low) <= 0 <= float(high), line


def test_holm_adjusts_over_exactly_the_gains_the_brief_states(study):
    s = pd.read_csv(study / "summary.csv")
    stated = s[s["in_brief"]]
    assert sorted(zip(stated["encoder"], stated["fraction"], strict=True)) == [
        ("dino", 0.1), ("dino", 1.0), ("mae", 0.1), ("mae", 1.0)]  # the 25% gains are not stated
    assert stated["gain_p_holm"].to_numpy() == pytest.approx(stats.holm(stated["gain_p"].to_numpy()))
    assert s.loc[~s["in_brief"], "gain_p_holm"].isna().all()


def test_image_intervals_contain_the_printed_gain_or_say_why_there_is_none(study):
    s = pd.read_csv(study / "summary.csv")
    gains = s[s["gain_note"] != "baseline"]
    with_areas = gains[gains["fraction"] != 0.25]
    assert (with_areas["gain_boot_images"] == IMAGES).all()
    # the bootstrap resamples the printed quantity: the dataset-level gain from the same areas as eval/*.json
    assert ((with_areas["gain_boot_low"] <= with_areas["gain_miou"] + 1e-12)
            & (with_areas["gain_miou"] - 1e-12 <= with_areas["gain_boot_high"])).all()
    assert (with_areas["gain_boot_high"] - with_areas["gain_boot_low"] > 0).all()
    old = gains[gains["fraction"] == 0.25]  # runs without _areas.npz (written before the engine stored them)
    assert old["gain_boot_low"].isna().all() and old["gain_boot_note"].str.contains("no per-image areas").all()


def test_summary_and_tables_hold_the_numbers_behind_the_sentences(study):
    s = pd.read_csv(study / "summary.csv")
    dino = s[s["encoder"] == "dino"]
    assert (dino["le_status"] == "reached").all() and dino["le_fraction"].to_numpy() == pytest.approx([0.25] * 3)
    assert dino["le_factor"].to_numpy() == pytest.approx([4.0] * 3)
    assert dict(zip(s[s["fraction"] == 0.1]["encoder"], s[s["fraction"] == 0.1]["rank"], strict=True)) == {
        "dino": 1, "mae": 2, "random": 3}
    at_100 = s[s["fraction"] == 1.0]
    assert dict(zip(at_100["encoder"], at_100["rank"], strict=True)) == {"dino": 1, "mae": 2, "random": 2}
    assert (s["rank_of"] == 3).all() and (s["n_converged_unknown"] == 0).all() and (s["n_unconverged"] == 0).all()
    eff = pd.read_csv(study / "label_efficiency.csv")
    assert len(eff) == 6  # 3 series x 2 references each
    assert (study / "plots" / "rank_tau.png").is_file()


def test_every_heading_appears_once_and_the_protocol_has_no_raw_json(study):
    md = (study / "report.md").read_text()
    headings = [line for line in md.splitlines() if line.startswith("#")]
    assert len(headings) == len(set(headings))
    protocol = md.split("## Protocol")[1]
    assert "{" not in protocol and "### Convergence criterion" in protocol
    assert "includes the periodic validation" in md


def test_claims_resting_on_unconverged_cells_are_flagged(study):
    results = pd.read_csv(study / "results.csv")
    # the baseline's 100% cell did not converge on seed 1: every 100% gain and every efficiency claim rests on it
    bad = (results["encoder"] == "random") & (results["fraction"] == 1.0) & (results["seed"] == 1)
    results = results.assign(converged=~bad)
    summary, ins = compute_insights(results, stats.summarize(results), "random", "finetune", n_boot=50, seed=0)
    flagged = summary[summary["n_unconverged"] > 0]
    assert flagged[["encoder", "fraction", "n_unconverged"]].values.tolist() == [["random", 1.0, 1]]
    sentences = brief_sentences(summary, ins, 100.0)
    dino = next(s for s in sentences if s.startswith("dino"))
    at_10, at_100 = dino.split(" and ", 1)
    assert "unconverged" not in at_10  # the 10% gain uses no unconverged run
    assert at_100.count("rests on unconverged runs") == 2  # the 100% gain and the efficiency claim
    assert "convergence not recorded" not in dino


def test_the_protocol_says_whether_the_seed_intervals_cover_the_choice_of_labelled_images(study):
    from encseg.study.brief import _subsets_protocol

    assert "each seed of a cell trains on its own subsets" in (study / "report.md").read_text()
    shared = pd.DataFrame({"seed": [0, 1, 0, 1], "subset_seed": [0, 0, 0, 0]})
    text = _subsets_protocol(shared, ["10%: 100 iterations"])
    assert "subset_seed 0: the seeds share these subsets" in text and "do not cover" in text
