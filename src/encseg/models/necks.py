"""Necks: the only adapter between an encoder and the segmentation head (identical for every encoder of a kind).

A neck turns the encoder's tap maps (one ``(B, D, h, w)`` map per tapped block, at the encoder's patch stride)
into a 4-level pyramid at strides 4/8/16/32 of the image: level ``s`` has exactly ``ceil(H/s) x ceil(W/s)``
cells and ``channels`` channels, whatever the encoder's patch size (8, 14 or 16) or the input size.

Grid convention (why sizes come out exact and aligned): every grid is anchored at the top-left pixel; cell
``i`` of a stride-``s`` grid covers pixels ``[s*i, s*i + s)``, and the encoder's tap grid is a stride-``patch``
grid (the encoder pads the image at the bottom/right to a whole number of patches). Moving a map from stride
``a`` to stride ``b`` (``resample``) keeps that geometry exactly: an integer shrink ``k = b/a`` averages the
``k x k`` cells of each output cell (ceil mode), any remaining factor is bilinear with the exact scale ``a/b``
(``align_corners=False``), and the result is cropped (or edge-padded) at the bottom/right to
``ceil(H/b) x ceil(W/b)`` cells. So a patch-14 or patch-8 tap lands on the stride-16 grid without the slight
stretch that resizing "to the target size" would give (37 patch-14 cells cover 518 px, not 512).

Two necks (a recorded experimental choice: the run config says which one was used):

- ``simple_fpn``: the ViTDet simple feature pyramid (Li et al. 2022) from the LAST tap only. The tap is first
  put on the stride-16 grid; then s4 = ConvT2x2-LN2d-GELU-ConvT2x2, s8 = ConvT2x2, s16 = identity,
  s32 = MaxPool2; each branch is followed by Conv1x1-LN2d-Conv3x3-LN2d to ``channels``.
- ``multilevel``: one tap per level, which needs exactly 4 taps (shallowest -> stride 4, ..., deepest ->
  stride 32), as in mmseg's ``MultiLevelNeck`` for ViT + UperNet: a lateral Conv1x1-LN2d to ``channels``,
  resampling onto the level's grid (as above), optional top-down fusion (``fuse``: each level adds the
  bilinearly upsampled, already fused, level below it, deepest first, as in FPN), then Conv3x3-LN2d.

A hierarchical encoder (ResNet, ConvNeXt, Swin: ``models/hierarchical.py``) already gives the 4 levels; its
necks only map channels (``build_pyramid_neck``):

- ``channel_mapper`` (also what ``simple_fpn``, the default, means for such an encoder): per level a
  Conv1x1-GroupNorm(32) to ``channels``, as mmdet's ``ChannelMapper``.
- ``identity``: the stage maps as they are, each at its own width (the Mask2Former paper's R50/Swin setting:
  the pixel decoder's own 1x1 input projections do the mapping).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from encseg.config import NeckConfig
from encseg.errors import EncsegError

STRIDES = (4, 8, 16, 32)


class NeckError(EncsegError, ValueError):
    """Taps that do not fit the neck (wrong count, wrong width); the message says what was expected."""


def level_size(image_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """Cells of the stride-``stride`` level of an ``(H, W)`` image: ``(ceil(H/s), ceil(W/s))``."""
    return math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride)


def resample(x: Tensor, in_stride: float, out_stride: float, size: tuple[int, int]) -> Tensor:
    """Move a stride-``in_stride`` map onto the stride-``out_stride`` grid of ``size`` cells (module docstring)."""
    ratio = out_stride / in_stride
    k = math.floor(ratio + 1e-6)
    if k >= 2:  # integer part of a shrink: exact box average, no aliasing
        x = F.avg_pool2d(x, k, stride=k, ceil_mode=True)
        ratio /= k
    if abs(ratio - 1.0) > 1e-6:
        x = F.interpolate(x, scale_factor=1.0 / ratio, mode="bilinear", align_corners=False,
                          recompute_scale_factor=False)
    return fit(x, size)


def fit(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Crop, or edge-pad, at the bottom/right to exactly ``size`` cells (the top-left anchor stays put)."""
    x = x[..., : size[0], : size[1]]
    pad_h, pad_w = size[0] - x.shape[-2], size[1] - x.shape[-1]
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, max(pad_w, 0), 0, max(pad_h, 0)), mode="replicate")
    return x


