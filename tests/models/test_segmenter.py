import pytest
import torch
from safetensors.torch import load_file, save_file

from encseg.config import ConfigError, ModelConfig
from encseg.models.encoders import build_encoder
from encseg.models.heads import LabelError
from encseg.models.segmenter import (
    CheckpointError,
    Segmenter,
    build_segmenter,
    load_segmenter,
    save_segmenter,
)

C = 5
ENCODER = dict(name="vit_base_patch16_224", weights="none",
               timm_kwargs=dict(embed_dim=192, depth=4, num_heads=3, patch_size=8))
HEAD = dict(hidden_dim=64, num_queries=16, encoder_layers=2, decoder_layers=3, dim_feedforward=128,
            encoder_feedforward_dim=128, train_num_points=1024)


def tiny(head="mask2former", **model) -> ModelConfig:
    head_cfg = HEAD if head == "mask2former" else {}
    return ModelConfig.model_validate({"encoder": ENCODER, "neck": {"channels": 64},
                                       "head": {"type": head, **head_cfg}, **model})


def _batch(h=70, w=64, batch=2):
    masks = torch.randint(0, C, (batch, h, w))
    masks[:, :5] = 255
    return torch.randn(batch, 3, h, w), masks


@pytest.mark.parametrize("head", ["mask2former", "linear"])
def test_forward_loss_backward_reach_encoder_and_head(head):
    seg = build_segmenter(tiny(head), C, 64)
    assert (seg.neck is None) == (head == "linear")
    images, masks = _batch()  # 70 x 64: padded to 96 x 64 inside
    losses = seg.loss(images, masks)
    assert torch.isfinite(losses["loss"]) and losses["loss"] > 0
    assert all(not v.requires_grad for k, v in losses.items() if k != "loss")
    losses["loss"].backward()
    patch_embed = seg.encoder.vit.patch_embed.proj.weight
    assert patch_embed.grad is not None and patch_embed.grad.abs().sum() > 0
    assert all(p.grad is not None for p in seg.head.parameters() if p.requires_grad)
    out = seg(images)
    if head == "mask2former":
        assert out.mask_logits.shape[-2:] == (96 // 4, 64 // 4)


def test_two_encoders_of_one_seed_start_from_the_same_neck_and_head():
    """The encoder's initialisation draws an architecture-dependent amount of randomness; the builder reseeds
    after it, so paired runs share the neck and head's initial weights (and the generator state after)."""
    wide = tiny(encoder={**ENCODER, "timm_kwargs": {**ENCODER.get("timm_kwargs", {}), "depth": 3}})
    states, after = [], []
    for cfg in (tiny(), wide):
        torch.manual_seed(0)  # what the run's seed_everything does before building
        seg = build_segmenter(cfg, C, 64, seed=0)
        states.append({k: v.clone() for k, v in seg.state_dict().items() if not k.startswith("encoder.")})
        after.append(torch.rand(3))
    assert states[0].keys() == states[1].keys() and len(states[0]) > 10
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert torch.equal(after[0], after[1])
    # without the reseed the same two builds diverge: the test above is not vacuous
    plain = []
    for cfg in (tiny(), wide):
        torch.manual_seed(0)
        plain.append(build_segmenter(cfg, C, 64).head.state_dict())
    assert any(not torch.equal(plain[0][k], plain[1][k]) for k in plain[0])
    # and another seed gives another start
    torch.manual_seed(0)
    other = build_segmenter(tiny(), C, 64, seed=1).state_dict()
    assert any(not torch.equal(other[k], states[0][k]) for k in states[0])


def test_bad_masks_are_rejected():
    seg = build_segmenter(tiny(), C, 64)
    images, masks = _batch()
    with pytest.raises(ValueError, match="do not match images"):
        seg.loss(images, masks[:, :60])
    masks[0, 30, 30] = C
    with pytest.raises(LabelError, match=f"\\[{C}\\]"):
        seg.loss(images, masks)


def test_hf_init_does_not_touch_the_encoder():
    cfg = tiny()
    torch.manual_seed(0)
    reference = {k: v.clone() for k, v in build_encoder(cfg.encoder, 64).state_dict().items()}
    torch.manual_seed(0)  # the same random encoder, then the HF head is built and initialised after it
    seg = build_segmenter(cfg, C, 64)
    state = seg.encoder.state_dict()
    assert state.keys() == reference.keys()
    assert all(torch.equal(state[k], reference[k]) for k in reference)


def test_inference_modes_agree_and_keep_the_input_size():
    torch.manual_seed(0)
    seg = build_segmenter(tiny(), C, 64).train()
    images, _ = _batch(h=70, w=52)
    whole = seg.inference(images)
    assert whole.shape == (2, C, 70, 52) and whole.dtype == torch.float32
    assert seg.training  # the mode is restored
    window_is_image = seg.inference(images, mode="slide", crop=(70, 52), stride=(70, 52))
    torch.testing.assert_close(window_is_image, whole, rtol=0, atol=1e-6)
    slid = seg.inference(images, mode="slide", crop=48, stride=16)
    assert slid.shape == whole.shape and torch.isfinite(slid).all()
    assert not torch.allclose(slid, whole)  # really several windows
    flipped = seg.inference(images, flip=True)
    assert flipped.shape == whole.shape
    # flip TTA averages an image and its mirror, so mirroring the input mirrors the output
    torch.testing.assert_close(seg.inference(images.flip(-1), flip=True), flipped.flip(-1), rtol=0, atol=1e-5)
    assert seg.inference(images, scales=(0.75, 1.0, 1.5), flip=True).shape == whole.shape
    with pytest.raises(ValueError, match="crop"):
        seg.inference(images, mode="slide")


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    seg = build_segmenter(tiny(regime={"mode": "frozen"}), C, 64)
    seg.head.hf.class_predictor.bias.data += 1.0  # not the init any more: the file must carry it
    save_segmenter(seg, tmp_path / "m", extra={"classes": list("abcde")})
    torch.manual_seed(123)
    loaded, meta = load_segmenter(tmp_path / "m")
    assert meta["classes"] == list("abcde") and meta["num_classes"] == C and meta["img_size"] == 64
    assert loaded.config == seg.config and loaded.encoder_no_grad  # regime restored
    images, _ = _batch()
    torch.testing.assert_close(loaded.inference(images), seg.inference(images), rtol=0, atol=0)


def test_load_names_mismatched_keys_and_missing_files(tmp_path):
    seg = build_segmenter(tiny("linear"), C, 64)
    save_segmenter(seg, tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state.pop("head.bn.running_mean")
    state["head.extra.weight"] = torch.zeros(1)
    state["head.classifier.bias"] = torch.zeros(C + 1)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        load_segmenter(tmp_path)
    msg = str(e.value)
    assert "head.bn.running_mean" in msg and "head.extra.weight" in msg and "head.classifier.bias" in msg
    (tmp_path / "model.json").write_text('{"model": {"neck": {"chanels": 8}}, "num_classes": 5, "img_size": 64}')
    with pytest.raises(ConfigError, match="chanels"):
        load_segmenter(tmp_path)
    with pytest.raises(FileNotFoundError, match="model.json"):
        load_segmenter(tmp_path / "nowhere")


def test_segmenter_without_config_cannot_be_saved(tmp_path):
    seg = build_segmenter(tiny("linear"), C, 64)
    bare = Segmenter(seg.encoder, None, seg.head, C)
    with pytest.raises(ValueError, match="build_segmenter"):
        save_segmenter(bare, tmp_path)
