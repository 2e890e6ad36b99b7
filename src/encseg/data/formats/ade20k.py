"""ADE20K scene parsing (``ADEChallengeData2016``), 150 classes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from encseg.data.formats.base import IGNORE_INDEX, INVALID, SegDataset, lut_from_pairs, pair_by_stem

# mmsegmentation's ADE20KDataset.METAINFO order (its 'bed ' carries a stray trailing space, dropped here)
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)

ADE_SPLITS = {"train": "training", "val": "validation"}


class ADE20KDataset(SegDataset):
    """``<root>/images/<split>/*.jpg`` with ``<root>/annotations/<split>/<stem>.png``; splits ``training`` and
    ``validation`` (``train``/``val`` are accepted as aliases).

    Label convention (mmseg's ``reduce_zero_label=True``): PNG value 0 ("other") -> 255 ignore, values
    1..150 -> train ids 0..149 (``v - 1``); 255 stays ignore. Export (``to_dataset_ids``): ``t + 1`` and
    ignore -> 0. Palette: the VOC colour map (for pictures only).
    """

    format_name = "ade20k"

    def __init__(self, root: Path, split: str, options: dict[str, Any] | None = None, transform=None):
        self.check_options(type(self).__name__, options or {}, self.allowed_options)
        root = Path(root)
        split = ADE_SPLITS.get(split, split) if not (root / "images" / split).is_dir() else split
        ann_dir = root / "annotations" / split
        pairs, orphans = pair_by_stem(root / "images" / split, ann_dir,
                                      lambda p: ann_dir / p.relative_to(root / "images" / split).with_suffix(".png"))
        self.lut = lut_from_pairs({0: IGNORE_INDEX, **{v: v - 1 for v in range(1, 151)}, 255: IGNORE_INDEX})
        export = np.full(256, INVALID, dtype=np.int64)
        export[:150] = np.arange(1, 151)
        export[IGNORE_INDEX] = 0
        self.export_lut = export
        super().__init__(root, split, pairs, ADE20K_CLASSES, None, transform, orphans)
