"""``SegDataset``: the one reader of images and label maps that every dataset format builds on.

Conventions (docs/architecture.md): masks come out as ``np.int64`` *train ids* ``0..C-1`` with ``255`` =
ignore. Each format converts its on-disk ids with a lookup table (``raw id -> train id``, ``-1`` = not a valid
value); the conversion happens only here, in ``read_mask``. Masks are read as label *indices*: a palette PNG
gives its indices, a greyscale PNG its values, and a mask that decodes to several channels (RGB, RGBA, LA)
is an error that names the file, because colours are not labels.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors

from encseg.errors import EncsegError, MissingFileError

IGNORE_INDEX = 255
INVALID = -1  # marks raw values that are neither a class nor ignore in a lookup table
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
INDEX_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L", "1")  # single-channel modes that hold label indices


class DatasetError(EncsegError, ValueError):
    """A dataset on disk that cannot be read as declared; the message names the file, key or values."""


def voc_palette(n: int = 256) -> np.ndarray:
    """The Pascal VOC colour map (bit-interleaved), used wherever a dataset brings no palette."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out[i] = (r, g, b)
    return out


def lut_from_pairs(pairs: dict[int, int], size: int = 256) -> np.ndarray:
    """A ``raw -> train`` table of ``size`` entries; unlisted raw values are ``INVALID``."""
    lut = np.full(size, INVALID, dtype=np.int64)
    for raw, train in pairs.items():
        lut[raw] = train
    return lut


def identity_lut(num_classes: int, ignore_raw: int = IGNORE_INDEX) -> np.ndarray:
    """Raw ids are train ids ``0..C-1``; ``ignore_raw`` means ignore."""
    pairs = {i: i for i in range(num_classes)}
    pairs[ignore_raw] = IGNORE_INDEX
    return lut_from_pairs(pairs)


def read_label_indices(path: Path) -> np.ndarray:
    """The label indices stored in a mask file (palette indices for ``P`` images), never its colours."""
    try:
        with Image.open(path) as im:
            if im.mode not in INDEX_MODES:
                raise DatasetError(f"{path}: mask has mode {im.mode!r} ({len(im.getbands())} channels); "
                                   "expected a single-channel label-index PNG (palette or greyscale)")
            return np.asarray(im)
    except FileNotFoundError:
        raise MissingFileError(f"mask file not found: {path}") from None
    except DatasetError:
        raise
    except OSError as e:
        raise DatasetError(f"{path}: cannot decode mask: {e}") from e


def pair_by_stem(img_dir: Path, ann_dir: Path, mask_of: Callable[[Path], Path],
                 img_suffixes: Sequence[str] = IMAGE_EXTS,
                 is_mask: Callable[[Path], bool] | None = None) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """Images found under ``img_dir`` (recursively, sorted) paired with ``mask_of(image)``.

    Returns ``(pairs, orphans)``: pairs keep images whose mask is missing (``data check`` reports them, and
    reading one raises ``FileNotFoundError``); orphans are masks under ``ann_dir`` with no image.
    """
    if not img_dir.is_dir():
        raise MissingFileError(f"image directory not found: {img_dir}")
    images = sorted(p for p in img_dir.rglob("*") if p.suffix.lower() in img_suffixes and p.is_file())
    pairs = [(img, mask_of(img)) for img in images]
    orphans: list[Path] = []
    if ann_dir.is_dir():
        expected = {m for _, m in pairs}
        is_mask = is_mask or (lambda p: p.suffix.lower() == ".png")
        orphans = sorted(p for p in ann_dir.rglob("*") if p.is_file() and is_mask(p) and p not in expected)
    return pairs, orphans


