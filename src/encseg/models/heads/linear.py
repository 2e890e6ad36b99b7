"""The DINOv2 linear-probe head: BatchNorm + 1x1 conv on the last tap's patch features (no neck).

Protocol (DINOv2 paper, "linear" setting): the patch tokens of the last layer are batch-normalised and mapped
to class logits by a linear layer (a 1x1 conv), and the logits are upsampled bilinearly to the image size;
the loss is per-pixel cross-entropy with 255 ignored. One difference from DINOv2's code: our taps are taken
before the encoder's final LayerNorm (``forward_intermediates`` default); the BatchNorm rescales per channel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encseg.models.heads import IGNORE_INDEX, LinearOutput, check_labels


class LinearHead(nn.Module):
    def __init__(self, embed_dim: int, num_classes: int):
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(embed_dim)
        self.classifier = nn.Conv2d(embed_dim, num_classes, kernel_size=1)

    def forward(self, features: list[Tensor]) -> LinearOutput:
        return LinearOutput(self.classifier(self.bn(features[-1])))

    @staticmethod
    def _upsample(logits: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(logits.float(), size=tuple(size), mode="bilinear", align_corners=False)

    def loss(self, output: LinearOutput, masks: Tensor) -> dict[str, Tensor]:
        check_labels(masks, self.num_classes)
        with torch.autocast(device_type=masks.device.type, enabled=False):
            ce = F.cross_entropy(
                self._upsample(output.logits, masks.shape[-2:]), masks, ignore_index=IGNORE_INDEX
            )
        # an all-ignore batch gives NaN (0/0); make it a zero loss that still reaches every parameter
        if not (masks != IGNORE_INDEX).any():
            ce = output.logits.sum() * 0.0
        return {"loss": ce, "loss_ce": ce.detach()}

    def semantic_scores(self, output: LinearOutput, size: tuple[int, int]) -> Tensor:
        """Class probabilities ``(B, C, H, W)`` at ``size`` (softmax of the bilinearly upsampled logits)."""
        return self._upsample(output.logits, size).softmax(1)
