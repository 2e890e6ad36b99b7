"""Original release checkpoints (random weights, original key names) load into the zoo's encoders exactly."""

from __future__ import annotations

import pytest
import torch
from _ckpt_layouts import mae_encoder, mae_training, randomize, timm_reference, to_dinov2, to_eva02, to_sam
from safetensors.torch import save_file

from encseg.config import EncoderConfig
from encseg.models.encoders import build_encoder
from encseg.models.weights import WeightsError, detect_format, open_checkpoint

TINY = dict(embed_dim=64, depth=3, num_heads=2)
ATOL = 1e-5


def _encoder(name, path, taps, size, ignore=(), **kw):
    cfg = EncoderConfig(name=name, weights=str(path), taps=taps, timm_kwargs={**TINY, **kw},
                        ignore_prefixes=list(ignore))
    return build_encoder(cfg, size).eval()


def _ref_taps(ref, x, taps, norm=False):
    """timm's own taps of the reference; ``norm``: through the final norm, as the family's protocol reads them."""
    with torch.no_grad():
        return ref.forward_intermediates(x, indices=taps, norm=norm, output_fmt="NCHW", intermediates_only=True)


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        assert (g - w).abs().max().item() <= ATOL, (g - w).abs().max().item()


# ------------------------------------------------------------------------------------------- CLIP
def _open_clip_model(quick_gelu: bool):
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = CLIP(embed_dim=32, quick_gelu=quick_gelu,
                 vision_cfg=CLIPVisionCfg(layers=3, width=64, head_width=32, patch_size=16, image_size=64),
                 text_cfg=CLIPTextCfg(context_length=8, vocab_size=50, width=32, heads=2, layers=1))
    return randomize(model)


def _open_clip_taps(model, x):
    with torch.no_grad():
        return model.visual.forward_intermediates(x, indices=[0, 1, 2], intermediates_only=True)["image_intermediates"]


def test_openai_torchscript_archive_matches_open_clip(tmp_path):
    """OpenAI released TorchScript archives; the features must match open_clip's own QuickGELU forward."""
    ref = _open_clip_model(quick_gelu=True)
    x = torch.randn(2, 3, 64, 64)
    path = tmp_path / "ViT-B-16.pt"
    traced = torch.jit.trace_module(ref, {"encode_image": x}, check_trace=False)
    torch.jit.save(traced, str(path))
    assert not any(k.startswith("visual.trunk") for k in open_checkpoint(path)[0])

    enc = _encoder("clip_openai_vitb16", path, [0, 1, 2], 64)
    _assert_same(enc(x), _open_clip_taps(ref, x))
    rep = enc.load_report
    assert (rep.format, rep.container) == ("clip", "torchscript")
    assert sorted(rep.ignored) == ["head.bias", "head.weight"]  # visual.proj, the image-text projection

    # the GELU architecture with the same weights drifts: that is why OpenAI entries use the QuickGELU arch
    gelu = _encoder("clip_laion_vitb16", path, [2], 64)
    assert (gelu(x)[0] - _open_clip_taps(ref, x)[2]).abs().max() > 10 * ATOL


@pytest.mark.parametrize("suffix", [".bin", ".safetensors"])
def test_openclip_state_dict_matches_open_clip(tmp_path, suffix):
    ref = _open_clip_model(quick_gelu=False)
    path = tmp_path / f"open_clip_pytorch_model{suffix}"
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(sd, str(path)) if suffix == ".safetensors" else torch.save(sd, path)
    x = torch.randn(1, 3, 64, 64)
    enc = _encoder("clip_laion_vitl14", path, [0, 1, 2], 64, patch_size=16)
    _assert_same(enc(x), _open_clip_taps(ref, x))
    assert enc.load_report.format == "clip"


def test_openclip_timm_trunk_siglip(tmp_path):
    """open_clip's SigLIP checkpoints wrap a timm trunk: visual.trunk.* next to the text tower."""
    ref = timm_reference("vit_base_patch16_siglip_224", img_size=64, **TINY)
    sd = {f"visual.trunk.{k}": v for k, v in ref.state_dict().items()}
    sd["text.transformer.resblocks.0.attn.in_proj_weight"] = torch.randn(96, 32)
    sd["logit_bias"] = torch.zeros(1)
    torch.save(sd, tmp_path / "open_clip_pytorch_model.bin")
    enc = _encoder("siglip_vitb16", tmp_path / "open_clip_pytorch_model.bin", [0, 2], 64)
    assert enc.load_report.format == "openclip_timm" and enc.vit.num_prefix_tokens == 0
    x = torch.randn(1, 3, 64, 64)
    _assert_same(enc(x), _ref_taps(ref, x, [0, 2]))


