"""The generic ``folder`` format: the way to bring your own data (and what ``encseg data synth`` writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from encseg.data.formats.base import (
    IGNORE_INDEX,
    DatasetError,
    SegDataset,
    identity_lut,
    pair_by_stem,
    voc_palette,
)
from encseg.errors import MissingFileError

DESCRIPTOR = "dataset.yaml"
_KEYS = {"name", "classes", "palette", "ignore_index", "taxonomy", "synthetic"}


def read_descriptor(root: Path) -> dict[str, Any]:
    """``<root>/dataset.yaml``: ``classes`` (list of names, train id = position), optional ``palette``
    (one ``[r, g, b]`` per class), ``ignore_index`` (default 255), ``name``, ``taxonomy``, ``synthetic``."""
    path = Path(root) / DESCRIPTOR
    if not path.is_file():
        raise MissingFileError(f"folder dataset descriptor not found: {path}")
    try:
        desc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(desc, dict):
        raise DatasetError(f"{path}: the top level must be a mapping")
    unknown = sorted(set(desc) - _KEYS)
    if unknown:
        raise DatasetError(f"{path}: unknown key(s) {unknown} (valid: {sorted(_KEYS)})")
    classes = desc.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise DatasetError(f"{path}: 'classes' must be a non-empty list of class names")
    if len(set(classes)) != len(classes) or len(classes) > IGNORE_INDEX:
        raise DatasetError(f"{path}: 'classes' must be unique and at most 255 names")
    ignore = desc.get("ignore_index", IGNORE_INDEX)
    if not isinstance(ignore, int) or not len(classes) <= ignore <= 255:
        raise DatasetError(f"{path}: 'ignore_index' must be an integer in [{len(classes)}, 255], got {ignore!r}")
    palette = desc.get("palette")
    if palette is not None:
        palette = np.asarray(palette)
        if palette.shape != (len(classes), 3) or palette.min() < 0 or palette.max() > 255:
            raise DatasetError(f"{path}: 'palette' must hold one [r, g, b] (0-255) per class "
                               f"({len(classes)}), got shape {palette.shape}")
    return {**desc, "classes": classes, "ignore_index": ignore, "palette": palette}


class FolderDataset(SegDataset):
    """``<root>/images/<split>/**/*.{jpg,jpeg,png}`` with ``<root>/annotations/<split>/**/<stem>.png`` and
    ``<root>/dataset.yaml`` (see ``read_descriptor``).

    Label convention: mask values are the train ids (position in ``classes``) and ``ignore_index`` (default
    255) is ignored; masks may be palette PNGs (their indices are read) or greyscale PNGs. Export is the
    identity, with ignore written as ``ignore_index``.
    """

    format_name = "folder"

    def __init__(self, root: Path, split: str, options: dict[str, Any] | None = None, transform=None):
        self.check_options(type(self).__name__, options or {}, self.allowed_options)
        root = Path(root)
        self.descriptor = read_descriptor(root)
        img_dir, ann_dir = root / "images" / split, root / "annotations" / split
        pairs, orphans = pair_by_stem(img_dir, ann_dir,
                                      lambda p: ann_dir / p.relative_to(img_dir).with_suffix(".png"))
        classes = self.descriptor["classes"]
        self.lut = identity_lut(len(classes), self.descriptor["ignore_index"])
        export = identity_lut(len(classes))
        export[IGNORE_INDEX] = self.descriptor["ignore_index"]
        self.export_lut = export
        palette = self.descriptor["palette"]
        super().__init__(root, split, pairs, classes, voc_palette() if palette is None else palette,
                         transform, orphans)
