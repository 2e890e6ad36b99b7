"""Scoring a segmenter on a dataset: whole / sliding-window inference, optional TTA, cross-dataset taxonomy.

Predictions are scored at the ground truth's original resolution (class scores are resized back, as
mmsegmentation does); pixels whose ground truth is 255 are ignored.

Across datasets, both the prediction (the training dataset's train ids) and the ground truth (the evaluated
dataset's train ids) are mapped into the shared label space of ``encseg.data.taxonomy``. Ground-truth pixels of
a class outside the shared space are ignored. A pixel of a shared class that the model gives to one of its
*training* classes outside the shared space is an error, not ignored (as in mmseg / MSeg, whose histograms drop
such predictions but keep the ground-truth pixel): those predictions go to one extra confusion column,
``NOT_SHARED``, that is listed last in ``classes`` but is never scored itself. The metrics, ``per_image_miou``
and ``cross.shared_classes`` cover the shared classes only.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from encseg.atomic import atomic_save_npy, atomic_save_npz, atomic_write_json
from encseg.config import DataConfig, DatasetConfig, EvalConfig
from encseg.config_io import read_yaml, validate
from encseg.data.formats.base import IGNORE_INDEX
from encseg.data.taxonomy import cross_dataset_luts
from encseg.engine.metrics import ConfusionMatrix, metrics_from_confusion, per_image_areas, per_image_miou
from encseg.engine.precision import autocast
from encseg.engine.precision import resolve as resolve_precision
from encseg.engine.rundir import RunDir
from encseg.errors import InputError, MissingFileError

NOT_SHARED = "(not shared)"  # the confusion column of predictions outside the shared label space
TTA_SCALES = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]  # ``--tta ms``: mmsegmentation's multi-scale ratios


@dataclass
class EvalResult:
    dataset: str
    split: str
    classes: list[str]
    confusion: np.ndarray
    metrics: dict
    per_image_miou: list[float] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    cross: dict | None = None
    image_areas: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # per batch (inter, union)


def protocol(e: EvalConfig, data: DataConfig, precision: str) -> dict:
    """The evaluation settings stored next to every number they produced (``precision``: ``engine.precision``)."""
    return {"mode": e.mode, "crop": e.crop_size or data.crop_size,
            "stride": e.stride, "flip": e.flip, "scales": list(e.scales), "eval_size": data.eval_size,
            "resolution": "original ground truth", "precision": precision}


@torch.no_grad()
def predict_scores(segmenter, images: torch.Tensor, e: EvalConfig, crop_size: int,
                   out_size: tuple[int, int] | None = None) -> torch.Tensor:
    scores = segmenter.inference(images, mode=e.mode, crop=e.crop_size or crop_size, stride=e.stride,
                                 flip=e.flip, scales=tuple(e.scales))
    if out_size is not None and tuple(scores.shape[-2:]) != tuple(out_size):
        scores = F.interpolate(scores, size=out_size, mode="bilinear", align_corners=False)
    return scores


def _index_map(lut, n_from: int, n_to: int, outside: int | None, what: str) -> torch.Tensor:
    """``lut[:n_from]`` as a tensor over 256 entries; ignore for a valid id becomes ``outside`` when given."""
    table = np.asarray(lut, dtype=np.int64)
    if table.ndim != 1 or len(table) < n_from:
        raise ValueError(f"{what} lookup table has shape {table.shape}, needs at least {n_from} entries")
    out = np.full(256, IGNORE_INDEX, dtype=np.int64)
    out[:n_from] = table[:n_from]
    bad = [int(v) for v in np.unique(out[:n_from]) if not (0 <= v < n_to or v == IGNORE_INDEX)]
    if bad:
        raise ValueError(f"{what} lookup table maps to {bad[:10]}, outside the {n_to} shared classes and "
                         f"{IGNORE_INDEX}")
    if outside is not None:
        out[:n_from][out[:n_from] == IGNORE_INDEX] = outside
    return torch.as_tensor(out)


def _scored_metrics(cm: np.ndarray, names: list[str], n_scored: int) -> dict:
    """Metrics over the first ``n_scored`` classes of ``cm``; a trailing NOT_SHARED column only adds errors.

    Its row is empty (no ground truth is ever outside the shared space), so its predictions count as false
    negatives of their ground-truth class; aAcc, mAcc and fwIoU are unaffected by leaving it out of the means.
    """
    m = metrics_from_confusion(cm, names)
    if n_scored == len(names):
        return m
    for key in ("per_class_iou", "per_class_acc"):
        m[key] = {k: v for k, v in list(m[key].items())[:n_scored]}
    ious = [v for v in m["per_class_iou"].values() if v is not None]
    m["miou"] = float(np.mean(ious)) if ious else math.nan
    m["num_classes"], m["valid_classes"] = n_scored, len(ious)
    return m


class _Confusion:
    """The dataset-level confusion matrix, its size fixed by the first scores seen (``NOT_SHARED`` column when a
    training class maps outside the shared space)."""

    def __init__(self, n_scored: int, lut_pred, lut_gt, device, dataset: str):
        self.n_scored, self.lut_pred, self.device, self.dataset = n_scored, lut_pred, device, dataset
        self.lg = None if lut_gt is None else _index_map(lut_gt, IGNORE_INDEX, n_scored, None,
                                                          "ground-truth").to(device)
        self.lp, self.cm, self.n = None, None, n_scored

    def _start(self, n_train: int) -> None:
        if self.lut_pred is not None:
            outside = bool((np.asarray(self.lut_pred)[:n_train] == IGNORE_INDEX).any())
            self.n = self.n_scored + int(outside)
            self.lp = _index_map(self.lut_pred, n_train, self.n_scored, self.n_scored if outside else None,
                                 "prediction").to(self.device)
        elif n_train != self.n_scored:
            raise ValueError(f"the model scores {n_train} classes but {self.n_scored} class names were given "
                             f"for {self.dataset}; pass lookup tables to score across label spaces")
        # a single-process pass (after DDP training, only rank 0 evaluates): never wait for other ranks
        self.cm = ConfusionMatrix(self.n, sync_on_compute=False).to(self.device)

    def update(self, scores: torch.Tensor, target: torch.Tensor) -> tuple[list[float], tuple[np.ndarray, np.ndarray]]:
        """Adds one group's predictions; returns their per-image mIoU and (intersection, union) areas."""
        if self.cm is None:
            self._start(scores.shape[1])
        pred = scores.argmax(1)
        if self.lp is not None:
            pred = self.lp[pred]
        if self.lg is not None:
            target = self.lg[target]
        self.cm.update(pred, target)
        return (per_image_miou(pred, target, self.n, n_scored=self.n_scored),
                per_image_areas(pred, target, self.n, n_scored=self.n_scored))


