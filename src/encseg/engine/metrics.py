"""Segmentation metrics from one dataset-level confusion matrix.

Conventions (the same as mmsegmentation's ``IoUMetric``, ``mmseg/evaluation/metrics/iou_metric.py``):

- The confusion matrix ``cm`` is ``(C, C)`` int64, **rows = ground truth, columns = prediction**, summed over
  every pixel of every image of the split (never an average of per-image or per-rank scores).
- A pixel whose *ground truth* is ``ignore_index`` (255) is left out entirely, whatever was predicted there.
  Predictions are never masked anywhere else. A ground-truth value outside ``[0, C)`` other than the ignore
  value, or a prediction outside ``[0, C)``, raises ``ValueError`` (mmseg's ``torch.histc`` would silently
  drop such pixels).
- Per class ``c``: ``TP = cm[c, c]``, ``FN = row_c - TP``, ``FP = col_c - TP``;
  ``IoU_c = TP / (TP + FP + FN)`` and ``Acc_c = TP / (TP + FN)``.
- A class with neither ground-truth nor predicted pixels has ``IoU_c = NaN`` (0/0) and is left out of mIoU.
  A class that is predicted but has no ground-truth pixel has ``IoU_c = 0`` (``TP = 0``, union > 0): it
  *counts* in mIoU, exactly as in mmseg, so false positives of an absent class are penalised.
  ``Acc_c = NaN`` whenever the class has no ground-truth pixel (predicted or not), so mAcc only averages over
  classes present in the ground truth.
- ``mIoU = nanmean(IoU)``, ``mAcc = nanmean(Acc)``, ``aAcc = trace(cm) / cm.sum()``,
  ``fwIoU = sum_c freq_c * IoU_c`` over classes with a defined IoU, where ``freq_c = row_c / cm.sum()``
  (the ground-truth share; classes with undefined IoU have ``freq_c = 0``, so nothing is lost).

torchmetrics' ``MulticlassJaccardIndex`` agrees on ``average="macro"`` (it also drops classes with an empty
union), but with ``average=None`` it reports ``0`` instead of NaN for a class absent from both ground truth and
prediction (``zero_division=0``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics import Metric

from encseg.data.formats.base import IGNORE_INDEX

__all__ = ["ConfusionMatrix", "confusion_from_labels", "metrics_from_confusion", "per_image_areas", "per_image_miou"]


def _check_labels(preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> None:
    if preds.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(preds.shape)} != target shape {tuple(target.shape)}")
    for name, t in (("prediction", preds), ("target", target)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer class indices, got dtype {t.dtype}")
    bad_target = ((target < 0) | (target >= num_classes)) & (target != ignore_index)
    if bool(bad_target.any()):
        values = torch.unique(target[bad_target]).tolist()[:20]
        raise ValueError(
            f"target holds values {values} outside [0, {num_classes}) that are not the ignore index "
            f"{ignore_index}: the label conversion of the dataset is wrong or num_classes is too small"
        )
    bad_pred = (preds < 0) | (preds >= num_classes)
    if bool(bad_pred.any()):
        values = torch.unique(preds[bad_pred]).tolist()[:20]
        raise ValueError(f"prediction holds class indices {values} outside [0, {num_classes})")


def confusion_from_labels(preds: torch.Tensor, target: torch.Tensor, num_classes: int,
                          ignore_index: int = IGNORE_INDEX, per_image: bool = False) -> torch.Tensor:
    """Confusion matrix of label maps (rows = ground truth, cols = prediction), on the inputs' device.

    ``preds`` and ``target`` are integer tensors of equal shape; with ``per_image=True`` the first dimension is
    the image index and the result is ``(B, C, C)``, else ``(C, C)`` summed over everything.
    """
    _check_labels(preds, target, num_classes, ignore_index)
    keep = target != ignore_index
    c2 = num_classes * num_classes
    flat = target.long() * num_classes + preds.long()
    if per_image:
        batch = target.shape[0]
        offset = torch.arange(batch, device=target.device).view(-1, *([1] * (target.dim() - 1))) * c2
        flat = (flat + offset)[keep]
        return torch.bincount(flat, minlength=batch * c2).view(batch, num_classes, num_classes)
    return torch.bincount(flat[keep], minlength=c2).view(num_classes, num_classes)


class ConfusionMatrix(Metric):
    """Dataset-level confusion matrix accumulated on the metric's device.

    The state ``confmat`` is summed across DDP ranks on ``compute()``/``sync()`` (torchmetrics
    ``dist_reduce_fx="sum"``), so the metrics of a distributed evaluation come from one matrix over all images.
    ``compute()`` returns the ``(C, C)`` int64 matrix; ``metrics(class_names)`` the derived scores.
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    confmat: torch.Tensor

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, **kwargs):
        super().__init__(**kwargs)
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class index (num_classes={num_classes})")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.add_state("confmat", default=torch.zeros(num_classes, num_classes, dtype=torch.long),
                       dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and ground-truth label maps (``(B, H, W)`` integer tensors)."""
        self.confmat += confusion_from_labels(preds.to(self.confmat.device), target.to(self.confmat.device),
                                              self.num_classes, self.ignore_index)

    def compute(self) -> torch.Tensor:
        return self.confmat.clone()

    def metrics(self, class_names: Sequence[str] | None = None) -> dict:
        return metrics_from_confusion(self.compute().cpu().numpy(), class_names)


def _ratios(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    gt = cm.sum(axis=1)
    pred = cm.sum(axis=0)
    union = gt + pred - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    return iou, acc


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan


def metrics_from_confusion(cm: np.ndarray, class_names: Sequence[str] | None = None) -> dict:
    """Scores from a ``(C, C)`` confusion matrix (rows = ground truth); see the module docstring for the rules.

    Returns ``miou, macc, aacc, fwiou`` (floats in [0, 1], NaN when undefined), ``per_class_iou`` and
    ``per_class_acc`` (``{name: float | None}``, None where NaN), ``num_classes``, ``valid_classes`` (classes
    with a defined IoU, i.e. the ones averaged into mIoU) and ``pixels`` (the number of scored pixels).
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {cm.shape}")
    if np.issubdtype(cm.dtype, np.floating) and np.isnan(cm).any():
        raise ValueError("confusion matrix contains NaN")
    if (cm < 0).any():
        raise ValueError("confusion matrix contains negative counts")
    num_classes = cm.shape[0]
    names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a {num_classes}-class confusion matrix")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate class names: {sorted({n for n in names if names.count(n) > 1})}")

    iou, acc = _ratios(cm)
    total = float(cm.sum())
    freq = cm.sum(axis=1) / total if total > 0 else np.zeros(num_classes)
    defined = ~np.isnan(iou)
    return {
        "miou": _nanmean(iou),
        "macc": _nanmean(acc),
        "aacc": float(np.trace(cm) / total) if total > 0 else math.nan,
        "fwiou": float((freq[defined] * iou[defined]).sum()) if total > 0 else math.nan,
        "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou, strict=True)},
        "per_class_acc": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, acc, strict=True)},
        "num_classes": num_classes,
        "valid_classes": int(defined.sum()),
        "pixels": int(total),
    }


