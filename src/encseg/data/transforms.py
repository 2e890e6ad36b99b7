"""Joint image + mask transforms (torchvision.transforms.v2 functionals) on the dataset's sample dict.

Every random draw uses the generator installed by ``drawing_from(generator)`` (torch's global CPU RNG when
none is), so a pipeline is reproducible given that generator; the training engine gives each sample its own
seeded generator and never touches a device's global RNG. Masks are always resized with nearest neighbour.
Padding has one rule for training and inference (mmsegmentation's): it comes after normalisation, image 0 (the
mean colour) and mask 255 (ignore); ``Segmenter`` pads inference inputs the same way. Outputs: ``image`` float32
``(3, H, W)`` normalised with the *encoder's* mean/std (0-1 range, timm's convention), ``mask`` int64 ``(H, W)``.

Train pipeline (mmsegmentation's ADE20K recipe):
1. ``RandomResize``: mmseg ``RandomResize(scale=(4*base, base), ratio_range=scale_range, keep_ratio=True)``:
   draw ``r ~ U(scale_range)``, then rescale by ``min(4*base*r / long_side, base*r / short_side)``: the short
   side becomes ``base*r`` unless that would make the long side exceed ``4*base*r``.
2. ``RandomCrop`` of ``crop_size`` with ``cat_max_ratio``: a crop is redrawn (up to 10 times, mmseg's rule)
   until it holds at least two classes and none covers ``cat_max_ratio`` or more of its non-ignore pixels;
   after 10 redraws the last crop is kept. Images smaller than the crop are cropped to their own size.
3. Horizontal flip with probability 0.5.
4. ``PhotoMetricDistortion`` (mmseg): brightness +-32 (p=0.5); contrast x U(0.5, 1.5) (p=0.5) before or after
   (p=0.5 each) saturation x U(0.5, 1.5) in HSV (p=0.5) and hue +-18/180 of the circle (p=0.5); values
   clipped to [0, 255] after each step.
5. Normalise, then pad bottom/right to ``crop_size`` (image 0, mask 255).

Eval pipeline: resize so that the short side is ``eval_size`` (long side capped at ``4*eval_size``, mmseg's
``(2048, 512)`` test scale), or keep the original size when ``eval_size`` is None. The mask follows the image
(nearest) unless ``keep_mask_size=True``, which leaves it at its original resolution for scoring there.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
import torch.nn.functional as nnf
import torchvision.transforms.v2.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import Compose

from encseg.config import DataConfig
from encseg.data.formats.base import IGNORE_INDEX
from encseg.errors import InputError

Sample = dict[str, Any]
IMAGE_PAD = 0.0  # after normalisation: the mean colour

_GENERATOR: ContextVar[torch.Generator | None] = ContextVar("encseg_augment_generator", default=None)


@contextmanager
def drawing_from(generator: torch.Generator) -> Iterator[None]:
    """Make every random draw of these transforms (in this thread/context) come from ``generator``."""
    token = _GENERATOR.set(generator)
    try:
        yield
    finally:
        _GENERATOR.reset(token)


def _rand() -> float:
    return float(torch.rand((), generator=_GENERATOR.get()))


def _randint(low: int, high: int) -> int:
    return int(torch.randint(low, high, (), generator=_GENERATOR.get()).item())


def _uniform(lo: float, hi: float) -> float:
    return lo + (hi - lo) * _rand()


def _coin() -> bool:
    return bool(_randint(0, 2))


def _resize(sample: Sample, size: tuple[int, int], mask_too: bool = True) -> Sample:
    out = dict(sample)
    out["image"] = F.resize(sample["image"], list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
    if mask_too:
        out["mask"] = F.resize(sample["mask"], list(size), interpolation=InterpolationMode.NEAREST)
    return out


def rescale_size(h: int, w: int, short: float, long: float) -> tuple[int, int]:
    """mmcv's keep-ratio rule: the largest size with short side <= ``short`` and long side <= ``long``."""
    scale = min(long / max(h, w), short / min(h, w))
    return int(h * scale + 0.5), int(w * scale + 0.5)


class RandomResize:
    def __init__(self, base_size: int, scale_range: tuple[float, float], max_long_ratio: float = 4.0):
        self.base_size, self.scale_range, self.max_long_ratio = base_size, scale_range, max_long_ratio

    def __call__(self, sample: Sample) -> Sample:
        r = _uniform(*self.scale_range)
        h, w = sample["image"].shape[-2:]
        short = self.base_size * r
        return _resize(sample, rescale_size(h, w, short, short * self.max_long_ratio))