def _project(in_ch: int, out_ch: int) -> nn.Sequential:
    """ViTDet output block: Conv1x1-LN2d-Conv3x3-LN2d (convs without bias: a LayerNorm follows each)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 1, bias=False),
        LayerNorm2d(out_ch),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False),
        LayerNorm2d(out_ch),
    )


class Neck(nn.Module):
    """Base class: ``forward(taps, image_size) -> [s4, s8, s16, s32]``; ``channels`` = the 4 output widths."""

    strides = STRIDES

    def __init__(self, embed_dim: int, num_taps: int, patch_size: int, channels: int):
        super().__init__()
        self.embed_dim = embed_dim
        self.num_taps = num_taps
        self.patch_size = patch_size
        self.channels = [channels] * 4

    def _check(self, taps: list[Tensor]) -> None:
        if len(taps) != self.num_taps:
            raise NeckError(f"{type(self).__name__} was built for {self.num_taps} taps, got {len(taps)}")
        for i, t in enumerate(taps):
            if t.ndim != 4 or t.shape[1] != self.embed_dim:
                raise NeckError(
                    f"tap {i} has shape {tuple(t.shape)}; expected (B, {self.embed_dim}, h, w) "
                    f"(encoder embed_dim={self.embed_dim})"
                )


class SimpleFPN(Neck):
    """ViTDet simple feature pyramid from the last tap (see the module docstring)."""

    def __init__(self, embed_dim: int, num_taps: int, patch_size: int, channels: int):
        super().__init__(embed_dim, num_taps, patch_size, channels)
        d = embed_dim
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(d, d // 2, 2, stride=2),
            LayerNorm2d(d // 2),
            nn.GELU(),
            nn.ConvTranspose2d(d // 2, d // 4, 2, stride=2),
        )
        self.up8 = nn.ConvTranspose2d(d, d // 2, 2, stride=2)
        self.down32 = nn.MaxPool2d(2, ceil_mode=True)
        self.out = nn.ModuleList([_project(c, channels) for c in (d // 4, d // 2, d, d)])

    def forward(self, taps: list[Tensor], image_size: tuple[int, int]) -> list[Tensor]:
        self._check(taps)
        x = resample(taps[-1], self.patch_size, 16, level_size(image_size, 16))
        branches = [self.up4(x), self.up8(x), x, self.down32(x)]
        return [
            fit(proj(b), level_size(image_size, s))
            for proj, b, s in zip(self.out, branches, STRIDES, strict=True)
        ]


class MultiLevelNeck(Neck):
    """One tap per pyramid level, resampled and projected, optional top-down fusion (module docstring)."""

    def __init__(self, embed_dim: int, num_taps: int, patch_size: int, channels: int, fuse: bool = False):
        if num_taps != 4:
            raise NeckError(
                f"the multilevel neck needs exactly 4 taps (one per stride 4/8/16/32), got {num_taps}; "
                "set model.encoder.taps to 4 entries or use model.neck.type=simple_fpn"
            )
        super().__init__(embed_dim, num_taps, patch_size, channels)
        self.fuse = fuse
        self.lateral = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(embed_dim, channels, 1, bias=False), LayerNorm2d(channels)) for _ in STRIDES]
        )
        self.out = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False), LayerNorm2d(channels))
             for _ in STRIDES]
        )

    def forward(self, taps: list[Tensor], image_size: tuple[int, int]) -> list[Tensor]:
        self._check(taps)
        # the lateral 1x1 runs before resampling: cheaper at stride 4, and equivalent for a linear map
        levels = [
            resample(lat(t), self.patch_size, s, level_size(image_size, s))
            for lat, t, s in zip(self.lateral, taps, STRIDES, strict=True)
        ]
        if self.fuse:
            for i in range(len(levels) - 2, -1, -1):
                levels[i] = levels[i] + resample(levels[i + 1], 2 * STRIDES[i], STRIDES[i], levels[i].shape[-2:])
        return [proj(x) for proj, x in zip(self.out, levels, strict=True)]


class ChannelMapper(nn.Module):
    """A hierarchical encoder's 4 stage maps, each mapped to ``channels`` (module docstring); ``identity``
    (``channels=None``) passes them on at their own widths."""

    strides = STRIDES

    def __init__(self, in_channels: list[int], channels: int | None):
        super().__init__()
        if len(in_channels) != len(STRIDES):
            raise NeckError(f"a pyramid neck needs {len(STRIDES)} stage maps, the encoder gives {len(in_channels)}")
        if channels is not None and channels % 32:
            raise NeckError(f"model.neck.channels={channels}: channel_mapper uses GroupNorm(32), give a multiple of 32")
        self.in_channels = list(in_channels)
        self.channels = list(in_channels) if channels is None else [channels] * len(STRIDES)
        self.maps = nn.ModuleList() if channels is None else nn.ModuleList(
            [nn.Sequential(nn.Conv2d(c, channels, 1, bias=False), nn.GroupNorm(32, channels)) for c in in_channels])

    def forward(self, taps: list[Tensor], image_size: tuple[int, int]) -> list[Tensor]:
        if [t.shape[1] for t in taps] != self.in_channels:
            raise NeckError(f"stage maps of widths {[t.shape[1] for t in taps]}; expected {self.in_channels}")
        levels = [fit(t, level_size(image_size, s)) for t, s in zip(taps, STRIDES, strict=True)]
        return [m(x) for m, x in zip(self.maps, levels, strict=True)] if len(self.maps) else levels


def build_pyramid_neck(cfg: NeckConfig, in_channels: list[int]) -> ChannelMapper:
    """The neck for a hierarchical encoder whose stages have widths ``in_channels`` (module docstring)."""
    if cfg.type in ("channel_mapper", "simple_fpn"):
        return ChannelMapper(in_channels, cfg.channels)
    if cfg.type == "identity":
        return ChannelMapper(in_channels, None)
    raise NeckError(f"model.neck.type={cfg.type!r} is a ViT neck; a hierarchical encoder already has a pyramid: "
                    "use channel_mapper or identity")


def build_neck(cfg: NeckConfig, embed_dim: int, num_taps: int, patch_size: int) -> Neck:
    """The neck of ``cfg.type`` for an encoder of width ``embed_dim`` with ``num_taps`` taps."""
    if cfg.type in ("channel_mapper", "identity"):
        raise NeckError(f"model.neck.type={cfg.type!r} is for hierarchical encoders (4 stage maps); a ViT needs "
                        "simple_fpn or multilevel")
    if cfg.type == "simple_fpn":
        if embed_dim % 4:
            raise NeckError(f"simple_fpn halves the width twice: embed_dim={embed_dim} must be divisible by 4")
        return SimpleFPN(embed_dim, num_taps, patch_size, cfg.channels)
    if cfg.type == "multilevel":
        return MultiLevelNeck(embed_dim, num_taps, patch_size, cfg.channels, fuse=cfg.fuse)
    raise NeckError(f"unknown model.neck.type {cfg.type!r} (known: simple_fpn, multilevel)")


__all__ = ["STRIDES", "ChannelMapper", "MultiLevelNeck", "Neck", "NeckError", "SimpleFPN", "build_neck",
           "build_pyramid_neck", "fit", "level_size", "resample"]