# ------------------------------------------------------------------------------ timm-rewritten layouts
@pytest.mark.parametrize("name,arch,kw", [
    ("dinov2_vits14", "vit_small_patch14_dinov2", {}),
    ("dinov2_vitb14_reg", "vit_base_patch14_reg4_dinov2", {}),
    ("dinov2_vitg14", "vit_giant_patch14_dinov2", dict(embed_dim=48)),  # SwiGLU w12/w3 keys
])
def test_dinov2_release_layout(tmp_path, name, arch, kw):
    ref = timm_reference(arch, img_size=56, **{**TINY, **kw})
    sd = to_dinov2(ref.state_dict())
    assert "mask_token" in sd and "blocks.0.ls1.gamma" in sd
    torch.save(sd, tmp_path / "dinov2_pretrain.pth")
    enc = _encoder(name, tmp_path / "dinov2_pretrain.pth", [0, 2], 56, **kw)
    assert enc.load_report.format == "dinov2"
    x = torch.randn(1, 3, 56, 56)
    _assert_same(enc(x), _ref_taps(ref, x, [0, 2], norm=True))  # DINOv2's protocol: normed taps


def test_pos_embed_keeps_the_checkpoint_grid(tmp_path):
    """A checkpoint made at 56 px, trained at a 70 px crop: the table stays 4 x 4 and each input resamples it
    once, exactly as timm resampling the release table on the fly."""
    ref = timm_reference("vit_small_patch14_dinov2", img_size=56, dynamic_img_size=True, **TINY)
    torch.save(to_dinov2(ref.state_dict()), tmp_path / "d.pth")
    enc = _encoder("dinov2_vits14", tmp_path / "d.pth", [2], 70)
    assert enc.vit.pos_embed.shape[1] == 1 + 4 * 4 and enc.pos_size == 56
    x = torch.randn(1, 3, 70, 70)
    _assert_same(enc(x), _ref_taps(ref, x, [2], norm=True))


def test_mae_release_and_training_dicts(tmp_path):
    ref = timm_reference("vit_base_patch16_224", img_size=64, dynamic_img_size=True, **TINY)
    x = torch.randn(1, 3, 64, 80)
    torch.save(mae_encoder(ref.state_dict()), tmp_path / "mae_pretrain_vit_base.pth")
    torch.save(mae_training(ref.state_dict()), tmp_path / "checkpoint-799.pth")

    enc = _encoder("mae_vitb16", tmp_path / "mae_pretrain_vit_base.pth", [0, 1, 2], 64)
    _assert_same(enc(x), _ref_taps(ref, x, [0, 1, 2]))
    assert "{'model': ...}" in enc.load_report.container

    full = _encoder("mae_vitb16", tmp_path / "checkpoint-799.pth", [0, 1, 2], 64)
    _assert_same(full(x), _ref_taps(ref, x, [0, 1, 2]))
    assert full.load_report.format == "mae"
    assert "mask_token" in full.load_report.ignored and "decoder_pred.weight" in full.load_report.ignored


def test_sam_release_layout(tmp_path):
    kw = dict(img_size=64, global_attn_indexes=[1], window_size=4)
    ref = timm_reference("samvit_base_patch16", **TINY, **kw)
    torch.save(to_sam(ref.state_dict()), tmp_path / "sam_vit_b_01ec64.pth")
    enc = _encoder("sam_vitb16", tmp_path / "sam_vit_b_01ec64.pth", [0, 1, 2], 64, **kw)
    assert enc.load_report.format == "sam"
    for size in [(64, 64), (80, 96)]:  # SAM resamples its pos-embed and rel-pos per input
        x = torch.randn(1, 3, *size)
        _assert_same(enc(x), _ref_taps(ref, x, [0, 1, 2]))


def test_eva02_mim_release_layout(tmp_path):
    ref = timm_reference("eva02_base_patch14_224", img_size=56, dynamic_img_size=True, **TINY)
    ckpt = to_eva02(ref.state_dict())
    assert "blocks.0.attn.q_bias" in ckpt["module"] and "blocks.0.mlp.w3.weight" in ckpt["module"]
    torch.save(ckpt, tmp_path / "eva02_B_pt_in21k_p14.pt")
    enc = _encoder("eva02_vitb14", tmp_path / "eva02_B_pt_in21k_p14.pt", [0, 1, 2], 56)
    assert enc.load_report.format == "eva02"
    x = torch.randn(1, 3, 56, 70)
    _assert_same(enc(x), _ref_taps(ref, x, [0, 1, 2]))


