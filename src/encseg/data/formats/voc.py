"""Pascal VOC 2012 segmentation, 21 classes, optionally with the SBD-augmented train set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from encseg.data.formats.base import DatasetError, SegDataset, identity_lut, voc_palette
from encseg.errors import MissingFileError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)


def find_voc_root(root: Path) -> Path:
    """``root`` may be ``VOC2012`` itself, its parent ``VOCdevkit`` or the folder holding ``VOCdevkit``."""
    for cand in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (cand / "JPEGImages").is_dir():
            return cand
    raise MissingFileError(f"no VOC2012 folder (with JPEGImages/) at {root}, {root / 'VOC2012'} "
                            f"or {root / 'VOCdevkit' / 'VOC2012'}")


class VOCDataset(SegDataset):
    """``JPEGImages/<id>.jpg`` with ``SegmentationClass/<id>.png``; the ids of a split are listed in
    ``ImageSets/Segmentation/<split>.txt``.

    SBD (option ``use_sbd``, default true): for split ``train``, when ``ImageSets/Segmentation/aug.txt`` and
    ``SegmentationClassAug/`` exist (mmseg's ``voc_aug.py`` output: trainaug minus VOC train), those images are
    added with their masks from ``SegmentationClassAug/`` (10,582 images in all). Validation is never augmented.
    Label convention: the masks are palette PNGs whose *indices* are the train ids 0..20 (0 = background);
    255 = object boundary / void, ignored. Export is the identity.
    """

    format_name = "voc"
    allowed_options = frozenset({"use_sbd"})

    def __init__(self, root: Path, split: str, options: dict[str, Any] | None = None, transform=None):
        options = options or {}
        self.check_options(type(self).__name__, options, self.allowed_options)
        voc = find_voc_root(Path(root))
        pairs = [(voc / "JPEGImages" / f"{i}.jpg", voc / "SegmentationClass" / f"{i}.png")
                 for i in self._ids(voc / "ImageSets" / "Segmentation" / f"{split}.txt")]
        aug_list, aug_dir = voc / "ImageSets" / "Segmentation" / "aug.txt", voc / "SegmentationClassAug"
        self.uses_sbd = bool(options.get("use_sbd", True)) and split == "train" and aug_list.is_file() \
            and aug_dir.is_dir()
        if self.uses_sbd:
            known = {p[0].stem for p in pairs}
            pairs += [(voc / "JPEGImages" / f"{i}.jpg", aug_dir / f"{i}.png")
                      for i in self._ids(aug_list) if i not in known]
        self.lut = identity_lut(len(VOC_CLASSES))
        self.export_lut = identity_lut(len(VOC_CLASSES))
        super().__init__(voc, split, pairs, VOC_CLASSES, voc_palette(), transform)

    @staticmethod
    def _ids(path: Path) -> list[str]:
        if not path.is_file():
            raise MissingFileError(f"VOC split list not found: {path}")
        ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
        if not ids:
            raise DatasetError(f"{path}: empty split list")
        return ids
