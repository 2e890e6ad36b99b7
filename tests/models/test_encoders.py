"""The encoder zoo: names, taps, shapes at any input size, layer ids, and the table."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from encseg.config import EncoderConfig
from encseg.models.encoders import (
    TapError,
    build_encoder,
    get_spec,
    list_encoders,
    register_encoder,
    resolve_taps,
)
from encseg.models.zoo_table import print_encoder_table

TINY = dict(embed_dim=64, depth=4, num_heads=2)
FAMILY_TINY = {  # one entry per family, shrunk through timm_kwargs
    "clip_openai_vitb16": TINY,
    "clip_laion_vitl14": TINY,
    "dinov2_vitb14_reg": TINY,
    "mae_vitb16": TINY,
    "siglip_vitb16": TINY,
    "siglip2_vitb16": TINY,
    "eva02_vitb14": TINY,
    "sam_vitb16": dict(TINY, global_attn_indexes=[1, 3], window_size=4),
    "supervised_vitb16": TINY,
    "random_vitb16": TINY,
    "dinov3_vits16": TINY,
    "pe_spatial_vitb16": TINY,
    "pe_core_vitb16": TINY,
    "aimv2_vitl14": TINY,
    "tipsv2_vitb14": TINY,
}


def test_every_family_has_a_tiny_case():
    """ViT families here; hierarchical ones (ResNet, Swin, ConvNeXt) in test_hierarchical.py."""
    vit_families = {get_spec(n).family for n in list_encoders() if not get_spec(n).hierarchical}
    assert {get_spec(n).family for n in FAMILY_TINY} == vit_families


@pytest.mark.parametrize("name", list(FAMILY_TINY))
def test_family_builds_and_taps_any_size(name):
    enc = build_encoder(EncoderConfig(name=name, weights="none", timm_kwargs=FAMILY_TINY[name]), 64).eval()
    spec = get_spec(name)
    assert (enc.patch_size, enc.depth, enc.embed_dim) == (spec.patch, 4, 64)
    assert enc.tap_indices == [0, 1, 2, 3]
    assert (enc.mean, enc.std) == (spec.mean, spec.std)
    for h, w in [(64, 64), (72, 50)]:  # 72 and 50 divide by neither 14 nor 16
        with torch.no_grad():
            taps = enc(torch.randn(2, 3, h, w))
        shape = (2, 64, math.ceil(h / enc.patch_size), math.ceil(w / enc.patch_size))
        assert [tuple(t.shape) for t in taps] == [shape] * 4
        assert all(torch.isfinite(t).all() for t in taps)
    # every parameter left after pruning is used, and has a layer id for layer-wise LR decay
    sum(t.square().mean() for t in enc(torch.randn(1, 3, 64, 64))).backward()
    unused = [n for n, p in enc.named_parameters() if p.grad is None]
    assert not unused
    # the family's dense protocol keeps the final norm (layer id depth + 1) for every tap
    assert enc.feature_norm == spec.feature_norm
    assert {enc.layer_id(n) for n, _ in enc.named_parameters()} == set(range(6 if spec.feature_norm else 5))


@pytest.mark.parametrize("feature_norm", [False, None])
def test_taps_are_block_outputs_without_prefix_tokens_raw_or_normed_as_the_family_does(feature_norm):
    """Against a hand-run of the timm blocks: class + 4 register tokens removed; raw with feature_norm false,
    through the final norm by default (DINOv2's dense protocol, get_intermediate_layers(norm=True))."""
    enc = build_encoder(EncoderConfig(name="dinov2_vitb14_reg", weights="none", taps=[0.5, 1.0],
                                      timm_kwargs=TINY, feature_norm=feature_norm), 56).eval()
    vit = enc.vit
    assert vit.num_prefix_tokens == 5 and enc.feature_norm is (feature_norm is None)
    assert isinstance(vit.norm, torch.nn.Identity) is (feature_norm is False)
    with torch.no_grad():
        torch.nn.init.normal_(vit.norm.weight) if feature_norm is None else None  # a norm that is not identity
    x = torch.randn(1, 3, 56, 70)
    with torch.no_grad():
        t = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        outs = []
        for blk in vit.blocks:
            t = blk(t)
            outs.append(vit.norm(t)[:, 5:].reshape(1, 4, 5, 64).permute(0, 3, 1, 2))
        got = enc(x)
    assert enc.tap_indices == [1, 3]
    torch.testing.assert_close(got[0], outs[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(got[1], outs[3], rtol=0, atol=1e-5)


@pytest.mark.parametrize("taps,depth,want", [
    ([0.25, 0.5, 0.75, 1.0], 12, [2, 5, 8, 11]),
    ([0.25, 0.5, 0.75, 1.0], 24, [5, 11, 17, 23]),
    ([1.0], 12, [11]),  # 1.0 is always "the last block"
    ([0, 1], 12, [0, 1]),  # a value outside (0, 1] makes the list block indices
    ([3, 7, 11], 12, [3, 7, 11]),
    ([-1, 5], 12, [11, 5]),
    ([0.1], 4, [0]),
])
def test_resolve_taps(taps, depth, want):
    assert resolve_taps(taps, depth) == want


@pytest.mark.parametrize("taps", [[0.5, 3], [12], [2.5], [], [-13]])
def test_bad_taps_raise(taps):
    with pytest.raises(TapError, match="taps"):
        resolve_taps(taps, 12)


def test_layer_ids_and_pruning():
    enc = build_encoder(EncoderConfig(name="random_vitb16", taps=[0.5], timm_kwargs=TINY), 64)
    assert enc.load_report.format == "none"  # random entries default to random init
    assert len(enc.vit.blocks) == 2 and enc.depth == 4  # blocks after the last tap are pruned
    ids = {n: enc.layer_id(n) for n, _ in enc.named_parameters()}
    assert ids["vit.cls_token"] == ids["vit.pos_embed"] == ids["vit.patch_embed.proj.weight"] == 0
    assert ids["vit.blocks.0.attn.qkv.weight"] == 1 and ids["vit.blocks.1.mlp.fc2.bias"] == 2
    assert set(ids.values()) == {0, 1, 2}  # final norm and head are gone: every parameter is used
    assert enc.layer_id("encoder.vit.blocks.3.norm1.weight") == 4  # names relative to a parent module
    assert enc.layer_id("blocks.2.ls1.gamma") == 3
    assert enc.layer_id("vit.norm.weight") == enc.layer_id("vit.head.weight") == 5


def test_img_size_sets_pos_embed_grid_of_a_random_init():
    enc = build_encoder(EncoderConfig(name="mae_vitb16", weights="none", timm_kwargs=TINY), 96)
    assert enc.vit.pos_embed.shape[1] == 1 + 6 * 6
    enc = build_encoder(EncoderConfig(name="mae_vitb16", weights="none", img_size=64, timm_kwargs=TINY), 96)
    assert enc.vit.pos_embed.shape[1] == 1 + 4 * 4


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError) as err:
        get_spec("dinov2_vitb16")
    msg = str(err.value)
    assert isinstance(err.value, KeyError)
    assert "Did you mean" in msg and "'dinov2_vitb14'" in msg.split("Known encoders")[0]
    assert all(n in msg for n in list_encoders())
    with pytest.raises(ValueError, match="neither a ViT nor a hierarchical backbone"):
        get_spec("mixer_b16_224")  # a timm model, but neither a ViT we tap nor a 4-stage pyramid
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder(EncoderConfig(name="vit_base_patch16_224.no_such_tag"), 64)


def test_escape_hatch_any_timm_vit():
    spec = get_spec("vit_small_patch16_224.augreg_in21k")
    assert (spec.family, spec.arch, spec.hub_tag) == ("timm", "vit_small_patch16_224", "augreg_in21k")
    assert (spec.patch, spec.embed_dim, spec.depth) == (16, 384, 12)
    assert spec.mean == (0.5, 0.5, 0.5)  # from timm's pretrained_cfg
    enc = build_encoder(EncoderConfig(name="vit_base_patch16_224", weights="none",
                                      timm_kwargs=dict(TINY, patch_size=8)), 64)
    assert [tuple(t.shape) for t in enc(torch.randn(1, 3, 64, 64))] == [(1, 64, 8, 8)] * 4


def test_zoo_entries_resolve_in_timm():
    """Every entry names a timm architecture and tag that exist; shapes and mean/std are timm's own."""
    pretrained = set(timm.list_models(pretrained=True))
    for name in list_encoders():
        spec = get_spec(name)
        if spec.family == "random":
            assert spec.hub_tag is None and spec.default_weights == "none" and spec.native_size is None, name
        else:
            assert spec.pretrained_name in pretrained and spec.default_weights == "hub", name
            assert spec.native_size == timm.models.get_pretrained_cfg(spec.pretrained_name).input_size[-1], name
    assert get_spec("siglip_vitb16").pretrained_name.endswith(".webli")
    assert get_spec("siglip2_vitb16").pretrained_name.endswith(".v2_webli")
    assert "quickgelu" in get_spec("clip_openai_vitb16").arch
    assert get_spec("clip_laion_vitl14").norm_name == "0.5/0.5"  # from timm's pretrained_cfg, not a table


def test_register_encoder_by_keyword(monkeypatch):
    import encseg.models.zoo as zoo

    monkeypatch.setattr(zoo, "_ZOO", dict(zoo._ZOO))  # the entry must not leak into other tests
    register_encoder("test_vit_tiny_in21k", model="vit_tiny_patch16_224.augreg_in21k", family="mine",
                     notes="user entry")
    spec = get_spec("test_vit_tiny_in21k")
    assert (spec.patch, spec.embed_dim, spec.depth, spec.native_size) == (16, 192, 12, 224)
    assert spec.family == "mine" and "test_vit_tiny_in21k" in list_encoders("mine")
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("test_vit_tiny_in21k", model="vit_tiny_patch16_224", family="mine", norm="imagenet")
    with pytest.raises(ValueError, match="norm"):
        register_encoder("test_untagged", model="vit_tiny_patch16_224", family="mine")  # no tag, no norm
    with pytest.raises(ValueError, match="formats"):
        register_encoder("test_badfmt", model="vit_tiny_patch16_224.augreg_in21k", family="m", formats=("zip",))


def test_encoder_table(capsys):
    from encseg.cli import main

    assert main(["encoders"]) == 0
    out = capsys.readouterr().out
    for name in list_encoders():
        assert name in out
    assert "timm/vit_base_patch14_dinov2.lvd142m" in out and "params" not in out
    print_encoder_table(params=True)
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("dinov2_vitb14 "))
    assert "86.6M" in row and "imagenet" in row and "dinov2,timm" in row and " 518 " in row


def test_encoder_table_lists_the_2025_families_and_hierarchical_backbones(capsys):
    print_encoder_table()
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line and not line.startswith(("-", " "))}
    for name in ("dinov3_vits16", "dinov3_vit7b16", "dinov3_convnext_tiny", "pe_spatial_vitb16", "aimv2_vitl14",
                 "resnet50", "swin_large", "convnext_tiny", "siglip2_so400m16", "tipsv2_vitb14"):
        assert name in rows, name
    assert "feature_norm" in out.splitlines()[0]
    assert "final norm" in rows["dinov3_vitl16"] and "dinov3,timm" in rows["dinov3_vitl16"]
    assert "final norm" in rows["dinov2_vitb14"] and " raw " in rows["mae_vitb16"]
    r50 = rows["resnet50"]
    assert "256/512/1024/2048" in r50 and "4 stages" in r50 and "stages" in r50 and "resnet50.tv_in1k" in r50
    assert "0.5/0.5" in rows["pe_spatial_vitb16"] and "custom" in rows["dinov3_vitl16_sat"]  # their own mean/std