def test_timm_safetensors_with_classifier(tmp_path):
    ref = timm_reference("vit_base_patch16_224", img_size=64, **TINY)
    ref.reset_classifier(11)
    randomize(ref)
    save_file(ref.state_dict(), str(tmp_path / "model.safetensors"))
    enc = _encoder("supervised_vitb16", tmp_path / "model.safetensors", [1, 2], 64)
    assert sorted(enc.load_report.ignored) == ["head.bias", "head.weight"]
    x = torch.randn(2, 3, 64, 64)
    _assert_same(enc(x), _ref_taps(ref, x, [1, 2]))


# ---------------------------------------------------------------------------------------- failures
@pytest.fixture
def timm_ckpt():
    return timm_reference("vit_base_patch16_224", img_size=64, **TINY).state_dict()


def test_partial_checkpoint_lists_missing_keys(tmp_path, timm_ckpt):
    dropped = [k for k in timm_ckpt if k.startswith(("blocks.1.", "blocks.2."))]
    save_file({k: v for k, v in timm_ckpt.items() if k not in dropped}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(WeightsError) as err:
        _encoder("supervised_vitb16", tmp_path / "partial.safetensors", [2], 64)
    msg = str(err.value)
    assert "partial.safetensors" in msg and f"{len(dropped)} missing keys" in msg
    assert "blocks.1.attn.qkv.weight" in msg and f"and {len(dropped) - 20} more" in msg


def test_unexpected_keys_fail_unless_ignored(tmp_path, timm_ckpt):
    extra = {**timm_ckpt, "adapter.0.weight": torch.zeros(3), "adapter.1.weight": torch.zeros(3)}
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(WeightsError, match=r"2 unexpected keys.*adapter\.0\.weight"):
        _encoder("supervised_vitb16", tmp_path / "extra.safetensors", [2], 64)
    enc = _encoder("supervised_vitb16", tmp_path / "extra.safetensors", [2], 64, ignore=["adapter."])
    assert enc.load_report.unexpected == ["adapter.0.weight", "adapter.1.weight"]


def test_wrong_width_lists_shape_mismatches(tmp_path, timm_ckpt):
    save_file(timm_ckpt, str(tmp_path / "w64.safetensors"))
    with pytest.raises(WeightsError, match=r"shape mismatches.*blocks\.0\.norm1\.weight: checkpoint \(64,\) vs model \(96,\)"):
        _encoder("supervised_vitb16", tmp_path / "w64.safetensors", [2], 64, embed_dim=96)


def test_checkpoint_of_another_family_is_refused(tmp_path):
    ref = timm_reference("samvit_base_patch16", img_size=64, global_attn_indexes=[1], window_size=4, **TINY)
    torch.save(to_sam(ref.state_dict()), tmp_path / "sam_vit_b.pth")
    with pytest.raises(WeightsError, match=r"looks like a sam checkpoint.*accepts dinov2"):
        _encoder("dinov2_vitb14", tmp_path / "sam_vit_b.pth", [2], 56)


def test_pickled_code_is_not_executed(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "module.pth")  # a pickled nn.Module, not a state dict
    with pytest.raises(WeightsError, match=r"module\.pth.*weights_only"):
        open_checkpoint(tmp_path / "module.pth")


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_encoder(EncoderConfig(name="dinov2_vitb14", weights="/nowhere.pth"), 56)


def test_detect_format_from_keys():
    t = torch.zeros(1)
    assert detect_format({"image_encoder.pos_embed": t}) == "sam"
    assert detect_format({"visual.class_embedding": t, "visual.conv1.weight": t}) == "clip"
    assert detect_format({"visual.trunk.pos_embed": t}) == "openclip_timm"
    assert detect_format({"mask_token": t, "blocks.0.ls1.gamma": t}) == "dinov2"
    assert detect_format({"mask_token": t, "blocks.0.attn.q_proj.weight": t}) == "eva02"
    assert detect_format({"mask_token": t, "decoder_embed.weight": t}) == "mae"
    assert detect_format({"cls_token": t, "blocks.0.attn.qkv.weight": t}) == "timm"
