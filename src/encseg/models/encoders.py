"""Encoders: ``build_encoder`` for any zoo name (``zoo.py``) or timm name, and ``Encoder``, which taps a ViT.

Conventions
- The zoo is data (``zoo.py``: ``_cfg`` entries); ``specs.get_spec`` completes an entry from timm (patch, width,
  depth from the model, mean/std and native size from its ``pretrained_cfg``). Datasets never set any of these.
  Any other timm ViT architecture name (``vit_*``, ``eva*``, ``samvit_*``, ``deit*``, optionally with a
  ``.tag``) is accepted as an escape hatch, and so is any hierarchical timm backbone (``resnet50``,
  ``convnext_tiny``, ``swin_*``), which ``hierarchical.py`` builds (4 stage maps; this module's rules are for ViTs).
- Positional embeddings are resampled at most once between the checkpoint and the input. The encoder keeps the
  checkpoint's own grid: hub weights are built at the pretrained_cfg input size (518 for DINOv2, 224 for CLIP,
  1024 for SAM, ...), a local file at the grid of its own positional table; nothing is resampled at load. Each
  forward resamples that table once to the input's patch grid (timm's ``dynamic_img_size``), or not at all when
  the grids match (DINOv2 at a 512 crop: padded to 518, its native 37 x 37 grid). Random init (no checkpoint)
  builds the table for ``EncoderConfig.img_size`` or else for the padded training crop. ``img_size`` that
  disagrees with a checkpoint's grid is an error, because it would resample twice (at load and per input).
  RoPE-only ViTs (DINOv3) have no table: any multiple-of-patch crop runs as it is, ``img_size`` is free.
- The interpolation rule is timm's ``resample_abs_pos_embed``: bicubic, ``align_corners=False``, output size
  given exactly, antialias on (it only acts when shrinking the grid); class/register positions untouched. The
  release code differs at a non-native size: DINOv2's ``interpolate_pos_encoding`` calls bicubic with
  ``scale_factor=(g + 0.1) / M`` and no antialias (up to 0.13 apart on a smooth table at 448 px), MAE's and
  DeiT's ``interpolate_pos_embed`` use bicubic without antialias (0.05 apart: another cubic kernel), OpenCLIP's
  ``resize_pos_embed`` is timm's rule, EVA02 adds a RoPE that timm recomputes for the grid, and OpenAI CLIP and
  SAM's release code only run at the native size (timm's SAM resamples its absolute and relative-position tables
  per input). ``benchmarks/pos_embed_fidelity.py`` measures these; docs/recipes.md section 3 lists the numbers.
- ``Encoder.forward`` returns one ``(B, D, ceil(H/p), ceil(W/p))`` map per tap: block outputs without prefix
  tokens (class, registers), raw or with the final norm applied to every tap (``feature_norm``: the family's
  dense protocol by default, see ``zoo.py``; DINOv3 = ``get_intermediate_layers(..., norm=True)``). Inputs whose size is not a multiple of the patch are padded
  with zeros at the bottom/right first (the same padding as timm's ``dynamic_img_pad``; after normalisation zero
  is the mean colour), so every architecture, SAM included, sees the same grid.
- Taps (``EncoderConfig.taps``): read as depth fractions when every value lies in (0, 1] -- fraction ``f`` taps
  block ``max(1, round(f * depth)) - 1`` (0.25/0.5/0.75/1.0 -> blocks 2/5/8/11 at depth 12); otherwise as 0-based
  block indices, which must then all be whole numbers in ``[-depth, depth)`` (negative counts from the end).
  So ``[1.0]`` is the last block, and ``[0, 1]`` are the first two blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from encseg.config import EncoderConfig
from encseg.errors import EncsegError, InputError
from encseg.models.hierarchical import HierarchicalEncoder, build_hierarchical
from encseg.models.specs import EncoderSpec, UnknownEncoderError, get_spec
from encseg.models.weights import (
    LoadReport,
    WeightsError,
    checkpoint_grid,
    load_encoder_weights,
    open_checkpoint,
    resolve_weights,
)
from encseg.models.zoo import NORMS, Stats, list_encoders, register_encoder

__all__ = ["NORMS", "Encoder", "EncoderSpec", "TapError", "UnknownEncoderError", "build_encoder", "get_spec",
           "list_encoders", "register_encoder", "resolve_taps"]


class TapError(EncsegError, ValueError):
    """``EncoderConfig.taps`` that cannot be resolved to block indices."""


# --------------------------------------------------------------------------------------------- taps
def resolve_taps(taps: Sequence[float], depth: int) -> list[int]:
    """Block indices (0-based, in the given order) for ``taps``; the rule is in the module docstring."""
    if not taps:
        raise TapError("model.encoder.taps is empty; give depth fractions (e.g. [0.25, 0.5, 0.75, 1.0]) or block indices")
    values = [float(t) for t in taps]
    if all(0.0 < v <= 1.0 for v in values):
        return [max(1, round(v * depth)) - 1 for v in values]
    bad = [t for t in taps if float(t) != math.floor(float(t)) or not -depth <= float(t) < depth]
    if bad:
        raise TapError(
            f"model.encoder.taps={list(taps)}: values {bad} are neither all depth fractions in (0, 1] nor whole "
            f"block indices in [{-depth}, {depth}) for an encoder of depth {depth}"
        )
    return [int(v) % depth for v in values]


# ------------------------------------------------------------------------------------------ encoder
_EMBED_PARAMS = ("cls_token", "reg_token", "dist_token", "pos_embed", "patch_embed", "norm_pre", "mask_token", "rope")


class Encoder(nn.Module):
    """A timm ViT that returns one feature map per tapped block (see the module docstring for conventions)."""

    hierarchical = False

    def __init__(self, spec: EncoderSpec, vit: nn.Module, tap_indices: list[int], depth: int,
                 load_report: LoadReport, feature_norm: bool = False):
        super().__init__()
        self.spec = spec
        self.vit = vit
        self.feature_norm = feature_norm
        self.tap_indices = list(tap_indices)
        self.depth = depth
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.embed_dim = int(vit.embed_dim)
        # the input size the positional table is made for; other inputs resample it once per forward
        self.pos_size = int(vit.patch_embed.grid_size[0]) * self.patch_size
        self.mean: Stats = tuple(spec.mean)
        self.std: Stats = tuple(spec.std)
        self.load_report = load_report
        self._unique_taps = sorted(set(self.tap_indices))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        p = self.patch_size
        pad_h, pad_w = (-x.shape[-2]) % p, (-x.shape[-1]) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        feats = self.vit.forward_intermediates(
            x, indices=self._unique_taps, norm=self.feature_norm, output_fmt="NCHW", intermediates_only=True,
            stop_early=True,
        )
        by_index = dict(zip(self._unique_taps, feats, strict=True))
        return [by_index[i] for i in self.tap_indices]

    def layer_id(self, param_name: str) -> int:
        """0 for embeddings and prefix tokens, ``i + 1`` for block ``i``, ``depth + 1`` for anything after.

        ``param_name`` may be relative to the timm model (``blocks.3.attn.qkv.weight``), to this module
        (``vit.blocks.3...``) or to any parent (``encoder.vit.blocks.3...``).
        """
        parts = param_name.split(".")
        if "vit" in parts:
            parts = parts[parts.index("vit") + 1:]
        if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit():
            return int(parts[1]) + 1
        if parts[0] in _EMBED_PARAMS:
            return 0
        return self.depth + 1

    @property
    def layer_count(self) -> int:
        """Number of ``layer_id`` values (embeddings, blocks, after): decay exponent ``layer_count - 1 - id``."""
        return self.depth + 2

    @property
    def timm_model(self) -> nn.Module:
        return self.vit

    def stage_of(self, param_name: str) -> int:
        """-1 embeddings, ``i`` block ``i``, ``depth`` after the blocks: the unit ``last_n`` regimes count."""
        return self.layer_id(param_name) - 1


def _timm_kwargs(spec: EncoderSpec, cfg: EncoderConfig, pos_size: int) -> dict:
    kwargs: dict = dict(num_classes=0, drop_path_rate=cfg.drop_path_rate)
    if not spec.arch.startswith("samvit"):
        # samvit rejects dynamic_img_size; it resamples pos-embed and rel-pos per input by itself, and its
        # rel-pos tables are sized by img_size, so it stays at the checkpoint's native size
        kwargs.update(dynamic_img_size=True, img_size=pos_size)
    kwargs.update(cfg.timm_kwargs)
    return kwargs


def _pos_size(spec: EncoderSpec, cfg: EncoderConfig, checkpoint_size: int | None, input_size: int | None) -> int:
    """The input size the positional table is built for: the checkpoint's own (rule in the module docstring)."""
    patch = int(cfg.timm_kwargs.get("patch_size", spec.patch))
    if not spec.abs_pos:  # RoPE only: the rotary grid is recomputed for every input, nothing to resample
        size = cfg.img_size or checkpoint_size or input_size or spec.native_size or 224
        return math.ceil(size / patch) * patch
    if checkpoint_size is None:  # random init: the table is learnt at the training grid
        size = cfg.img_size or input_size or spec.native_size or 224
        return math.ceil(size / patch) * patch
    if cfg.img_size is not None and cfg.img_size != checkpoint_size:
        raise InputError(
            f"model.encoder.img_size={cfg.img_size} but the {spec.name} checkpoint's positional embedding is made "
            f"for {checkpoint_size} px: building at {cfg.img_size} would resample it at load and again for every "
            f"input of another size. Leave img_size null (the encoder resamples once per input)."
        )
    return checkpoint_size


