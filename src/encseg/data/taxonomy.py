"""Shared label spaces across datasets, for training on A and scoring on B over the classes they share.

The mappings are packaged YAML files in ``encseg/resources/taxonomy/``:
- ``common.yaml``: the real datasets (``ade20k``, ``cityscapes``, ``gta5``, ``voc``, ``coco_stuff``); each
  shared class lists the dataset classes it merges (many-to-one, e.g. Cityscapes person+rider -> person).
- ``synthetic.yaml``: the synthetic scenes, matched by class name.

``shared_space(train, eval)`` returns two lookup tables of 256 entries that map each side's *train ids* to
shared ids ``0..S-1`` (255 where a class is not shared, and for ignore), and the ``S`` shared names. Rules:
1. Two datasets with identical class lists (the same dataset, Cityscapes and GTA5, synthetic datasets of the
   same class count) share every class, in their own order.
2. Otherwise both names must belong to the same taxonomy: format names belong to ``common``; any other name
   is a taxonomy file name (``DatasetConfig.taxonomy``) and needs the dataset's class list.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from typing import Any

import numpy as np
import yaml

from encseg.config import DatasetConfig
from encseg.data.formats.ade20k import ADE20K_CLASSES
from encseg.data.formats.base import IGNORE_INDEX, DatasetError
from encseg.data.formats.cityscapes import CITYSCAPES_CLASSES
from encseg.data.formats.coco_stuff import COCO_STUFF_CLASSES
from encseg.data.formats.folder import read_descriptor
from encseg.data.formats.voc import VOC_CLASSES

FORMAT_CLASSES: dict[str, tuple[str, ...]] = {
    "ade20k": ADE20K_CLASSES, "cityscapes": CITYSCAPES_CLASSES, "gta5": CITYSCAPES_CLASSES, "voc": VOC_CLASSES,
    "coco_stuff": COCO_STUFF_CLASSES,
}
FORMAT_TAXONOMY = "common"


class TaxonomyError(DatasetError):
    """A taxonomy file or a dataset pair that cannot be mapped; the message names the file or the class."""


def taxonomy_names() -> list[str]:
    return sorted(p.name[:-5] for p in files("encseg").joinpath("resources/taxonomy").iterdir()
                  if p.name.endswith(".yaml"))


@cache
def load_taxonomy(name: str) -> dict[str, Any]:
    """Parse and validate ``resources/taxonomy/<name>.yaml`` (class names checked against each dataset)."""
    res = files("encseg").joinpath(f"resources/taxonomy/{name}.yaml")
    if not res.is_file():
        raise TaxonomyError(f"unknown taxonomy {name!r} (packaged: {', '.join(taxonomy_names())})")
    data = yaml.safe_load(res.read_text()) or {}
    if data.get("match") == "by_name":
        return data
    aliases = data.get("aliases") or {}
    seen: dict[tuple[str, str], str] = {}
    for shared, members in (data.get("classes") or {}).items():
        for dataset, names in members.items():
            known = FORMAT_CLASSES.get(dataset)
            if known is None:
                raise TaxonomyError(f"taxonomy {name}: class {shared!r} names unknown dataset {dataset!r}")
            for n in names:
                if n not in known:
                    raise TaxonomyError(f"taxonomy {name}: {dataset} has no class {n!r} (in {shared!r})")
                if (dataset, n) in seen:
                    raise TaxonomyError(f"taxonomy {name}: {dataset} class {n!r} is in both {seen[dataset, n]!r} "
                                        f"and {shared!r}")
                seen[dataset, n] = shared
    for alias, target in aliases.items():
        if FORMAT_CLASSES.get(alias) != FORMAT_CLASSES.get(target):
            raise TaxonomyError(f"taxonomy {name}: alias {alias} -> {target} needs identical class lists")
    return data


def _side(name: str, classes: Sequence[str] | None) -> tuple[str, tuple[str, ...]]:
    """(taxonomy, class list) of one side."""
    if name in FORMAT_CLASSES:
        if classes is not None and tuple(classes) != FORMAT_CLASSES[name]:
            raise TaxonomyError(f"classes given for {name!r} differ from the {name} class list")
        return FORMAT_TAXONOMY, FORMAT_CLASSES[name]
    if classes is None:
        raise TaxonomyError(f"{name!r} is not a dataset format ({', '.join(FORMAT_CLASSES)}); pass its class list")
    load_taxonomy(name)
    return name, tuple(classes)


def _lut(mapping: dict[int, int]) -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for train_id, shared_id in mapping.items():
        lut[train_id] = shared_id
    return lut


def shared_space(train_name: str, eval_name: str, train_classes: Sequence[str] | None = None,
                 eval_classes: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(lut_train, lut_eval, names)``: see the module docstring. ``lut[train_id]`` is the shared id."""
    tax_a, cls_a = _side(train_name, train_classes)
    tax_b, cls_b = _side(eval_name, eval_classes)
    if cls_a == cls_b:
        ident = _lut({i: i for i in range(len(cls_a))})
        return ident, ident.copy(), list(cls_a)
    if tax_a != tax_b:
        raise TaxonomyError(f"{train_name!r} (taxonomy {tax_a}) and {eval_name!r} (taxonomy {tax_b}) share no "
                            "label space")
    tax = load_taxonomy(tax_a)
    if tax.get("match") == "by_name":
        names = [c for c in cls_a if c in set(cls_b)]
        map_a = {cls_a.index(n): j for j, n in enumerate(names)}
        map_b = {cls_b.index(n): j for j, n in enumerate(names)}
    else:
        aliases = tax.get("aliases") or {}
        key_a, key_b = aliases.get(train_name, train_name), aliases.get(eval_name, eval_name)
        names, map_a, map_b = [], {}, {}
        for shared, members in tax["classes"].items():
            if members.get(key_a) and members.get(key_b):
                j = len(names)
                names.append(shared)
                map_a.update({cls_a.index(n): j for n in members[key_a]})
                map_b.update({cls_b.index(n): j for n in members[key_b]})
    if not names:
        raise TaxonomyError(f"{train_name!r} and {eval_name!r} share no class in taxonomy {tax_a}")
    return _lut(map_a), _lut(map_b), names