def validation_record(metrics: dict, loss: float = math.nan) -> dict[str, float]:
    """The ``val_*`` columns of a validation row of ``history.csv``, from ``metrics_from_confusion``'s scores."""
    return {"val_miou": metrics["miou"], "val_macc": metrics["macc"], "val_aacc": metrics["aacc"],
            "val_fwiou": metrics["fwiou"], "val_loss": loss}


def per_image_miou(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, num_classes: int,
                   ignore_index: int = IGNORE_INDEX, n_scored: int | None = None) -> float | list[float]:
    """mIoU of each image separately (same rules as the dataset-level score), for bootstrap intervals.

    A single ``(H, W)`` map gives a float; a batch ``(B, H, W)`` gives one float per image (computed in one
    batched bincount, cheaper than a loop). NaN for an image whose pixels are all ignored. ``n_scored``: only
    the first classes are averaged (a trailing cross-dataset ``NOT_SHARED`` column only adds errors).
    """
    pred_t = torch.as_tensor(pred)
    target_t = torch.as_tensor(target).to(pred_t.device)
    single = target_t.dim() == 2
    if single:
        pred_t, target_t = pred_t.unsqueeze(0), target_t.unsqueeze(0)
    if target_t.dim() != 3:
        raise ValueError(f"per_image_miou expects (B, H, W) or (H, W) maps, got shape {tuple(target_t.shape)}")
    cms = confusion_from_labels(pred_t, target_t, num_classes, ignore_index, per_image=True).double()
    k = num_classes if n_scored is None else n_scored
    tp = torch.diagonal(cms, dim1=1, dim2=2)[:, :k]
    union = cms.sum(dim=2)[:, :k] + cms.sum(dim=1)[:, :k] - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.nan)
    scores = torch.nanmean(iou, dim=1).cpu().tolist()
    return scores[0] if single else scores


def per_image_areas(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, num_classes: int,
                    ignore_index: int = IGNORE_INDEX, n_scored: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per image and scored class: (intersection, union) pixel counts, int64 arrays of shape (B, n_scored).

    Summed over any set of images they give that set's dataset-level IoU (``intersection / union``, undefined
    where the union is 0), which is what the study's image bootstrap resamples. ``n_scored`` as in
    ``per_image_miou``; a trailing ``NOT_SHARED`` column only adds to the unions of the classes it confuses.
    """
    pred_t = torch.as_tensor(pred)
    target_t = torch.as_tensor(target).to(pred_t.device)
    if target_t.dim() == 2:
        pred_t, target_t = pred_t.unsqueeze(0), target_t.unsqueeze(0)
    cms = confusion_from_labels(pred_t, target_t, num_classes, ignore_index, per_image=True)
    k = num_classes if n_scored is None else n_scored
    tp = torch.diagonal(cms, dim1=1, dim2=2)[:, :k]
    union = cms.sum(dim=2)[:, :k] + cms.sum(dim=1)[:, :k] - tp
    return tp.cpu().numpy().astype(np.int64), union.cpu().numpy().astype(np.int64)