class SegDataset(Dataset):
    """Image/mask pairs of one split; subclasses set the files, the classes and the id conversion.

    ``__getitem__`` returns ``{"image": Image uint8 (3,H,W), "mask": Mask int64 (H,W), "path": str (the image
    path relative to ``root``), "index": int}`` and applies ``transform`` to that dict when one is set.
    """

    format_name: ClassVar[str] = ""
    ignore_index: ClassVar[int] = IGNORE_INDEX
    allowed_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, root: Path, split: str, files: list[tuple[Path, Path]], classes: Sequence[str],
                 palette: np.ndarray | None = None, transform: Callable[[dict], Any] | None = None,
                 orphans: list[Path] | None = None):
        self.root = Path(root)
        self.split = split
        self.files = list(files)
        self.classes = list(classes)
        pal = voc_palette() if palette is None else np.asarray(palette, dtype=np.uint8)
        if pal.ndim != 2 or pal.shape[1] != 3 or len(pal) < len(self.classes):
            raise DatasetError(f"{self.root}: palette must have one RGB triple per class "
                               f"({len(self.classes)}), got shape {pal.shape}")
        self.palette = pal[: len(self.classes)]
        self.transform = transform
        self.orphans = list(orphans or [])  # masks without an image (reported by ``data check``)
        if not self.files:
            raise DatasetError(f"{self.root}: no images found for split {split!r}")

    # ------------------------------------------------------------------ id conversion (per format)
    lut: np.ndarray  # raw id -> train id (``INVALID`` where a raw value is not allowed); set by each format
    export_lut: np.ndarray  # train id -> on-disk id, 256 entries (index 255 = ignore); set by each format

    def mask_lut(self, i: int) -> np.ndarray:
        """The ``raw -> train id`` table for the mask of item ``i`` (formats with two mask kinds override it)."""
        return self.lut

    def train_to_dataset_lut(self) -> np.ndarray:
        return self.export_lut

    @staticmethod
    def check_options(cls_name: str, options: dict[str, Any], allowed: frozenset[str]) -> None:
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise DatasetError(f"{cls_name}: unknown dataset option(s) {unknown} "
                               f"(valid: {sorted(allowed) or 'none'})")

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self.files)

    def read_image(self, i: int) -> np.ndarray:
        """RGB ``uint8`` array ``(H, W, 3)``."""
        path = self.files[i][0]
        try:
            with Image.open(path) as im:
                return np.array(im.convert("RGB"))
        except FileNotFoundError:
            raise MissingFileError(f"image file not found: {path}") from None
        except OSError as e:
            raise DatasetError(f"{path}: cannot decode image: {e}") from e

    def read_raw_mask(self, i: int) -> np.ndarray:
        """The on-disk label indices of item ``i`` (before conversion)."""
        return read_label_indices(self.files[i][1])

    def convert_raw(self, raw: np.ndarray, i: int) -> np.ndarray:
        """On-disk ids -> train ids; raises ``DatasetError`` naming the file and the offending values."""
        lut = self.mask_lut(i)
        raw = raw.astype(np.int64, copy=False)
        if raw.size and (raw.min() < 0 or raw.max() >= len(lut)):
            bad = np.unique(raw[(raw < 0) | (raw >= len(lut))])
            raise self._bad_values(i, bad)
        out = lut[raw]
        if out.size and out.min() < 0:
            raise self._bad_values(i, np.unique(raw[out < 0]))
        return out

    def _bad_values(self, i: int, bad: np.ndarray) -> DatasetError:
        shown = ", ".join(str(v) for v in bad[:20])
        return DatasetError(f"{self.files[i][1]}: label values {{{shown}}} are neither one of the "
                            f"{len(self.classes)} {self.format_name} classes nor ignore")

    def read_mask(self, i: int) -> np.ndarray:
        """Train ids ``np.int64 (H, W)``: ``0..C-1``, ``255`` = ignore."""
        return self.convert_raw(self.read_raw_mask(i), i)

    def to_dataset_ids(self, train_ids: np.ndarray) -> np.ndarray:
        """Train ids (``255`` = ignore) -> the dataset's on-disk ids, for exporting predictions."""
        lut = self.train_to_dataset_lut()
        arr = np.asarray(train_ids).astype(np.int64)
        bad = (arr < 0) | (arr > 255)
        if bad.any() or (lut[arr] < 0).any():
            values = np.unique(arr[bad | (lut[np.clip(arr, 0, 255)] < 0)])
            raise DatasetError(f"{self.format_name}: train ids {values[:20].tolist()} are not classes or ignore")
        return lut[arr]

    def relative_path(self, i: int) -> str:
        path = self.files[i][0]
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        i = i % len(self)
        image = torch.from_numpy(np.ascontiguousarray(self.read_image(i))).permute(2, 0, 1).contiguous()
        mask = torch.from_numpy(self.read_mask(i))
        if image.shape[1:] != mask.shape:
            raise DatasetError(f"{self.files[i][0]}: image size {tuple(image.shape[1:])} differs from its mask "
                               f"{self.files[i][1]} size {tuple(mask.shape)}")
        sample = {"image": tv_tensors.Image(image), "mask": tv_tensors.Mask(mask),
                  "path": self.relative_path(i), "index": i}
        return self.transform(sample) if self.transform is not None else sample

    # ------------------------------------------------------------------ views
    def select(self, indices: Sequence[int]) -> SegDataset:
        """A view on ``indices`` (in that order) sharing classes, palette, conversion and transform."""
        n = len(self.files)
        bad = [i for i in indices if not 0 <= int(i) < n]
        if bad:
            raise IndexError(f"indices {bad[:10]} out of range for {n} items")
        view = copy.copy(self)
        view.files = [self.files[int(i)] for i in indices]
        return view

    def with_transform(self, transform: Callable[[dict], Any] | None) -> SegDataset:
        view = copy.copy(self)
        view.transform = transform
        return view

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)}, "
                f"classes={len(self.classes)})")
