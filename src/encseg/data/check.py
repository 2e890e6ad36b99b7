"""``encseg data check``: read every image/mask pair of a dataset and report what would break or bias a run.

Full check (per split): missing partner files (an image without its mask, a mask without its image),
undecodable or truncated images and masks, image/mask size mismatch, multi-channel (RGB) masks, label values
that are neither a class nor ignore; then the number of pairs and the pixel share of every class.
Fast check (``fast=True``, run by training before its first step): existence, and sizes and mask modes read
from the file headers (``PIL.Image.open(...).size`` decodes no pixels).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from encseg.config import DatasetConfig
from encseg.config_io import read_yaml, validate
from encseg.data.formats import build_dataset
from encseg.data.formats.base import IGNORE_INDEX, INDEX_MODES, DatasetError, SegDataset
from encseg.errors import MissingFileError

MAX_LISTED = 20


class DataCheckError(DatasetError):
    """A dataset failed ``data check``; the message names the first offending files."""


@dataclass
class Problem:
    kind: str  # missing_mask, missing_image, undecodable_image, undecodable_mask, size_mismatch,
    # multichannel_mask, bad_labels, split
    path: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class CheckReport:
    dataset: str
    fast: bool
    pairs: dict[str, int] = field(default_factory=dict)  # split -> number of image/mask pairs
    problems: list[Problem] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    class_pixels: dict[str, int] = field(default_factory=dict)  # summed over the checked splits (full check)
    ignored_pixels: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def offending_files(self) -> list[str]:
        return list(dict.fromkeys(p.path for p in self.problems))

    def format(self) -> str:
        lines = [f"dataset {self.dataset} ({'fast' if self.fast else 'full'} check)"]
        lines += [f"  {split}: {n} pairs" for split, n in self.pairs.items()]
        if self.problems:
            kinds = Counter(p.kind for p in self.problems)
            lines.append(f"FAILED: {len(self.problems)} problem(s) in {len(self.offending_files())} file(s): "
                         + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
            lines += [f"  {p}" for p in self.problems[:MAX_LISTED]]
            if len(self.problems) > MAX_LISTED:
                lines.append(f"  ... and {len(self.problems) - MAX_LISTED} more")
        else:
            lines.append("OK")
        total = sum(self.class_pixels.values()) + self.ignored_pixels
        if total:
            lines.append("pixel share per class (absent classes marked !):")
            for name, n in self.class_pixels.items():
                lines.append(f"  {'!' if n == 0 else ' '} {name:<24} {100 * n / total:7.3f}%")
            lines.append(f"    {'ignore (255)':<24} {100 * self.ignored_pixels / total:7.3f}%")
        return "\n".join(lines)

    def raise_if_errors(self) -> None:
        if self.problems:
            listed = "\n  ".join(str(p) for p in self.problems[:MAX_LISTED])
            raise DataCheckError(f"data check of {self.dataset} failed with {len(self.problems)} problem(s):\n"
                                 f"  {listed}")


def load_dataset_config(path: str | Path) -> DatasetConfig:
    """A dataset-config YAML (top level is a ``DatasetConfig``) or a ``folder``-format directory."""
    path = Path(path)
    if path.is_dir():
        return DatasetConfig(format="folder", root=path)
    if not path.exists():
        raise MissingFileError(f"no dataset config or folder dataset at {path}")
    return validate(DatasetConfig, read_yaml(path), str(path))


def _header(path: Path) -> tuple[tuple[int, int], str]:
    with Image.open(path) as im:
        return im.size, im.mode


def _decode(path: Path) -> tuple[tuple[int, int], str, np.ndarray]:
    with Image.open(path) as im:
        im.load()  # raises on truncated or corrupt data
        return im.size, im.mode, np.asarray(im)


def _check_pair(ds: SegDataset, i: int, fast: bool, report: CheckReport, counts: np.ndarray) -> None:
    img, mask = ds.files[i]
    missing = [(kind, p) for kind, p in (("missing_image", img), ("missing_mask", mask)) if not p.is_file()]
    for kind, p in missing:
        partner = mask if p == img else img
        report.problems.append(Problem(kind, str(p), f"partner of {partner.name}"))
    if missing:
        return
    sizes = {}
    for kind, p in (("image", img), ("mask", mask)):
        try:
            size, mode, arr = (*_header(p), None) if fast else _decode(p)
        except Exception as e:  # any decoder failure is a finding, never a crash of the check
            report.problems.append(Problem(f"undecodable_{kind}", str(p), f"{type(e).__name__}: {e}"))
            return
        sizes[kind] = size
        if kind == "mask":
            if mode not in INDEX_MODES:
                report.problems.append(Problem("multichannel_mask", str(p), f"mode {mode}, expected label indices"))
                return
            raw = arr
    if sizes["image"] != sizes["mask"]:
        report.problems.append(Problem("size_mismatch", str(img), f"image {sizes['image']} vs mask {sizes['mask']}"))
    if fast:
        return
    try:
        train = ds.convert_raw(raw, i)
    except DatasetError as e:
        report.problems.append(Problem("bad_labels", str(mask), str(e).split(": ", 1)[-1]))
        return
    valid = train[train != IGNORE_INDEX]
    counts[: len(ds.classes)] += np.bincount(valid.ravel(), minlength=len(ds.classes))[: len(ds.classes)]
    report.ignored_pixels += int(train.size - valid.size)


def check_split(ds: SegDataset, report: CheckReport, fast: bool, label: str | None = None) -> None:
    """Add one dataset (split or subset view) to ``report``."""
    report.pairs[label or ds.split] = len(ds)
    report.classes = list(ds.classes)
    counts = np.zeros(len(ds.classes), dtype=np.int64)
    for i in range(len(ds)):
        _check_pair(ds, i, fast, report, counts)
    if not fast:
        report.problems += [Problem("missing_image", str(p), "mask without an image") for p in ds.orphans]
        for name, n in zip(ds.classes, counts, strict=True):
            report.class_pixels[name] = report.class_pixels.get(name, 0) + int(n)


def check_dataset(cfg_or_path: DatasetConfig | SegDataset | str | Path, split: str | None = None,
                  fast: bool = False) -> CheckReport:
    """Check one split (``split``), or the train and val splits of a config when ``split`` is None.

    ``cfg_or_path``: a ``DatasetConfig``, a dataset-config YAML, a ``folder``-format directory, or an already
    built ``SegDataset`` (e.g. the training subset), which is checked as it is.
    """
    if isinstance(cfg_or_path, SegDataset):
        report = CheckReport(dataset=f"{cfg_or_path.format_name} at {cfg_or_path.root}", fast=fast)
        check_split(cfg_or_path, report, fast)
        return report
    cfg = cfg_or_path if isinstance(cfg_or_path, DatasetConfig) else load_dataset_config(cfg_or_path)
    report = CheckReport(dataset=f"{cfg.display_name} at {cfg.root}", fast=fast)
    for s in [split] if split else list(dict.fromkeys([cfg.train_split, cfg.val_split])):
        try:
            ds = build_dataset(cfg, s)
        except (DatasetError, FileNotFoundError) as e:
            report.problems.append(Problem("split", s, str(e)))
            continue
        check_split(ds, report, fast)
    return report


def run_check_cli(path: str | Path, split: str | None = None, fast: bool = False) -> int:
    """Print the report; exit code 0 when clean, 1 when any problem was found."""
    report = check_dataset(path, split=split, fast=fast)
    print(report.format())
    return 0 if report.ok else 1
