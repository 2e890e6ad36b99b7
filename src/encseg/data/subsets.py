"""The dev split and nested k% subsets of a train split, their class coverage, and the file lists that record them.

Rule: draw one permutation of ``range(n)`` from ``numpy.random.default_rng(subset_seed)``, where ``n`` is the
size of the (sorted) train split. Its first ``d`` entries are the *dev split* (``d = dev_count(n, dev_size)``):
held out before any fraction is drawn, used for the validation curve, convergence decisions and checkpoint
selection, never trained on. The images of fraction ``f`` are the first ``max(1, round(f * m))`` entries of
the rest (the *pool*, ``m = n - d``), so 100 % means "all training images minus the dev split". Both depend
only on ``(n, dev_size, f, subset_seed)``, never on the encoder, the training seed or anything else in a run:
every cell of a study shares one dev split, and smaller fractions are nested inside larger ones (1% inside
5% ... inside 100%). Indices are returned sorted. Each run writes its file lists (paths relative to the
dataset root) so that the subsets can be checked and reused without the seed.
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


def dev_count(n: int, dev_size: int | float) -> int:
    """Images in the dev split: ``dev_size`` itself when an int, else ``max(1, round(dev_size * n))``; 0 is none."""
    if isinstance(dev_size, bool) or dev_size < 0 or (isinstance(dev_size, float) and dev_size >= 1.0):
        raise ValueError(f"dev_size must be an image count >= 0 or a fraction in (0, 1), got {dev_size!r}")
    if dev_size == 0:
        return 0
    count = int(dev_size) if isinstance(dev_size, int) else max(1, int(np.floor(dev_size * n + 0.5)))
    if count >= n:
        raise ValueError(f"a dev split of {count} images leaves no training images out of {n}; lower dev_size")
    return count


def _permutation(n: int, subset_seed: int) -> list[int]:
    return [int(i) for i in np.random.default_rng(subset_seed).permutation(n)]


def dev_indices(n: int, dev_size: int | float, subset_seed: int) -> list[int]:
    """Sorted indices of the dev split of ``range(n)`` (see the module docstring)."""
    return sorted(_permutation(n, subset_seed)[: dev_count(n, dev_size)])


def subset_indices(n: int, fraction: float, subset_seed: int, dev_size: int | float = 0) -> list[int]:
    """Sorted indices of the ``fraction`` subset of ``range(n)`` minus its dev split (see the module docstring)."""
    pool = _permutation(n, subset_seed)[dev_count(n, dev_size):]
    return sorted(pool[: subset_size(len(pool), fraction)])


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
