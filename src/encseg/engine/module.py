"""The LightningModule: training/validation steps and the optimiser. It computes and logs; it writes nothing.

The model is a plain ``Segmenter`` (usable without Lightning); data, checkpoints, history and evaluation
files are handled by ``engine.train`` and its callbacks. What they need from a step reaches them explicitly:
each training step returns its loss terms (``outputs["terms"]`` in ``on_train_batch_end``), and each validation
puts its metrics and confusion matrix into the ``ValidationResult`` the module was constructed with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import lightning as L
import numpy as np
import torch

from encseg.config import EvalConfig, RegimeConfig, TrainConfig
from encseg.engine.evaluate import predict_scores
from encseg.engine.metrics import ConfusionMatrix, metrics_from_confusion, validation_record
from encseg.errors import EncsegError
from encseg.models.regimes import param_groups
from encseg.models.segmenter import Segmenter


class NonFiniteLossError(EncsegError, FloatingPointError):
    """A NaN/inf training loss: the message names the step, the loss terms and the batch's files."""


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


class SegmentationModule(L.LightningModule):
    def __init__(self, segmenter: Segmenter, train_cfg: TrainConfig, regime: RegimeConfig, eval_cfg: EvalConfig,
                 class_names: list[str], total_steps: int, crop_size: int,
                 validation: ValidationResult | None = None):
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
        self.lr_factor = None  # set by engine.train for budget "converge" (a schedule without a known length)

    # ------------------------------------------------------------------------------------------ train
    def training_step(self, batch, batch_idx):
        losses = self.segmenter.loss(batch["image"], batch["mask"])
        total = losses["loss"]
        if not torch.isfinite(total).all():
            terms = {k: float(v.detach()) for k, v in losses.items()}
            files = list(batch.get("path", []))
            raise NonFiniteLossError(
                f"non-finite training loss at step {self.global_step} (epoch {self.current_epoch}): "
                f"terms {terms}; batch files {files}. Lower train.lr, check the labels of these files "
                f"(`encseg data check`), or use precision '32'.")
        bs = batch["image"].shape[0]
        self.log("train/loss", total.detach(), prog_bar=True, batch_size=bs)
        return {"loss": total, "terms": {k: float(v.detach()) for k, v in losses.items()}}

    # ------------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self):
        self.val_confusion.reset()
        self._val_loss_sum = 0.0
        self._val_loss_n = 0

    def validation_step(self, batch, batch_idx):
        images, masks, target = batch["image"], batch["mask"], batch["target"]
        scores = predict_scores(self.segmenter, images, self.eval_cfg, self.crop_size,
                                out_size=tuple(target.shape[-2:]))
        self.val_confusion.update(scores.argmax(1), target)
        # the validation loss is a curve for the report, not a selection criterion. Its point sampling runs on
        # a forked RNG so validating does not change the training's random stream (resume reproducibility)
        devices = [images.device] if images.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            loss = self.segmenter.loss(images, masks)["loss"]
        if torch.isfinite(loss):
            self._val_loss_sum += float(loss) * images.shape[0]
            self._val_loss_n += images.shape[0]

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
        self.log("val/loss", _nan_to(val_loss, 0.0), sync_dist=False)

    # -------------------------------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        t = self.train_cfg
        groups = param_groups(self.segmenter, self.regime, lr=t.lr, weight_decay=t.weight_decay)
        # foreach: one fused update over all tensors (torch picks it only on CUDA by default; on CPU the
        # per-tensor loop costs ~10% of a small model's step)
        opt = torch.optim.AdamW(groups, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay, foreach=True)
        total, warmup = self.total_steps, t.warmup_iters

        def factor(step: int) -> float:
            return warmup_poly_factor(step, total, warmup, t.warmup_ratio, t.poly_power)

        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_factor or factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}


def _nan_to(x: float, default: float) -> float:
    return default if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)