def as_groups(batch) -> list[dict]:
    """A loader batch as same-size groups: a ``collate_by_size`` list as it is, a plain batch dict as one group."""
    if isinstance(batch, dict):
        return [{**batch, "positions": list(range(len(batch["image"])))}]
    return list(batch)


@torch.no_grad()
def evaluate(segmenter, loader, e: EvalConfig, crop_size: int, class_names: list[str], *, dataset: str,
             split: str, device: torch.device | str = "cpu", lut_pred=None, lut_gt=None,
             progress: bool = False, precision: str = "32-true") -> EvalResult:
    """Accumulate one dataset-level confusion matrix (and per-image mIoU) over ``loader``.

    ``loader`` yields batches ``{"image": (B,3,H,W) normalised, "target": (B,H,W) train ids at the original size,
    "path": [...]}``, or lists of same-size groups of them (``loaders.collate_by_size``, each with its
    ``positions`` in the batch); the per-image lists and areas follow the loader's order. ``class_names`` are the
    scored classes: the training classes, or the shared classes when ``lut_pred`` (training train id -> shared
    id) and ``lut_gt`` (evaluated train id -> shared id) are given (255 = not shared). A training class outside
    the shared space adds the ``NOT_SHARED`` column. The forwards run under ``precision`` (``engine.precision``).
    """
    device = torch.device(device)
    segmenter.eval().to(device)
    conf = _Confusion(len(class_names), lut_pred, lut_gt, device, dataset)
    per_image, files, areas = [], [], []
    it = loader
    if progress:
        from tqdm import tqdm
        it = tqdm(loader, desc=f"eval {dataset}", leave=False, file=sys.stderr)
    for batch in it:
        groups = as_groups(batch)
        slots: list = [None] * sum(len(g["positions"]) for g in groups)
        for group in groups:
            target = group["target"].to(device, non_blocking=True)
            with autocast(precision, device):
                scores = predict_scores(segmenter, group["image"].to(device, non_blocking=True), e, crop_size,
                                        out_size=tuple(target.shape[-2:]))
            mious, (inter, union) = conf.update(scores.float(), target)
            paths = group.get("path") or [None] * len(group["positions"])
            for k, (pos, path) in enumerate(zip(group["positions"], paths, strict=True)):
                slots[pos] = (mious[k], inter[k], union[k], path)
        per_image.extend(s[0] for s in slots)
        areas.append((np.stack([s[1] for s in slots]), np.stack([s[2] for s in slots])))
        files.extend(s[3] for s in slots if s[3] is not None)
    if conf.cm is None:
        raise ValueError(f"no images to evaluate in {dataset} ({split})")
    confusion = conf.cm.compute().cpu().numpy()
    names = list(class_names) + [NOT_SHARED] * (conf.n - conf.n_scored)
    return EvalResult(dataset=dataset, split=split, classes=names, confusion=confusion,
                      metrics=_scored_metrics(confusion, names, conf.n_scored), per_image_miou=per_image,
                      files=files, image_areas=areas)


