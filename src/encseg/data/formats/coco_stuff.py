"""COCO-Stuff-164k: 171 classes (80 things + 91 stuff) from the 182 ids of ``stuffthingmaps``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from encseg.data.formats.base import (
    IGNORE_INDEX,
    INVALID,
    SegDataset,
    identity_lut,
    lut_from_pairs,
    pair_by_stem,
)

# mmsegmentation's COCOStuffDataset class order (train ids 0..170)
COCO_STUFF_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge", "building-other",
    "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth", "clothes",
    "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble",
    "floor-other", "floor-stone", "floor-tile", "floor-wood", "flower", "fog", "food-other", "fruit",
    "furniture-other", "grass", "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal",
    "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other",
    "plastic", "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug",
    "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs", "stone",
    "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
    "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood", "water-other",
    "waterdrops", "window-blind", "window-other", "wood",
)
# COCO thing ids that no annotation uses; the other 171 of 0..181 become train ids in order
UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
STUFF_IDS = tuple(i for i in range(182) if i not in UNUSED_IDS)
assert len(STUFF_IDS) == len(COCO_STUFF_CLASSES) == 171


class COCOStuffDataset(SegDataset):
    """``<root>/images/<split>/*.jpg`` (``train2017``/``val2017``; ``train``/``val`` are aliases) with
    ``<root>/annotations/<split>/<stem>_labelTrainIds.png`` (mmseg's converted masks, used when present)
    or ``<root>/annotations/<split>/<stem>.png`` (the raw ``stuffthingmaps``).

    Label convention: raw maps hold ids 0..181 and 255 = unlabelled; the 171 used ids map in order to train
    ids 0..170 (e.g. 0 person -> 0, 12 stop sign -> 11, 181 wood -> 170), 255 stays ignore, and the 11
    unused thing ids (11, 25, 28, ...) are errors. ``*_labelTrainIds.png`` already holds 0..170 and 255.
    Export: the raw 182-id space, ignore -> 255. Not COCO-Stuff-10k (1..171 with 0 ignored).
    """

    format_name = "coco_stuff"

    def __init__(self, root: Path, split: str, options: dict[str, Any] | None = None, transform=None):
        self.check_options(type(self).__name__, options or {}, self.allowed_options)
        root = Path(root)
        if not (root / "images" / split).is_dir():
            split = {"train": "train2017", "val": "val2017"}.get(split, split)
        img_dir, ann_dir = root / "images" / split, root / "annotations" / split

        def mask_of(img: Path) -> Path:
            rel = img.relative_to(img_dir).with_suffix("")
            train_ids = ann_dir / f"{rel}_labelTrainIds.png"
            return train_ids if train_ids.is_file() else ann_dir / f"{rel}.png"

        pairs, orphans = pair_by_stem(img_dir, ann_dir, mask_of, img_suffixes=(".jpg", ".jpeg", ".png"))
        known = {m for _, m in pairs}
        # a raw map next to its converted twin is not an orphan
        orphans = [o for o in orphans if o.with_name(o.stem + "_labelTrainIds.png") not in known]
        self.lut = identity_lut(171)
        self._raw_lut = lut_from_pairs({**{raw: t for t, raw in enumerate(STUFF_IDS)}, 255: IGNORE_INDEX})
        export = np.full(256, INVALID, dtype=np.int64)
        export[:171] = STUFF_IDS
        export[IGNORE_INDEX] = 255
        self.export_lut = export
        super().__init__(root, split, pairs, COCO_STUFF_CLASSES, None, transform, orphans)

    def mask_lut(self, i: int) -> np.ndarray:
        return self.lut if self.files[i][1].name.endswith("_labelTrainIds.png") else self._raw_lut
