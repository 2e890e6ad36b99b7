"""The encoder zoo: a table of named timm ViTs, and ``Encoder``, the module that taps their blocks.

Conventions
- An entry (``EncoderSpec``) owns everything that depends on the pretraining: the timm architecture and hub tag,
  patch size, width, depth, and the mean/std images must be normalised with. Datasets never set these.
- Any other timm ViT architecture name (``vit_*``, ``eva*``, ``samvit_*``, ``deit*``, optionally with a
  ``.tag``) is accepted as an escape hatch; its mean/std come from timm's ``pretrained_cfg``.
- ``Encoder.forward`` returns one ``(B, D, ceil(H/p), ceil(W/p))`` map per tap: block outputs without the final
  norm and without prefix tokens (class, registers). Inputs whose size is not a multiple of the patch are padded
  with zeros at the bottom/right first (the same padding as timm's ``dynamic_img_pad``; after normalisation zero
  is the mean colour), so every architecture, SAM included, sees the same grid.
- Taps (``EncoderConfig.taps``): read as depth fractions when every value lies in (0, 1] -- fraction ``f`` taps
  block ``max(1, round(f * depth)) - 1`` (0.25/0.5/0.75/1.0 -> blocks 2/5/8/11 at depth 12); otherwise as 0-based
  block indices, which must then all be whole numbers in ``[-depth, depth)`` (negative counts from the end).
  So ``[1.0]`` is the last block, and ``[0, 1]`` are the first two blocks.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import timm
import torch
import torch.nn.functional as F
from timm.data.constants import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_INCEPTION_MEAN,
    IMAGENET_INCEPTION_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)
from torch import nn

from encseg.config import EncoderConfig
from encseg.errors import EncsegError, InputError
from encseg.models.weights import ALL_FORMATS, LoadReport, WeightsError, load_encoder_weights, resolve_weights

Stats = tuple[float, float, float]


class UnknownEncoderError(EncsegError, KeyError, ValueError):
    """An encoder name that is neither a zoo entry nor a timm ViT; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class TapError(EncsegError, ValueError):
    """``EncoderConfig.taps`` that cannot be resolved to block indices."""


@dataclass(frozen=True)
class EncoderSpec:
    """One zoo entry. ``arch`` is a timm architecture; ``hub_tag`` its pretrained tag (None: no hub weights)."""

    name: str
    family: str
    arch: str
    hub_tag: str | None
    patch: int
    embed_dim: int
    depth: int
    mean: Stats
    std: Stats
    formats: tuple[str, ...] = ("timm",)  # local checkpoint layouts this entry accepts (see weights.py)
    default_weights: str = "hub"  # what ``weights: null`` means: "hub" or "none"
    notes: str = ""

    @property
    def pretrained_name(self) -> str:
        """``arch.tag`` as timm's hub knows it (the bare arch when there is no tag)."""
        return f"{self.arch}.{self.hub_tag}" if self.hub_tag else self.arch


