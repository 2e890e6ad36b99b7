"""Write run directories in the engine's contract format (docs/architecture.md "Run directory"), no training.

Used by the study tests (aggregation, statistics, report, and the launcher's skip/resume logic) to build
studies with known numbers in milliseconds. Everything is written with the engine's own ``RunDir`` and
``run_id``, so the layout and the run ids match real runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from encseg.atomic import atomic_save_npy, atomic_save_npz, atomic_write_json, atomic_write_text
from encseg.config import RunConfig
from encseg.config_io import load_run_config
from encseg.engine.rundir import RunDir, run_id

CLASSES = ["background", "square", "circle", "triangle"]


def make_config(encoder: str = "random", regime: str = "finetune", train_dataset: str = "synth_a",
                fraction: float = 1.0, seed: int = 0, subset_seed: int = 0, encoder_name: str = "vit_test",
                weights: str | None = None, max_iters: int = 100, name: str | None = None) -> RunConfig:
    """A valid RunConfig for one study cell; the dataset root does not need to exist."""
    return load_run_config(data={
        "name": name,
        "tags": {"encoder": encoder},
        "seed": seed,
        "data": {"dataset": {"name": train_dataset, "format": "folder",
                             "root": f"/nonexistent/{train_dataset}"},
                 "fraction": fraction, "subset_seed": subset_seed, "crop_size": 64, "base_size": 64,
                 "batch_size": 4, "eval_size": 64},
        "model": {"encoder": {"name": encoder_name, "weights": weights},
                  "regime": {"mode": regime}},
        "train": {"max_iters": max_iters, "val_every": 10},
    })


def pooled_areas(miou: float, images: int = 20, shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-image (intersection, union) of 2 classes, union 1000 per image, whose pooled mIoU is exactly ``miou``
    (to 3 decimals); ``shift`` rolls the per-image pattern, so two runs differ image by image."""
    pattern = np.roll(np.tile([30, -30, 10, -20, 20, -10], images)[:images], shift)
    pattern[-1] -= pattern.sum()  # the offsets sum to 0: the pooled IoU is exact
    base = round(miou * 1000)
    return np.stack([base + pattern, base + np.roll(pattern, 1)], axis=1), np.full((images, 2), 1000)


@dataclass
class FakeEval:
    """One ``eval/<dataset>.json``; unset metrics derive from ``miou`` so every field is filled."""

    miou: float
    macc: float | None = None
    aacc: float | None = None
    fwiou: float | None = None
    classes: list[str] = field(default_factory=lambda: list(CLASSES))
    per_class_iou: dict[str, float | None] | None = None  # default: miou + symmetric offsets (mean = miou)
    per_image_miou: list[float | None] | None = None
    confusion: np.ndarray | None = None  # default: diagonal-heavy counts; False-y to skip writing it
    write_confusion: bool = True
    areas: tuple[np.ndarray, np.ndarray] | None = None  # per-image (intersection, union); None: no _areas.npz
    cross: dict | None = None
    protocol: dict = field(default_factory=lambda: {"mode": "whole", "crop": 64, "stride": None,
                                                     "flip": False, "scales": [1.0], "eval_size": 64})

    def per_class(self) -> dict[str, float | None]:
        if self.per_class_iou is not None:
            return self.per_class_iou
        n = len(self.classes)
        offsets = np.linspace(-0.1, 0.1, n) if n > 1 else np.zeros(1)
        return {c: float(self.miou + o) for c, o in zip(self.classes, offsets, strict=True)}

    def confusion_matrix(self) -> np.ndarray:
        if self.confusion is not None:
            return np.asarray(self.confusion)
        n = len(self.classes)
        return (np.full((n, n), 10) + np.eye(n, dtype=int) * int(1000 * self.miou)).astype(np.int64)


