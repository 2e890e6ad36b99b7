"""Segmentation heads. Every head has the same interface, so the segmenter never looks inside an output:

- ``forward(features) -> output`` (features: the neck's pyramid, or the raw encoder taps for ``linear``),
- ``loss(output, masks) -> dict`` with ``"loss"`` (the weighted total to back-propagate) plus detached terms,
  ``masks`` being ``(B, H, W)`` int64 train ids with 255 = ignore, at the (padded) input size,
- ``semantic_scores(output, size) -> (B, C, H, W)`` per-class scores at ``size`` (float32, not normalised to
  sum to one for ``mask2former``: they are class probability x mask probability, as in Mask2Former).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from encseg.config import HeadConfig
from encseg.data.formats.base import IGNORE_INDEX
from encseg.errors import EncsegError


class LabelError(EncsegError, ValueError):
    """A label map with values outside ``0..num_classes-1`` and 255; the message lists the bad values."""


@dataclass
class HeadOutput:
    """Mask2Former predictions. ``class_logits`` ``(B, Q, C+1)`` (last = no-object), ``mask_logits``
    ``(B, Q, H/4, W/4)``; ``aux`` holds the same pair for every earlier decoder layer (the learnable-query
    prediction first), used for deep supervision."""

    class_logits: Tensor
    mask_logits: Tensor
    aux: list[HeadOutput] = field(default_factory=list)


@dataclass
class LinearOutput:
    """Linear-probe predictions: per-patch class ``logits`` ``(B, C, h, w)`` at the encoder's patch grid."""

    logits: Tensor


def check_labels(masks: Tensor, num_classes: int) -> None:
    """Raise ``LabelError`` when ``masks`` holds anything but ``0..num_classes-1`` and 255."""
    if masks.dtype != torch.int64 or masks.ndim != 3:
        raise LabelError(f"masks must be (B, H, W) int64 train ids, got {tuple(masks.shape)} {masks.dtype}")
    bad = (masks < 0) | ((masks >= num_classes) & (masks != IGNORE_INDEX))
    if bad.any():
        values = sorted(set(masks[bad].unique().tolist()))
        raise LabelError(
            f"label values {values[:20]} out of range: expected 0..{num_classes - 1} or {IGNORE_INDEX} (ignore)"
        )


def build_head(cfg: HeadConfig, in_channels: list[int], num_classes: int) -> nn.Module:
    """``mask2former`` on a pyramid of ``in_channels`` widths; ``linear`` on the last tap (``in_channels[-1]``)."""
    if cfg.type == "mask2former":
        from encseg.models.heads.mask2former import Mask2FormerHead

        return Mask2FormerHead(in_channels, num_classes, cfg)
    if cfg.type == "linear":
        from encseg.models.heads.linear import LinearHead

        return LinearHead(in_channels[-1], num_classes)
    raise ValueError(f"unknown model.head.type {cfg.type!r} (known: mask2former, linear)")


__all__ = ["IGNORE_INDEX", "HeadOutput", "LabelError", "LinearOutput", "build_head", "check_labels"]
