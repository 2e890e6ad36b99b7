"""Cityscapes fine annotations, 19 train ids, from the label table of ``cityscapesscripts``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from cityscapesscripts.helpers.labels import labels as _CS_LABELS

from encseg.data.formats.base import IGNORE_INDEX, INVALID, SegDataset, lut_from_pairs
from encseg.errors import InputError, MissingFileError

# train ids 0..18 in order, with their names and colours, from the official table
_TRAIN = sorted((lab for lab in _CS_LABELS if 0 <= lab.trainId < IGNORE_INDEX), key=lambda lab: lab.trainId)
CITYSCAPES_CLASSES = tuple(lab.name for lab in _TRAIN)
CITYSCAPES_PALETTE = np.array([lab.color for lab in _TRAIN], dtype=np.uint8)


def label_id_lut() -> np.ndarray:
    """labelIds (0..33; license plate -1, stored as 255 in a uint8 PNG) -> train ids, ignored ids -> 255."""
    pairs = {}
    for lab in _CS_LABELS:
        raw = lab.id & 0xFF  # -1 (license plate) is 255 once written to a uint8 image
        pairs[raw] = lab.trainId if 0 <= lab.trainId < IGNORE_INDEX else IGNORE_INDEX
    return lut_from_pairs(pairs)


def train_to_label_id_lut() -> np.ndarray:
    """Train ids -> labelIds for the official evaluation; ignore -> 0 ("unlabeled")."""
    out = np.full(256, INVALID, dtype=np.int64)
    for lab in _TRAIN:
        out[lab.trainId] = lab.id
    out[IGNORE_INDEX] = 0
    return out


def train_id_lut() -> np.ndarray:
    return lut_from_pairs({**{i: i for i in range(len(CITYSCAPES_CLASSES))}, IGNORE_INDEX: IGNORE_INDEX})


class CityscapesDataset(SegDataset):
    """``<root>/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png`` with
    ``<root>/gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png`` or, when that file is absent,
    ``<stem>_gtFine_labelIds.png``.

    Label convention: ``*_labelTrainIds.png`` already holds train ids 0..18 and 255. ``*_labelIds.png`` holds
    labelIds mapped on the fly through cityscapesscripts' table (road 7 -> 0, ..., car 26 -> 13, bicycle 33 ->
    18; every id with trainId 255 or -1, including license plate -1 = 255 in uint8, -> 255). Ids the table does
    not know (34..254) are errors. Export (``to_dataset_ids``): labelIds, ignore -> 0, as the official
    evaluation script expects. Option ``mask: auto|trainids|labelids`` (default ``auto``) forces one kind.
    """

    format_name = "cityscapes"
    allowed_options = frozenset({"mask"})
    _SUFFIX = {"trainids": "_gtFine_labelTrainIds.png", "labelids": "_gtFine_labelIds.png"}

    def __init__(self, root: Path, split: str, options: dict[str, Any] | None = None, transform=None):
        options = options or {}
        self.check_options(type(self).__name__, options, self.allowed_options)
        self.mask_kind = options.get("mask", "auto")
        if self.mask_kind not in ("auto", "trainids", "labelids"):
            raise InputError(f"cityscapes option mask={self.mask_kind!r}: expected auto, trainids or labelids")
        root = Path(root)
        img_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
        if not img_dir.is_dir():
            raise MissingFileError(f"image directory not found: {img_dir}")
        pairs = [(img, self._mask_for(img, img_dir, gt_dir)) for img in sorted(img_dir.rglob("*_leftImg8bit.png"))]
        expected = {m.name.split("_gtFine_")[0] for _, m in pairs}
        orphans = sorted(p for p in gt_dir.rglob("*_gtFine_label*Ids.png")
                         if p.name.split("_gtFine_")[0] not in expected) if gt_dir.is_dir() else []
        self.lut = train_id_lut()
        self._label_id_lut = label_id_lut()
        self.export_lut = train_to_label_id_lut()
        super().__init__(root, split, pairs, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, transform, orphans)

    def _mask_for(self, img: Path, img_dir: Path, gt_dir: Path) -> Path:
        stem = img.name[: -len("_leftImg8bit.png")]
        folder = gt_dir / img.parent.relative_to(img_dir)
        if self.mask_kind != "auto":
            return folder / (stem + self._SUFFIX[self.mask_kind])
        train_ids = folder / (stem + self._SUFFIX["trainids"])
        return train_ids if train_ids.is_file() else folder / (stem + self._SUFFIX["labelids"])

    def mask_lut(self, i: int) -> np.ndarray:
        return self._label_id_lut if self.files[i][1].name.endswith("_labelIds.png") else self.lut
