"""The encoder zoo: named timm ViTs declared by keyword, and ``Encoder``, the module that taps their blocks.

Conventions
- A zoo entry (``_cfg``) writes down only what timm does not know: the timm ``arch.tag``, the family, the local
  checkpoint layouts it accepts, notes, and (only for random-init entries, which have no pretrained_cfg) the name
  of the mean/std to normalise with. Patch size, width and depth are read from the timm model, mean/std and
  the native input size from timm's ``pretrained_cfg`` (``get_spec`` derives them on the meta device, cached).
  Datasets never set any of these.
- Any other timm ViT architecture name (``vit_*``, ``eva*``, ``samvit_*``, ``deit*``, optionally with a
  ``.tag``) is accepted as an escape hatch, derived the same way.
- Positional embeddings are resampled at most once between the checkpoint and the input. The encoder keeps the
  checkpoint's own grid: hub weights are built at the pretrained_cfg input size (518 for DINOv2, 224 for CLIP,
  1024 for SAM, ...), a local file at the grid of its own positional table; nothing is resampled at load. Each
  forward resamples that table once to the input's patch grid (timm's ``dynamic_img_size``), or not at all when
  the grids match (DINOv2 at a 512 crop: padded to 518, its native 37 x 37 grid). Random init (no checkpoint)
  builds the table for ``EncoderConfig.img_size`` or else for the padded training crop. ``img_size`` that
  disagrees with a checkpoint's grid is an error, because it would resample twice (at load and per input).
- The interpolation rule is timm's ``resample_abs_pos_embed``: bicubic, ``align_corners=False``, output size
  given exactly, antialias on (it only acts when shrinking the grid); class/register positions untouched. The
  release code differs at a non-native size: DINOv2's ``interpolate_pos_encoding`` calls bicubic with
  ``scale_factor=(g + 0.1) / M`` and no antialias (up to 0.13 apart on a smooth table at 448 px), MAE's and
  DeiT's ``interpolate_pos_embed`` use bicubic without antialias (0.05 apart: another cubic kernel), OpenCLIP's
  ``resize_pos_embed`` is timm's rule, EVA02 adds a RoPE that timm recomputes for the grid, and OpenAI CLIP and
  SAM's release code only run at the native size (timm's SAM resamples its absolute and relative-position tables
  per input). ``benchmarks/pos_embed_fidelity.py`` measures these; docs/recipes.md section 3 lists the numbers.
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
from pathlib import Path

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
from encseg.models.weights import (
    ALL_FORMATS,
    LoadReport,
    WeightsError,
    checkpoint_grid,
    load_encoder_weights,
    open_checkpoint,
    resolve_weights,
)

Stats = tuple[float, float, float]
NORMS: dict[str, tuple[Stats, Stats]] = {
    "imagenet": (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)),
    "clip": (tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD)),
    "0.5/0.5": (tuple(IMAGENET_INCEPTION_MEAN), tuple(IMAGENET_INCEPTION_STD)),
}


class UnknownEncoderError(EncsegError, KeyError, ValueError):
    """An encoder name that is neither a zoo entry nor a timm ViT; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class TapError(EncsegError, ValueError):
    """``EncoderConfig.taps`` that cannot be resolved to block indices."""


@dataclass(frozen=True)
class ZooEntry:
    """What a zoo entry declares (see ``_cfg``); ``get_spec`` adds what timm knows."""

    model: str  # timm "arch.tag"; no tag: random init
    family: str
    formats: tuple[str, ...] = ("timm",)
    norm: str | None = None  # only without a tag: a NORMS name
    notes: str = ""


@dataclass(frozen=True)
class EncoderSpec:
    """One encoder, complete. ``arch`` is a timm architecture; ``hub_tag`` its pretrained tag (None: no hub
    weights); ``native_size`` the input size the released positional table is made for (None: no release)."""

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

    @property
    def pretrained_name(self) -> str:
        """``arch.tag`` as timm's hub knows it (the bare arch when there is no tag)."""
        return f"{self.arch}.{self.hub_tag}" if self.hub_tag else self.arch

    @property
    def norm_name(self) -> str:
        return next((k for k, (m, s) in NORMS.items() if m == self.mean and s == self.std), "custom")


def _cfg(model: str, family: str, formats: tuple[str, ...] = ("timm",), norm: str | None = None,
         notes: str = "") -> ZooEntry:
    """A zoo entry by keyword: the timm ``arch.tag`` and only what timm does not know."""
    bad = set(formats) - set(ALL_FORMATS)
    if bad:
        raise ValueError(f"encoder {model!r}: unknown checkpoint formats {sorted(bad)}; known: {ALL_FORMATS}")
    tagged = "." in model
    if tagged == (norm is not None) or (norm is not None and norm not in NORMS):
        raise ValueError(f"encoder {model!r}: give norm (one of {sorted(NORMS)}) exactly when there is no "
                         "pretrained tag; a tagged entry takes mean/std from timm's pretrained_cfg")
    return ZooEntry(model=model, family=family, formats=tuple(formats), norm=norm, notes=notes)


