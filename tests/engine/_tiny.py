"""A tiny run config shared by the engine and study tests (ViT dim 96/depth 2/patch 8, Mask2Former hidden 32)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from encseg.config_io import deep_merge

TINY_MODEL: dict[str, Any] = {
    "encoder": {"name": "random_vitb16", "weights": "none",
                "timm_kwargs": {"embed_dim": 96, "depth": 2, "num_heads": 3, "patch_size": 8}},
    "neck": {"type": "simple_fpn", "channels": 32},
    "head": {"hidden_dim": 32, "num_queries": 8, "num_attention_heads": 2, "dim_feedforward": 64,
             "encoder_layers": 1, "encoder_feedforward_dim": 64, "decoder_layers": 3, "train_num_points": 512},
    "regime": {"mode": "finetune", "lr_mult": 1.0},
}


def tiny_config(root: Path, **updates: Any) -> dict[str, Any]:
    cfg = {
        "seed": 0,
        "data": {"dataset": {"name": "synth", "format": "folder", "root": str(root)},
                 "crop_size": 64, "base_size": 64, "scale_range": [1.0, 1.0], "photometric": False,
                 "batch_size": 4, "num_workers": 0, "eval_size": None},
        "model": TINY_MODEL,
        "train": {"lr": 2e-3, "max_iters": 20, "warmup_iters": 0, "grad_clip": 1.0, "val_every": 10,
                  "log_every": 5},
        "eval": {"latency_iters": 1},
        "logging": {"progress_bar": "off"},
    }
    return deep_merge(cfg, updates)