def default_summary(cfg: RunConfig, rid: str, **overrides) -> dict:
    summary = {
        "run_id": rid, "encoder": cfg.tags.get("encoder"), "encoder_name": cfg.model.encoder.name,
        "regime": cfg.model.regime.label, "train_dataset": cfg.data.dataset.display_name,
        "fraction": cfg.data.fraction, "seed": cfg.seed, "subset_seed": cfg.data.subset_seed, "steps": 100,
        "train_time_s": 60.0, "epochs_to_converge": 5.0, "steps_to_converge": 50, "time_to_converge_s": 30.0,
        "params_total": 5_000_000, "params_trainable": 5_000_000, "params_encoder": 3_000_000,
        "params_neck": 500_000, "params_head": 1_500_000, "gflops": 1.5, "infer_ms_per_image": 12.0,
        "infer_p90_ms": 14.0, "images_per_s": 80.0, "peak_mem_mb": None,
        # convergence record (CONTRACT: issue 10); a converged run unless a test says otherwise
        "converged": True, "converged_iter": 50, "iters_trained": 100, "epochs_trained": 10.0,
        "train_wall_s": 60.0, "budget": cfg.train.budget, "max_iters": cfg.train.max_iters,
        "criterion": {"metric": "dev_miou", "patience": 5, "min_delta": 0.005, "loss_min_delta": 0.01,
                      "anneal_fraction": 0.2, "min_iters": 0, "val_every": 10},
    }
    summary.update(overrides)
    return summary


def write_history(rd: RunDir, steps: int = 40, val_every: int = 10, start_loss: float = 3.0,
                  seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    lines = ["step,epoch,time_s,lr,loss,loss_mask,val_miou,val_macc,val_aacc,val_fwiou,val_loss"]
    for step in range(1, steps + 1):
        loss = start_loss * np.exp(-step / steps) + 0.05 * rng.random()
        lines.append(f"{step},{step // 10},{step * 0.5:.2f},0.001,{loss:.4f},{loss / 2:.4f},,,,,")
        if step % val_every == 0:
            v = 0.3 + 0.4 * step / steps
            lines.append(f"{step},{step // 10},{step * 0.5:.2f},,,,{v:.4f},{v:.4f},{v:.4f},{v:.4f},1.0")
    atomic_write_text(rd.history_path, "\n".join(lines) + "\n")


def write_run(runs_root: str | Path, cfg: RunConfig, state: str = "done",
              evals: dict[str, FakeEval] | None = None, summary: dict | None = None, history: bool = True,
              error: str = "RuntimeError: CUDA out of memory") -> Path:
    """Write one run directory; ``state`` is ``done`` (DONE marker), ``failed`` (FAILED) or ``partial``.

    ``evals`` maps eval dataset name -> ``FakeEval``; default: the train dataset with mIoU 0.5. A partial run
    gets a config and history only (as if killed mid-training); a failed run also gets its FAILED marker in
    the engine's format (timestamp line, error line, traceback).
    """
    rd = RunDir(Path(runs_root) / run_id(cfg))
    rd.write_config(cfg)
    if history:
        write_history(rd, seed=cfg.seed)
    if state == "failed":
        trace = f"Traceback (most recent call last):\n  File \"train.py\", line 1, in <module>\n{error}\n"
        atomic_write_text(rd.failed_path, f"2025-01-01T00:00:00+00:00\n{error}\n\n{trace}")
        return rd.path
    if state == "partial":
        return rd.path
    if state != "done":
        raise ValueError(f"state must be done, failed or partial, got {state!r}")
    evals = evals if evals is not None else {cfg.data.dataset.display_name: FakeEval(0.5)}
    for name, ev in evals.items():
        metrics = {"miou": ev.miou, "macc": ev.macc if ev.macc is not None else ev.miou + 0.05,
                   "aacc": ev.aacc if ev.aacc is not None else ev.miou + 0.1,
                   "fwiou": ev.fwiou if ev.fwiou is not None else ev.miou + 0.02,
                   "per_class_iou": ev.per_class(), "per_class_acc": ev.per_class()}
        atomic_write_json(rd.eval_json(name), {
            "dataset": name, "split": "val", "num_images": len(ev.per_image_miou or []) or 8,
            "classes": ev.classes, "protocol": ev.protocol, "metrics": metrics,
            "per_image_miou": ev.per_image_miou or [], "cross": ev.cross})
        if ev.write_confusion:
            atomic_save_npy(rd.confusion_npy(name), ev.confusion_matrix())
        if ev.areas is not None:
            atomic_save_npz(rd.image_areas_npz(name), intersection=ev.areas[0], union=ev.areas[1])
    atomic_write_json(rd.summary_path, summary if summary is not None else default_summary(cfg, rd.name))
    rd.mark_done()
    return rd.path
