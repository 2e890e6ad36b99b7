import math

import pytest
import torch

from encseg.config import NeckConfig
from encseg.models.necks import NeckError, build_neck, resample

D = 32  # tap width: necks are encoder-agnostic, so plain tensors stand in for the encoder here


def _taps(n, image_size, patch, batch=2, requires_grad=False):
    h, w = (math.ceil(s / patch) for s in image_size)  # the encoder's grid: image padded to whole patches
    return [torch.randn(batch, D, h, w, requires_grad=requires_grad) for _ in range(n)]


@pytest.mark.parametrize("neck_type", ["simple_fpn", "multilevel"])
@pytest.mark.parametrize("patch", [8, 14, 16])
@pytest.mark.parametrize("image_size", [(100, 90), (64, 64), (70, 45), (33, 127)])
def test_pyramid_has_exact_strides_and_sizes(neck_type, patch, image_size):
    neck = build_neck(NeckConfig(type=neck_type, channels=16), embed_dim=D, num_taps=4, patch_size=patch)
    out = neck(_taps(4, image_size, patch), image_size)
    assert neck.channels == [16, 16, 16, 16]
    assert len(out) == 4
    for level, stride in zip(out, (4, 8, 16, 32), strict=True):
        assert level.shape == (2, 16, math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride))
        assert torch.isfinite(level).all()


@pytest.mark.parametrize(("in_stride", "out_stride", "cells"), [(14, 16, 37), (8, 16, 20), (16, 4, 8), (8, 32, 16),
                                                                 (14, 32, 40), (16, 32, 9), (16, 16, 5)])
def test_resample_keeps_features_on_their_pixels(in_stride, out_stride, cells):
    # a map whose value is the pixel coordinate of each cell centre must come out as the new cells' centres
    centres = (torch.arange(cells) + 0.5) * in_stride
    x = centres.view(1, 1, 1, cells).expand(1, 1, cells, cells).contiguous()
    n = math.ceil(cells * in_stride / out_stride)
    y = resample(x, in_stride, out_stride, (n, n))
    assert y.shape[-2:] == (n, n)
    expected = (torch.arange(n) + 0.5) * out_stride
    inner = slice(4, n - 4) if n > 10 else slice(0, n - 1)  # bilinear upsampling clamps at the border
    torch.testing.assert_close(y[0, 0, n // 2, inner], expected[inner], atol=1e-3, rtol=0)


def test_simple_fpn_reads_only_the_last_tap():
    neck = build_neck(NeckConfig(type="simple_fpn", channels=16), embed_dim=D, num_taps=4, patch_size=16)
    taps = _taps(4, (64, 64), 16, requires_grad=True)
    sum(level.sum() for level in neck(taps, (64, 64))).backward()
    assert [t.grad is not None and t.grad.abs().sum() > 0 for t in taps] == [False, False, False, True]


@pytest.mark.parametrize("fuse", [False, True])
def test_multilevel_maps_one_tap_per_level_and_fuses_top_down(fuse):
    neck = build_neck(NeckConfig(type="multilevel", channels=16, fuse=fuse), embed_dim=D, num_taps=4, patch_size=16)
    taps = _taps(4, (64, 64), 16, requires_grad=True)
    neck(taps, (64, 64))[0].sum().backward()  # the stride-4 level only
    reached = [t.grad is not None and bool(t.grad.abs().sum() > 0) for t in taps]
    # shallowest tap -> stride 4; with fusion every deeper level flows into it too
    assert reached == ([True] * 4 if fuse else [True, False, False, False])


def test_bad_taps_fail_with_a_clear_message():
    with pytest.raises(NeckError, match="exactly 4 taps"):
        build_neck(NeckConfig(type="multilevel"), embed_dim=D, num_taps=3, patch_size=16)
    neck = build_neck(NeckConfig(type="simple_fpn", channels=16), embed_dim=D, num_taps=1, patch_size=16)
    with pytest.raises(NeckError, match="expected \\(B, 32, h, w\\)"):
        neck([torch.randn(1, D + 1, 4, 4)], (64, 64))
    with pytest.raises(NeckError, match="built for 1 taps, got 2"):
        neck(_taps(2, (64, 64), 16), (64, 64))
