"""Scoring a segmenter on a dataset: whole / sliding-window inference, optional TTA, cross-dataset taxonomy.

Predictions are scored at the ground truth's original resolution (class scores are resized back, as
mmsegmentation does); pixels whose ground truth is 255 are ignored. Across datasets, both the prediction (in
the training dataset's classes) and the ground truth are mapped into the shared label space of
``encseg.data.taxonomy`` and only the shared classes are scored; the class list goes into the eval file.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from encseg.config import DataConfig, DatasetConfig, EvalConfig, read_yaml, validate
from encseg.engine.metrics import ConfusionMatrix, metrics_from_confusion, per_image_miou
from encseg.engine.rundir import RunDir, atomic_save_npy, atomic_write_json


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


def protocol(e: EvalConfig, data: DataConfig) -> dict:
    """The evaluation settings stored next to every number they produced."""
    return {"mode": e.mode, "crop": e.crop_size or data.crop_size,
            "stride": e.stride, "flip": e.flip, "scales": list(e.scales), "eval_size": data.eval_size,
            "resolution": "original ground truth"}


@torch.no_grad()
def predict_scores(segmenter, images: torch.Tensor, e: EvalConfig, crop_size: int,
                   out_size: tuple[int, int] | None = None) -> torch.Tensor:
    scores = segmenter.inference(images, mode=e.mode, crop=e.crop_size or crop_size, stride=e.stride,
                                 flip=e.flip, scales=tuple(e.scales))
    if out_size is not None and tuple(scores.shape[-2:]) != tuple(out_size):
        scores = F.interpolate(scores, size=out_size, mode="bilinear", align_corners=False)
    return scores


def _lut(lut: np.ndarray | None, device) -> torch.Tensor | None:
    return None if lut is None else torch.as_tensor(np.asarray(lut), dtype=torch.int64, device=device)


def _apply(lut: torch.Tensor | None, labels: torch.Tensor) -> torch.Tensor:
    if lut is None:
        return labels
    out = torch.full_like(labels, 255)
    valid = labels != 255
    out[valid] = lut[labels[valid]]
    return out


@torch.no_grad()
def evaluate(segmenter, loader, e: EvalConfig, crop_size: int, class_names: list[str], *, dataset: str,
             split: str, device: torch.device | str = "cpu", lut_pred=None, lut_gt=None,
             progress: bool = False) -> EvalResult:
    """Accumulate one dataset-level confusion matrix (and per-image mIoU) over ``loader``."""
    device = torch.device(device)
    segmenter.eval().to(device)
    n = len(class_names)
    # a single-process pass (after DDP training, only rank 0 evaluates): never wait for other ranks
    cm = ConfusionMatrix(n, sync_on_compute=False).to(device)
    lp, lg = _lut(lut_pred, device), _lut(lut_gt, device)
    per_image, files = [], []
    it = loader
    if progress:
        from tqdm import tqdm
        it = tqdm(loader, desc=f"eval {dataset}", leave=False, file=sys.stderr)
    for batch in it:
        images = batch["image"].to(device)
        target = batch["target"].to(device)
        pred = predict_scores(segmenter, images, e, crop_size, out_size=tuple(target.shape[-2:])).argmax(1)
        pred, target = _apply(lp, pred), _apply(lg, target)
        cm.update(pred, target)
        for p, t in zip(pred, target):
            per_image.append(per_image_miou(p, t, n))
        files.extend(batch.get("path", []))
    confusion = cm.compute().cpu().numpy()
    return EvalResult(dataset=dataset, split=split, classes=list(class_names), confusion=confusion,
                      metrics=metrics_from_confusion(confusion, class_names), per_image_miou=per_image,
                      files=files)


def write_eval(rundir: RunDir, result: EvalResult, proto: dict) -> Path:
    atomic_save_npy(rundir.confusion_npy(result.dataset), result.confusion)
    path = rundir.eval_json(result.dataset)
    atomic_write_json(path, {
        "dataset": result.dataset, "split": result.split, "num_images": len(result.per_image_miou),
        "classes": result.classes, "protocol": proto, "metrics": result.metrics,
        "per_image_miou": result.per_image_miou, "files": result.files, "cross": result.cross,
    })
    return path


def cross_dataset_luts(train_ds: DatasetConfig, eval_ds: DatasetConfig, train_classes, eval_classes):
    """LUTs into the shared label space, or (None, None, train classes) for the same label space."""
    same = (train_ds.taxonomy or train_ds.format) == (eval_ds.taxonomy or eval_ds.format) and \
        list(train_classes) == list(eval_classes)
    if same:
        return None, None, list(train_classes), None
    from encseg.data.taxonomy import shared_space
    lut_t, lut_e, names = shared_space(train_ds.taxonomy or train_ds.format, eval_ds.taxonomy or eval_ds.format,
                                       train_classes=list(train_classes), eval_classes=list(eval_classes))
    cross = {"train_dataset": train_ds.display_name, "shared_classes": list(names)}
    return np.asarray(lut_t), np.asarray(lut_e), list(names), cross


def evaluate_cli(run_dir: str, dataset_yaml: str, mode: str | None = None, tta: str = "",
                 split: str | None = None) -> int:
    """``encseg eval RUN_DIR --dataset CONFIG``: score a finished run on any dataset."""
    from encseg.engine.loaders import eval_dataset, eval_loader
    from encseg.models.segmenter import load_segmenter

    rd = RunDir(Path(run_dir))
    if not (rd.path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{rd.path}: no model.safetensors (is the run finished?)")
    cfg = rd.read_config()
    ds_cfg = validate(DatasetConfig, read_yaml(dataset_yaml), dataset_yaml)
    e = cfg.eval.model_copy()
    if mode:
        e.mode = mode
    parts = {p.strip() for p in tta.split(",") if p.strip()}
    unknown = parts - {"flip", "ms"}
    if unknown:
        raise ValueError(f"--tta: unknown {sorted(unknown)}; use a comma list of flip, ms")
    if "flip" in parts:
        e.flip = True
    if "ms" in parts:
        e.scales = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    seg, meta = load_segmenter(rd.path)
    classes = meta.get("classes") or [str(i) for i in range(seg.num_classes)]
    ds = eval_dataset(ds_cfg, cfg.data, seg.encoder.mean, seg.encoder.std, split)
    lut_p, lut_g, names, cross = cross_dataset_luts(cfg.data.dataset, ds_cfg, classes, ds.dataset.classes)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    res = evaluate(seg, eval_loader(ds, e.batch_size, cfg.data.num_workers), e, cfg.data.crop_size, names,
                   dataset=ds_cfg.display_name, split=split or ds_cfg.val_split, device=device,
                   lut_pred=lut_p, lut_gt=lut_g, progress=sys.stderr.isatty())
    res.cross = cross
    path = write_eval(rd, res, protocol(e, cfg.data))
    m = res.metrics
    print(f"{ds_cfg.display_name}: mIoU {m['miou']:.4f}  mAcc {m['macc']:.4f}  aAcc {m['aacc']:.4f}  "
          f"({len(res.per_image_miou)} images, {len(names)} classes) -> {path}")
    return 0
