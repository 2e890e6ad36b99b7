import pytest
import torch

from encseg.config import ModelConfig, RegimeConfig
from encseg.models.regimes import RegimeError, apply_regime, param_groups
from encseg.models.segmenter import build_segmenter

C = 5
ENCODER = dict(name="vit_base_patch16_224", weights="none", drop_path_rate=0.2,
               timm_kwargs=dict(embed_dim=192, depth=4, num_heads=3, patch_size=8))
HEAD = dict(hidden_dim=64, num_queries=16, encoder_layers=2, decoder_layers=3, dim_feedforward=128,
            encoder_feedforward_dim=128, train_num_points=1024)


def _segmenter(**regime):
    cfg = ModelConfig.model_validate({"encoder": ENCODER, "neck": {"channels": 64}, "head": HEAD,
                                      "regime": regime})
    torch.manual_seed(0)
    return build_segmenter(cfg, C, 64), cfg.regime


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _one_step(seg, regime):
    opt = torch.optim.AdamW(param_groups(seg, regime, lr=1e-3, weight_decay=0.05))
    seg.train()
    masks = torch.randint(0, C, (2, 64, 64))
    seg.loss(torch.randn(2, 3, 64, 64), masks)["loss"].backward()
    opt.step()


def _changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_frozen_encoder_is_bit_identical_after_a_step_and_stays_in_eval():
    seg, regime = _segmenter(mode="frozen")
    enc_before, head_before = _snapshot(seg.encoder), _snapshot(seg.head)
    seg.train()
    assert not seg.encoder.training and all(not m.training for m in seg.encoder.modules())
    assert seg.head.training and seg.neck.training
    assert not any(p.requires_grad for p in seg.encoder.parameters())
    # drop_path_rate=0.2 would make two train-mode forwards differ if the encoder were not in eval mode
    x = torch.randn(1, 3, 64, 64)
    assert all(torch.equal(a, b) for a, b in zip(seg.encoder(x), seg.encoder(x), strict=True))
    _one_step(seg, regime)
    assert _changed(enc_before, _snapshot(seg.encoder)) == set()  # params and buffers
    assert _changed(head_before, _snapshot(seg.head))
    assert all(p.grad is None for p in seg.encoder.parameters())


def test_finetune_moves_the_encoder():
    seg, regime = _segmenter(mode="finetune")
    before = _snapshot(seg.encoder)
    _one_step(seg, regime)
    assert seg.encoder.training
    changed = _changed(before, _snapshot(seg.encoder))
    assert "vit.patch_embed.proj.weight" in changed and "vit.blocks.3.mlp.fc2.weight" in changed


def test_last_n_freezes_exactly_the_earlier_blocks():
    seg, regime = _segmenter(mode="last_n", last_n=2)
    trainable = {n for n, p in seg.encoder.named_parameters() if p.requires_grad}
    for name, _ in seg.encoder.named_parameters():
        assert (name in trainable) == (name.startswith(("vit.blocks.2.", "vit.blocks.3."))), name
    before = _snapshot(seg.encoder)
    _one_step(seg, regime)
    changed = _changed(before, _snapshot(seg.encoder))
    assert changed and all(k.startswith(("vit.blocks.2.", "vit.blocks.3.")) for k in changed)
    seg.train()
    blocks = seg.encoder.vit.blocks
    assert [b.training for b in blocks] == [False, False, True, True]
    with pytest.raises(RegimeError, match="last_n=5"):
        apply_regime(seg, RegimeConfig(mode="last_n", last_n=5))
    apply_regime(seg, RegimeConfig(mode="finetune"))  # regimes replace each other
    assert all(p.requires_grad for p in seg.parameters()) and all(b.training for b in blocks)


def test_param_groups_follow_layer_decay_and_no_decay_rules():
    seg, _ = _segmenter(mode="finetune")
    regime = RegimeConfig(mode="finetune", lr_mult=0.1, layer_decay=0.5)
    lr, wd, depth = 1e-3, 0.05, seg.encoder.depth
    groups = param_groups(seg, regime, lr, wd)
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == sum(1 for p in seg.parameters() if p.requires_grad)
    where = {id(p): g for g in groups for p in g["params"]}
    for name, p in seg.named_parameters():
        g = where[id(p)]
        assert g["lr"] == pytest.approx(lr * g["lr_scale"]) and "name" in g
        if name.startswith("encoder."):
            layer = seg.encoder.layer_id(name)
            assert g["lr"] == pytest.approx(lr * 0.1 * 0.5 ** (depth + 1 - layer)), name
        else:
            assert g["lr"] == pytest.approx(lr), name
    named = dict(seg.named_parameters())

    def wd_of(name):
        return where[id(named[name])]["weight_decay"]

    assert seg.encoder.layer_id("encoder.vit.pos_embed") == 0 and seg.encoder.layer_id("encoder.vit.blocks.3.x") == 4
    assert where[id(named["encoder.vit.blocks.0.attn.qkv.weight"])]["lr"] == pytest.approx(lr * 0.1 * 0.5**4)
    for name in ["encoder.vit.pos_embed", "encoder.vit.cls_token", "encoder.vit.blocks.0.norm1.weight",
                 "encoder.vit.blocks.0.attn.qkv.bias", "head.hf.pixel_decoder.level_embed",
                 "head.hf.transformer_module.queries_embedder.weight",
                 "head.hf.transformer_module.queries_features.weight",
                 "head.hf.transformer_module.level_embed.weight", "neck.out.0.1.weight"]:
        assert wd_of(name) == 0.0, name
    for name in ["encoder.vit.blocks.0.attn.qkv.weight", "encoder.vit.patch_embed.proj.weight",
                 "head.hf.class_predictor.weight", "neck.up4.0.weight"]:
        assert wd_of(name) == wd, name


def test_param_groups_skip_frozen_parameters():
    seg, regime = _segmenter(mode="last_n", last_n=1)
    groups = param_groups(seg, regime, 1e-4, 0.05)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in seg.parameters() if p.requires_grad}
    assert id(seg.encoder.vit.blocks[0].attn.qkv.weight) not in grouped
