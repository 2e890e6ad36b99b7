"""GTA5 ("Playing for Data"): game frames labelled with Cityscapes ids, scored on the 19 Cityscapes classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from encseg.data.formats.base import DatasetError, SegDataset, pair_by_stem
from encseg.data.formats.cityscapes import (
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    label_id_lut,
    train_id_lut,
    train_to_label_id_lut,
)
from encseg.errors import MissingFileError


class GTA5Dataset(SegDataset):
    """``<root>/images/<stem>.png`` with ``<root>/labels/<stem>.png`` (palette PNGs whose indices are Cityscapes
    labelIds), or ``<root>/labels/<stem>_labelTrainIds.png`` written by mmseg's converter (used when present).

    Splits: ``all`` (every image, the usual synthetic-to-real source set); ``train``/``val``/``test`` from the
    official ``split.mat`` (1-based image numbers) or from ``<root>/<split>.txt`` (one stem per line).
    Label convention: labelIds -> Cityscapes train ids through cityscapesscripts' table (7 -> 0, 26 -> 13,
    unlabelled and ignored ids -> 255); ids outside the table are errors. Export: labelIds, ignore -> 0.
    """

    format_name = "gta5"

    def __init__(self, root: Path, split: str, options: dict[str, Any] | None = None, transform=None):
        self.check_options(type(self).__name__, options or {}, self.allowed_options)
        root = Path(root)
        lab_dir = root / "labels"

        def mask_of(img: Path) -> Path:
            train_ids = lab_dir / f"{img.stem}_labelTrainIds.png"
            return train_ids if train_ids.is_file() else lab_dir / f"{img.stem}.png"

        pairs, orphans = pair_by_stem(root / "images", lab_dir, mask_of, img_suffixes=(".png", ".jpg"))
        if split != "all":
            keep = self._split_stems(root, split)
            pairs = [p for p in pairs if p[0].stem in keep]
            orphans = [p for p in orphans if p.stem.removesuffix("_labelTrainIds") in keep]
        self.lut = train_id_lut()
        self._label_id_lut = label_id_lut()
        self.export_lut = train_to_label_id_lut()
        super().__init__(root, split, pairs, CITYSCAPES_CLASSES, CITYSCAPES_PALETTE, transform, orphans)

    @staticmethod
    def _split_stems(root: Path, split: str) -> set[str]:
        txt = root / f"{split}.txt"
        if txt.is_file():
            return {line.strip() for line in txt.read_text().splitlines() if line.strip()}
        mat = root / "split.mat"
        if mat.is_file():
            from scipy.io import loadmat

            key = f"{split}Ids"
            table = loadmat(mat)
            if key not in table:
                raise DatasetError(f"{mat}: no {key!r} entry (has {sorted(k for k in table if not k.startswith('_'))})")
            return {f"{int(n):05d}" for n in np.asarray(table[key]).ravel()}
        raise MissingFileError(f"gta5 split {split!r}: neither {txt} nor {mat} exists (split 'all' needs neither)")

    def mask_lut(self, i: int) -> np.ndarray:
        return self.lut if self.files[i][1].name.endswith("_labelTrainIds.png") else self._label_id_lut
