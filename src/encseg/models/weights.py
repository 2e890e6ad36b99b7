"""Local encoder checkpoints in their original release layouts -> a timm ViT, with a strict key check.

Reading never runs pickled Python: ``.safetensors`` through safetensors, OpenAI's TorchScript CLIP archives through
``torch.jit.load(...).state_dict()`` (TorchScript, detected from the zip's ``code/`` entries, never handed to
``torch.load``), everything else through ``torch.load(weights_only=True)``. A wrapped checkpoint is unwrapped at
the first of ``model``, ``module``, ``state_dict``, ``model_ema`` holding a dict (MAE's ``{'model': ...}``).

Conversion is timm's own: the ``checkpoint_filter_fn`` of the module that defines the model class
(``vision_transformer``, ``eva``, ``vision_transformer_sam``, ``convnext``, ``swin_transformer``, ...) renames keys and resamples the positional
embedding to the model's grid. The converted keys must then match the model exactly. Dropped without a
complaint, because a segmentation encoder never uses them:
- by timm's filter: the CLIP text tower and ``logit_scale``, SAM ``prompt_encoder.*``/``mask_decoder.*``, the
  DINOv2 ``mask_token``, the EVA02 MIM ``mask_token``/``lm_head.*`` and rope buffers, ``pre_logits``, the DINOv3
  ``mask_token``/``rope_embed.periods``/``qkv.bias_mask``/``local_cls_norm`` (the k bias is masked to 0, so
  ``qkv.bias`` splits into q/v biases; a non-zero bias for an arch without one raises), ConvNeXt ``norms.*``;
- here: ``head.*``/``head_dist.*``/``fc.*`` (classifiers, and CLIP's image projection ``visual.proj`` which the filter
  turns into ``head.weight``) and, in a full MAE training dict, ``decoder_*`` and ``mask_token``.
Any other missing or unexpected key, or a shape mismatch, raises ``WeightsError`` unless it starts with one of
``ignore_prefixes`` (matched against the converted, timm-side names that the error message shows).
"""

from __future__ import annotations

import argparse
import math
import sys
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from encseg.errors import EncsegError, MissingFileError

# detect_format() names; an entry's ``formats`` lists the ones it accepts
ALL_FORMATS = ("timm", "clip", "openclip_timm", "dinov2", "dinov3", "mae", "sam", "eva02", "convnext")
FORMAT_HELP = {
    "timm": "timm state dict (.safetensors / .pth), e.g. a timm hub model.safetensors or mae_pretrain_*.pth",
    "clip": "OpenAI CLIP TorchScript .pt or OpenCLIP .bin/.pt/.safetensors (visual.* + text tower)",
    "openclip_timm": "OpenCLIP model with a timm trunk (visual.trunk.*), e.g. open_clip's ViT-B-16-SigLIP .bin",
    "dinov2": "DINOv2 release .pth (mask_token, blocks.N.ls1.gamma, register_tokens)",
    "dinov3": "DINOv3 ViT release .pth (storage_tokens, rope_embed.periods, blocks.N.ls1.gamma, mask_token)",
    "mae": "full MAE training state dict (encoder + decoder_*, mask_token)",
    "sam": "SAM sam_vit_*.pth (image_encoder.* + prompt_encoder.* + mask_decoder.*)",
    "eva02": "EVA02 MIM release .pt (mask_token, q_proj/q_bias/v_bias, mlp.w1/w2/w3/ffn_ln, lm_head)",
    "convnext": "ConvNeXt release .pth, FB or DINOv3 (downsample_layers.N, stages.N.M.dwconv/pwconv1)",
}
_WRAPPERS = ("model", "module", "state_dict", "model_ema")
_HEAD_PREFIXES = ("head.", "head_dist.", "fc.")  # fc: ResNet's classifier
_SHOW = 20  # keys listed per category in an error message


class WeightsError(EncsegError, ValueError):
    """A checkpoint that cannot be read or does not fit the encoder; the message names the file and keys."""