class RandomCrop:
    def __init__(self, crop_size: int, cat_max_ratio: float = 1.0, ignore_index: int = IGNORE_INDEX,
                 tries: int = 10):
        self.crop_size, self.cat_max_ratio, self.ignore_index, self.tries = crop_size, cat_max_ratio, ignore_index, tries

    def _box(self, h: int, w: int) -> tuple[int, int, int, int]:
        ch, cw = min(self.crop_size, h), min(self.crop_size, w)
        top = _randint(0, h - ch + 1)
        left = _randint(0, w - cw + 1)
        return top, left, ch, cw

    def _acceptable(self, mask: torch.Tensor) -> bool:
        labels = mask[mask != self.ignore_index]
        if labels.numel() == 0:
            return False
        counts = torch.bincount(labels.flatten())
        counts = counts[counts > 0]
        return len(counts) > 1 and float(counts.max()) / float(counts.sum()) < self.cat_max_ratio

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample["image"].shape[-2:]
        box = self._box(h, w)
        if self.cat_max_ratio < 1.0:
            for _ in range(self.tries):
                if self._acceptable(F.crop(sample["mask"], *box)):
                    break
                box = self._box(h, w)
        return {**sample, "image": F.crop(sample["image"], *box), "mask": F.crop(sample["mask"], *box)}


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, sample: Sample) -> Sample:
        if _rand() < self.p:
            return {**sample, "image": F.horizontal_flip(sample["image"]), "mask": F.horizontal_flip(sample["mask"])}
        return sample


class PhotoMetricDistortion:
    """mmseg's ``PhotoMetricDistortion`` on a float image in [0, 255] (see the module docstring)."""

    def __init__(self, brightness_delta: float = 32, contrast_range: tuple[float, float] = (0.5, 1.5),
                 saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18):
        self.brightness_delta, self.contrast_range = brightness_delta, contrast_range
        self.saturation_range, self.hue_delta = saturation_range, hue_delta

    @staticmethod
    def scale_saturation(img: torch.Tensor, factor: float) -> torch.Tensor:
        """Multiply HSV saturation by ``factor`` (clipped at 1) keeping hue and value: each channel moves along
        ``c' = V - (V - c) * S'/S`` with ``V = max``, ``S = (V - min) / V``."""
        v = img.amax(dim=0, keepdim=True)
        spread = v - img.amin(dim=0, keepdim=True)
        ratio = torch.where(spread > 0, torch.minimum(torch.full_like(v, factor), v / spread.clamp_min(1e-6)),
                            torch.ones_like(v))
        return v - (v - img) * ratio

    def _contrast(self, img: torch.Tensor) -> torch.Tensor:
        return (img * _uniform(*self.contrast_range)).clamp(0, 255) if _coin() else img

    def __call__(self, sample: Sample) -> Sample:
        img = sample["image"].as_subclass(torch.Tensor).float()
        if _coin():
            img = (img + _uniform(-self.brightness_delta, self.brightness_delta)).clamp(0, 255)
        contrast_first = _coin()
        if contrast_first:
            img = self._contrast(img)
        if _coin():
            img = self.scale_saturation(img, _uniform(*self.saturation_range)).clamp(0, 255)
        if _coin():
            delta = _randint(-self.hue_delta, self.hue_delta + 1)
            img = (F.adjust_hue(img / 255, delta / 180) * 255).clamp(0, 255)
        if not contrast_first:
            img = self._contrast(img)
        return {**sample, "image": img}


class PadTo:
    """Pad bottom/right to ``size``: image with ``IMAGE_PAD`` (run after ``Normalize``), mask with 255."""

    def __init__(self, size: int, ignore_index: int = IGNORE_INDEX):
        self.size, self.ignore_index = size, ignore_index

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample["image"].shape[-2:]
        ph, pw = max(self.size - h, 0), max(self.size - w, 0)
        if not (ph or pw):
            return sample
        return {**sample, "image": nnf.pad(sample["image"], (0, pw, 0, ph), value=IMAGE_PAD),
                "mask": nnf.pad(sample["mask"], (0, pw, 0, ph), value=self.ignore_index)}


class ResizeShortSide:
    def __init__(self, short: int, max_long_ratio: float = 4.0, mask_too: bool = True):
        self.short, self.max_long_ratio, self.mask_too = short, max_long_ratio, mask_too

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample["image"].shape[-2:]
        return _resize(sample, rescale_size(h, w, self.short, self.short * self.max_long_ratio), self.mask_too)


class Normalize:
    """uint8/float image in [0, 255] -> float32 ``(x / 255 - mean) / std``; mask -> int64 plain tensors."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        if len(mean) != 3 or len(std) != 3 or max(mean) > 1.0 or min(std) <= 0:
            raise InputError(f"mean/std must be 3 values in the 0-1 range (timm's convention), got {mean}, {std}")
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]

    def __call__(self, sample: Sample) -> Sample:
        img = sample["image"].as_subclass(torch.Tensor).float() / 255
        img = F.normalize(img, self.mean, self.std)
        return {**sample, "image": img.contiguous(), "mask": sample["mask"].as_subclass(torch.Tensor).long()}


def train_transforms(data: DataConfig, mean: Sequence[float], std: Sequence[float]) -> Compose:
    steps: list[Any] = [RandomResize(data.base_size, data.scale_range),
                        RandomCrop(data.crop_size, data.cat_max_ratio)]
    if data.flip:
        steps.append(RandomHorizontalFlip())
    if data.photometric:
        steps.append(PhotoMetricDistortion())
    steps += [Normalize(mean, std), PadTo(data.crop_size)]
    return Compose(steps)


def eval_transforms(data: DataConfig, mean: Sequence[float], std: Sequence[float],
                    keep_mask_size: bool = False) -> Compose:
    steps: list[Any] = []
    if data.eval_size is not None:
        steps.append(ResizeShortSide(data.eval_size, mask_too=not keep_mask_size))
    steps.append(Normalize(mean, std))
    return Compose(steps)
