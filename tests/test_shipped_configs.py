"""The shipped configs: every YAML under configs/ validates, the real studies expand to the documented grids,
and every real run uses the Mask2Former recipe of docs/recipes.md. Nothing is built or downloaded."""

import re
from pathlib import Path

import pytest

from encseg.config import DatasetConfig, RunConfig
from encseg.config_io import load_run_config, read_yaml, validate
from encseg.data.taxonomy import shared_space
from encseg.models.encoders import get_spec
from encseg.study.cost import study_cost
from encseg.study.grid import expand, load_study
from encseg.study.plan import format_plan

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
KINDS = ("datasets", "runs", "studies")
REAL = {"ade20k": "ade20k", "cityscapes": "cityscapes", "voc": "voc"}  # study/run prefix -> dataset format

# dotted key -> value, for every real run and every cell of the real studies (docs/recipes.md, "Recipe")
RECIPE = {
    "model.head.type": "mask2former", "model.head.hidden_dim": 256, "model.head.num_queries": 100,
    "model.head.num_attention_heads": 8, "model.head.dim_feedforward": 2048, "model.head.encoder_layers": 6,
    "model.head.decoder_layers": 10, "model.head.encoder_feedforward_dim": 1024,
    "model.head.train_num_points": 12544, "model.head.oversample_ratio": 3.0,
    "model.head.importance_sample_ratio": 0.75, "model.head.class_weight": 2.0, "model.head.mask_weight": 5.0,
    "model.head.dice_weight": 5.0, "model.head.no_object_weight": 0.1, "model.neck.channels": 256,
    "model.regime.mode": "finetune", "model.regime.layer_decay": 1.0,
    "train.optimizer": "adamw", "train.lr": 1e-4, "train.weight_decay": 0.05, "train.betas": (0.9, 0.999),
    "train.poly_power": 0.9, "train.warmup_iters": 1500, "train.grad_clip": 0.01,
    "data.scale_range": (0.5, 2.0), "data.cat_max_ratio": 0.75, "data.flip": True, "data.photometric": True,
    "eval.mode": "whole", "eval.flip": False, "eval.scales": [1.0], "eval.checkpoint": "last",
}
# dataset -> (crop, base size, iterations, eval short side)
PER_DATASET = {"ade20k": (512, 512, 160_000, 512), "cityscapes": (768, 1024, 90_000, 1024),
               "voc": (512, 512, 40_000, 512)}
LABELS = {"clip": "clip", "dinov2": "dinov2", "mae": "mae", "siglip": "siglip", "supervised": "supervised",
          "random": "random"}  # study label -> encoder family
FRACTIONS = [0.01, 0.05, 0.1, 0.25, 1.0]
SEEDS = [0, 1, 2]


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)  # configs name each other and their datasets relative to the repository root


def _yamls(kind: str) -> list[Path]:
    return sorted((CONFIGS / kind).glob("*.yaml"))


