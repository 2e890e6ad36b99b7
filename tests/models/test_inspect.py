"""``encseg inspect`` on the tiny encoder: shapes.json, one picture per tap, pyramid shapes when necks exist."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pytest
from PIL import Image

from encseg.cli import main
from encseg.models.inspect import inspect_encoder, pca_rgb, synthetic_scene

TINY_YAML = "{embed_dim: 64, depth: 4, num_heads: 2, patch_size: 8}"


def test_inspect_cli_writes_shapes_and_pictures(tmp_path):
    out = tmp_path / "inspect"
    rc = main(["inspect", "--encoder", "vit_base_patch16_224", "--weights", "none", "--size", "64",
               "--timm-kwargs", TINY_YAML, "--out", str(out)])
    assert rc == 0
    rec = json.loads((out / "shapes.json").read_text())
    assert rec["input_size"] == [64, 64] and rec["tap_indices"] == [0, 1, 2, 3]
    assert rec["taps"] == [[1, 64, 8, 8]] * 4
    assert rec["weights"]["format"] == "none"
    if importlib.util.find_spec("encseg.models.necks") is None:
        assert rec["pyramid"] is None
    else:
        assert [p[2:] for p in rec["pyramid"]] == [[16, 16], [8, 8], [4, 4], [2, 2]]
    assert rec["pictures"] == [f"tap{k}_block{k}.png" for k in range(4)]
    for name in rec["pictures"]:
        png = np.asarray(Image.open(out / name).convert("RGB"))
        assert png.shape[0] > 100 and png.std() > 10  # a real picture, not a blank canvas


def test_inspect_given_image_non_square(tmp_path):
    img = tmp_path / "photo.png"
    Image.fromarray(synthetic_scene(60, 90, seed=3)).save(img)
    rec = inspect_encoder("sam_vitb16", weights="none", image=img, out=tmp_path / "o", size=40,
                          timm_kwargs=dict(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=[1],
                                           window_size=2))
    assert rec["input_size"] == [40, 60]  # short side resized to `size`, aspect kept
    assert rec["taps"][-1] == [1, 32, math.ceil(40 / 16), math.ceil(60 / 16)]
    assert len(list((tmp_path / "o").glob("tap*.png"))) == 4


def test_inspect_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        inspect_encoder("random_vitb16", image=tmp_path / "nope.png", out=tmp_path, size=32,
                        timm_kwargs=TINY_YAML)
    with pytest.raises(ValueError, match="YAML mapping"):
        inspect_encoder("random_vitb16", out=tmp_path, size=32, timm_kwargs="[1, 2]")


def test_pca_rgb_separates_regions():
    feat = np.zeros((16, 4, 4), np.float32)
    feat[0, :2] = 5.0  # two regions that differ along one feature direction
    import torch

    rgb = pca_rgb(torch.from_numpy(feat) + 0.01 * torch.randn(16, 4, 4))
    assert rgb.shape == (3, 4, 4) and 0 <= rgb.min() and rgb.max() <= 1
    assert abs(rgb[0, :2].mean() - rgb[0, 2:].mean()) > 0.9  # the first component splits them


def test_inspect_a_hierarchical_backbone(tmp_path):
    rec = inspect_encoder("convnext_tiny", weights="none", out=tmp_path / "c", size=64,
                          timm_kwargs=dict(depths=[1, 1, 1, 1], dims=[16, 32, 64, 128]))
    assert rec["taps"] == [[1, 16, 16, 16], [1, 32, 8, 8], [1, 64, 4, 4], [1, 128, 2, 2]]
    assert [p[1:] for p in rec["pyramid"]] == [[256, 16, 16], [256, 8, 8], [256, 4, 4], [256, 2, 2]]
    assert len(list((tmp_path / "c").glob("tap*.png"))) == 4
