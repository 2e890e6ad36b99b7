"""Mask2Former head: the transformers implementation, unmodified, composed around our neck's pyramid.

What is reused from ``transformers.models.mask2former`` (no edits, no patches): ``Mask2FormerPixelDecoder``
(multi-scale deformable attention, pure PyTorch), ``Mask2FormerTransformerModule`` (masked-attention decoder),
``Mask2FormerHungarianMatcher`` and ``Mask2FormerLoss`` (point-sampled mask/dice losses), and
``Mask2FormerPreTrainedModel._init_weights``. The forward is wired as ``Mask2FormerModel`` /
``Mask2FormerForUniversalSegmentation.forward`` do; only the backbone is replaced by our encoder + neck, which
live OUTSIDE the HF module, so HF's initialisation can never touch encoder weights.

Conventions:
- Targets come from a semantic map: per image, the present classes minus 255, one binary mask each. As in the
  official Mask2Former and HF, ignore (255) pixels are simply "not this class" in every mask, i.e. they count
  as background in the mask and dice losses (facebookresearch/MaskFormer#57); they only drop out of the class
  list. Padding is filled with 255 by the segmenter and is treated the same way.
- The loss total is ``class_weight * CE + mask_weight * BCE + dice_weight * dice`` for the last decoder layer
  and for every auxiliary layer, weighted exactly as HF's ``get_loss_dict`` does.
- The mask-count normaliser is averaged over all processes of an initialised ``torch.distributed`` group
  (all-reduce / world size, min 1), as the official implementation does; transformers 5.24 only does this
  under accelerate.
- Matching and losses run in float32 with autocast disabled.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Mask2FormerConfig
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerLoss,
    Mask2FormerPixelDecoder,
    Mask2FormerPreTrainedModel,
    Mask2FormerTransformerModule,
)

from encseg.config import HeadConfig
from encseg.models.heads import IGNORE_INDEX, HeadOutput, check_labels
from encseg.models.necks import STRIDES


def hf_config(cfg: HeadConfig, num_classes: int) -> Mask2FormerConfig:
    """A ``Mask2FormerConfig`` from our validated fields only (HF 5.x accepts unknown kwargs silently)."""
    return Mask2FormerConfig(
        num_labels=num_classes,
        feature_strides=list(STRIDES),
        feature_size=cfg.hidden_dim,
        mask_feature_size=cfg.hidden_dim,
        hidden_dim=cfg.hidden_dim,
        num_queries=cfg.num_queries,
        num_attention_heads=cfg.num_attention_heads,
        dim_feedforward=cfg.dim_feedforward,
        encoder_layers=cfg.encoder_layers,
        decoder_layers=cfg.decoder_layers,
        encoder_feedforward_dim=cfg.encoder_feedforward_dim,
        train_num_points=cfg.train_num_points,
        oversample_ratio=cfg.oversample_ratio,
        importance_sample_ratio=cfg.importance_sample_ratio,
        class_weight=cfg.class_weight,
        mask_weight=cfg.mask_weight,
        dice_weight=cfg.dice_weight,
        no_object_weight=cfg.no_object_weight,
        ignore_value=IGNORE_INDEX,
    )


class Mask2FormerModules(Mask2FormerPreTrainedModel):
    """The head's HF modules only (pixel decoder, transformer module, class predictor), initialised by HF's own
    ``_init_weights`` through ``post_init()``. The backbone is not in here."""

    def __init__(self, config: Mask2FormerConfig, in_channels: list[int]):
        super().__init__(config)
        self.pixel_decoder = Mask2FormerPixelDecoder(config, feature_channels=list(in_channels))
        self.transformer_module = Mask2FormerTransformerModule(in_features=config.feature_size, config=config)
        self.class_predictor = nn.Linear(config.hidden_dim, config.num_labels + 1)
        self.post_init()

    @classmethod
    def is_custom_code(cls) -> bool:
        # HF treats subclasses defined outside transformers as remote code and then skips `_init_weights` for
        # modules without direct parameters (the deformable attention, decoder layers, transformer module),
        # leaving e.g. the deformable sampling offsets at zero. This class adds no init of its own, so it must
        # be initialised exactly like HF's own Mask2FormerForUniversalSegmentation.
        return False


class DistributedMask2FormerLoss(Mask2FormerLoss):
    """``Mask2FormerLoss`` whose mask-count normaliser is the average over a ``torch.distributed`` group."""

    def get_num_masks(self, class_labels: list[Tensor], device: torch.device) -> Tensor:
        num_masks = torch.as_tensor(float(sum(len(c) for c in class_labels)), dtype=torch.float, device=device)
        world_size = 1
        # only in training: ranks may hold different numbers of validation images, and a collective called an
        # unequal number of times deadlocks; a validation loss is a per-rank curve, not a gradient
        if self.training and dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_masks)
            world_size = dist.get_world_size()
        return torch.clamp(num_masks / world_size, min=1)


def semantic_targets(masks: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """Per image: ``mask_labels`` ``(N_i, H, W)`` float binary masks and ``class_labels`` ``(N_i,)`` int64, one
    per class present (255 dropped; ignore pixels are 0 in every mask, see the module docstring)."""
    mask_labels, class_labels = [], []
    for m in masks:
        classes = m.unique()
        classes = classes[classes != IGNORE_INDEX]
        class_labels.append(classes)
        mask_labels.append((m[None] == classes[:, None, None]).float())
    return mask_labels, class_labels


class Mask2FormerHead(nn.Module):
    def __init__(self, in_channels: list[int], num_classes: int, cfg: HeadConfig):
        super().__init__()
        if len(in_channels) != len(STRIDES):
            raise ValueError(f"Mask2FormerHead needs a 4-level pyramid (strides {STRIDES}), got {in_channels}")
        self.num_classes = num_classes
        self.config = hf_config(cfg, num_classes)
        self.hf = Mask2FormerModules(self.config, in_channels)
        # the same keys HF's Mask2FormerForUniversalSegmentation weights (substring match in get_loss_dict)
        self.weight_dict = {
            "loss_cross_entropy": cfg.class_weight,
            "loss_mask": cfg.mask_weight,
            "loss_dice": cfg.dice_weight,
        }
        self.criterion = DistributedMask2FormerLoss(self.config, weight_dict=self.weight_dict)

    def forward(self, pyramid: list[Tensor]) -> HeadOutput:
        """``pyramid``: 4 maps at strides 4/8/16/32 (the neck's output, ``in_channels`` wide)."""
        decoded = self.hf.pixel_decoder(list(pyramid), output_hidden_states=False, return_dict=True)
        decoder_out = self.hf.transformer_module(
            multi_scale_features=decoded.multi_scale_features,
            mask_features=decoded.mask_features,
            output_hidden_states=True,
            output_attentions=False,
        )
        class_logits = [self.hf.class_predictor(h.transpose(0, 1)) for h in decoder_out.intermediate_hidden_states]
        mask_logits = decoder_out.masks_queries_logits
        aux = [HeadOutput(c, m) for c, m in zip(class_logits[:-1], mask_logits[:-1], strict=True)]
        return HeadOutput(class_logits[-1], mask_logits[-1], aux)

    def loss(self, output: HeadOutput, masks: Tensor) -> dict[str, Tensor]:
        """``"loss"`` (weighted total incl. auxiliary layers), the last layer's unweighted ``loss_cross_entropy``,
        ``loss_mask``, ``loss_dice``, and ``loss_aux`` (the weighted auxiliary part of ``"loss"``)."""
        check_labels(masks, self.num_classes)
        mask_labels, class_labels = semantic_targets(masks)
        with torch.autocast(device_type=masks.device.type, enabled=False):
            aux = [
                {"masks_queries_logits": a.mask_logits.float(), "class_queries_logits": a.class_logits.float()}
                for a in output.aux
            ]
            terms = self.criterion(
                masks_queries_logits=output.mask_logits.float(),
                class_queries_logits=output.class_logits.float(),
                mask_labels=mask_labels,
                class_labels=class_labels,
                auxiliary_predictions=aux or None,
            )
            weighted = {}
            for name, value in terms.items():
                weights = [w for key, w in self.weight_dict.items() if key in name]
                weighted[name] = value * weights[0] if weights else value
            total = sum(weighted.values())
            aux_total = sum(v for k, v in weighted.items() if k not in self.weight_dict)
        out = {"loss": total}
        out.update({k: terms[k].detach() for k in self.weight_dict})
        out["loss_aux"] = aux_total.detach() if isinstance(aux_total, Tensor) else torch.zeros(())
        return out

    @staticmethod
    def semantic_scores(output: HeadOutput, size: tuple[int, int]) -> Tensor:
        """``(B, C, H, W)`` = ``softmax(class)[..., :-1]`` x ``sigmoid(masks)`` upsampled bilinearly to ``size``
        (directly at the requested size, not via the HF image processor's fixed 384x384 step)."""
        probs = output.class_logits.float().softmax(-1)[..., :-1]
        masks = F.interpolate(output.mask_logits.float(), size=tuple(size), mode="bilinear", align_corners=False)
        return torch.einsum("bqc,bqhw->bchw", probs, masks.sigmoid())