_REGISTRY: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec) -> EncoderSpec:
    """Add an entry to the zoo (also usable from user code before building a config that names it)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"encoder {spec.name!r} is already registered")
    bad = set(spec.formats) - set(ALL_FORMATS)
    if bad:
        raise ValueError(f"encoder {spec.name!r}: unknown checkpoint formats {sorted(bad)}; known: {ALL_FORMATS}")
    if spec.default_weights not in ("hub", "none"):
        raise ValueError(f"encoder {spec.name!r}: default_weights must be 'hub' or 'none'")
    _REGISTRY[spec.name] = spec
    return spec


def list_encoders(family: str | None = None) -> list[str]:
    return [n for n, s in _REGISTRY.items() if family is None or s.family == family]


_CLIP = dict(mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD)
_IMNET = dict(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)
_HALF = dict(mean=IMAGENET_INCEPTION_MEAN, std=IMAGENET_INCEPTION_STD)  # 0.5 / 0.5
_B, _L, _H, _S, _G = (768, 12), (1024, 24), (1280, 32), (384, 12), (1536, 40)

# fmt: off
# name, family, arch, tag, patch, (width, depth), norm, formats, notes. Every arch.tag exists in timm 1.0.31
# (tests check the names, sizes and mean/std against timm).
_TABLE = [
    ("clip_openai_vitb16", "clip", "vit_base_patch16_clip_quickgelu_224", "openai", 16, _B, _CLIP, ("clip", "timm"),
     "OpenAI CLIP; QuickGELU arch (the plain _clip_ arch uses GELU and drifts from the release)"),
    ("clip_openai_vitl14", "clip", "vit_large_patch14_clip_quickgelu_224", "openai", 14, _L, _CLIP, ("clip", "timm"),
     "OpenAI CLIP; QuickGELU arch"),
    ("clip_laion_vitb16", "clip", "vit_base_patch16_clip_224", "laion2b", 16, _B, _CLIP, ("clip", "timm"),
     "OpenCLIP LAION-2B"),
    ("clip_laion_vitl14", "clip", "vit_large_patch14_clip_224", "laion2b", 14, _L, _HALF, ("clip", "timm"),
     "OpenCLIP LAION-2B; trained with 0.5/0.5, not the CLIP mean/std"),
    ("dinov2_vits14", "dinov2", "vit_small_patch14_dinov2", "lvd142m", 14, _S, _IMNET, ("dinov2", "timm"), ""),
    ("dinov2_vitb14", "dinov2", "vit_base_patch14_dinov2", "lvd142m", 14, _B, _IMNET, ("dinov2", "timm"), ""),
    ("dinov2_vitl14", "dinov2", "vit_large_patch14_dinov2", "lvd142m", 14, _L, _IMNET, ("dinov2", "timm"), ""),
    ("dinov2_vitg14", "dinov2", "vit_giant_patch14_dinov2", "lvd142m", 14, _G, _IMNET, ("dinov2", "timm"),
     "SwiGLU MLP"),
    ("dinov2_vits14_reg", "dinov2", "vit_small_patch14_reg4_dinov2", "lvd142m", 14, _S, _IMNET, ("dinov2", "timm"),
     "4 registers"),
    ("dinov2_vitb14_reg", "dinov2", "vit_base_patch14_reg4_dinov2", "lvd142m", 14, _B, _IMNET, ("dinov2", "timm"),
     "4 registers"),
    ("dinov2_vitl14_reg", "dinov2", "vit_large_patch14_reg4_dinov2", "lvd142m", 14, _L, _IMNET, ("dinov2", "timm"),
     "4 registers"),
    ("dinov2_vitg14_reg", "dinov2", "vit_giant_patch14_reg4_dinov2", "lvd142m", 14, _G, _IMNET, ("dinov2", "timm"),
     "4 registers, SwiGLU MLP"),
    ("mae_vitb16", "mae", "vit_base_patch16_224", "mae", 16, _B, _IMNET, ("mae", "timm"), ""),
    ("mae_vitl16", "mae", "vit_large_patch16_224", "mae", 16, _L, _IMNET, ("mae", "timm"), ""),
    ("mae_vith14", "mae", "vit_huge_patch14_224", "mae", 14, _H, _IMNET, ("mae", "timm"), ""),
    ("siglip_vitb16", "siglip", "vit_base_patch16_siglip_224", "webli", 16, _B, _HALF,
     ("openclip_timm", "timm"),
     "no class token"),
    ("siglip_vitl16", "siglip", "vit_large_patch16_siglip_256", "webli", 16, _L, _HALF,
     ("openclip_timm", "timm"),
     "no class token; 256 px"),
    ("siglip2_vitb16", "siglip2", "vit_base_patch16_siglip_224", "v2_webli", 16, _B, _HALF,
     ("openclip_timm", "timm"),
     "no class token"),
    ("siglip2_vitl16", "siglip2", "vit_large_patch16_siglip_256", "v2_webli", 16, _L, _HALF,
     ("openclip_timm", "timm"),
     "no class token; 256 px"),
    ("eva02_vitb14", "eva02", "eva02_base_patch14_224", "mim_in22k", 14, _B, _CLIP, ("eva02", "timm"),
     "RoPE, SwiGLU"),
    ("eva02_vitl14", "eva02", "eva02_large_patch14_224", "mim_in22k", 14, _L, _CLIP, ("eva02", "timm"),
     "RoPE, SwiGLU"),
    ("sam_vitb16", "sam", "samvit_base_patch16", "sa1b", 16, _B, _IMNET, ("sam", "timm"),
     "windowed attention; built at its native 1024 px, resamples pos/rel-pos per input"),
    ("sam_vitl16", "sam", "samvit_large_patch16", "sa1b", 16, _L, _IMNET, ("sam", "timm"), "see sam_vitb16"),
    ("sam_vith16", "sam", "samvit_huge_patch16", "sa1b", 16, _H, _IMNET, ("sam", "timm"), "see sam_vitb16"),
    ("supervised_vitb16", "supervised", "vit_base_patch16_224", "augreg_in21k", 16, _B, _HALF, ("timm",),
     "ImageNet-21k classification"),
    ("supervised_vitl16", "supervised", "vit_large_patch16_224", "augreg_in21k", 16, _L, _HALF, ("timm",),
     "ImageNet-21k classification"),
    ("random_vits16", "random", "vit_small_patch16_224", None, 16, _S, _IMNET, ("timm",), "random init"),
    ("random_vitb16", "random", "vit_base_patch16_224", None, 16, _B, _IMNET, ("timm",), "random init"),
    ("random_vitl16", "random", "vit_large_patch16_224", None, 16, _L, _IMNET, ("timm",), "random init"),
    ("random_vitb14", "random", "vit_base_patch14_dinov2", None, 14, _B, _IMNET, ("timm",),
     "random init, DINOv2 architecture (layer scale)"),
]
# fmt: on

for _n, _fam, _arch, _tag, _p, (_d, _depth), _norm, _fmts, _notes in _TABLE:
    register_encoder(EncoderSpec(
        name=_n, family=_fam, arch=_arch, hub_tag=_tag, patch=_p, embed_dim=_d, depth=_depth,
        mean=tuple(_norm["mean"]), std=tuple(_norm["std"]), formats=_fmts,
        default_weights="none" if _fam == "random" else "hub", notes=_notes,
    ))

# timm modules whose models follow the ViT interface we rely on (patch_embed, blocks, forward_intermediates)
_VIT_MODULES = ("vision_transformer", "eva", "vision_transformer_sam", "deit")


@functools.lru_cache(maxsize=1)
def _timm_vit_archs() -> frozenset[str]:
    return frozenset(a for m in _VIT_MODULES for a in timm.list_models(module=m))


@functools.lru_cache(maxsize=64)
def _escape_hatch_spec(name: str) -> EncoderSpec:
    arch, _, tag = name.partition(".")
    with torch.device("meta"):  # no memory, no init cost: only the shapes are read
        vit = timm.create_model(arch, pretrained=False, num_classes=0)
    cfg = timm.models.get_pretrained_cfg(name)
    norm = dict(mean=cfg.mean, std=cfg.std) if cfg is not None else _IMNET
    return EncoderSpec(
        name=name, family="timm", arch=arch, hub_tag=tag or (cfg.tag if cfg is not None else None) or None,
        patch=int(vit.patch_embed.patch_size[0]), embed_dim=int(vit.embed_dim), depth=len(vit.blocks),
        mean=tuple(norm["mean"]), std=tuple(norm["std"]), formats=ALL_FORMATS,
        default_weights="hub" if cfg is not None and (cfg.hf_hub_id or cfg.url) else "none",
        notes="timm architecture outside the zoo",
    )


def get_spec(name: str) -> EncoderSpec:
    """The zoo entry ``name``, or a spec derived from timm for any other timm ViT architecture (``arch[.tag]``)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    arch, _, tag = name.partition(".")
    if arch in _timm_vit_archs() and (not tag or name in timm.list_models(arch, pretrained=True)):
        return _escape_hatch_spec(name)
    close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownEncoderError(
        f"unknown encoder {name!r}.{hint} Known encoders: {', '.join(_REGISTRY)}; "
        f"or any timm ViT architecture (timm.list_models(module='vision_transformer'), 'eva', 'vision_transformer_sam')."
    )


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

    def __init__(self, spec: EncoderSpec, vit: nn.Module, tap_indices: list[int], depth: int,
                 load_report: LoadReport):
        super().__init__()
        self.spec = spec
        self.vit = vit
        self.tap_indices = list(tap_indices)
        self.depth = depth
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.embed_dim = int(vit.embed_dim)
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
            x, indices=self._unique_taps, output_fmt="NCHW", intermediates_only=True, stop_early=True
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


