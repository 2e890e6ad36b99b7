"""The evaluation-image bootstrap of a printed gain: resample images, recompute dataset mIoU, pair the encoders.

The gain the report prints is a difference of *dataset-level* mIoU: per class, intersections and unions are
summed over the evaluated images before dividing. Each run stores its per-image, per-class intersections and
unions (``eval/<dataset>_areas.npz``, docs/architecture.md); a resample draws the evaluation images with
replacement, sums the drawn images' areas, and recomputes every run's dataset mIoU on the same draw (paired
across encoders and seeds). The gain of a resample is the mean over the cell's paired seeds of the differences,
exactly as the printed gain, which is the resample with every image once.

What it covers: the uncertainty from *which images were evaluated*, with the trained models held fixed; the
seed intervals cover the training seeds and subsets instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

Areas = tuple[np.ndarray, np.ndarray]  # (intersection, union): (images, classes) each


class ImageInterval(NamedTuple):
    gain: float  # the gain from the stored areas: the printed dataset-level gain
    low: float
    high: float
    n_images: int
    n_boot: int


def dataset_miou(intersection: np.ndarray, union: np.ndarray) -> np.ndarray:
    """mIoU over the last axis (classes) of summed areas; a class with no union is undefined and left out."""
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, intersection / np.where(union > 0, union, 1), np.nan)
        defined = ~np.isnan(iou)
        return np.where(defined.any(axis=-1), np.nansum(iou, axis=-1) / np.maximum(defined.sum(axis=-1), 1),
                        np.nan)


def image_weights(n_images: int, n_boot: int, seed: int) -> np.ndarray:
    """Row 0: every image once; rows 1..n_boot: how often each image is drawn in a resample (multinomial)."""
    rng = np.random.default_rng(seed)
    w = np.empty((n_boot + 1, n_images), dtype=np.float64)
    w[0] = 1.0
    w[1:] = rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=n_boot)
    return w


def resampled_miou(areas: Areas, weights: np.ndarray) -> np.ndarray:
    """Dataset mIoU of one run under each row of image ``weights``."""
    inter, union = (np.asarray(a, dtype=np.float64) for a in areas)
    return dataset_miou(weights @ inter, weights @ union)


def paired_gain(encoder: Sequence[Areas], baseline: Sequence[Areas], n_boot: int = 2000, seed: int = 0,
                confidence: float = 0.95, weights: np.ndarray | None = None) -> ImageInterval:
    """Percentile interval of the seed-mean dataset-mIoU gain ``encoder - baseline`` over image resamples.

    ``encoder[s]`` and ``baseline[s]`` are the areas of the two runs of paired seed ``s`` on one dataset (same
    images, same order). ``weights`` (``image_weights``) may be passed to share one draw across cells.
    """
    if len(encoder) != len(baseline) or not encoder:
        raise ValueError(f"paired_gain needs the same number (>= 1) of encoder and baseline runs, got "
                         f"{len(encoder)} and {len(baseline)}")
    shapes = {np.shape(a[0]) for a in (*encoder, *baseline)} | {np.shape(a[1]) for a in (*encoder, *baseline)}
    if len(shapes) != 1:
        raise ValueError(f"paired_gain: the runs' per-image areas differ in shape: {sorted(shapes)}")
    n_images = int(np.shape(encoder[0][0])[0])
    w = image_weights(n_images, n_boot, seed) if weights is None else weights
    diffs = [resampled_miou(a, w) - resampled_miou(b, w) for a, b in zip(encoder, baseline, strict=True)]
    gains = np.mean(diffs, axis=0)
    boot = gains[1:][~np.isnan(gains[1:])]
    if boot.size == 0:
        return ImageInterval(float(gains[0]), math.nan, math.nan, n_images, w.shape[0] - 1)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(boot, [tail, 100.0 - tail])
    return ImageInterval(float(gains[0]), float(low), float(high), n_images, w.shape[0] - 1)
