"""``EncoderSpec``: a zoo entry (``zoo.py``) completed from timm, or any timm architecture taken as it is.

Two kinds of encoder:
- ``vit``: a timm ViT (modules ``vision_transformer``, ``eva``, ``vision_transformer_sam``, ``deit``): taps are
  block outputs on one patch grid (``encoders.Encoder``); a neck builds the pyramid.
- ``hierarchical``: any other timm model whose ``feature_info`` has stages at strides 4, 8, 16 and 32 and that
  implements ``forward_intermediates`` (ResNet, ConvNeXt, Swin, ...): the 4 stage maps are the pyramid
  (``hierarchical.HierarchicalEncoder``); the neck only maps channels.
Shapes are read on the meta device (no memory, no init), cached per name.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass

import timm
import torch

from encseg.errors import EncsegError
from encseg.models import zoo
from encseg.models.weights import ALL_FORMATS
from encseg.models.zoo import NORMS, Stats, ZooEntry

# timm modules whose models follow the ViT interface we rely on (patch_embed, blocks, forward_intermediates)
_VIT_MODULES = ("vision_transformer", "eva", "vision_transformer_sam", "deit")
PYRAMID_STRIDES = (4, 8, 16, 32)


class UnknownEncoderError(EncsegError, KeyError, ValueError):
    """An encoder name that is neither a zoo entry nor a usable timm model; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


@dataclass(frozen=True)
class EncoderSpec:
    """One encoder, complete. ``arch`` is a timm architecture; ``hub_tag`` its pretrained tag (None: no hub
    weights); ``native_size`` the input size the released weights are made for (None: no release).
    Hierarchical encoders: ``patch`` is the first stage's stride (4), ``embed_dim`` the last stage's width,
    ``depth`` the number of stages (4) and ``channels`` every stage's width."""

    name: str
    family: str
    arch: str
    hub_tag: str | None
    patch: int
    embed_dim: int
    depth: int
    mean: Stats
    std: Stats
    native_size: int | None = None
    formats: tuple[str, ...] = ("timm",)  # local checkpoint layouts this entry accepts (see weights.py)
    default_weights: str = "hub"  # what ``weights: null`` means: "hub" or "none"
    notes: str = ""
    kind: str = "vit"  # "vit" or "hierarchical"
    feature_norm: bool = False  # the family's dense protocol: final norm on every tap (zoo.py)
    abs_pos: bool = True  # a ViT with an absolute positional table (False: RoPE only, any grid as it is)
    channels: tuple[int, ...] = ()

    @property
    def pretrained_name(self) -> str:
        """``arch.tag`` as timm's hub knows it (the bare arch when there is no tag)."""
        return f"{self.arch}.{self.hub_tag}" if self.hub_tag else self.arch

    @property
    def norm_name(self) -> str:
        return next((k for k, (m, s) in NORMS.items() if m == self.mean and s == self.std), "custom")

    @property
    def hierarchical(self) -> bool:
        return self.kind == "hierarchical"


@functools.lru_cache(maxsize=1)
def _timm_vit_archs() -> frozenset[str]:
    return frozenset(a for m in _VIT_MODULES for a in timm.list_models(module=m))


def pyramid_levels(feature_info) -> list[int]:
    """Indices into ``feature_info`` of the last stage at each of the strides 4/8/16/32 ([] if one is missing)."""
    by_stride = {int(f["reduction"]): i for i, f in enumerate(feature_info)}
    return [by_stride[s] for s in PYRAMID_STRIDES] if all(s in by_stride for s in PYRAMID_STRIDES) else []


def _shape_fields(arch: str) -> dict:
    with torch.device("meta"):  # no memory, no init cost: only the shapes are read
        model = timm.create_model(arch, pretrained=False, num_classes=0)
    if type(model).__module__.rsplit(".", 1)[-1] in _VIT_MODULES:
        return dict(kind="vit", patch=int(model.patch_embed.patch_size[0]), embed_dim=int(model.embed_dim),
                    depth=len(model.blocks), abs_pos=getattr(model, "pos_embed", None) is not None)
    levels = pyramid_levels(getattr(model, "feature_info", []) or [])
    if not levels or not hasattr(model, "forward_intermediates"):
        raise UnknownEncoderError(
            f"timm model {arch!r} is neither a ViT nor a hierarchical backbone with stages at strides 4/8/16/32 "
            f"and forward_intermediates(); encseg cannot tap it")
    channels = tuple(int(model.feature_info[i]["num_chs"]) for i in levels)
    return dict(kind="hierarchical", patch=PYRAMID_STRIDES[0], embed_dim=channels[-1], depth=len(levels),
                channels=channels, abs_pos=False)


@functools.lru_cache(maxsize=256)
def _from_timm(name: str, entry: ZooEntry) -> EncoderSpec:
    """``entry`` completed from timm: the architecture's shapes (meta device) and the pretrained_cfg."""
    arch, _, tag = entry.model.partition(".")
    shapes = _shape_fields(arch)
    released = entry.norm is None  # zoo random entries name their norm; everything else has a release
    cfg = timm.models.get_pretrained_cfg(entry.model) if released else None
    mean, std = (tuple(cfg.mean), tuple(cfg.std)) if cfg is not None else NORMS[entry.norm or "imagenet"]
    hub = cfg is not None and bool(cfg.hf_hub_id or cfg.url)
    return EncoderSpec(
        name=name, family=entry.family, arch=arch, hub_tag=(tag or cfg.tag or None) if cfg is not None else None,
        mean=mean, std=std, native_size=int(cfg.input_size[-1]) if cfg is not None else None,
        formats=entry.formats, default_weights="hub" if hub else "none", notes=entry.notes,
        feature_norm=entry.feature_norm, **shapes,
    )


def _timm_name_ok(name: str) -> bool:
    arch, _, tag = name.partition(".")
    if arch not in timm.list_models():
        return False
    return not tag or name in timm.list_models(arch, pretrained=True)


def get_spec(name: str) -> EncoderSpec:
    """The zoo entry ``name``, or a spec derived from timm for any other timm ViT or hierarchical backbone
    (``arch[.tag]``)."""
    if name in zoo._ZOO:
        return _from_timm(name, zoo._ZOO[name])
    if _timm_name_ok(name):
        arch = name.partition(".")[0]
        notes = "timm architecture outside the zoo"
        formats = ALL_FORMATS if arch in _timm_vit_archs() else ("timm", "convnext")
        return _from_timm(name, ZooEntry(model=name, family="timm", formats=formats, notes=notes))
    close = difflib.get_close_matches(name, list(zoo._ZOO), n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownEncoderError(
        f"unknown encoder {name!r}.{hint} Known encoders: {', '.join(zoo._ZOO)}; or any timm ViT architecture "
        f"(timm.list_models(module='vision_transformer'), 'eva', 'vision_transformer_sam') or hierarchical "
        f"backbone with feature_info (resnet50, convnext_tiny, swin_tiny_patch4_window7_224, ...)."
    )


__all__ = ["PYRAMID_STRIDES", "EncoderSpec", "UnknownEncoderError", "get_spec", "pyramid_levels"]
