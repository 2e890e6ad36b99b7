"""``study plan``'s memory per GPU: exact parameter counts, the precision/strategy rules, the warning's fixes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from encseg.config_io import load_run_config
from encseg.models.segmenter import build_segmenter
from encseg.study.memory import GB, _param_counts, estimate_memory, memory_warning

REPO = Path(__file__).resolve().parents[2]
ADE = REPO / "configs" / "runs" / "ade20k_m2f_vitb.yaml"


def _cfg(*overrides: str):
    return load_run_config(ADE, list(overrides))


def test_parameter_counts_are_the_built_models():
    cfg = load_run_config(REPO / "configs" / "runs" / "smoke.yaml", ["model.regime.mode=frozen"])
    enc, trainable, rest, blocks = _param_counts(cfg.model.model_dump_json(), 150, 64)
    seg = build_segmenter(cfg.model, 150, 64)
    assert enc == sum(p.numel() for p in seg.encoder.parameters()) and trainable == 0
    assert rest == sum(p.numel() for p in seg.neck.parameters()) + sum(p.numel() for p in seg.head.parameters())
    assert blocks == 4


def test_precision_and_fsdp_scale_the_parameter_memory():
    mixed = estimate_memory(_cfg("model.encoder.name=dinov3_vitl16"))
    true16 = estimate_memory(_cfg("model.encoder.name=dinov3_vitl16", "train.precision=bf16-true"))
    fsdp = estimate_memory(_cfg("model.encoder.name=dinov3_vitl16", "train.strategy=fsdp", "train.devices=8"))
    assert true16.weights == pytest.approx(mixed.weights / 2) and true16.optimizer == pytest.approx(mixed.optimizer / 2)
    assert fsdp.weights == pytest.approx(mixed.weights / 8) and fsdp.grads == pytest.approx(mixed.grads / 8)
    assert fsdp.activations == pytest.approx(mixed.activations)  # sharding does not split a process's batch
    # AdamW: two moments per trainable parameter, in the weights' precision
    assert mixed.optimizer == pytest.approx(2 * mixed.grads)
    frozen = estimate_memory(_cfg("model.encoder.name=dinov3_vitl16", "model.regime.mode=frozen"))
    assert frozen.grads < mixed.grads / 5 and frozen.activations < mixed.activations


def test_the_7b_finetune_warns_with_its_fixes_and_frozen_fits():
    big = _cfg("model.encoder.name=dinov3_vit7b16")
    est = estimate_memory(big)
    assert est.weights * GB / 4 > 6.5e9  # 6.7B parameters in fp32
    text = memory_warning(big, est, 80.0)
    assert text is not None and "exceeds 80 GB" in text
    for fix in ("model.regime.mode: frozen", "train.precision: bf16-true", "train.strategy: fsdp"):
        assert fix in text
    frozen = _cfg("model.encoder.name=dinov3_vit7b16", "model.regime.mode=frozen")
    assert memory_warning(frozen, estimate_memory(frozen), 80.0) is None


def test_plan_prints_memory_and_the_warning(tmp_path, capsys):
    import yaml

    from encseg.study.plan import plan_cli

    study = {"name": "big", "out": str(tmp_path / "out"), "base_config": str(ADE),
             "base": {"data": {"dataset": {"name": "synth_a", "root": str(tmp_path / "d"),
                                           "synthetic": {"train": 8, "val": 2, "size": 64}, "dev_size": 1}}},
             "encoders": [{"label": "7b", "encoder": {"name": "dinov3_vit7b16"}},
                          {"label": "r50", "encoder": {"name": "resnet50"}}],
             "baseline": "r50", "fractions": [1.0], "seeds": [0], "cost": {"gpu_mem_gb": 40}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    torch.manual_seed(0)
    assert plan_cli(path) == 0
    out = capsys.readouterr().out
    assert "mem/GPU" in out and "cost.gpu_mem_gb = 40" in out
    warning = next(line for line in out.splitlines() if line.startswith("warning: memory"))
    assert "(7b)" in warning and "train.strategy: fsdp" in warning
    assert "r50" not in warning