def _timm_kwargs(spec: EncoderSpec, cfg: EncoderConfig, img_size: int) -> dict:
    kwargs: dict = dict(num_classes=0, drop_path_rate=cfg.drop_path_rate)
    if not spec.arch.startswith("samvit"):
        # samvit rejects dynamic_img_size; it resamples pos-embed and rel-pos per input by itself, and its
        # rel-pos tables are sized by img_size, so it stays at the checkpoint's native size
        kwargs.update(dynamic_img_size=True, img_size=img_size)
    kwargs.update(cfg.timm_kwargs)
    return kwargs


def build_encoder(cfg: EncoderConfig, img_size: int) -> Encoder:
    """Build ``cfg.name`` with its weights; the positional embedding is built for ``cfg.img_size or img_size``.

    Weights: ``cfg.weights`` None -> the entry's default ("hub" for pretrained entries, "none" for ``random_*``);
    "hub" -> timm's hub (fails fast offline); "none" -> random init; anything else -> a local checkpoint file in
    one of the entry's formats (see ``weights.py``). Blocks after the last tap, the final norm and the head are
    pruned after loading; ``depth`` and ``layer_id`` still count the full architecture.
    """
    spec = get_spec(cfg.name)
    size = cfg.img_size if cfg.img_size is not None else img_size
    kwargs = _timm_kwargs(spec, cfg, size)
    source = resolve_weights(spec.default_weights, cfg.weights)
    if source == "hub":
        if spec.hub_tag is None:
            raise WeightsError(f"encoder {spec.name!r} has no hub weights; use weights: none or a local file")
        try:
            vit = timm.create_model(spec.pretrained_name, pretrained=True, **kwargs)
        except Exception as e:  # offline, missing file, gated repo: the user must supply a local file
            raise WeightsError(
                f"could not load hub weights {spec.pretrained_name!r} ({type(e).__name__}: {e}). Offline? "
                f"Download the checkpoint and set model.encoder.weights to its path."
            ) from e
        report = LoadReport(format="hub", file=spec.pretrained_name)
    else:
        try:
            vit = timm.create_model(spec.arch, pretrained=False, **kwargs)
        except TypeError as e:  # a misspelt model.encoder.timm_kwargs key reaches timm's constructor
            raise InputError(f"encoder {spec.name!r} ({spec.arch}): model.encoder.timm_kwargs "
                             f"{sorted(cfg.timm_kwargs)} rejected by timm: {e}") from e
        if source == "none":
            report = LoadReport(format="none", file=None)
        else:
            report = load_encoder_weights(vit, spec.arch, source, cfg.ignore_prefixes, formats=spec.formats)
    depth = len(vit.blocks)
    taps = resolve_taps(cfg.taps, depth)
    vit.prune_intermediate_layers(sorted(set(taps)), prune_norm=True, prune_head=True)
    return Encoder(spec, vit, taps, depth, report)