_DV2, _CLIP_FMT, _OCT = ("dinov2", "timm"), ("clip", "timm"), ("openclip_timm", "timm")
_ZOO: dict[str, ZooEntry] = {
    "clip_openai_vitb16": _cfg("vit_base_patch16_clip_quickgelu_224.openai", "clip", _CLIP_FMT,
                               notes="OpenAI CLIP; QuickGELU arch (the plain _clip_ arch uses GELU and drifts)"),
    "clip_openai_vitl14": _cfg("vit_large_patch14_clip_quickgelu_224.openai", "clip", _CLIP_FMT,
                               notes="OpenAI CLIP; QuickGELU arch"),
    "clip_laion_vitb16": _cfg("vit_base_patch16_clip_224.laion2b", "clip", _CLIP_FMT, notes="OpenCLIP LAION-2B"),
    "clip_laion_vitl14": _cfg("vit_large_patch14_clip_224.laion2b", "clip", _CLIP_FMT,
                              notes="OpenCLIP LAION-2B; trained with 0.5/0.5, not the CLIP mean/std"),
    "dinov2_vits14": _cfg("vit_small_patch14_dinov2.lvd142m", "dinov2", _DV2),
    "dinov2_vitb14": _cfg("vit_base_patch14_dinov2.lvd142m", "dinov2", _DV2),
    "dinov2_vitl14": _cfg("vit_large_patch14_dinov2.lvd142m", "dinov2", _DV2),
    "dinov2_vitg14": _cfg("vit_giant_patch14_dinov2.lvd142m", "dinov2", _DV2, notes="SwiGLU MLP"),
    "dinov2_vits14_reg": _cfg("vit_small_patch14_reg4_dinov2.lvd142m", "dinov2", _DV2, notes="4 registers"),
    "dinov2_vitb14_reg": _cfg("vit_base_patch14_reg4_dinov2.lvd142m", "dinov2", _DV2, notes="4 registers"),
    "dinov2_vitl14_reg": _cfg("vit_large_patch14_reg4_dinov2.lvd142m", "dinov2", _DV2, notes="4 registers"),
    "dinov2_vitg14_reg": _cfg("vit_giant_patch14_reg4_dinov2.lvd142m", "dinov2", _DV2,
                              notes="4 registers, SwiGLU MLP"),
    "mae_vitb16": _cfg("vit_base_patch16_224.mae", "mae", ("mae", "timm")),
    "mae_vitl16": _cfg("vit_large_patch16_224.mae", "mae", ("mae", "timm")),
    "mae_vith14": _cfg("vit_huge_patch14_224.mae", "mae", ("mae", "timm")),
    "siglip_vitb16": _cfg("vit_base_patch16_siglip_224.webli", "siglip", _OCT, notes="no class token"),
    "siglip_vitl16": _cfg("vit_large_patch16_siglip_256.webli", "siglip", _OCT, notes="no class token; 256 px"),
    "siglip2_vitb16": _cfg("vit_base_patch16_siglip_224.v2_webli", "siglip2", _OCT, notes="no class token"),
    "siglip2_vitl16": _cfg("vit_large_patch16_siglip_256.v2_webli", "siglip2", _OCT,
                           notes="no class token; 256 px"),
    "eva02_vitb14": _cfg("eva02_base_patch14_224.mim_in22k", "eva02", ("eva02", "timm"), notes="RoPE, SwiGLU"),
    "eva02_vitl14": _cfg("eva02_large_patch14_224.mim_in22k", "eva02", ("eva02", "timm"), notes="RoPE, SwiGLU"),
    "sam_vitb16": _cfg("samvit_base_patch16.sa1b", "sam", ("sam", "timm"),
                       notes="windowed attention; built at its native 1024 px, resamples pos/rel-pos per input"),
    "sam_vitl16": _cfg("samvit_large_patch16.sa1b", "sam", ("sam", "timm"), notes="see sam_vitb16"),
    "sam_vith16": _cfg("samvit_huge_patch16.sa1b", "sam", ("sam", "timm"), notes="see sam_vitb16"),
    "supervised_vitb16": _cfg("vit_base_patch16_224.augreg_in21k", "supervised",
                              notes="ImageNet-21k classification"),
    "supervised_vitl16": _cfg("vit_large_patch16_224.augreg_in21k", "supervised",
                              notes="ImageNet-21k classification"),
    "random_vits16": _cfg("vit_small_patch16_224", "random", norm="imagenet", notes="random init"),
    "random_vitb16": _cfg("vit_base_patch16_224", "random", norm="imagenet", notes="random init"),
    "random_vitl16": _cfg("vit_large_patch16_224", "random", norm="imagenet", notes="random init"),
    "random_vitb14": _cfg("vit_base_patch14_dinov2", "random", norm="imagenet",
                          notes="random init, DINOv2 architecture (layer scale)"),
}


