"""Dataset formats: one file per dataset, each class stating its label convention; ``build_dataset``."""

from __future__ import annotations

from encseg.config import DatasetConfig
from encseg.data.formats.ade20k import ADE20KDataset
from encseg.data.formats.base import IGNORE_INDEX, DatasetError, SegDataset
from encseg.data.formats.cityscapes import CityscapesDataset
from encseg.data.formats.coco_stuff import COCOStuffDataset
from encseg.data.formats.folder import FolderDataset
from encseg.data.formats.gta5 import GTA5Dataset
from encseg.data.formats.voc import VOCDataset
from encseg.errors import MissingFileError

DATASETS: dict[str, type[SegDataset]] = {
    "ade20k": ADE20KDataset,
    "cityscapes": CityscapesDataset,
    "voc": VOCDataset,
    "coco_stuff": COCOStuffDataset,
    "gta5": GTA5Dataset,
    "folder": FolderDataset,
}


def resolve_split(cfg: DatasetConfig, split: str) -> str:
    """``"train"``/``"val"`` name a role and resolve to ``cfg.train_split``/``cfg.val_split``; any other
    string is the on-disk split name itself (e.g. ``"training"``, ``"test"``)."""
    return {"train": cfg.train_split, "val": cfg.val_split}.get(split, split)


def build_dataset(cfg: DatasetConfig, split: str, transform=None) -> SegDataset:
    """The dataset of ``split`` described by ``cfg``; generates it first when ``cfg.synthetic`` is set and
    ``cfg.root`` does not exist yet (safe when several processes start at once)."""
    if cfg.format not in DATASETS:
        raise DatasetError(f"unknown dataset format {cfg.format!r} (known: {sorted(DATASETS)})")
    if cfg.synthetic is not None and not cfg.root.exists():
        from encseg.data.synthetic import ensure_synthetic

        ensure_synthetic(cfg.root, cfg.synthetic, expected_format=cfg.format)
    if not cfg.root.exists():
        raise MissingFileError(f"dataset root not found: {cfg.root} (format {cfg.format})")
    return DATASETS[cfg.format](cfg.root, resolve_split(cfg, split), dict(cfg.options), transform)


__all__ = ["DATASETS", "IGNORE_INDEX", "DatasetError", "SegDataset", "build_dataset", "resolve_split"]
