"""Hierarchical backbones: stage maps at strides 4-32, channel mapper, stage regimes, timm layer decay, frozen BN,
and original-layout checkpoints (torchvision ResNet, FB/DINOv3 ConvNeXt) loaded by zoo name."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from encseg.config import EncoderConfig, ModelConfig
from encseg.models.encoders import build_encoder, get_spec, list_encoders
from encseg.models.hierarchical import HierarchicalEncoder
from encseg.models.necks import ChannelMapper, NeckError
from encseg.models.regimes import RegimeError, param_groups
from encseg.models.segmenter import build_segmenter, load_segmenter, save_segmenter

C = 5
# tiny versions of each hierarchical family, built through timm_kwargs (random weights)
TINY = {
    "resnet50": dict(layers=[1, 1, 1, 1]),
    "swin_tiny": dict(depths=[1, 1, 1, 1], embed_dim=32, num_heads=[1, 2, 4, 8]),
    "convnext_tiny": dict(depths=[1, 1, 1, 1], dims=[16, 32, 64, 128]),
    "dinov3_convnext_tiny": dict(depths=[1, 1, 2, 1], dims=[16, 32, 64, 128]),
    "random_resnet50": dict(layers=[1, 1, 1, 1]),
}
HEAD = dict(hidden_dim=64, num_queries=8, encoder_layers=1, decoder_layers=2, dim_feedforward=64,
            encoder_feedforward_dim=64, train_num_points=256)


def _encoder(name: str, **cfg) -> HierarchicalEncoder:
    return build_encoder(EncoderConfig(name=name, weights="none", timm_kwargs=TINY[name], **cfg), 64)


def _segmenter(name="resnet50", neck=None, **regime):
    cfg = ModelConfig.model_validate({"encoder": {"name": name, "weights": "none", "timm_kwargs": TINY[name]},
                                      "neck": neck or {"channels": 64}, "head": HEAD, "regime": regime})
    torch.manual_seed(0)
    return build_segmenter(cfg, C, 64), cfg.regime


def _step(seg, regime, steps=1):
    opt = torch.optim.AdamW(param_groups(seg, regime, lr=1e-3, weight_decay=0.05))
    seg.train()
    for _ in range(steps):
        opt.zero_grad()
        seg.loss(torch.randn(2, 3, 64, 64), torch.randint(0, C, (2, 64, 64)))["loss"].backward()
        opt.step()


def test_every_hierarchical_family_has_a_tiny_case():
    families = {get_spec(n).family for n in list_encoders() if get_spec(n).hierarchical}
    assert {get_spec(n).family for n in TINY} >= families
    assert {"resnet", "swin", "convnext", "dinov3_convnext"} <= families


@pytest.mark.parametrize("name", list(TINY))
def test_stage_maps_at_strides_4_to_32_any_size(name):
    enc = _encoder(name).eval()
    assert enc.hierarchical and enc.strides == [4, 8, 16, 32] and len(enc.channels) == 4
    for h, w in [(64, 64), (72, 50)]:  # not multiples of 32: padded at the bottom/right
        with torch.no_grad():
            maps = enc(torch.randn(2, 3, h, w))
        want = [(2, c, math.ceil(math.ceil(h / 32) * 32 / s), math.ceil(math.ceil(w / 32) * 32 / s))
                for c, s in zip(enc.channels, (4, 8, 16, 32), strict=True)]
        assert [tuple(m.shape) for m in maps] == want
    sum(m.square().mean() for m in enc(torch.randn(1, 3, 64, 64))).backward()
    assert not [n for n, p in enc.named_parameters() if p.grad is None]  # head/norm pruned: all params used


def test_timm_names_are_hierarchical_too():
    """The Done-when names: raw timm architectures, not zoo entries."""
    for name in ("resnet50", "swin_tiny_patch4_window7_224", "convnext_tiny"):
        assert get_spec(name).hierarchical
    assert get_spec("swin_tiny_patch4_window7_224").channels == (96, 192, 384, 768)
    assert get_spec("resnet50").channels == (256, 512, 1024, 2048)


def test_channel_mapper_is_chosen_for_hierarchical_and_vit_necks_refused():
    seg, _ = _segmenter()  # the config says simple_fpn (the default): a CNN gets the channel mapper
    assert isinstance(seg.neck, ChannelMapper) and seg.neck.channels == [64] * 4
    seg, _ = _segmenter(neck={"type": "identity"})
    assert seg.neck.channels == seg.encoder.channels == [256, 512, 1024, 2048]
    with pytest.raises(NeckError, match="ViT neck"):
        _segmenter(neck={"type": "multilevel", "channels": 64})
    with pytest.raises(NeckError, match="hierarchical"):
        build_segmenter(ModelConfig.model_validate({
            "encoder": {"name": "vit_base_patch16_224", "weights": "none",
                        "timm_kwargs": dict(embed_dim=64, depth=2, num_heads=2)},
            "neck": {"type": "channel_mapper", "channels": 64}, "head": HEAD}), C, 64)


def test_batchnorm_running_stats_unchanged_after_training_steps():
    """Default (freeze_bn): a CNN's BN statistics and affine params never move while the convolutions train."""
    seg, regime = _segmenter(mode="finetune")
    bns = {n: m for n, m in seg.encoder.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert bns
    before = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in bns.items()}
    conv_before = seg.encoder.backbone.conv1.weight.detach().clone()
    _step(seg, regime, steps=2)
    assert all(not m.training for m in bns.values())
    for n, m in bns.items():
        for k, v in m.state_dict().items():
            assert torch.equal(v, before[n][k]), f"{n}.{k} changed"
    assert not torch.equal(seg.encoder.backbone.conv1.weight, conv_before)  # the rest of the encoder trains
    # switched off: BatchNorm learns its statistics as usual
    seg, regime = _segmenter(mode="finetune", freeze_bn=False)
    bn = seg.encoder.backbone.bn1
    mean = bn.running_mean.clone()
    _step(seg, regime)
    assert not torch.equal(bn.running_mean, mean)


