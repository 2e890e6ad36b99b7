"""The encoder zoo as data: one ``_cfg`` entry per named encoder, declared by keyword as timm's registry does.

A zoo entry writes down only what timm does not know: the timm ``arch.tag``, the family, the local checkpoint
layouts it accepts, notes, whether the family's dense protocol normalises the taps (``feature_norm``) and (only
for random-init entries, which have no pretrained_cfg) the name of the mean/std to normalise with. Patch size,
width, depth, mean/std and the native input size are read from timm (``encoders.get_spec``).

Dense protocol per family (``feature_norm``, the default of ``model.encoder.feature_norm``):
- DINOv3 (ViT): the final LayerNorm on every tap, as DINOv3's own segmentation and depth code call
  ``get_intermediate_layers(..., norm=True)``; its ConvNeXt entries are hierarchical (stage outputs, no norm).
- DINOv2: the final LayerNorm on every tap too, as DINOv2's own linear and Mask2Former segmentation do
  (``get_intermediate_layers(..., norm=True)``). Runs made before ``feature_norm`` existed tapped raw block
  outputs: their stored config.yaml reads as ``feature_norm: false`` (``config_io.STORED_ENCODER_DEFAULTS``), so a study
  does not reuse them as normalised runs and a resume names the key.
- Every other ViT family (CLIP, SigLIP/SigLIP2, MAE, EVA02, SAM, PE, AIMv2, TIPSv2, supervised, random): raw
  block outputs, the ViTDet / ViT-Adapter way of tapping a ViT for dense prediction. (PE, AIMv2 and TIPSv2 are new
  here; their own dense protocols were not checked against release code, so they get the common default.)
- Hierarchical backbones (ResNet, ConvNeXt, Swin): the 4 stage outputs, never normalised here.
"""

from __future__ import annotations

from dataclasses import dataclass

from timm.data.constants import (
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
    IMAGENET_INCEPTION_MEAN,
    IMAGENET_INCEPTION_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
)

from encseg.models.weights import ALL_FORMATS

Stats = tuple[float, float, float]
NORMS: dict[str, tuple[Stats, Stats]] = {
    "imagenet": (tuple(IMAGENET_DEFAULT_MEAN), tuple(IMAGENET_DEFAULT_STD)),
    "clip": (tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD)),
    "0.5/0.5": (tuple(IMAGENET_INCEPTION_MEAN), tuple(IMAGENET_INCEPTION_STD)),
}


@dataclass(frozen=True)
class ZooEntry:
    """What a zoo entry declares (see ``_cfg``); ``encoders.get_spec`` adds what timm knows."""

    model: str  # timm "arch.tag"; no tag: random init
    family: str
    formats: tuple[str, ...] = ("timm",)
    norm: str | None = None  # only without a tag: a NORMS name
    notes: str = ""
    feature_norm: bool = False  # the family's dense protocol applies the final norm to every tap


def _cfg(model: str, family: str, formats: tuple[str, ...] = ("timm",), norm: str | None = None,
         notes: str = "", feature_norm: bool = False) -> ZooEntry:
    """A zoo entry by keyword: the timm ``arch.tag`` and only what timm does not know."""
    bad = set(formats) - set(ALL_FORMATS)
    if bad:
        raise ValueError(f"encoder {model!r}: unknown checkpoint formats {sorted(bad)}; known: {ALL_FORMATS}")
    tagged = "." in model
    if tagged == (norm is not None) or (norm is not None and norm not in NORMS):
        raise ValueError(f"encoder {model!r}: give norm (one of {sorted(NORMS)}) exactly when there is no "
                         "pretrained tag; a tagged entry takes mean/std from timm's pretrained_cfg")
    return ZooEntry(model=model, family=family, formats=tuple(formats), norm=norm, notes=notes,
                    feature_norm=feature_norm)


_DV2, _CLIP_FMT, _OCT = ("dinov2", "timm"), ("clip", "timm"), ("openclip_timm", "timm")
_DV3, _CNX = ("dinov3", "timm"), ("convnext", "timm")


def _dinov2(model: str, notes: str = "") -> ZooEntry:
    return _cfg(model, "dinov2", _DV2, notes=notes, feature_norm=True)  # DINOv2's dense protocol normalises