# --------------------------------------------------------------------------------------------- table
_NORM_NAMES = {tuple(OPENAI_CLIP_MEAN): "clip", tuple(IMAGENET_DEFAULT_MEAN): "imagenet",
               tuple(IMAGENET_INCEPTION_MEAN): "0.5/0.5"}


def count_params(spec: EncoderSpec) -> int:
    """Parameters of the full architecture (head included), counted on the meta device (no memory, fast)."""
    with torch.device("meta"):
        vit = timm.create_model(spec.arch, pretrained=False, num_classes=0)
    return sum(p.numel() for p in vit.parameters())


def _hub_id(spec: EncoderSpec) -> str:
    if spec.hub_tag is None:
        return "-"
    cfg = timm.models.get_pretrained_cfg(spec.pretrained_name)
    return (cfg.hf_hub_id or cfg.url or spec.pretrained_name) if cfg is not None else spec.pretrained_name


def encoder_table(params: bool = False) -> list[list[str]]:
    """Rows (with a header row) of the zoo table that ``encseg encoders`` prints."""
    header = ["name", "family", "timm architecture", "patch", "width", "depth"]
    header += ["params"] if params else []
    header += ["norm", "hub", "local formats"]
    rows = [header]
    for spec in _REGISTRY.values():
        row = [spec.name, spec.family, spec.pretrained_name, str(spec.patch), str(spec.embed_dim), str(spec.depth)]
        if params:
            row.append(f"{count_params(spec) / 1e6:.1f}M")
        row += [_NORM_NAMES.get(tuple(spec.mean), "custom"), _hub_id(spec), ",".join(spec.formats)]
        rows.append(row)
    return rows


def print_encoder_table(params: bool = False) -> None:
    rows = encoder_table(params)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
    print("\nAny other timm ViT architecture name is accepted too (mean/std from its timm pretrained_cfg).")
    print("weights: null = the entry's default (hub, or none for random_*); 'hub'; 'none'; or a local file.")
