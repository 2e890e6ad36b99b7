"""The demo's claims are checked on its own results; here on hand-made tables (the demo itself takes ~20 min)."""

import pandas as pd

from encseg.study.demo import demo_study, demo_table, story_checks


def _table(rows, converged=True):
    out = []
    for enc, regime, fraction, mious in rows:
        for seed, m in enumerate(mious):
            out.append({"run_id": f"{enc}_{regime}_{fraction}_{seed}", "encoder": enc, "regime": regime,
                        "head": "mask2former", "fraction": fraction, "seed": seed, "subset_seed": seed,
                        "miou": m, "train_dataset": "synth_a",
                        "eval_dataset": "synth_a", "converged": converged, "iters_trained": 300 + seed})
    return pd.DataFrame(out)


GOOD = [("random", "finetune", 0.1, [0.24, 0.26]), ("random", "finetune", 0.3, [0.30, 0.31]),
        ("random", "finetune", 1.0, [0.40, 0.42]),
        ("pretrained_b", "finetune", 0.1, [0.40, 0.41]), ("pretrained_b", "finetune", 0.3, [0.5, 0.52]),
        ("pretrained_b", "finetune", 1.0, [0.6, 0.6]),
        ("pretrained_b", "frozen", 0.1, [0.41, 0.42]), ("pretrained_b", "frozen", 0.3, [0.46, 0.44]),
        ("pretrained_b", "frozen", 1.0, [0.45, 0.44])]


def test_story_holds_when_converged_control_wins_beyond_spread_and_no_fraction_step_falls():
    checks = story_checks(_table(GOOD))
    # converged + 2 control comparisons + 3 encoder/regimes x 2 consecutive fraction pairs
    assert len(checks) == 9 and all(ok for ok, _ in checks), checks


def test_story_fails_on_a_gain_whose_interval_includes_0_or_a_drop_beyond_the_spread_between_fractions():
    t = _table([("random", "finetune", 0.1, [0.20, 0.30]), ("random", "finetune", 0.3, [0.40, 0.41]),
                ("random", "finetune", 1.0, [0.20, 0.22]),
                ("pretrained_b", "finetune", 0.1, [0.28, 0.29]), ("pretrained_b", "finetune", 0.3, [0.5, 0.5]),
                ("pretrained_b", "finetune", 1.0, [0.49, 0.5])])
    verdict = {line.split(":")[0]: ok for ok, line in story_checks(t)}
    assert verdict["pretrained_b (finetune) vs random at 10%"] is False
    assert verdict["random (finetune) 10% -> 30%"] is True
    assert verdict["random (finetune) 30% -> 100%"] is False  # 40.5 -> 21.0, seed std at most 1.4
    assert verdict["pretrained_b (finetune) 30% -> 100%"] is True  # 50.0 -> 49.5 is inside the std 0.7


def test_story_fails_when_any_cell_did_not_converge():
    t = _table(GOOD)
    t.loc[t.index[3], "converged"] = False
    checks = story_checks(t)
    assert not checks[0][0] and t.loc[t.index[3], "run_id"] in checks[0][1]
    assert all(ok for ok, _ in checks[1:])


def test_demo_table_has_mean_std_steps_and_converged_per_cell():
    table = demo_table(_table(GOOD))
    lines = table.splitlines()
    assert len(lines) == 2 + 9
    assert "| random | finetune | 10% | 25.0 ± 1.4 | 300 / 301 | 2/2 |" in lines


def test_demo_study_is_the_grid_the_issue_asks_for(tmp_path):
    from encseg.study.grid import expand

    study = demo_study(tmp_path, tmp_path / "w.safetensors")
    cells = expand(study)
    assert len(cells) == 12
    labels = {(c.tags["encoder"], c.model.regime.mode) for c in cells}
    assert labels == {("random", "finetune"), ("pretrained_b", "finetune")}
    assert sorted({c.data.fraction for c in cells}) == [0.1, 0.3, 1.0] and {c.seed for c in cells} == {0, 1}
    assert all(c.model.head.type == "mask2former" for c in cells)
    assert {d.name for c in cells for d in c.eval.datasets} == {"synth_b"}
    assert all(c.train.budget == "converge" and c.data.dataset.dev_size == 40 for c in cells)
    # one subset per fraction for both seeds (2 seeds cannot resolve the subset variance of 20-image subsets)
    assert all(c.data.subset_seed == 0 for c in cells) and study.subset_seed == 0
    assert study.baseline.label() == "random (finetune)"
