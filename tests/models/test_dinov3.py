"""DINOv3 ViTs: the original ``.pth`` layout is detected (not as DINOv2), converted by timm's filter, and the
taps are DINOv3's dense features, ``get_intermediate_layers(..., norm=True)``, at any multiple-of-16 crop."""

from __future__ import annotations

import pytest
import timm
import torch

from encseg.config import EncoderConfig
from encseg.errors import InputError
from encseg.models.encoders import build_encoder, get_spec
from encseg.models.weights import WeightsError, detect_format

TINY = dict(embed_dim=64, depth=3, num_heads=2)


def _release_layout(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A timm DINOv3 state dict written back in the release layout (inverse of eva.checkpoint_filter_fn):
    storage_tokens, ls1/ls2.gamma, one qkv.bias with its k third masked, mask_token, rope_embed.periods."""
    sd, out = model.state_dict(), {}
    for k, v in sd.items():
        if k.endswith(".q_bias"):
            v_bias = sd[k.replace(".q_bias", ".v_bias")]
            out[k.replace(".q_bias", ".qkv.bias")] = torch.cat([v, torch.randn_like(v), v_bias])  # k: masked
            out[k.replace(".q_bias", ".qkv.bias_mask")] = torch.cat([torch.ones_like(v), torch.zeros_like(v),
                                                                     torch.ones_like(v)])
            continue
        if k.endswith(".v_bias"):
            continue
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        out[k] = v
    dim = sd["cls_token"].shape[-1]
    out["mask_token"] = torch.zeros(1, dim)
    out["rope_embed.periods"] = torch.rand(dim // (4 * TINY["num_heads"]))
    return out


def _reference(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    ref = timm.create_model(get_spec("dinov3_vits16").arch, pretrained=False, num_classes=0, **TINY).eval()
    with torch.no_grad():  # non-trivial biases, layer scales and tokens: nothing matches by chance
        for n, p in ref.named_parameters():
            if n.endswith(("bias", "gamma_1", "gamma_2")) or "token" in n:
                p.normal_(0, 0.5)
    return ref


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    ref = _reference()
    path = tmp_path_factory.mktemp("dinov3") / "dinov3_vits16_pretrain_lvd1689m.pth"
    torch.save(_release_layout(ref), path)
    return ref, path


def test_release_layout_is_dinov3_not_dinov2(release):
    _, path = release
    sd = torch.load(path, weights_only=True)
    assert "mask_token" in sd and detect_format(sd) == "dinov3"
    with pytest.raises(WeightsError, match="looks like a dinov3 checkpoint"):
        build_encoder(EncoderConfig(name="dinov2_vits14", weights=str(path), timm_kwargs=TINY), 224)


@pytest.mark.parametrize("size", [224, 512])
def test_taps_equal_get_intermediate_layers_with_norm(release, size):
    ref, path = release
    enc = build_encoder(EncoderConfig(name="dinov3_vits16", weights=str(path), timm_kwargs=TINY, taps=[0, 1, 2]),
                        size).eval()
    assert enc.load_report.format == "dinov3" and enc.feature_norm
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        # get_intermediate_layers(n=[0, 1, 2], reshape=True, norm=True): the final norm on each block's tokens,
        # class and storage tokens dropped, (B, D, h, w)
        t = ref.patch_embed(x)
        t, rope = ref._pos_embed(t)
        want = []
        for blk in ref.blocks:
            t = blk(t, rope=rope)
            patches = ref.norm(t)[:, ref.num_prefix_tokens:]
            want.append(patches.reshape(1, size // 16, size // 16, -1).permute(0, 3, 1, 2))
        got = enc(x)
    assert [tuple(g.shape) for g in got] == [(1, 64, size // 16, size // 16)] * 3
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-4)
    # the raw block outputs (what the timm name gave before) are far from DINOv3's protocol
    raw = build_encoder(EncoderConfig(name="dinov3_vits16", weights=str(path), timm_kwargs=TINY,
                                      feature_norm=False), size).eval()
    with torch.no_grad():
        assert (raw(x)[-1] - want[-1]).abs().max() > 0.1


def test_rope_takes_any_multiple_of_patch_and_any_img_size(release):
    ref, path = release
    enc = build_encoder(EncoderConfig(name="dinov3_vits16", weights=str(path), timm_kwargs=TINY, img_size=512),
                        224).eval()
    with torch.no_grad():
        for h, w in [(320, 480), (208, 96)]:
            assert tuple(enc(torch.randn(1, 3, h, w))[0].shape) == (1, 64, h // 16, w // 16)


def test_nonzero_qkv_bias_is_not_dropped_silently(release, tmp_path):
    _, path = release
    plain = "vit_small_patch16_dinov3"  # the timm arch without q/v biases: its filter would drop them
    with pytest.raises(WeightsError, match="_qkvb"):
        build_encoder(EncoderConfig(name=plain, weights=str(path), timm_kwargs=TINY), 224)


def test_feature_norm_refused_where_there_is_no_token_norm():
    with pytest.raises(InputError, match="feature_norm"):
        build_encoder(EncoderConfig(name="resnet50", weights="none", feature_norm=True), 64)
