"""Positional embeddings are resampled at most once between a released checkpoint and the input.

For every family, a released-layout checkpoint (random weights, tiny width, real input sizes) goes through
``build_encoder`` at the shipped run configs' crop sizes. The reference is the released model itself, built at
its native size: where the padded crop's grid is the native grid (DINOv2 at 512 -> 518 = 37 x 14) it runs
without any resampling; elsewhere timm resamples its table once, on the fly, to the padded grid.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from _ckpt_layouts import mae_encoder, timm_reference, to_dinov2, to_eva02, to_sam
from safetensors.torch import save_file

from encseg.config import EncoderConfig, ModelConfig
from encseg.models.encoders import build_encoder
from encseg.models.segmenter import build_segmenter, load_segmenter, save_segmenter

TINY = dict(embed_dim=64, depth=3, num_heads=2)
SAM = dict(TINY, global_attn_indexes=[1], window_size=4)
RUN_CONFIGS = sorted(Path(__file__).parents[2].joinpath("configs", "runs").glob("*_m2f_*.yaml"))
CROPS = sorted({yaml.safe_load(p.read_text())["data"]["crop_size"] for p in RUN_CONFIGS})


def _timm_file(sd, path):
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))


# name, timm arch, native px, release-layout writer, file name, extra timm kwargs
FAMILIES = {
    "dinov2": ("dinov2_vits14", "vit_small_patch14_dinov2", 518, lambda sd, p: torch.save(to_dinov2(sd), p),
               "dinov2_vits14_pretrain.pth", TINY),
    "dinov2_reg": ("dinov2_vits14_reg", "vit_small_patch14_reg4_dinov2", 518,
                   lambda sd, p: torch.save(to_dinov2(sd), p), "dinov2_vits14_reg4_pretrain.pth", TINY),
    "clip": ("clip_openai_vitb16", "vit_base_patch16_clip_quickgelu_224", 224, _timm_file,
             "open_clip_model.safetensors", TINY),
    "mae": ("mae_vitb16", "vit_base_patch16_224", 224, lambda sd, p: torch.save(mae_encoder(sd), p),
            "mae_pretrain_vit_base.pth", TINY),
    "siglip": ("siglip_vitb16", "vit_base_patch16_siglip_224", 224, _timm_file, "siglip.safetensors", TINY),
    "eva02": ("eva02_vitb14", "eva02_base_patch14_224", 224, lambda sd, p: torch.save(to_eva02(sd), p),
              "eva02_B_pt_in21k_p14.pt", TINY),
    "sam": ("sam_vitb16", "samvit_base_patch16", 1024, lambda sd, p: torch.save(to_sam(sd), p),
            "sam_vit_b_01ec64.pth", SAM),
    "supervised": ("supervised_vitb16", "vit_base_patch16_224", 224, _timm_file, "augreg.safetensors", TINY),
}


def test_shipped_crops_are_read():
    assert 512 in CROPS and len(RUN_CONFIGS) >= 3


def _release(tmp_path, family):
    name, arch, native, write, fname, kw = FAMILIES[family]
    dynamic = {} if arch.startswith("samvit") else dict(dynamic_img_size=True)
    ref = timm_reference(arch, img_size=native, **dynamic, **kw)
    write(ref.state_dict(), tmp_path / fname)
    return name, ref, tmp_path / fname, kw


@pytest.mark.parametrize("crop", CROPS)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_release_features_at_shipped_crops(tmp_path, family, crop):
    name, ref, path, kw = _release(tmp_path, family)
    enc = build_encoder(EncoderConfig(name=name, weights=str(path), taps=[0, 1, 2], timm_kwargs=kw), crop).eval()
    p = enc.patch_size
    padded = math.ceil(crop / p) * p
    x = torch.randn(1, 3, crop, crop, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = enc(x)
        want = ref.forward_intermediates(F.pad(x, (0, padded - crop, 0, padded - crop)), indices=[0, 1, 2],
                                         norm=enc.feature_norm, output_fmt="NCHW", intermediates_only=True)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape == (1, 64, padded // p, padded // p)
        assert (g - w).abs().max().item() <= 1e-5, (family, crop, (g - w).abs().max().item())
    assert enc.pos_size == FAMILIES[family][2]  # nothing resampled at load


def test_dinov2_at_a_512_crop_is_the_native_model(tmp_path):
    """The ADE20K default: a 512 crop is padded to 518, DINOv2's own 37 x 37 grid; with ``img_size: null`` the
    features are the released model's, with no resampling anywhere (main resampled 37 -> 36 -> 37)."""
    arch = "vit_small_patch14_dinov2"
    native = timm_reference(arch, img_size=518, **TINY)  # no dynamic size: the original forward
    torch.save(to_dinov2(native.state_dict()), tmp_path / "dinov2_vits14_pretrain.pth")
    cfg = EncoderConfig(name="dinov2_vits14", weights=str(tmp_path / "dinov2_vits14_pretrain.pth"),
                        taps=[0, 1, 2], timm_kwargs=TINY)
    enc = build_encoder(cfg, 512).eval()
    x = torch.randn(2, 3, 512, 512, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = enc(x)
        want = native.forward_intermediates(F.pad(x, (0, 6, 0, 6)), indices=enc.tap_indices, norm=True,
                                            output_fmt="NCHW", intermediates_only=True)  # DINOv2's protocol
    assert max((g - w).abs().max().item() for g, w in zip(got, want, strict=True)) <= 1e-5
    assert tuple(enc.vit.patch_embed.grid_size) == (37, 37)


def test_img_size_against_the_checkpoint_grid_is_refused(tmp_path):
    name, _, path, kw = _release(tmp_path, "dinov2")
    build_encoder(EncoderConfig(name=name, weights=str(path), img_size=518, timm_kwargs=kw), 512)  # agrees: fine
    with pytest.raises(ValueError, match="img_size=770 .* 518 px"):
        build_encoder(EncoderConfig(name=name, weights=str(path), img_size=770, timm_kwargs=kw), 768)


def test_segmenter_slide_and_reload_keep_the_checkpoint_grid(tmp_path):
    """Training, slide windows and a reloaded run all see the checkpoint's table, never a resampled copy."""
    name, _, path, kw = _release(tmp_path, "dinov2")
    model = ModelConfig.model_validate({"encoder": {"name": name, "weights": str(path), "timm_kwargs": kw},
                                        "head": {"type": "linear"}})
    seg = build_segmenter(model, num_classes=3, img_size=100).eval()
    assert seg.encoder.pos_size == 518
    table = seg.encoder.vit.pos_embed.detach().clone()
    scores = seg.inference(torch.randn(1, 3, 120, 90), mode="slide", crop=64)
    assert scores.shape == (1, 3, 120, 90)
    loaded, meta = load_segmenter(save_segmenter(seg, tmp_path / "run"))
    assert meta["encoder_pos_size"] == 518 and torch.equal(loaded.encoder.vit.pos_embed, table)


def test_random_init_builds_for_the_padded_crop():
    enc = build_encoder(EncoderConfig(name="random_vitb14", weights="none", timm_kwargs=TINY), 512)
    assert tuple(enc.vit.patch_embed.grid_size) == (37, 37)
    enc = build_encoder(EncoderConfig(name="random_vitb14", weights="none", img_size=224, timm_kwargs=TINY), 512)
    assert enc.pos_size == 224


def test_inspect_uses_the_checkpoint_grid(tmp_path):
    from encseg.models.inspect import inspect_encoder

    name, _, path, kw = _release(tmp_path, "dinov2")
    rec = inspect_encoder(name, weights=str(path), out=tmp_path / "o", size=512, timm_kwargs=kw)
    assert rec["pos_embed_size"] == 518 and rec["taps"][0][-2:] == [37, 37]