# ------------------------------------------------------------------------------------ dataset configs
def dataset_taxonomy(ds: DatasetConfig) -> str | None:
    """The taxonomy a dataset maps into: its config's ``taxonomy``, else (folder format) the ``taxonomy`` of
    its ``dataset.yaml`` (synthetic datasets write ``synthetic``), else ``common`` for the real formats."""
    if ds.taxonomy:
        return ds.taxonomy
    if ds.format == "folder":
        try:
            return read_descriptor(ds.root).get("taxonomy")
        except FileNotFoundError:
            return "synthetic" if ds.synthetic is not None else None
    return FORMAT_TAXONOMY if ds.format in FORMAT_CLASSES else None


def _space_name(fmt: str, taxonomy: str | None) -> str | None:
    """The name ``shared_space`` knows a dataset by: a real format in the common taxonomy goes by its format
    (its class list is fixed); any other dataset by its taxonomy file."""
    if fmt in FORMAT_CLASSES and taxonomy in (None, FORMAT_TAXONOMY):
        return fmt
    return taxonomy


def cross_dataset_luts(train_ds: DatasetConfig, eval_ds: DatasetConfig, train_classes, eval_classes,
                       train_taxonomy: str | None = None):
    """``(lut_pred, lut_gt, scored class names, cross record)`` for scoring a model of ``train_ds`` on ``eval_ds``.

    Identical class lists need no tables (``None, None``). ``cross`` is None only for the training dataset
    itself. ``train_taxonomy`` stands in for the training dataset's taxonomy when its files are not here
    (``model.json`` records it).
    """
    same_dataset = train_ds.display_name == eval_ds.display_name and list(train_classes) == list(eval_classes)
    if list(train_classes) == list(eval_classes):
        cross = None if same_dataset else {"train_dataset": train_ds.display_name,
                                           "shared_classes": list(train_classes)}
        return None, None, list(train_classes), cross
    tax_t = train_ds.taxonomy or train_taxonomy or dataset_taxonomy(train_ds)
    tax_e = dataset_taxonomy(eval_ds)
    name_t, name_e = _space_name(train_ds.format, tax_t), _space_name(eval_ds.format, tax_e)
    missing = [d.display_name for d, n in ((train_ds, name_t), (eval_ds, name_e)) if n is None]
    if missing:
        raise TaxonomyError(f"datasets {train_ds.display_name} and {eval_ds.display_name} have different classes "
                            f"and {', '.join(missing)} names no taxonomy: set `taxonomy:` in its dataset config "
                            f"(e.g. synthetic) to score in a shared label space")
    lut_t, lut_e, names = shared_space(name_t, name_e, train_classes=list(train_classes),
                                       eval_classes=list(eval_classes))
    cross = {"train_dataset": train_ds.display_name, "shared_classes": list(names)}
    return np.asarray(lut_t), np.asarray(lut_e), list(names), cross