def _get(cfg: RunConfig, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _total_batch(cfg: RunConfig) -> int:
    return cfg.data.batch_size * cfg.train.devices * cfg.train.num_nodes * cfg.train.accumulate


def _check_recipe(cfg: RunConfig, dataset: str, where: str) -> None:
    wrong = {k: _get(cfg, k) for k, v in RECIPE.items() if _get(cfg, k) != v}
    assert not wrong, f"{where}: differs from the recipe at {wrong}"
    crop, base, iters, eval_size = PER_DATASET[dataset]
    got = (cfg.data.crop_size, cfg.data.base_size, cfg.train.max_iters, cfg.data.eval_size)
    assert got == (crop, base, iters, eval_size), where
    assert _total_batch(cfg) == 16, f"{where}: total batch {_total_batch(cfg)}"
    spec = get_spec(cfg.model.encoder.name)
    assert (spec.embed_dim, spec.depth) == (768, 12), f"{where}: {spec.name} is not a ViT-B"
    # a pretrained encoder keeps its checkpoint's positional grid (resampled once per input): img_size unset
    assert cfg.model.encoder.img_size is None, f"{where}: img_size would resample the positional table twice"


def test_every_config_file_is_of_a_known_kind():
    stray = [p.relative_to(REPO) for p in CONFIGS.rglob("*") if p.is_file()
             and not (p.suffix == ".yaml" and p.parent.name in KINDS and p.parent.parent == CONFIGS)]
    assert not stray, f"configs/ files that no test validates: {stray}"
    assert all(_yamls(kind) for kind in KINDS)


@pytest.mark.parametrize("path", _yamls("datasets"), ids=lambda p: p.name)
def test_dataset_configs_validate(path):
    ds = validate(DatasetConfig, read_yaml(path), str(path))
    assert ds.display_name


@pytest.mark.parametrize("path", _yamls("runs"), ids=lambda p: p.name)
def test_run_configs_validate(path):
    cfg = load_run_config(path)
    assert cfg.data.dataset.root


@pytest.mark.parametrize("path", _yamls("studies"), ids=lambda p: p.name)
def test_study_configs_expand(path):
    study = load_study(path)
    runs = expand(study)
    assert runs and len({r.tags["encoder"] for r in runs}) == len({e.label for e in study.encoders})


@pytest.mark.parametrize("dataset", REAL)
def test_run_config_is_the_recipe_on_its_dataset(dataset):
    path = CONFIGS / "runs" / f"{dataset}_m2f_vitb.yaml"
    cfg = load_run_config(path)
    _check_recipe(cfg, dataset, path.name)
    assert cfg.train.budget == "iters"  # the published schedule; the studies cap their converge budget with it
    assert cfg.model.regime.lr_mult == 0.1
    # the inlined dataset section is exactly the shipped dataset config
    shipped = validate(DatasetConfig, read_yaml(CONFIGS / "datasets" / f"{dataset}.yaml"))
    assert cfg.data.dataset == shipped
    assert cfg.data.dataset.format == REAL[dataset]


@pytest.mark.parametrize("dataset", REAL)
def test_study_grid_is_six_encoders_by_five_fractions_by_three_seeds(dataset):
    study = load_study(CONFIGS / "studies" / f"{dataset}_vitb.yaml")
    runs = expand(study)
    assert len(runs) == 6 * 5 * 3
    cells = {(r.tags["encoder"], r.data.fraction, r.seed) for r in runs}
    assert cells == {(e, f, s) for e in LABELS for f in FRACTIONS for s in SEEDS}
    assert (study.baseline.encoder, study.baseline.regime) == ("random", "finetune")
    assert {r.data.dataset.format for r in runs} == {REAL[dataset]}
    # per-seed subsets: seed s draws its subsets with subset_seed s, the same for every encoder and fraction
    assert all(r.data.subset_seed == r.seed for r in runs) and study.subset_seed == "per_seed"
    for r in runs:
        where = f"{study.name} cell {r.tags}"
        _check_recipe(r, dataset, where)
        # each cell trains until its dev curve converges, at most the published schedule (_check_recipe)
        assert r.train.budget == "converge" and 0 < r.train.min_iters < r.train.max_iters, where
        label = r.tags["encoder"]
        assert get_spec(r.model.encoder.name).family == LABELS[label], where
        # pretrained encoders at 0.1 x the head LR; random init has nothing to protect (docs/recipes.md)
        assert r.model.regime.lr_mult == (1.0 if label == "random" else 0.1), where
        assert r.model.encoder.weights == ("none" if label == "random" else "hub"), where


@pytest.mark.parametrize("dataset, cross", [("ade20k", {"cityscapes", "voc"}), ("cityscapes", {"ade20k"}),
                                            ("voc", {"ade20k"})])
def test_cross_dataset_evals_have_a_shared_label_space(dataset, cross):
    study = load_study(CONFIGS / "studies" / f"{dataset}_vitb.yaml")
    for r in expand(study):
        assert {d.display_name for d in r.eval.datasets} == cross
        for d in r.eval.datasets:
            _, _, names = shared_space(r.data.dataset.format, d.format)
            assert len(names) >= 10, f"{dataset} -> {d.display_name}: only {names}"


@pytest.mark.parametrize("dataset", REAL)
def test_slurm_tasks_match_the_devices_of_every_cell(dataset):
    study = load_study(CONFIGS / "studies" / f"{dataset}_vitb.yaml")
    for r in expand(study):  # submitit starts one task per GPU and Lightning expects one per device
        assert (study.slurm.gpus_per_node, study.slurm.nodes) == (r.train.devices, r.train.num_nodes)


def _hours(text: str) -> int:
    return int(text.replace(",", ""))


@pytest.mark.parametrize("dataset", REAL)
def test_plan_prints_the_grid_and_the_gpu_hours_documented_in_recipes(dataset):
    study = load_study(CONFIGS / "studies" / f"{dataset}_vitb.yaml")
    runs = expand(study)
    text = format_plan(study, runs)
    assert "runs: 90" in text and text.count(f"{dataset}__") == 90
    hours = study_cost(study, runs).total_gpu_hours
    # docs/recipes.md states per study: "<name>: ... = <hours> GPU-hours"
    doc = (REPO / "docs" / "recipes.md").read_text()
    stated = re.search(rf"`{study.name}`[^\n]*?= \*\*([\d,]+) GPU-hours\*\*", doc)
    assert stated, f"docs/recipes.md has no GPU-hour line for {study.name}"
    assert _hours(stated.group(1)) == round(hours)


@pytest.mark.parametrize("dataset", REAL)
def test_one_week_study_fits_one_gpu_for_a_week(dataset):
    study = load_study(CONFIGS / "studies" / f"{dataset}_vitb_week.yaml")
    runs = expand(study)
    assert all(r.train.budget == "converge" and r.train.devices * r.train.num_nodes == 1 for r in runs)
    assert study.slurm.gpus_per_node == 1 and study.baseline.label() == "random (finetune)"
    assert "random" in {r.tags["encoder"] for r in runs} and len({r.seed for r in runs}) >= 2
    cost = study_cost(study, runs)
    assert cost.unknown == 0
    # the worst case (every cell to its cap) is at most one GPU-week at the study's stated speed
    assert cost.total_gpu_hours <= 168
    readme = (REPO / "README.md").read_text()
    assert f"{dataset}_vitb_week.yaml" in readme


@pytest.mark.parametrize("name, encoder, crop, neck, regime", [
    ("ade20k_m2f_r50", "resnet50", 512, "identity", "finetune"),
    ("ade20k_m2f_swinl", "swin_large", 640, "identity", "finetune"),
    ("ade20k_m2f_dinov3_vitl_frozen", "dinov3_vitl16", 512, "simple_fpn", "frozen"),
])
def test_published_configs_are_the_published_settings(name, encoder, crop, neck, regime):
    """Mask2Former R50 / Swin-L as in its MODEL_ZOO (160k, batch 16, their crops), DINOv3 ViT-L frozen."""
    path = CONFIGS / "runs" / f"{name}.yaml"
    cfg = load_run_config(path)
    assert (cfg.model.encoder.name, cfg.data.crop_size, cfg.data.eval_size) == (encoder, crop, crop)
    assert (cfg.model.neck.type, cfg.model.regime.mode, cfg.train.max_iters) == (neck, regime, 160_000)
    assert _total_batch(cfg) == 16 and cfg.data.dataset == validate(DatasetConfig, read_yaml(CONFIGS / "datasets"
                                                                                            / "ade20k.yaml"))
    spec = get_spec(encoder)
    assert spec.hierarchical == (neck == "identity") and cfg.model.regime.freeze_bn
    text = path.read_text()
    assert {"ade20k_m2f_r50": "47.2", "ade20k_m2f_swinl": "56.1"}.get(name, "Published") in text
