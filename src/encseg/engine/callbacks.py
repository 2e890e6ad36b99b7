"""Lightning callbacks and plugins of a run: history.csv, the last validation's confusion matrix, plain-text
progress, atomic checkpoints, the convergence stop."""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from encseg.atomic import atomic_save_npy, atomic_write, atomic_write_text
from encseg.engine.convergence import Criterion, observe, should_stop
from encseg.engine.convergence import State as ConvergeState
from encseg.engine.convergence import lr_factor as converge_lr_factor
from encseg.engine.logs import PROGRESS
from encseg.engine.module import ValidationResult

_progress = logging.getLogger(PROGRESS)

VAL_COLUMNS = ["val_miou", "val_macc", "val_aacc", "val_fwiou", "val_loss"]


class History(L.Callback):
    """Collects train rows every ``log_every`` steps and a row per validation; rewrites history.csv.

    The rows live in the checkpoint (``state_dict``), so a resumed run drops the rows logged after its last
    checkpoint and writes them again as it re-trains those steps: the file never holds a step twice.
    ``time_s`` is training wall time summed over all attempts of the run.
    """

    def __init__(self, path: Path, log_every: int, steps_per_epoch: int, validation: ValidationResult):
        self.path = Path(path)
        self.validation = validation
        self.log_every = log_every
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.rows: list[dict[str, Any]] = []
        self.elapsed_before = 0.0
        self._start = time.monotonic()
        self._last_logged = -1

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self._start

    def state_dict(self) -> dict[str, Any]:
        # the RNG state travels with the rows: a resumed run continues the same random stream (point sampling)
        state = {"rows": [dict(r) for r in self.rows], "elapsed": self.elapsed(), "rng": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state.get("rows", [])]
        self.elapsed_before = float(state.get("elapsed", 0.0))
        self._start = time.monotonic()
        self._last_logged = max((r["step"] for r in self.rows), default=-1)
        self._pending_rng = (state.get("rng"), state.get("cuda_rng"))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # restored here, not at load time, so the resumed run's sanity check cannot shift the stream
        rng = getattr(self, "_pending_rng", None)
        if rng is not None:
            self._pending_rng = None
            if rng[0] is not None:
                torch.set_rng_state(rng[0])
            if rng[1] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng[1])

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.monotonic()

    def _epoch(self, step: int) -> float:
        return step / self.steps_per_epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._last_logged or step % self.log_every and step != 1:
            return
        self._last_logged = step
        row: dict[str, Any] = {"step": step, "epoch": round(self._epoch(step), 4), "time_s": round(self.elapsed(), 3),
                               "lr": trainer.optimizers[0].param_groups[0]["lr"]}
        for k, v in outputs["terms"].items():  # device tensors: read here, on the logged steps only
            row[k if k == "loss" else (k if k.startswith("loss_") else f"loss_{k}")] = float(v)
        self.rows.append(row)
        if trainer.is_global_zero and (step % (self.log_every * 10) == 0):
            self.write()

    def add_validation(self, step: int, metrics: dict[str, float]) -> None:
        row = {"step": step, "epoch": round(self._epoch(step), 4), "time_s": round(self.elapsed(), 3)}
        row.update({k: metrics.get(k, math.nan) for k in VAL_COLUMNS})
        self.rows.append(row)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        self.add_validation(trainer.global_step, self.validation.metrics)
        if trainer.is_global_zero:
            self.write()

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.write()

    def write(self) -> None:
        if not self.rows:
            return
        cols: list[str] = ["step", "epoch", "time_s", "lr", "loss"]
        for r in self.rows:
            cols += [k for k in r if k not in cols and k not in VAL_COLUMNS]
        cols += VAL_COLUMNS
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, restval="")
        w.writeheader()
        for r in sorted(self.rows, key=lambda r: (r["step"], "val_miou" in r)):
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
        atomic_write_text(self.path, buf.getvalue())


class ValidationConfusion(L.Callback):
    """Writes each validation's confusion matrix exactly as validation saw it (all ranks summed) to ``path``;
    the DDP tests check it against a single-process evaluation."""

    def __init__(self, path: Path, validation: ValidationResult):
        self.path, self.validation = Path(path), validation

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and not trainer.sanity_checking and self.validation.confusion is not None:
            atomic_save_npy(self.path, self.validation.confusion)


