"""The LightningModule: training/validation steps and the optimiser. It computes and logs; it writes nothing.

The model is a plain ``Segmenter`` (usable without Lightning); data, checkpoints, history and evaluation
files are handled by ``engine.train`` and its callbacks. What they need from a step reaches them explicitly:
each training step returns its loss terms as detached device tensors (``outputs["terms"]`` in
``on_train_batch_end``; a callback reads them as numbers only on the steps it logs), and each validation puts its
metrics and confusion matrix into the ``ValidationResult`` the module was constructed with.

No step waits for the device: the finiteness of the loss is checked for all steps since the last check at once
(``LossWatch``), before every logged step, validation and checkpoint, so a non-finite loss still fails the run
with the step, terms and files where it first appeared, and no checkpoint ever holds its weights.

Validation is inference: predictions and the confusion matrix. The dev loss is computed only when asked
(``val_loss``: ``eval.val_loss`` or a criterion that reads it), from the same forward (``Segmenter.scores_and_loss``)
when the protocol is a plain whole-image one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import lightning as L
import numpy as np
import torch

from encseg.config import EvalConfig, RegimeConfig, TrainConfig
from encseg.engine.evaluate import as_groups, predict_scores
from encseg.engine.losswatch import LossWatch, NonFiniteLossError
from encseg.engine.metrics import ConfusionMatrix, metrics_from_confusion, validation_record
from encseg.models.regimes import param_groups
from encseg.models.segmenter import Segmenter


def warmup_poly_factor(step: int, total: int, warmup: int, warmup_ratio: float, power: float) -> float:
    """LR multiplier: linear warm-up from ``warmup_ratio`` to 1 over ``warmup`` steps, then poly decay to 0
    (mmseg's PolyLR with eta_min 0, counted over the whole schedule as mmseg does)."""
    step = min(step, total)
    poly = (1.0 - step / max(1, total)) ** power
    if warmup > 0 and step < warmup:
        k = warmup_ratio + (1.0 - warmup_ratio) * step / warmup
        return k * poly
    return poly


@dataclass
class ValidationResult:
    """The latest validation (all ranks summed), shared by the module that fills it and the callbacks that
    write it out. ``metrics``: ``val_miou, val_macc, val_aacc, val_fwiou, val_loss``."""

    metrics: dict[str, float] = field(default_factory=dict)
    confusion: np.ndarray | None = None


__all__ = ["NonFiniteLossError", "SegmentationModule", "ValidationResult", "adamw_kernel", "warmup_poly_factor"]


class SegmentationModule(L.LightningModule):
    def __init__(self, segmenter: Segmenter, train_cfg: TrainConfig, regime: RegimeConfig, eval_cfg: EvalConfig,
                 class_names: list[str], total_steps: int, crop_size: int,
                 validation: ValidationResult | None = None, val_loss: bool = False, log_every: int = 50):
        super().__init__()
        self.segmenter = segmenter
        self.train_cfg = train_cfg
        self.regime = regime
        self.eval_cfg = eval_cfg
        self.class_names = list(class_names)
        self.total_steps = int(total_steps)
        self.crop_size = crop_size
        self.val_confusion = ConfusionMatrix(len(class_names))
        self._val_loss_sum = 0.0
        self._val_loss_n = 0
        self.validation = validation if validation is not None else ValidationResult()
        self.val_loss = val_loss
        self.log_every = log_every
        self.loss_watch = LossWatch()
        self.lr_factor = None  # set by engine.train for budget "converge" (a schedule without a known length)

    # ------------------------------------------------------------------------------------------ train
    def training_step(self, batch, batch_idx):
        losses = self.segmenter.loss(batch["image"], batch["mask"])
        total = losses["loss"]
        terms = {k: v.detach() for k, v in losses.items()}
        self.loss_watch.add(self.global_step, self.current_epoch, terms, batch.get("path", []))
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=batch["image"].shape[0])
        return {"loss": total, "terms": terms}

    def on_before_optimizer_step(self, optimizer) -> None:
        step = self.global_step + 1  # the step this update makes: checked before the callbacks log it
        if step == 1 or step % self.log_every == 0:
            self.loss_watch.check()

    def on_save_checkpoint(self, checkpoint) -> None:
        self.loss_watch.check()  # a checkpoint never holds weights trained on a non-finite loss

    def on_train_end(self) -> None:
        self.loss_watch.check()

    # ------------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self):
        self.loss_watch.check()
        self.val_confusion.reset()
        self._val_loss_sum = 0.0
        self._val_loss_n = 0

    def validation_step(self, batch, batch_idx):
        for group in as_groups(batch):  # groups of one image size (loaders.collate_by_size)
            images, target = group["image"], group["target"]
            scores, loss = self._predict(images, group["mask"])
            if tuple(scores.shape[-2:]) != tuple(target.shape[-2:]):
                scores = torch.nn.functional.interpolate(scores, size=tuple(target.shape[-2:]), mode="bilinear",
                                                         align_corners=False)
            self.val_confusion.update(scores.argmax(1), target)
            if loss is not None and torch.isfinite(loss):
                self._val_loss_sum += float(loss) * images.shape[0]
                self._val_loss_n += images.shape[0]

    def _predict(self, images, masks):
        """Class scores at the input size under the eval protocol, and the dev loss when asked (else None).
        The loss's point sampling runs on a forked RNG so validating does not change the training's random
        stream (resume reproducibility)."""
        e = self.eval_cfg
        if not self.val_loss:
            return predict_scores(self.segmenter, images, e, self.crop_size), None
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            if e.mode == "whole" and not e.flip and list(e.scales) == [1.0]:
                scores, losses = self.segmenter.scores_and_loss(images, masks)
                return scores, losses["loss"]
            with torch.no_grad():  # a TTA or sliding-window protocol: the loss needs its own forward
                return predict_scores(self.segmenter, images, e, self.crop_size), \
                    self.segmenter.loss(images, masks)["loss"]

    def on_validation_epoch_end(self):
        cm = self.val_confusion.compute().cpu().numpy()  # summed over ranks by torchmetrics
        m = metrics_from_confusion(cm, self.class_names)
        loss_sum = torch.tensor([self._val_loss_sum, float(self._val_loss_n)], device=self.device)
        if self.trainer.world_size > 1:
            loss_sum = self.trainer.strategy.reduce(loss_sum, reduce_op="sum")
        val_loss = float(loss_sum[0] / loss_sum[1]) if loss_sum[1] > 0 else math.nan
        self.validation.metrics = validation_record(m, val_loss)
        self.validation.confusion = cm
        # the same value on every rank (already reduced), so no sync_dist needed for checkpoint monitoring
        self.log("val/miou", _nan_to(m["miou"], 0.0), prog_bar=True, sync_dist=False)
        if self.val_loss:
            self.log("val/loss", _nan_to(val_loss, 0.0), sync_dist=False)

    # -------------------------------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        t = self.train_cfg
        groups = param_groups(self.segmenter, self.regime, lr=t.lr, weight_decay=t.weight_decay)
        opt = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay,
                                **adamw_kernel(self.device))
        total, warmup = self.total_steps, t.warmup_iters

        def factor(step: int) -> float:
            return warmup_poly_factor(step, total, warmup, t.warmup_ratio, t.poly_power)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor or factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


def adamw_kernel(device: torch.device) -> dict[str, bool]:
    """AdamW's implementation: the fused kernel on CUDA (one launch for all tensors); ``foreach`` elsewhere (one
    multi-tensor update; torch picks it only on CUDA by default, and on CPU the per-tensor loop costs ~10% of a
    small model's step). The CPU choice is fixed: CPU runs stay bit-identical."""
    return {"fused": True} if device.type == "cuda" else {"foreach": True}


def _nan_to(x: float, default: float) -> float:
    return default if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)