def write_eval(rundir: RunDir, result: EvalResult, proto: dict, path: Path | None = None) -> Path:
    """``eval/<dataset>.json`` + ``_confusion.npy`` + ``_areas.npz``, or ``path`` and its siblings."""
    if path is None:
        path, npy = rundir.eval_json(result.dataset), rundir.confusion_npy(result.dataset)
        npz = rundir.image_areas_npz(result.dataset)
    else:
        npy, npz = path.with_name(f"{path.stem}_confusion.npy"), path.with_name(f"{path.stem}_areas.npz")
    atomic_save_npy(npy, result.confusion)
    write_image_areas(npz, result)
    atomic_write_json(path, {
        "dataset": result.dataset, "split": result.split, "num_images": len(result.per_image_miou),
        "classes": result.classes, "protocol": proto, "metrics": result.metrics,
        "per_image_miou": result.per_image_miou, "files": result.files, "cross": result.cross,
    })
    return path


def write_image_areas(path: Path, result: EvalResult) -> Path | None:
    """``<dataset>_areas.npz``: ``intersection`` and ``union`` (images x scored classes, int64), in the order of
    ``files``; the study's image bootstrap recomputes dataset mIoU from them (docs/architecture.md)."""
    if not result.image_areas:
        return None
    inter = np.concatenate([a for a, _ in result.image_areas])
    union = np.concatenate([u for _, u in result.image_areas])
    return atomic_save_npz(path, intersection=inter, union=union)


# -------------------------------------------------------------------------------------------------- CLI
def cli_eval_config(base: EvalConfig, mode: str | None, tta: str) -> EvalConfig:
    """The run's eval settings with ``--mode`` and ``--tta flip,ms`` applied (validated)."""
    parts = [p.strip() for p in tta.split(",") if p.strip()]
    unknown = sorted(set(parts) - {"flip", "ms"})
    if unknown:
        raise InputError(f"--tta: unknown value(s) {unknown}; use a comma list of: flip, ms")
    update: dict = {}
    if mode:
        update["mode"] = mode
    if "flip" in parts:
        update["flip"] = True
    if "ms" in parts:
        update["scales"] = list(TTA_SCALES)
    return validate(EvalConfig, {**base.model_dump(), **update}, "eval (from the command line)")