class PlainProgress(L.Callback):
    """One ``encseg.progress`` record every ``every`` steps and one per validation.

    The records reach ``train.log`` always and the console unless ``console`` is False (a tqdm bar is shown
    there instead); their numbers travel as record attributes for a console that draws its own bars.
    ``stop_step`` (``budget: converge``) returns the step the run will stop at once its criterion has fired, or
    None before: until then ``total_steps`` is only the cap, and the line says so ("step 75/<=1500", "eta <=").
    """

    def __init__(self, every: int, total_steps: int, validation: ValidationResult, console: bool = True,
                 stop_step: Callable[[], int | None] | None = None):
        self.every, self.total, self.validation, self.console = every, total_steps, validation, console
        self.stop_step = stop_step
        self._t0 = time.monotonic()
        self._s0 = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self._t0, self._s0 = time.monotonic(), trainer.global_step

    def _end(self) -> tuple[int, str]:
        """(the last step, "" when known or "<=" when it is only the cap)."""
        if self.stop_step is None:
            return self.total, ""
        end = self.stop_step()
        return (self.total, "<=") if end is None else (min(end, self.total), "")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step % self.every:
            return
        rate = (step - self._s0) / max(1e-9, time.monotonic() - self._t0)
        total, bound = self._end()
        eta = (total - step) / rate if rate > 0 else math.nan
        loss = float(outputs["terms"].get("loss", math.nan))
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        _progress.info("step %d/%s%d  loss %.4f  lr %.3g  %.2f it/s  eta %s%.1f min", step, bound, total, loss, lr,
                       rate, bound, eta / 60,
                       extra={"kind": "step", "step": step, "total": total, "loss": loss, "rate": rate,
                              "eta_s": eta, "console": self.console})

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = self.validation.metrics
        miou = m.get("val_miou", math.nan)
        loss = m.get("val_loss", math.nan)  # measured only when asked (eval.val_loss)
        _progress.info("val @ step %d: mIoU %.4f  mAcc %.4f%s", trainer.global_step, miou,
                       m.get("val_macc", math.nan), "" if math.isnan(loss) else f"  loss {loss:.4f}",
                       extra={"kind": "val", "step": trainer.global_step, "total": self._end()[0], "miou": miou,
                              "console": self.console})


class LastCheckpoint(Checkpoint):
    """``checkpoints/last.ckpt``, what a killed run resumes from: after every validation, and every ``every``
    optimiser steps when set.

    Lightning's ``ModelCheckpoint(save_top_k=0, save_last=True)`` writes ``last`` at a validation only beside a
    top-k save (since 2.6), so a run without ``train.checkpoint_every`` had no ``last.ckpt`` until its end. As a
    ``Checkpoint`` it runs after the other callbacks, so the state it saves includes this validation's best."""

    def __init__(self, path: Path, every: int | None):
        self.path, self.every, self._saved = Path(path), every, -1

    def _save(self, trainer) -> None:
        if trainer.global_step != self._saved and not trainer.sanity_checking:
            trainer.save_checkpoint(self.path)  # every rank calls it; the strategy writes once
            self._saved = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every and trainer.global_step > 0 and trainer.global_step % self.every == 0:
            self._save(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._save(trainer)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints to a temporary file and renames it, so a kill mid-write leaves the previous
    ``last.ckpt`` intact; loads with ``weights_only=True`` (checkpoints hold tensors and plain values only)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        atomic_write(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class ConvergeStop(L.Callback):
    """``train.budget: converge``: feeds every dev validation to the criterion (``engine.convergence``) and stops
    the run once its anneal is over. The criterion's state travels in the checkpoint, so a resumed run makes the
    same decisions; ``lr_factor`` is the LR schedule the module's scheduler follows."""

    def __init__(self, criterion: Criterion, validation: ValidationResult, warmup: int = 0,
                 warmup_ratio: float = 1e-6):
        self.criterion, self.validation = criterion, validation
        self.warmup, self.warmup_ratio = warmup, warmup_ratio
        self.state = ConvergeState()

    def lr_factor(self, step: int) -> float:
        return converge_lr_factor(step, self.state, self.warmup, self.warmup_ratio)

    def stop_step(self) -> int | None:
        """The step this run stops at, known once the plateau is declared (else None)."""
        return self.state.anneal_end

    def state_dict(self) -> dict[str, Any]:
        return self.state.to_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.state = ConvergeState.from_dict(state)

    def on_train_start(self, trainer, pl_module) -> None:
        # a run killed after its final checkpoint but before finishing resumes here: nothing left to train
        if should_stop(self.state, trainer.global_step):
            trainer.should_stop = True

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        m = self.validation.metrics  # already reduced over ranks: every rank takes the same decision
        self.state = observe(self.state, self.criterion, trainer.global_step, m.get("val_miou"), m.get("val_loss"))
        if should_stop(self.state, trainer.global_step):
            trainer.should_stop = True