def build_encoder(cfg: EncoderConfig, img_size: int | None = None) -> Encoder | HierarchicalEncoder:
    """Build ``cfg.name`` with its weights, its positional table at the checkpoint's own grid.

    ``img_size`` (the padded training input) sizes the table only without a checkpoint (random init), where
    ``cfg.img_size`` overrides it. Weights: ``cfg.weights`` None -> the entry's default ("hub" for pretrained
    entries, "none" for ``random_*``); "hub" -> timm's hub (fails fast offline); "none" -> random init; anything
    else -> a local checkpoint file in one of the entry's formats (see ``weights.py``). Blocks after the last tap,
    the final norm and the head are pruned after loading; ``depth`` and ``layer_id`` still count the full
    architecture. ``cfg.feature_norm`` (None: the entry's ``feature_norm``) keeps the final norm and applies it to
    every tap. A hierarchical backbone is built by ``hierarchical.build_hierarchical`` (its 4 stage maps).
    """
    spec = get_spec(cfg.name)
    if spec.hierarchical:
        return build_hierarchical(spec, cfg)
    source = resolve_weights(spec.default_weights, cfg.weights)
    if source == "hub":
        if spec.hub_tag is None:
            raise WeightsError(f"encoder {spec.name!r} has no hub weights; use weights: none or a local file")
        kwargs = _timm_kwargs(spec, cfg, _pos_size(spec, cfg, spec.native_size, img_size))
        try:
            vit = timm.create_model(spec.pretrained_name, pretrained=True, **kwargs)
        except Exception as e:  # offline, missing file, gated repo: the user must supply a local file
            raise WeightsError(
                f"could not load hub weights {spec.pretrained_name!r} ({type(e).__name__}: {e}). Offline? "
                f"Download the checkpoint and set model.encoder.weights to its path."
            ) from e
        report = LoadReport(format="hub", file=spec.pretrained_name)
    else:
        checkpoint = open_checkpoint(source) if isinstance(source, Path) else None
        grid = checkpoint_grid(checkpoint[0]) if checkpoint is not None else None
        patch = int(cfg.timm_kwargs.get("patch_size", spec.patch))
        own = grid * patch if grid is not None else (spec.native_size if checkpoint is not None else None)
        vit = _create(spec, cfg, _timm_kwargs(spec, cfg, _pos_size(spec, cfg, own, img_size)))
        if checkpoint is None:
            report = LoadReport(format="none", file=None)
        else:
            report = load_encoder_weights(vit, spec.arch, source, cfg.ignore_prefixes, formats=spec.formats,
                                          checkpoint=checkpoint)
    depth = len(vit.blocks)
    taps = resolve_taps(cfg.taps, depth)
    feature_norm = spec.feature_norm if cfg.feature_norm is None else cfg.feature_norm
    if feature_norm and isinstance(getattr(vit, "norm", None), (nn.Identity, type(None))):
        raise InputError(f"model.encoder.feature_norm=true: {spec.name} ({spec.arch}) has no final norm on its "
                         "tokens (its norm sits after pooling); set feature_norm: false")
    vit.prune_intermediate_layers(sorted(set(taps)), prune_norm=not feature_norm, prune_head=True)
    return Encoder(spec, vit, taps, depth, report, feature_norm=feature_norm)


def _create(spec: EncoderSpec, cfg: EncoderConfig, kwargs: dict) -> nn.Module:
    try:
        return timm.create_model(spec.arch, pretrained=False, **kwargs)
    except TypeError as e:  # a misspelt model.encoder.timm_kwargs key reaches timm's constructor
        raise InputError(f"encoder {spec.name!r} ({spec.arch}): model.encoder.timm_kwargs "
                         f"{sorted(cfg.timm_kwargs)} rejected by timm: {e}") from e
