"""Hierarchical backbones (ResNet, ConvNeXt, Swin, any timm model with stages at strides 4/8/16/32).

Conventions
- ``HierarchicalEncoder.forward(x)`` returns the 4 stage maps ``(B, C_i, H/s, W/s)`` at strides 4, 8, 16, 32
  through timm's ``forward_intermediates`` (the stages ``feature_info`` lists: for each stride its last stage,
  so a ResNet's stride-2 stem is skipped); the input is padded at the bottom/right to a multiple of 32 first
  (zeros, the mean colour after normalisation), so every level has exactly ``ceil(H/s)`` cells. Stage outputs are
  raw: no final norm (the classification head's norm is pruned with the head).
- Any input size: convolutions take any size; Swin is built with timm's ``dynamic_img_size`` (attention masks
  built per input, windows padded), so no positional table is ever resampled.
- Stages: ``stage_of(param)`` is -1 for the stem, 0..3 for the stage that owns it, 4 for anything after
  (timm ``feature_info`` module names, in module order). ``last_n`` regimes count stages.
- Layer-wise LR decay uses timm's own grouping (``group_matcher`` through ``timm.models.group_parameters``,
  as ``timm.optim.param_groups_layer_decay`` does): ``layer_id`` in ``0..layer_count-1`` (stem first), the
  scale ``layer_decay ** (layer_count - 1 - layer_id)``.
- BatchNorm is frozen by default (``model.regime.freeze_bn``, applied by ``regimes.apply_regime``): running
  statistics are not updated and its affine parameters do not train, as mmseg/detectron2 do for CNN backbones
  trained at small per-GPU batches.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.models import group_parameters
from torch import nn

from encseg.config import EncoderConfig
from encseg.errors import InputError
from encseg.models.specs import PYRAMID_STRIDES, EncoderSpec, pyramid_levels
from encseg.models.weights import (
    LoadReport,
    WeightsError,
    load_encoder_weights,
    open_checkpoint,
    resolve_weights,
)

PAD_TO = PYRAMID_STRIDES[-1]


class HierarchicalEncoder(nn.Module):
    """A timm backbone returning its 4 stage maps (module docstring); ``channels`` their widths."""

    hierarchical = True

    def __init__(self, spec: EncoderSpec, backbone: nn.Module, levels: list[int], load_report: LoadReport):
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.levels = list(levels)
        info = [backbone.feature_info[i] for i in self.levels]
        self.channels = [int(f["num_chs"]) for f in info]
        self.strides = [int(f["reduction"]) for f in info]
        self.tap_indices = list(range(len(self.levels)))  # one "tap" per stage
        self.depth = len(self.levels)
        self.patch_size = self.strides[0]
        self.embed_dim = self.channels[-1]
        self.pos_size = None  # no positional table: nothing is ever resampled
        self.mean, self.std = tuple(spec.mean), tuple(spec.std)
        self.load_report = load_report
        order = {name: i for i, (name, _) in enumerate(backbone.named_modules())}
        self._module_order = order
        # each stage's span in module order: its own module through the last module of its subtree
        self._stage_spans = [(order[m], max(j for n, j in order.items() if n == m or n.startswith(m + ".")))
                             for m in (f["module"] for f in info)]
        self._layer_map = group_parameters(backbone, backbone.group_matcher(coarse=False), reverse=True)
        self.layer_count = max(self._layer_map.values(), default=0) + 1

    @property
    def timm_model(self) -> nn.Module:
        return self.backbone

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        pad_h, pad_w = (-x.shape[-2]) % PAD_TO, (-x.shape[-1]) % PAD_TO
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return list(self.backbone.forward_intermediates(x, indices=self.levels, intermediates_only=True))

    @staticmethod
    def _relative(param_name: str) -> str:
        parts = param_name.split(".")
        return ".".join(parts[parts.index("backbone") + 1:]) if "backbone" in parts else param_name

    def layer_id(self, param_name: str) -> int:
        """timm's layer-decay group of a parameter (named relative to the backbone, this module or a parent)."""
        return self._layer_map.get(self._relative(param_name), self.layer_count - 1)

    def stage_of(self, param_name: str) -> int:
        """-1 stem, 0..3 the stage that owns the parameter, 4 after the stages (module docstring)."""
        pos = self._module_order.get(self._relative(param_name).rpartition(".")[0], 0)
        if pos < self._stage_spans[0][0]:
            return -1
        return next((i for i, (_, end) in enumerate(self._stage_spans) if pos <= end), len(self._stage_spans))


def _timm_kwargs(spec: EncoderSpec, cfg: EncoderConfig) -> dict:
    kwargs: dict = dict(num_classes=0)
    if cfg.drop_path_rate:
        kwargs["drop_path_rate"] = cfg.drop_path_rate
    with torch.device("meta"):
        cls = type(timm.create_model(spec.arch, pretrained=False, num_classes=0))
    if "dynamic_img_size" in inspect.signature(cls.__init__).parameters:
        kwargs["dynamic_img_size"] = True  # Swin: masks per input, any size
    kwargs.update(cfg.timm_kwargs)
    return kwargs


def _create(spec: EncoderSpec, cfg: EncoderConfig, pretrained: bool) -> nn.Module:
    name = spec.pretrained_name if pretrained else spec.arch
    try:
        return timm.create_model(name, pretrained=pretrained, **_timm_kwargs(spec, cfg))
    except TypeError as e:  # a misspelt model.encoder.timm_kwargs key reaches timm's constructor
        raise InputError(f"encoder {spec.name!r} ({spec.arch}): model.encoder.timm_kwargs "
                         f"{sorted(cfg.timm_kwargs)} rejected by timm: {e}") from e


def build_hierarchical(spec: EncoderSpec, cfg: EncoderConfig) -> HierarchicalEncoder:
    """``spec``'s backbone with its weights (``cfg.weights`` as for ViTs), the head and unused stages pruned."""
    if cfg.feature_norm:
        raise InputError(f"model.encoder.feature_norm=true: {spec.name} is a hierarchical backbone whose stage "
                         "maps are used as they are; leave feature_norm null")
    if list(cfg.taps) != list(EncoderConfig().taps):
        raise InputError(f"model.encoder.taps={list(cfg.taps)}: {spec.name} is a hierarchical backbone, its 4 "
                         "stage maps are the taps; leave taps at its default")
    source = resolve_weights(spec.default_weights, cfg.weights)
    if source == "hub":
        if spec.hub_tag is None:
            raise WeightsError(f"encoder {spec.name!r} has no hub weights; use weights: none or a local file")
        try:
            backbone = _create(spec, cfg, pretrained=True)
        except InputError:
            raise
        except Exception as e:  # offline, missing file, gated repo: the user must supply a local file
            raise WeightsError(f"could not load hub weights {spec.pretrained_name!r} ({type(e).__name__}: {e}). "
                               "Offline? Download the checkpoint and set model.encoder.weights to its path.") from e
        report = LoadReport(format="hub", file=spec.pretrained_name)
    else:
        backbone = _create(spec, cfg, pretrained=False)
        report = LoadReport(format="none", file=None)
        if isinstance(source, Path):
            report = load_encoder_weights(backbone, spec.arch, source, cfg.ignore_prefixes, formats=spec.formats,
                                          checkpoint=open_checkpoint(source))
    levels = pyramid_levels(backbone.feature_info)
    backbone.prune_intermediate_layers(levels, prune_norm=True, prune_head=True)
    return HierarchicalEncoder(spec, backbone, levels, report)