def _eval_path(rd: RunDir, dataset: str, split: str, default_split: str, proto: dict, run_proto: dict) -> Path | None:
    """None (the standard ``eval/<dataset>.json``) when the protocol and split are the run's own; otherwise
    ``eval/extra/<dataset>__<split>__<mode>[_flip][_ms][_<precision>].json``, so that a study never mixes
    protocols (the precision tag only where it is not the run's)."""
    if split == default_split and proto == run_proto:
        return None
    tag = proto["mode"] + ("_flip" if proto["flip"] else "") + ("" if list(proto["scales"]) == [1.0] else "_ms")
    tag += "" if proto["precision"] == run_proto["precision"] else f"_{proto['precision']}"
    rd.eval_json(dataset)  # validates the name
    return rd.eval_dir / "extra" / f"{dataset}__{split}__{tag}.json"


def evaluate_cli(run_dir: str, dataset_yaml: str, mode: str | None = None, tta: str = "",
                 split: str | None = None, precision: str | None = None) -> int:
    """``encseg eval RUN_DIR --dataset CONFIG``: score a finished run on any dataset.

    With the run's own protocol (its mode, TTA and precision: ``train.precision`` on this device, or
    ``--precision``) and the dataset's val split the result is ``eval/<dataset>.json`` (what a study
    aggregates); another mode, TTA, precision or split goes to ``eval/extra/`` (see ``_eval_path``).
    """
    from encseg.data.formats import resolve_split
    from encseg.engine.loaders import eval_dataset, eval_loader
    from encseg.models.segmenter import load_segmenter

    rd = RunDir(Path(run_dir))
    if not (rd.path / "model.safetensors").is_file():
        raise MissingFileError(f"{rd.path}: no model.safetensors (is the run finished?)")
    cfg = rd.read_config()
    ds_cfg = validate(DatasetConfig, read_yaml(dataset_yaml), dataset_yaml)
    e = cli_eval_config(cfg.eval, mode, tta)
    seg, meta = load_segmenter(rd.path)
    classes = meta.get("classes") or [str(i) for i in range(seg.num_classes)]
    ds = eval_dataset(ds_cfg, cfg.data, seg.encoder.mean, seg.encoder.std, split)
    lut_p, lut_g, names, cross = cross_dataset_luts(cfg.data.dataset, ds_cfg, classes, ds.dataset.classes,
                                                    train_taxonomy=meta.get("taxonomy"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    run_prec = resolve_precision(cfg.train.precision, device)
    used_prec = resolve_precision(precision, device) if precision else run_prec
    used_split = resolve_split(ds_cfg, split or "val")
    res = evaluate(seg, eval_loader(ds, cfg.data.eval_batch_size, cfg.data.num_workers), e, cfg.data.crop_size,
                   names, dataset=ds_cfg.display_name, split=used_split, device=device,
                   lut_pred=lut_p, lut_gt=lut_g, progress=sys.stderr.isatty(), precision=used_prec)
    res.cross = cross
    proto = protocol(e, cfg.data, used_prec)
    out = _eval_path(rd, ds_cfg.display_name, used_split, ds_cfg.val_split, proto,
                     protocol(cfg.eval, cfg.data, run_prec))
    path = write_eval(rd, res, proto, out)
    if out is None:
        from encseg.engine.runplots import plot_confusion
        plot_confusion(res.confusion, res.classes, rd.plots_dir / f"confusion_{ds_cfg.display_name}.png")
    m = res.metrics
    print(f"{ds_cfg.display_name}: mIoU {m['miou']:.4f}  mAcc {m['macc']:.4f}  aAcc {m['aacc']:.4f}  "
          f"({len(res.per_image_miou)} images, {len(names)} classes) -> {path}")
    return 0