@dataclass
class LoadReport:
    """What a build loaded. ``missing``/``unexpected``: mismatches tolerated through ``ignore_prefixes``;
    ``ignored``: keys dropped by the rules in the module docstring (heads, MAE decoder)."""

    format: str  # a detect_format() name, "hub" or "none"
    file: str | None
    container: str = ""  # safetensors / torchscript / torch.save, plus the unwrapped key
    loaded: int = 0  # tensors copied into the model
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_weights(default: str, weights: str | None) -> str | Path:
    """``"hub"``, ``"none"`` or an existing local file for ``EncoderConfig.weights`` (None -> ``default``)."""
    w = default if weights is None else weights
    if w in ("hub", "none"):
        return w
    path = Path(w).expanduser()
    if not path.is_file():
        raise MissingFileError(f"model.encoder.weights: checkpoint file not found: {path}")
    return path


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in n or n.endswith("/constants.pkl") for n in z.namelist())


def _read_raw(path: Path) -> tuple[Any, str]:
    if path.suffix == ".npz":
        raise WeightsError(f"{path}: big_vision .npz files are not supported; use the timm .safetensors of that model")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu"), "safetensors"
        except Exception as e:
            raise WeightsError(f"{path}: not a readable safetensors file ({e})") from e
    if _is_torchscript(path):
        # OpenAI's released CLIP .pt files are TorchScript archives; torch.load cannot read them safely
        return torch.jit.load(str(path), map_location="cpu").state_dict(), "torchscript"
    try:
        # training checkpoints (MAE, DeiT, EVA) carry their argparse.Namespace; it is a plain attribute bag
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True), "torch.save"
    except Exception as e:
        raise WeightsError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({type(e).__name__}: {e}). Only plain "
            f"tensor state dicts, safetensors and TorchScript archives are read; re-save the state dict."
        ) from e


def _unwrap(obj: Any, path: Path, container: str) -> tuple[dict[str, torch.Tensor], str]:
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _WRAPPERS:
            if isinstance(obj.get(key), dict):
                obj, container = obj[key], f"{container} {{'{key}': ...}}"
                break
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{path}: no state dict found (got {type(obj).__name__})")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise WeightsError(
            f"{path}: entries that are not tensors: {not_tensors[:_SHOW]}; expected a state dict, possibly wrapped "
            f"under one of {list(_WRAPPERS)}"
        )
    return dict(obj), container


def open_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """``(state dict, container description)`` of ``path``, read once for ``checkpoint_grid`` and loading."""
    return _read(Path(path))


# where each release layout keeps the image tower's absolute positional table
_POS_KEYS = ("pos_embed", "visual.positional_embedding", "visual.trunk.pos_embed", "image_encoder.pos_embed")


def checkpoint_grid(state_dict: dict[str, torch.Tensor]) -> int | None:
    """Side of the square patch grid the checkpoint's positional table is made for (None: no such table).

    Tables are ``(1, prefix + g*g, D)``, ``(prefix + g*g, D)`` (OpenAI CLIP) or ``(1, g, g, D)`` (SAM); the
    prefix (class and register positions) is at most a handful of rows.
    """
    for key in _POS_KEYS:
        table = state_dict.get(key, state_dict.get(f"module.{key}"))
        if table is None:
            continue
        if table.ndim == 4:
            return int(table.shape[1])
        rows = int(table.shape[-2])
        g = math.isqrt(rows)
        return g if rows - g * g <= 8 else None
    return None