def register_encoder(name: str, **entry) -> None:
    """Add an entry to the zoo by keyword (``_cfg``'s arguments), e.g. from user code before building a config
    that names it: ``register_encoder("my_vit", model="vit_base_patch16_224.augreg_in21k", family="mine")``."""
    if name in _ZOO:
        raise ValueError(f"encoder {name!r} is already registered")
    _ZOO[name] = _cfg(**entry)


def list_encoders(family: str | None = None) -> list[str]:
    return [n for n, e in _ZOO.items() if family is None or e.family == family]


# timm modules whose models follow the ViT interface we rely on (patch_embed, blocks, forward_intermediates)
_VIT_MODULES = ("vision_transformer", "eva", "vision_transformer_sam", "deit")


@functools.lru_cache(maxsize=1)
def _timm_vit_archs() -> frozenset[str]:
    return frozenset(a for m in _VIT_MODULES for a in timm.list_models(module=m))


@functools.lru_cache(maxsize=128)
def _from_timm(name: str, entry: ZooEntry) -> EncoderSpec:
    """``entry`` completed from timm: the architecture's shapes (meta device) and the pretrained_cfg."""
    arch, _, tag = entry.model.partition(".")
    with torch.device("meta"):  # no memory, no init cost: only the shapes are read
        vit = timm.create_model(arch, pretrained=False, num_classes=0)
    released = entry.norm is None  # zoo random entries name their norm; everything else has a release
    cfg = timm.models.get_pretrained_cfg(entry.model) if released else None
    mean, std = (tuple(cfg.mean), tuple(cfg.std)) if cfg is not None else NORMS[entry.norm or "imagenet"]
    hub = cfg is not None and bool(cfg.hf_hub_id or cfg.url)
    return EncoderSpec(
        name=name, family=entry.family, arch=arch, hub_tag=(tag or cfg.tag or None) if cfg is not None else None,
        patch=int(vit.patch_embed.patch_size[0]), embed_dim=int(vit.embed_dim), depth=len(vit.blocks),
        mean=mean, std=std, native_size=int(cfg.input_size[-1]) if cfg is not None else None,
        formats=entry.formats, default_weights="hub" if hub else "none", notes=entry.notes,
    )


def get_spec(name: str) -> EncoderSpec:
    """The zoo entry ``name``, or a spec derived from timm for any other timm ViT architecture (``arch[.tag]``)."""
    if name in _ZOO:
        return _from_timm(name, _ZOO[name])
    arch, _, tag = name.partition(".")
    if arch in _timm_vit_archs() and (not tag or name in timm.list_models(arch, pretrained=True)):
        return _from_timm(name, ZooEntry(model=name, family="timm", formats=ALL_FORMATS,
                                         notes="timm architecture outside the zoo"))
    close = difflib.get_close_matches(name, list(_ZOO), n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownEncoderError(
        f"unknown encoder {name!r}.{hint} Known encoders: {', '.join(_ZOO)}; "
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


def build_encoder(cfg: EncoderConfig, img_size: int | None = None) -> Encoder:
    """Build ``cfg.name`` with its weights, its positional table at the checkpoint's own grid.

    ``img_size`` (the padded training input) sizes the table only without a checkpoint (random init), where
    ``cfg.img_size`` overrides it. Weights: ``cfg.weights`` None -> the entry's default ("hub" for pretrained
    entries, "none" for ``random_*``); "hub" -> timm's hub (fails fast offline); "none" -> random init; anything
    else -> a local checkpoint file in one of the entry's formats (see ``weights.py``). Blocks after the last tap,
    the final norm and the head are pruned after loading; ``depth`` and ``layer_id`` still count the full
    architecture.
    """
    spec = get_spec(cfg.name)
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
    vit.prune_intermediate_layers(sorted(set(taps)), prune_norm=True, prune_head=True)
    return Encoder(spec, vit, taps, depth, report)


def _create(spec: EncoderSpec, cfg: EncoderConfig, kwargs: dict) -> nn.Module:
    try:
        return timm.create_model(spec.arch, pretrained=False, **kwargs)
    except TypeError as e:  # a misspelt model.encoder.timm_kwargs key reaches timm's constructor
        raise InputError(f"encoder {spec.name!r} ({spec.arch}): model.encoder.timm_kwargs "
                         f"{sorted(cfg.timm_kwargs)} rejected by timm: {e}") from e


# --------------------------------------------------------------------------------------------- table
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
    header = ["name", "family", "timm architecture", "patch", "width", "depth", "native px"]
    header += ["params"] if params else []
    header += ["norm", "hub", "local formats"]
    rows = [header]
    for name in _ZOO:
        spec = get_spec(name)
        row = [spec.name, spec.family, spec.pretrained_name, str(spec.patch), str(spec.embed_dim), str(spec.depth),
               str(spec.native_size or "-")]
        if params:
            row.append(f"{count_params(spec) / 1e6:.1f}M")
        row += [spec.norm_name, _hub_id(spec), ",".join(spec.formats)]
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
    print("native px: the positional table's size; other inputs resample it once per forward.")
