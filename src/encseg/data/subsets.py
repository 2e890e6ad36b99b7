"""Nested k% subsets of a train split, their class coverage, and the file lists that record them.

Subset rule: the images of fraction ``f`` are the first ``max(1, round(f * n))`` entries of one permutation of
``range(n)`` drawn from ``numpy.random.default_rng(subset_seed)``; ``n`` is the size of the (sorted) train
split. The subset therefore depends only on ``(n, f, subset_seed)``, never on the encoder, the training seed
or anything else in a run, and smaller fractions are nested inside larger ones for the same subset seed
(1% inside 5% inside 10% ... inside 100%). Indices are returned sorted. Each run writes its file list
(``subset.txt``, paths relative to the dataset root; ``engine.train.write_subset``) so that the subset can be
checked without the seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from encseg.data.formats.base import IGNORE_INDEX, SegDataset
from encseg.errors import InputError


def subset_size(n: int, fraction: float) -> int:
    if n < 1:
        raise InputError(f"cannot take a subset of an empty split (n={n})")
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"fraction must be in (0, 1], got {fraction}")
    return min(n, max(1, int(np.floor(fraction * n + 0.5))))


def subset_indices(n: int, fraction: float, subset_seed: int) -> list[int]:
    """Sorted indices of the ``fraction`` subset of ``range(n)`` (see the module docstring)."""
    order = np.random.default_rng(subset_seed).permutation(n)
    return sorted(int(i) for i in order[: subset_size(n, fraction)])


def class_coverage(dataset: SegDataset, indices: Sequence[int] | None = None) -> dict:
    """Pixels per class over ``indices`` (all items when None): ``{"num_images", "pixels": {name: int},
    "ignored_pixels", "missing": [names with no pixel]}``. Reads masks only (no images, no transform)."""
    indices = range(len(dataset)) if indices is None else indices
    counts = np.zeros(len(dataset.classes), dtype=np.int64)
    ignored = 0
    for i in indices:
        mask = dataset.read_mask(int(i))
        ignored += int((mask == IGNORE_INDEX).sum())
        counts += np.bincount(mask[mask != IGNORE_INDEX].ravel(), minlength=len(counts))[: len(counts)]
    pixels = {name: int(c) for name, c in zip(dataset.classes, counts, strict=True)}
    return {"num_images": len(indices), "pixels": pixels, "ignored_pixels": ignored,
            "missing": [name for name, c in pixels.items() if c == 0]}