def _read(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    if not path.is_file():
        raise MissingFileError(f"checkpoint file not found: {path}")
    obj, container = _read_raw(path)
    return _unwrap(obj, path, container)


def detect_format(state_dict: dict[str, torch.Tensor]) -> str:
    """The release layout of a flat state dict (one of ``ALL_FORMATS``), from its key names."""
    keys = set(state_dict)
    if any(k.startswith("image_encoder.") for k in keys):
        return "sam"
    if any(k.startswith(("visual.trunk.", "module.visual.trunk.")) for k in keys):
        return "openclip_timm"
    if "visual.class_embedding" in keys or "module.visual.class_embedding" in keys:
        return "clip"
    if any(k.startswith("decoder_") for k in keys):
        return "mae"
    if "storage_tokens" in keys or any(k.startswith("rope_embed.") for k in keys):
        return "dinov3"  # before the mask_token test: DINOv3 has one too, but is not DINOv2
    if any(k.startswith("downsample_layers.") for k in keys):
        return "convnext"
    if "mask_token" in keys or "register_tokens" in keys:
        eva_like = any(".attn.q_proj." in k or ".mlp.w1." in k or ".mlp.ffn_ln." in k for k in keys)
        return "eva02" if eva_like or "lm_head.weight" in keys else "dinov2"
    return "timm"


def _filter_fn(model: nn.Module):
    module = sys.modules[type(model).__module__]
    fn = getattr(module, "checkpoint_filter_fn", None)
    return fn if fn is not None else (lambda sd, m: sd)


def _check_dinov3_bias(sd: dict[str, torch.Tensor], vit: nn.Module, path: Path, arch: str) -> None:
    """timm's DINOv3 filter drops ``qkv.bias`` when the model has no q/v bias (the distilled releases' biases
    are zero); a non-zero one would be lost silently, so it must go to the ``_qkvb`` architecture instead."""
    has_bias = any(n.endswith(".q_bias") for n, _ in vit.named_parameters())
    nonzero = [k for k, v in sd.items() if k.endswith("attn.qkv.bias") and bool(v.abs().max() > 0)]
    if nonzero and not has_bias:
        raise WeightsError(f"{path}: this DINOv3 checkpoint has non-zero qkv biases ({nonzero[0]}, ...) but {arch} "
                           f"has none; use the {arch}_qkvb architecture (the dinov3_* zoo entries do)")


def _listing(title: str, keys: list[str]) -> str:
    more = f" ... and {len(keys) - _SHOW} more" if len(keys) > _SHOW else ""
    return f"\n  {len(keys)} {title}: {keys[:_SHOW]}{more}"


def load_encoder_weights(vit: nn.Module, arch: str, path: str | Path, ignore_prefixes: list[str] | tuple = (),
                         formats: tuple[str, ...] | None = None,
                         checkpoint: tuple[dict[str, torch.Tensor], str] | None = None) -> LoadReport:
    """Load a local checkpoint into ``vit`` (a timm model built with ``num_classes=0``) in place.

    ``formats``: the layouts the encoder entry accepts (None: any). ``checkpoint``: ``open_checkpoint(path)``
    when the caller has read it already. See the module docstring for what is dropped silently and what raises
    ``WeightsError``.
    """
    path = Path(path)
    sd, container = checkpoint if checkpoint is not None else _read(path)
    fmt = detect_format(sd)
    if formats is not None and fmt not in formats:
        accepted = "; ".join(f"{f}: {FORMAT_HELP[f]}" for f in formats)
        raise WeightsError(f"{path} looks like a {fmt} checkpoint ({FORMAT_HELP[fmt]}); {arch} accepts {accepted}")
    ignored: list[str] = []
    if fmt == "dinov3":
        _check_dinov3_bias(sd, vit, path, arch)
    if fmt == "mae":
        ignored = [k for k in sd if k.startswith("decoder_") or k == "mask_token"]
        sd = {k: v for k, v in sd.items() if k not in ignored}
    try:
        converted = _filter_fn(vit)(dict(sd), vit)
    except Exception as e:
        raise WeightsError(
            f"{path}: timm's checkpoint filter for {arch} failed on this {fmt} checkpoint ({type(e).__name__}: {e})"
        ) from e
    target = vit.state_dict()
    heads = [k for k in converted if k not in target and k.startswith(_HEAD_PREFIXES)]
    ignored += heads
    converted = {k: v for k, v in converted.items() if k not in heads}

    tolerated = tuple(ignore_prefixes)
    missing = [k for k in target if k not in converted]
    unexpected = [k for k in converted if k not in target]
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
              for k, v in converted.items() if k in target and v.shape != target[k].shape]
    bad_missing = [k for k in missing if not (tolerated and k.startswith(tolerated))]
    bad_unexpected = [k for k in unexpected if not (tolerated and k.startswith(tolerated))]
    if bad_missing or bad_unexpected or shapes:
        msg = f"{path} ({fmt} checkpoint, {container}) does not fit {arch}:"
        if bad_missing:
            msg += _listing("missing keys (in the model, not in the checkpoint)", bad_missing)
        if bad_unexpected:
            msg += _listing("unexpected keys (in the checkpoint, not in the model)", bad_unexpected)
        if shapes:
            msg += _listing("shape mismatches", shapes)
        msg += ("\n  Keys are named as after timm's conversion. If the encoder or its timm_kwargs are right and these "
                "keys are expected, list their prefixes in model.encoder.ignore_prefixes.")
        raise WeightsError(msg)
    vit.load_state_dict({k: v for k, v in converted.items() if k in target}, strict=False)
    return LoadReport(
        format=fmt, file=str(path), container=container, loaded=len(target) - len(missing),
        missing=missing, unexpected=unexpected, ignored=ignored,
    )
