"""The segmenter: encoder -> neck -> head, identical for every encoder; a plain nn.Module (no Lightning).

Conventions
- ``images``: float ``(B, 3, H, W)``, normalised with the encoder's mean/std. ``masks``: int64 ``(B, H, W)``
  train ids, 255 = ignore.
- Inputs are padded at the bottom/right to a multiple of 32 (images with 0 = the mean colour after
  normalisation, masks with 255), and predictions are cropped back, so callers never see the padding.
- ``inference`` returns per-class scores ``(B, C, H, W)`` at the input size, float32; argmax gives the labels.
- ``save_segmenter`` writes ``model.safetensors`` (the state dict) + ``model.json`` (``{"model": ModelConfig,
  "num_classes", "img_size", "encoder_pos_size", ...extra}``); ``load_segmenter`` rebuilds from the json with
  random encoder weights (positional table at ``encoder_pos_size``) and loads the state dict strictly.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import Tensor, nn

from encseg.atomic import atomic_write_bytes, atomic_write_text
from encseg.config import ModelConfig
from encseg.config_io import validate
from encseg.data.transforms import IMAGE_PAD
from encseg.errors import EncsegError, MissingFileError
from encseg.models.encoders import build_encoder
from encseg.models.heads import IGNORE_INDEX, build_head
from encseg.models.necks import build_neck, build_pyramid_neck
from encseg.models.regimes import apply_regime

# A multiple of the pyramid's coarsest stride: every level then has exactly H/s cells (no partial cells),
# each level is exactly twice the next one as the pixel decoder's bilinear FPN upsampling assumes, and
# patch-16 tokens tile the image exactly. (The official Mask2Former pads to 32 for the same reason.)
SIZE_DIVISOR = 32
WEIGHTS_FILE, META_FILE = "model.safetensors", "model.json"


class CheckpointError(EncsegError, ValueError):
    """A saved segmenter that does not match the model its ``model.json`` describes; names the keys."""


class Segmenter(nn.Module):
    def __init__(self, encoder: nn.Module, neck: nn.Module | None, head: nn.Module, num_classes: int):
        super().__init__()
        if not 1 <= num_classes < IGNORE_INDEX:
            raise ValueError(f"num_classes={num_classes} must be in 1..{IGNORE_INDEX - 1} ({IGNORE_INDEX} = ignore)")
        self.encoder = encoder
        self.neck = neck
        self.head = head
        self.num_classes = num_classes
        # set by regimes.apply_regime: run the encoder without autograd / keep these submodules in eval mode
        self.encoder_no_grad = False
        self.frozen_modules: list[str] = []
        # set by build_segmenter; recorded by save_segmenter
        self.config: ModelConfig | None = None
        self.img_size: int | None = None

    def train(self, mode: bool = True) -> Segmenter:
        super().train(mode)
        for name in self.frozen_modules:  # a frozen encoder never runs dropout / drop-path
            self.get_submodule(name).eval()
        return self

    @staticmethod
    def _pad(x: Tensor, value: float) -> Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % SIZE_DIVISOR, (-w) % SIZE_DIVISOR
        if not (pad_h or pad_w):
            return x
        return F.pad(x, (0, pad_w, 0, pad_h), value=value)

    def forward(self, images: Tensor):
        """Head output for ``images`` padded to a multiple of 32."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        x = self._pad(images, IMAGE_PAD)  # the training crops' padding rule (data/transforms.py)
        with torch.no_grad() if self.encoder_no_grad else contextlib.nullcontext():
            taps = self.encoder(x)
        features = self.neck(taps, tuple(x.shape[-2:])) if self.neck is not None else taps
        return self.head(features)

    def loss(self, images: Tensor, masks: Tensor) -> dict[str, Tensor]:
        """``{"loss": weighted total, <term>: detached value, ...}`` for a batch; ``masks`` as in the docstring."""
        if masks.shape != (images.shape[0], *images.shape[-2:]):
            raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}: "
                             "expected (B, H, W) with the images' B, H, W")
        output = self(images)
        return self.head.loss(output, self._pad(masks, IGNORE_INDEX))

    def _scores(self, images: Tensor, output=None) -> Tensor:
        h, w = images.shape[-2:]
        output = self(images) if output is None else output
        padded = (math.ceil(h / SIZE_DIVISOR) * SIZE_DIVISOR, math.ceil(w / SIZE_DIVISOR) * SIZE_DIVISOR)
        return self.head.semantic_scores(output, padded)[..., :h, :w]

    @torch.no_grad()
    def scores_and_loss(self, images: Tensor, masks: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``inference(images)`` (whole image, no TTA) and ``loss(images, masks)`` from ONE eval-mode forward: a
        validation loss without a second forward. The loss's point sampling draws from the global RNG as
        ``loss`` does; fork it to keep a training stream untouched."""
        if masks.shape != (images.shape[0], *images.shape[-2:]):
            raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}")
        was_training = self.training
        self.eval()
        try:
            output = self(images)
            return self._scores(images, output), self.head.loss(output, self._pad(masks, IGNORE_INDEX))
        finally:
            self.train(was_training)

    def _slide(self, images: Tensor, crop: int | tuple[int, int], stride: int | tuple[int, int] | None) -> Tensor:
        """mmseg's slide inference: overlapping windows (the last one flush with the border), scores averaged."""
        ch, cw = (crop, crop) if isinstance(crop, int) else crop
        if stride is None:
            stride = (max(1, 2 * ch // 3), max(1, 2 * cw // 3))
        sh, sw = (stride, stride) if isinstance(stride, int) else stride
        if not (0 < sh <= ch and 0 < sw <= cw):
            raise ValueError(f"slide inference needs 0 < stride <= crop, got crop {(ch, cw)} stride {(sh, sw)}")
        b, _, h, w = images.shape
        scores = images.new_zeros((b, self.num_classes, h, w), dtype=torch.float32)
        count = images.new_zeros((1, 1, h, w), dtype=torch.float32)
        for i in range(max(h - ch + sh - 1, 0) // sh + 1):
            for j in range(max(w - cw + sw - 1, 0) // sw + 1):
                y2, x2 = min(i * sh + ch, h), min(j * sw + cw, w)
                y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
                scores[..., y1:y2, x1:x2] += self._scores(images[..., y1:y2, x1:x2])
                count[..., y1:y2, x1:x2] += 1
        return scores / count

    @torch.no_grad()
    def inference(self, images: Tensor, mode: str = "whole", crop: int | tuple[int, int] | None = None,
                  stride: int | tuple[int, int] | None = None, flip: bool = False,
                  scales: tuple[float, ...] | list[float] = (1.0,)) -> Tensor:
        """Class scores ``(B, C, H, W)`` at the input size, in eval mode (the previous mode is restored).

        ``mode="whole"`` runs the (padded) image at once; ``"slide"`` runs ``crop``-sized windows every
        ``stride`` pixels (default 2/3 of the window) and averages the overlaps. ``flip`` adds the horizontally
        flipped image and ``scales`` resized copies (bilinear); all scores are resized back and averaged.
        """
        if mode not in ("whole", "slide"):
            raise ValueError(f"inference mode {mode!r} is not 'whole' or 'slide'")
        if mode == "slide" and crop is None:
            raise ValueError("slide inference needs a crop (window) size")
        was_training = self.training
        self.eval()
        try:
            h, w = images.shape[-2:]
            total, n = None, 0
            for scale in scales:
                x = images
                if scale != 1.0:
                    size = (max(1, round(h * scale)), max(1, round(w * scale)))
                    x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
                for flipped in (False, True) if flip else (False,):
                    xi = x.flip(-1) if flipped else x
                    s = self._scores(xi) if mode == "whole" else self._slide(xi, crop, stride)
                    if flipped:
                        s = s.flip(-1)
                    if s.shape[-2:] != (h, w):
                        s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False)
                    total = s if total is None else total + s
                    n += 1
            return total / n
        finally:
            self.train(was_training)


def neck_head_seed(seed: int) -> int:
    """The torch seed that neck and head are initialised from, derived from the run's seed alone."""
    return int(np.random.SeedSequence([seed, 0x6E6B]).generate_state(1)[0])


def build_segmenter(model: ModelConfig, num_classes: int, img_size: int, seed: int | None = None) -> Segmenter:
    """Encoder (with its weights) + neck + head for ``num_classes`` classes, with ``model.regime`` applied.
    The ``linear`` head reads the encoder's last tap directly (no neck); a hierarchical encoder's stage maps go
    through a channel mapper (``necks.build_pyramid_neck``). ``img_size`` is the training crop; it sizes the
    encoder's positional table only for a random init (a checkpoint keeps its own grid).

    With ``seed``, torch's global generator is reseeded (``neck_head_seed``) after the encoder is built: how many
    random numbers an encoder's initialisation draws depends on its architecture, so without the reseed two
    encoders' runs of one seed would start from different neck and head weights (and training randomness). With
    it, paired runs share everything but the encoder."""
    encoder = build_encoder(model.encoder, math.ceil(img_size / SIZE_DIVISOR) * SIZE_DIVISOR)
    if seed is not None:
        torch.manual_seed(neck_head_seed(seed))
    if model.head.type == "linear":
        neck, in_channels = None, [encoder.embed_dim]
    elif encoder.hierarchical:  # its stages are the pyramid: the neck maps channels only
        neck = build_pyramid_neck(model.neck, encoder.channels)
        in_channels = list(neck.channels)
    else:
        neck = build_neck(model.neck, encoder.embed_dim, len(encoder.tap_indices), encoder.patch_size)
        in_channels = list(neck.channels)
    head = build_head(model.head, in_channels, num_classes)
    seg = Segmenter(encoder, neck, head, num_classes)
    seg.config, seg.img_size = model, img_size
    apply_regime(seg, model.regime)
    return seg


def save_segmenter(seg: Segmenter, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``model.json`` into ``directory`` (atomically); returns the directory."""
    if seg.config is None or seg.img_size is None:
        raise ValueError("this Segmenter was not made by build_segmenter: no ModelConfig/img_size to record")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "model": seg.config.model_dump(mode="json"),
        "num_classes": seg.num_classes,
        "img_size": seg.img_size,
        "encoder_pos_size": None if seg.encoder.pos_size is None else int(seg.encoder.pos_size),
    }
    clash = sorted(set(extra or {}) & set(meta))
    if clash:
        raise ValueError(f"extra keys {clash} are reserved in {META_FILE}")
    meta.update(extra or {})
    state, seen = {}, set()
    for k, v in seg.state_dict().items():
        v = v.detach().cpu().contiguous()
        if v.data_ptr() in seen and v.numel():  # safetensors refuses tensors that share memory
            v = v.clone()
        seen.add(v.data_ptr())
        state[k] = v
    atomic_write_bytes(directory / WEIGHTS_FILE, save(state, metadata={"format": "pt"}))
    atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2) + "\n")
    return directory


def _keys(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}] ({len(keys)})"


def load_segmenter(directory: str | Path) -> tuple[Segmenter, dict[str, Any]]:
    """Rebuild the segmenter described by ``directory/model.json`` and load ``model.safetensors`` strictly.
    Returns ``(segmenter, meta)`` where ``meta`` is the json content (``model``, ``num_classes``, ``img_size``,
    plus the extras given to ``save_segmenter``)."""
    directory = Path(directory)
    meta_path, weights_path = directory / META_FILE, directory / WEIGHTS_FILE
    for path in (meta_path, weights_path):
        if not path.is_file():
            raise MissingFileError(f"saved segmenter file not found: {path}")
    try:
        meta = json.loads(meta_path.read_text())
        model_cfg = validate(ModelConfig, meta["model"], source=f"{meta_path}: model")
        num_classes, img_size = int(meta["num_classes"]), int(meta["img_size"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{meta_path}: not a segmenter description ({type(e).__name__}: {e})") from e
    # the trained encoder weights are in the safetensors file: build with random ones, never reach a hub, with
    # the positional table at the saved size (files from before encoder_pos_size: the img_size rule of then)
    pos_size = meta.get("encoder_pos_size") or model_cfg.encoder.img_size or img_size
    rebuild = model_cfg.model_copy(update={"encoder": model_cfg.encoder.model_copy(
        update={"weights": "none", "img_size": int(pos_size)})})
    seg = build_segmenter(rebuild, num_classes, img_size)
    seg.config = model_cfg
    state = load_file(str(weights_path))
    own = seg.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                    for k in set(own) & set(state) if state[k].shape != own[k].shape)
    if missing or unexpected or shapes:
        problems = [f"missing keys {_keys(missing)}" if missing else "",
                    f"unexpected keys {_keys(unexpected)}" if unexpected else "",
                    f"shape mismatches (file vs model) {_keys(shapes)}" if shapes else ""]
        raise CheckpointError(f"{weights_path} does not match the model described in {meta_path}: "
                              + "; ".join(p for p in problems if p))
    seg.load_state_dict(state, strict=True)
    return seg, meta
