"""`study plan` on converge budgets: expected and worst-case iterations and GPU-hours next to the fixed
schedule's, by the cost model documented in docs/recipes.md."""

from pathlib import Path

import pytest
import yaml

from encseg.engine.schedule import steps_per_epoch
from encseg.study.cost import converge_cost, expected_converge_iters, study_cost
from encseg.study.grid import expand, load_study
from encseg.study.plan import format_plan


def _study(tmp_path: Path, **changes) -> dict:
    """2 encoders x 2 fractions x 1 seed on the converge budget; a synthetic set of 80 train images."""
    data = {
        "name": "conv",
        "out": str(tmp_path / "study"),
        "base": {"data": {"crop_size": 64, "base_size": 64, "batch_size": 4},
                 "train": {"budget": "converge", "max_iters": 400, "min_iters": 20, "val_every": 5},
                 "model": {"encoder": {"name": "vit_tiny_patch16_224", "timm_kwargs": {"depth": 2}}}},
        "encoders": [{"label": "random", "encoder": {"weights": "none"}},
                     {"label": "pretrained_b", "encoder": {"weights": "none"}, "regime": {"mode": "frozen"}}],
        "train_datasets": [{"name": "synth_a", "root": str(tmp_path / "a"), "dev_size": 0.1,
                            "synthetic": {"style": "a", "train": 80, "val": 8}}],
        "fractions": [0.25, 1.0],
        "seeds": [0],
        "cost": {"sec_per_iter": 2.0, "device": "test GPU"},
    }
    data.update(changes)
    return data


def _load(tmp_path: Path, data: dict):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    study = load_study(path)
    return study, expand(study)


def test_expected_iterations_follow_the_documented_model(tmp_path):
    _, runs = _load(tmp_path, _study(tmp_path))
    cfg = runs[0]  # batch 4, val_every 5, patience 5, anneal 0.2, min_iters 20, max_iters 400
    assert steps_per_epoch(40, cfg.data.batch_size, 1, cfg.train.accumulate) == 10
    # 3 epochs x 10 steps + 5 x 5 = 55 -> anneal ceil(0.2 x 55 / 5) x 5 = 15 -> 70
    assert expected_converge_iters(cfg, 40, 3.0) == 70
    # min_iters floors the plateau: 1 epoch = 10 + 25 = 35 < 50 -> 50 + ceil(2) x 5 = 60
    small = cfg.model_copy(update={"train": cfg.train.model_copy(update={"min_iters": 50})})
    assert expected_converge_iters(small, 40, 1.0) == 60
    # max_iters caps it: 40 epochs = 400 + 25 -> 400
    assert expected_converge_iters(cfg, 40, 40.0) == 400


def test_plan_prints_expected_worst_and_fixed(tmp_path):
    study, runs = _load(tmp_path, _study(tmp_path))
    cost = study_cost(study, runs)
    cc = converge_cost(runs, cost)
    assert cc.cells == 4 and cc.worst_iters == 4 * 400
    assert cc.worst_gpu_hours == pytest.approx(1600 * 2.0 / 3600)
    # default epochs: the longest max_iters over the whole pool; the 100 % cells are then capped at max_iters
    pool = cost.cells[0].pool_images
    epochs = 400 / steps_per_epoch(pool, runs[0].data.batch_size, 1, runs[0].train.accumulate)
    small = next(c for r, c in zip(runs, cost.cells, strict=True) if r.data.fraction == 0.25)
    per_small = expected_converge_iters(runs[0], small.train_images, epochs)
    assert cc.per_fraction == {0.25: [per_small, per_small], 1.0: [400, 400]}
    assert cc.expected_iters == 2 * per_small + 800 < cc.worst_iters
    text = format_plan(study, runs)
    assert f"converge budget, 4 runs: expected {cc.expected_iters} iterations" in text
    assert "worst case (every run to max_iters): 1600 iterations, 0.9 GPU-hours" in text
    assert "fixed schedule (budget iters, max_iters for every run): 1600 iterations, 0.9 GPU-hours" in text
    assert "until the dev curve converges (min_iters 20, max_iters 400)" in text


def test_stated_epochs_and_sizes_of_datasets_not_on_disk(tmp_path):
    data = _study(tmp_path, cost={"sec_per_iter": 1.0, "converge_epochs": 2.0, "train_images": {"real": 400}})
    data["train_datasets"] = [{"name": "real", "format": "folder", "root": str(tmp_path / "absent"),
                               "dev_size": 0.1}]
    study, runs = _load(tmp_path, data)
    cost = study_cost(study, runs)
    assert all(c.train_images is not None for c in cost.cells) and not cost.notes
    cc = converge_cost(runs, cost, study.cost.converge_epochs)
    assert cc.unknown == 0
    assert all(c.iterations == 400 for c in cost.cells)  # the per-cell column is the cap
    got = {f: v[0] for f, v in cc.per_fraction.items()}
    want = {r.data.fraction: expected_converge_iters(r, c.train_images, 2.0)
            for r, c in zip(runs, cost.cells, strict=True)}
    assert got == want and got[1.0] < 400  # two stated epochs end well before the cap
    assert "epochs = 2 (cost.converge_epochs)" in format_plan(study, runs)

    # without a stated size the cell is unknown and the expected figure counts it at max_iters
    data["cost"] = {"sec_per_iter": 1.0}
    study, runs = _load(tmp_path, data)
    cost = study_cost(study, runs)
    cc = converge_cost(runs, cost)
    assert cc.unknown == 4 and cc.expected_iters == cc.worst_iters
    assert "cost.train_images can give its size" in format_plan(study, runs)


def test_fixed_budget_study_prints_no_converge_lines(tmp_path):
    data = _study(tmp_path)
    data["base"]["train"] = {"budget": "iters", "max_iters": 100}
    study, runs = _load(tmp_path, data)
    assert converge_cost(runs, study_cost(study, runs)) is None
    assert "converge budget" not in format_plan(study, runs)
