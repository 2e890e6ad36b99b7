"""Encoder regimes (what trains) and the optimizer's parameter groups (at what LR and weight decay).

Regimes (``RegimeConfig.mode``), applied by ``apply_regime`` on a ``Segmenter``:
- ``frozen``: the encoder gets no gradients (``requires_grad=False``), runs under ``torch.no_grad()`` and stays
  in eval mode even after ``seg.train()`` (no dropout, no drop-path), so its weights and buffers never change.
- ``finetune``: everything trains.
- ``last_n``: only the last ``N`` encoder blocks (and anything after them) train; the patch/position
  embeddings and the earlier blocks are frozen and kept in eval mode. Blocks are counted from the last block
  the encoder actually runs (blocks after the last tap are pruned by ``build_encoder``). A hierarchical encoder
  (``models/hierarchical.py``) counts stages instead: ``last_n: 2`` trains its stages 3 and 4, never the stem.
- ``freeze_bn`` (default on, any mode): every BatchNorm of the encoder stays in eval mode with frozen affine
  parameters, so its running statistics never change (mmseg/detectron2's frozen BN for CNN backbones; ViTs have
  no BatchNorm, so nothing changes for them).
The neck and head always train.

Parameter groups (``param_groups``), for AdamW:
- neck and head at ``lr``; encoder parameters at ``lr * lr_mult * layer_decay ** (layer_count - 1 - layer_id)``
  with ``Encoder.layer_id`` (0 = embeddings, i+1 = block i, depth+1 = after the blocks; ``layer_count`` =
  depth + 2), as in BEiT/MAE fine-tuning; a hierarchical encoder's ``layer_id`` is timm's ``group_matcher``
  grouping (stem, then each block in order), the rule of ``timm.optim.param_groups_layer_decay``;
- weight decay 0 for biases and every other 1-d parameter (norm weights, layer-scale gammas), norm layers,
  embeddings (``nn.Embedding``: Mask2Former's query embeddings and level embeddings), the pixel decoder's
  ``level_embed``, and the ViT's position embedding and class/register tokens (timm's ``no_weight_decay()``),
  as mmseg's Mask2Former recipe does;
- only trainable parameters, each exactly once; every group carries ``name`` and ``lr_scale`` (its LR relative
  to ``lr``) so a scheduler can rescale the groups consistently.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from encseg.config import RegimeConfig
from encseg.errors import EncsegError

_NO_DECAY_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.Embedding)
_NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "dist_token", "mask_token", "level_embed")


class RegimeError(EncsegError, ValueError):
    """A regime that does not fit the encoder (e.g. ``last_n`` larger than the number of blocks)."""


def apply_regime(seg: nn.Module, cfg: RegimeConfig) -> None:
    """Set what trains in ``seg`` (a ``Segmenter``); calling it again replaces the previous regime."""
    enc = seg.encoder
    seg.requires_grad_(True)
    seg.encoder_no_grad = False
    seg.frozen_modules = []
    if cfg.mode == "frozen":
        enc.requires_grad_(False)
        seg.encoder_no_grad = True
        seg.frozen_modules = ["encoder"]
    elif cfg.mode == "last_n":
        _train_last_n(seg, cfg.last_n)
    elif cfg.mode != "finetune":
        raise RegimeError(f"unknown model.regime.mode {cfg.mode!r} (known: frozen, finetune, last_n)")
    if cfg.freeze_bn and cfg.mode != "frozen":
        _freeze_batch_norm(seg)
    seg.train(seg.training)  # puts the frozen modules back into eval mode


def _train_last_n(seg: nn.Module, last_n: int) -> None:
    """Only the last ``last_n`` units (ViT blocks, or stages of a hierarchical encoder) and what follows train."""
    enc = seg.encoder
    units = enc.depth if enc.hierarchical else len(enc.vit.blocks)
    unit = "stages" if enc.hierarchical else "blocks"
    if last_n > units:
        raise RegimeError(f"model.regime.last_n={last_n} but the encoder runs only {units} {unit}")
    first_trainable = units - last_n
    for name, p in enc.named_parameters():
        p.requires_grad_(enc.stage_of(name) >= first_trainable)
    seg.frozen_modules = [f"encoder.{n}" for n in _frozen_subtrees(enc.timm_model, "vit" if not enc.hierarchical
                                                                    else "backbone")]


def _frozen_subtrees(module: nn.Module, prefix: str) -> list[str]:
    """The largest submodules whose parameters are all frozen (modules without parameters are left alone)."""
    params = list(module.parameters())
    if not params:
        return []
    if not any(p.requires_grad for p in params):
        return [prefix]
    return [n for name, child in module.named_children() for n in _frozen_subtrees(child, f"{prefix}.{name}")]


def _freeze_batch_norm(seg: nn.Module) -> None:
    """Encoder BatchNorm layers keep their statistics and affine parameters (eval mode, no gradient)."""
    for name, m in seg.encoder.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.requires_grad_(False)
            seg.frozen_modules.append(f"encoder.{name}")


def _no_decay_ids(seg: nn.Module) -> set[int]:
    ids = {id(p) for m in seg.modules() if isinstance(m, _NO_DECAY_MODULES) for p in m.parameters(recurse=False)}
    vit = seg.encoder.timm_model
    skip = set(vit.no_weight_decay()) if hasattr(vit, "no_weight_decay") else set()
    for name, p in vit.named_parameters():
        if name in skip:
            ids.add(id(p))
    return ids


def param_groups(seg: nn.Module, cfg: RegimeConfig, lr: float, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups for the trainable parameters of ``seg`` (rules in the module docstring)."""
    enc = seg.encoder
    no_decay = _no_decay_ids(seg)
    groups: dict[tuple[str, bool], dict[str, Any]] = {}
    for name, p in seg.named_parameters():
        if not p.requires_grad:
            continue
        if name.startswith("encoder."):
            layer = enc.layer_id(name)
            part = f"encoder.layer_{layer}"
            scale = cfg.lr_mult * cfg.layer_decay ** (enc.layer_count - 1 - layer)
        else:
            part, scale = name.split(".", 1)[0], 1.0
        decay = not (p.ndim <= 1 or id(p) in no_decay or name.rsplit(".", 1)[-1] in _NO_DECAY_NAMES)
        key = (part, decay)
        if key not in groups:
            groups[key] = {
                "name": f"{part}.{'decay' if decay else 'no_decay'}",
                "params": [],
                "lr": lr * scale,
                "lr_scale": scale,
                "weight_decay": weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(p)
    return list(groups.values())