def test_last_n_trains_the_last_stages_only():
    seg, regime = _segmenter(mode="last_n", last_n=2)
    enc = seg.encoder
    trainable = {enc.stage_of(n) for n, p in enc.named_parameters() if p.requires_grad}
    frozen = {enc.stage_of(n) for n, p in enc.named_parameters() if not p.requires_grad}
    assert trainable == {2, 3} and frozen >= {-1, 0, 1}
    assert "encoder.backbone.conv1" in seg.frozen_modules and "encoder.backbone.layer1" in seg.frozen_modules
    seg.train()
    assert not enc.backbone.layer2.training and enc.backbone.layer3[0].conv1.training
    with pytest.raises(RegimeError, match="4 stages"):
        _segmenter(mode="last_n", last_n=5)


def test_layer_decay_follows_timm_group_matcher():
    """Scales are timm's param_groups_layer_decay rule: decay ** (layer_max - layer_id), stem lowest."""
    seg, regime = _segmenter(mode="finetune", layer_decay=0.5, lr_mult=1.0)
    enc = seg.encoder
    from timm.optim import param_groups_layer_decay

    timm_groups = param_groups_layer_decay(enc.backbone, layer_decay=0.5)
    want = {id(p): g["lr_scale"] for g in timm_groups for p in g["params"]}
    got = {id(p): g["lr_scale"] for g in param_groups(seg, regime, 1.0, 0.05) for p in g["params"]
           if g["name"].startswith("encoder.")}
    trainable = {id(p) for p in enc.parameters() if p.requires_grad}
    assert set(got) == trainable and all(got[i] == pytest.approx(want[i]) for i in got)
    assert enc.layer_id("backbone.conv1.weight") == 0 and enc.layer_count == 5  # stem + 4 one-block stages


def test_hierarchical_segmenter_saves_and_loads(tmp_path):
    seg, _ = _segmenter("convnext_tiny")
    save_segmenter(seg, tmp_path)
    again, meta = load_segmenter(tmp_path)
    assert meta["encoder_pos_size"] is None
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(again.inference(x), seg.inference(x), rtol=0, atol=0)


def _torchvision_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """timm's ResNet keys are torchvision's: a torchvision checkpoint is the timm state dict plus ``fc``."""
    sd = dict(model.state_dict())
    sd["fc.weight"], sd["fc.bias"] = torch.randn(10, 2048), torch.randn(10)
    return sd


def _fb_convnext_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The FB / DINOv3 ConvNeXt release layout (the inverse of timm's convnext checkpoint_filter_fn)."""
    import re

    out = {}
    for k, v in model.state_dict().items():
        k = k.replace("stem.", "downsample_layers.0.")
        k = re.sub(r"stages\.(\d+)\.downsample\.(\d+)", r"downsample_layers.\1.\2", k)
        k = re.sub(r"stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", k)
        k = k.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv").replace("head.norm", "norm")
        if ".pwconv" in k and k.endswith("weight"):
            v = v.reshape(v.shape[0], v.shape[1])  # timm keeps Linear too, reshape is a no-op check
        out[k] = v
    out["norms.3.weight"], out["norms.3.bias"] = out["norm.weight"], out["norm.bias"]  # DINOv3 aliases
    return out


@pytest.mark.parametrize("name,layout,fmt", [("resnet50", _torchvision_layout, "timm"),
                                             ("dinov3_convnext_tiny", _fb_convnext_layout, "convnext")])
def test_release_checkpoint_gives_the_stage_outputs(tmp_path, name, layout, fmt):
    torch.manual_seed(1)
    ref = timm.create_model(get_spec(name).arch, pretrained=False, num_classes=0, **TINY[name]).eval()
    path = tmp_path / "release.pth"
    torch.save(layout(ref), path)
    enc = build_encoder(EncoderConfig(name=name, weights=str(path), timm_kwargs=TINY[name]), 64).eval()
    assert enc.load_report.format == fmt
    for size in (64, 96):
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            want = ref.forward_intermediates(x, indices=enc.levels, intermediates_only=True)
            got = enc(x)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