_VIT_2024: dict[str, ZooEntry] = {
    "clip_openai_vitb16": _cfg("vit_base_patch16_clip_quickgelu_224.openai", "clip", _CLIP_FMT,
                               notes="OpenAI CLIP; QuickGELU arch (the plain _clip_ arch uses GELU and drifts)"),
    "clip_openai_vitl14": _cfg("vit_large_patch14_clip_quickgelu_224.openai", "clip", _CLIP_FMT,
                               notes="OpenAI CLIP; QuickGELU arch"),
    "clip_laion_vitb16": _cfg("vit_base_patch16_clip_224.laion2b", "clip", _CLIP_FMT, notes="OpenCLIP LAION-2B"),
    "clip_laion_vitl14": _cfg("vit_large_patch14_clip_224.laion2b", "clip", _CLIP_FMT,
                              notes="OpenCLIP LAION-2B; trained with 0.5/0.5, not the CLIP mean/std"),
    "dinov2_vits14": _dinov2("vit_small_patch14_dinov2.lvd142m"),
    "dinov2_vitb14": _dinov2("vit_base_patch14_dinov2.lvd142m"),
    "dinov2_vitl14": _dinov2("vit_large_patch14_dinov2.lvd142m"),
    "dinov2_vitg14": _dinov2("vit_giant_patch14_dinov2.lvd142m", "SwiGLU MLP"),
    "dinov2_vits14_reg": _dinov2("vit_small_patch14_reg4_dinov2.lvd142m", "4 registers"),
    "dinov2_vitb14_reg": _dinov2("vit_base_patch14_reg4_dinov2.lvd142m", "4 registers"),
    "dinov2_vitl14_reg": _dinov2("vit_large_patch14_reg4_dinov2.lvd142m", "4 registers"),
    "dinov2_vitg14_reg": _dinov2("vit_giant_patch14_reg4_dinov2.lvd142m", "4 registers, SwiGLU MLP"),
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

# DINOv3 release names. The _qkvb archs keep the released qkv bias (masked on k), so an original .pth loads
# with every tensor; 7B has no qkv bias. sat493m: the satellite-imagery weights, with their own mean/std.
_RELEASE = "4 storage tokens, RoPE (any multiple-of-16 crop)"
_VIT_2025: dict[str, ZooEntry] = {
    "dinov3_vits16": _cfg("vit_small_patch16_dinov3_qkvb.lvd1689m", "dinov3", _DV3, notes=_RELEASE,
                          feature_norm=True),
    "dinov3_vits16plus": _cfg("vit_small_plus_patch16_dinov3_qkvb.lvd1689m", "dinov3", _DV3,
                              notes=_RELEASE + "; SwiGLU", feature_norm=True),
    "dinov3_vitb16": _cfg("vit_base_patch16_dinov3_qkvb.lvd1689m", "dinov3", _DV3, notes=_RELEASE,
                          feature_norm=True),
    "dinov3_vitl16": _cfg("vit_large_patch16_dinov3_qkvb.lvd1689m", "dinov3", _DV3, notes=_RELEASE,
                          feature_norm=True),
    "dinov3_vith16plus": _cfg("vit_huge_plus_patch16_dinov3_qkvb.lvd1689m", "dinov3", _DV3,
                              notes=_RELEASE + "; SwiGLU", feature_norm=True),
    "dinov3_vit7b16": _cfg("vit_7b_patch16_dinov3.lvd1689m", "dinov3", _DV3,
                           notes=_RELEASE + "; SwiGLU, 6.7B params: plan memory (encseg study plan)",
                           feature_norm=True),
    "dinov3_vitl16_sat": _cfg("vit_large_patch16_dinov3_qkvb.sat493m", "dinov3", _DV3,
                              notes=_RELEASE + "; SAT-493M satellite weights, own mean/std", feature_norm=True),
    "dinov3_vit7b16_sat": _cfg("vit_7b_patch16_dinov3.sat493m", "dinov3", _DV3,
                               notes=_RELEASE + "; SAT-493M satellite weights, own mean/std", feature_norm=True),
    "pe_spatial_vitt16": _cfg("vit_pe_spatial_tiny_patch16_512.fb", "pe_spatial", notes="Perception Encoder "
                              "spatial; RoPE + abs pos"),
    "pe_spatial_vits16": _cfg("vit_pe_spatial_small_patch16_512.fb", "pe_spatial", notes="see pe_spatial_vitt16"),
    "pe_spatial_vitb16": _cfg("vit_pe_spatial_base_patch16_512.fb", "pe_spatial", notes="see pe_spatial_vitt16"),
    "pe_spatial_vitl14": _cfg("vit_pe_spatial_large_patch14_448.fb", "pe_spatial", notes="see pe_spatial_vitt16"),
    "pe_spatial_vitg14": _cfg("vit_pe_spatial_gigantic_patch14_448.fb", "pe_spatial",
                              notes="see pe_spatial_vitt16"),
    "pe_core_vitb16": _cfg("vit_pe_core_base_patch16_224.fb", "pe_core", notes="Perception Encoder core (CLIP)"),
    "pe_core_vitl14": _cfg("vit_pe_core_large_patch14_336.fb", "pe_core", notes="Perception Encoder core (CLIP)"),
    "pe_core_vitg14": _cfg("vit_pe_core_gigantic_patch14_448.fb", "pe_core", notes="Perception Encoder core"),
    "aimv2_vitl14": _cfg("aimv2_large_patch14_224.apple_pt", "aimv2", notes="AIMv2; no class token"),
    "aimv2_vith14": _cfg("aimv2_huge_patch14_224.apple_pt", "aimv2", notes="AIMv2; no class token"),
    "aimv2_vit1b14": _cfg("aimv2_1b_patch14_224.apple_pt", "aimv2", notes="AIMv2; no class token"),
    "aimv2_vitl14_448": _cfg("aimv2_large_patch14_448.apple_pt", "aimv2", notes="AIMv2 at 448 px"),
    "siglip2_so400m16": _cfg("vit_so400m_patch16_siglip_384.v2_webli", "siglip2", _OCT,
                             notes="SigLIP 2 so400m; no class token; 384 px"),
    "siglip2_so400m14": _cfg("vit_so400m_patch14_siglip_378.v2_webli", "siglip2", _OCT,
                             notes="SigLIP 2 so400m; no class token; 378 px"),
    "siglip2_giant16": _cfg("vit_giantopt_patch16_siglip_384.v2_webli", "siglip2", _OCT,
                            notes="SigLIP 2 giant (opt); no class token; 384 px"),
    "tipsv2_vitb14": _cfg("vit_base_patch14_reg1_tipsv2.webli", "tipsv2", notes="TIPSv2; 1 register"),
    "tipsv2_vitl14": _cfg("vit_large_patch14_reg1_tipsv2.webli", "tipsv2", notes="TIPSv2; 1 register"),
}

# hierarchical backbones: 4 stage maps at strides 4-32 (models/hierarchical.py); BatchNorm frozen by default
_HIERARCHICAL: dict[str, ZooEntry] = {
    "resnet50": _cfg("resnet50.tv_in1k", "resnet", notes="torchvision ImageNet-1k weights (Mask2Former's R50)"),
    "resnet101": _cfg("resnet101.tv_in1k", "resnet", notes="torchvision ImageNet-1k weights"),
    "swin_tiny": _cfg("swin_tiny_patch4_window7_224.ms_in1k", "swin", notes="Swin-T IN-1k, window 7"),
    "swin_base": _cfg("swin_base_patch4_window12_384.ms_in22k", "swin",
                      notes="Swin-B IN-22k at 384, window 12 (Mask2Former's Swin-B)"),
    "swin_large": _cfg("swin_large_patch4_window12_384.ms_in22k", "swin",
                       notes="Swin-L IN-22k at 384, window 12 (Mask2Former's Swin-L)"),
    "convnext_tiny": _cfg("convnext_tiny.fb_in22k", "convnext", _CNX, notes="ConvNeXt-T IN-22k"),
    "convnext_base": _cfg("convnext_base.fb_in22k", "convnext", _CNX, notes="ConvNeXt-B IN-22k"),
    "convnext_large": _cfg("convnext_large.fb_in22k", "convnext", _CNX, notes="ConvNeXt-L IN-22k"),
    "dinov3_convnext_tiny": _cfg("convnext_tiny.dinov3_lvd1689m", "dinov3_convnext", _CNX,
                                 notes="DINOv3 ConvNeXt-T (distilled)"),
    "dinov3_convnext_small": _cfg("convnext_small.dinov3_lvd1689m", "dinov3_convnext", _CNX,
                                  notes="DINOv3 ConvNeXt-S (distilled)"),
    "dinov3_convnext_base": _cfg("convnext_base.dinov3_lvd1689m", "dinov3_convnext", _CNX,
                                 notes="DINOv3 ConvNeXt-B (distilled)"),
    "dinov3_convnext_large": _cfg("convnext_large.dinov3_lvd1689m", "dinov3_convnext", _CNX,
                                  notes="DINOv3 ConvNeXt-L (distilled)"),
    "random_resnet50": _cfg("resnet50", "random", norm="imagenet", notes="random init, ResNet-50"),
}

_ZOO: dict[str, ZooEntry] = {**_VIT_2024, **_VIT_2025, **_HIERARCHICAL}


def register_encoder(name: str, **entry) -> None:
    """Add an entry to the zoo by keyword (``_cfg``'s arguments), e.g. from user code before building a config
    that names it: ``register_encoder("my_vit", model="vit_base_patch16_224.augreg_in21k", family="mine")``."""
    if name in _ZOO:
        raise ValueError(f"encoder {name!r} is already registered")
    _ZOO[name] = _cfg(**entry)


def list_encoders(family: str | None = None) -> list[str]:
    return [n for n, e in _ZOO.items() if family is None or e.family == family]
