"""A study that mixes a ViT and a CNN encoder trains both for real and reports them side by side."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

from encseg.study.launch import run_study
from encseg.study.report import write_report

HEAD = dict(hidden_dim=32, num_queries=8, num_attention_heads=2, dim_feedforward=64, encoder_layers=1,
            encoder_feedforward_dim=64, decoder_layers=2, train_num_points=256)


@pytest.mark.slow
def test_vit_and_cnn_cells_train_and_report(tmp_path):
    synth = {"style": "a", "classes": 3, "train": 8, "val": 4, "size": 64, "seed": 0, "cue": "texture"}
    study = {
        "name": "mixed", "out": str(tmp_path / "study"),
        "base": {
            "data": {"dataset": {"name": "synth_a", "root": str(tmp_path / "data"), "synthetic": synth,
                                 "dev_size": 2},
                     "crop_size": 64, "base_size": 64, "scale_range": [1.0, 1.0], "photometric": False,
                     "batch_size": 4, "num_workers": 0, "eval_size": None},
            "model": {"neck": {"channels": 32}, "head": HEAD},
            "train": {"lr": 1e-3, "max_iters": 4, "val_every": 2, "log_every": 2, "grad_clip": 1.0},
            "eval": {"latency_iters": 1},
            "logging": {"progress_bar": "off"},
        },
        "baseline": "vit",
        "encoders": [
            {"label": "vit", "encoder": {"name": "random_vitb16", "weights": "none",
                                         "timm_kwargs": {"embed_dim": 64, "depth": 2, "num_heads": 2,
                                                         "patch_size": 8}}},
            {"label": "cnn", "encoder": {"name": "resnet50", "weights": "none",
                                         "timm_kwargs": {"layers": [1, 1, 1, 1]}}},
        ],
        "fractions": [1.0], "seeds": [0],
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    summary = run_study(path)
    assert not summary["failed"] and len(summary["done"]) == 2, summary
    report = write_report(tmp_path / "study")
    assert report.is_file()
    results = pd.read_csv(tmp_path / "study" / "results.csv")
    assert set(results["encoder"]) == {"vit", "cnn"}
    cnn = results[results["encoder"] == "cnn"].iloc[0]
    assert cnn["encoder_name"] == "resnet50" and 0.0 <= cnn["miou"] <= 1.0
    assert "cnn" in report.read_text()
