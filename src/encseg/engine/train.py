"""One run: one encoder, one seed, one fraction of one dataset -> a complete run directory.

``train(cfg, runs_root)`` is idempotent: a finished run (``DONE``) is returned as is, a partial one resumes
from ``checkpoints/last.ckpt`` (an interrupted run repeats at most the steps since its last checkpoint), and
a failure is recorded in ``FAILED`` before the error propagates.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from encseg.config import ConfigError, RunConfig, dump_config, load_run_config
from encseg.engine.callbacks import AtomicCheckpointIO, ConvergeStop, History, PlainProgress
from encseg.engine.convergence import Criterion
from encseg.engine.loaders import dev_dataset, eval_dataset, eval_loader, train_dataset, train_loader
from encseg.engine.module import SegmentationModule
from encseg.engine.rundir import (
    RunDir,
    atomic_write_json,
    atomic_write_text,
    config_diff,
    finish_env,
    resolve_runs_root,
    run_id,
    write_env,
)

log = logging.getLogger("encseg")


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage().lower()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropAdverts())


def is_rank_zero() -> bool:
    """Rank before the trainer exists (torchrun: RANK; SLURM: SLURM_PROCID; Lightning's launcher: LOCAL/NODE_RANK)."""
    if "RANK" in os.environ:
        return os.environ["RANK"] == "0"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return os.environ["SLURM_PROCID"] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def _check_same_config(rd: RunDir, cfg: RunConfig) -> None:
    if not rd.config_path.is_file():
        return
    diffs = config_diff(rd.read_config(), cfg)
    if diffs:
        raise ConfigError(f"{rd.path} already holds a run with a different config ({', '.join(diffs[:10])}); "
                          f"use another runs root or `name`, or delete the directory to start over")


def precision_for(cfg: RunConfig, accelerator: str) -> str:
    if cfg.train.precision != "auto":
        return {"32": "32-true"}.get(cfg.train.precision, cfg.train.precision)
    # bf16 autocast on GPUs; the Mask2Former matcher and losses run in fp32 inside the head
    return "bf16-mixed" if accelerator in ("gpu", "cuda") else "32-true"


def _accelerator(cfg: RunConfig) -> str:
    a = cfg.train.accelerator
    if a == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return a


class _Data(L.LightningDataModule):
    """Builds the loaders once the strategy knows this process's rank."""

    def __init__(self, cfg: RunConfig, train_ds, val_ds):
        super().__init__()
        self.cfg, self.train_ds, self.val_ds = cfg, train_ds, val_ds

    def train_dataloader(self):
        t = self.trainer
        loader = train_loader(self.train_ds, self.cfg.data, self.cfg.seed, t.global_rank, t.world_size)
        loader.resume_at(t.global_step, self.cfg.train.accumulate)  # 0 on a fresh run
        return loader

    def val_dataloader(self):
        t = self.trainer
        return eval_loader(self.val_ds, self.cfg.eval.batch_size, self.cfg.data.num_workers,
                           t.global_rank, t.world_size)


def train(cfg: RunConfig, runs_root: str | Path, argv: list[str] | None = None) -> Path:
    runs_root = Path(runs_root)
    cfg = resolve_runs_root(cfg, runs_root)
    rd = RunDir(runs_root / run_id(cfg))
    if rd.is_done():
        log.info("%s is done; skipping", rd.path)
        return rd.path
    rank0 = is_rank_zero()
    if rank0:
        rd.path.mkdir(parents=True, exist_ok=True)
        _check_same_config(rd, cfg)
        rd.clear_failed()
        rd.write_config(cfg)
    try:
        _train(cfg, rd, argv if argv is not None else sys.argv, rank0)
    except Exception as e:
        if rank0:
            rd.mark_failed(e)
        raise
    return rd.path


def _train(cfg: RunConfig, rd: RunDir, argv: list[str], rank0: bool) -> None:
    from encseg.data.check import check_dataset
    from encseg.models.regimes import apply_regime
    from encseg.models.segmenter import build_segmenter

    t0 = time.time()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    accelerator = _accelerator(cfg)
    if rank0:
        write_env(rd, argv)

    # fail on bad data before any model is built (existence, decodable headers, sizes)
    if cfg.data.check:
        for split in (cfg.data.dataset.train_split, cfg.data.dataset.val_split):
            check_dataset(cfg.data.dataset, split=split, fast=True).raise_if_errors()
        # cross-dataset evaluations run after training: a missing folder must fail now, not hours later
        for ds in cfg.eval.datasets:
            check_dataset(ds, split=ds.val_split, fast=True).raise_if_errors()

    from encseg.data.formats import build_dataset
    full = build_dataset(cfg.data.dataset, cfg.data.dataset.train_split)
    classes = list(full.classes)
    img_size = cfg.model.encoder.img_size or cfg.data.crop_size
    seg = build_segmenter(cfg.model, num_classes=len(classes), img_size=img_size)
    apply_regime(seg, cfg.model.regime)
    mean, std = seg.encoder.mean, seg.encoder.std

    train_ds, idx = train_dataset(full, cfg.data, mean, std, cfg.seed)
    dev_ds, dev_idx = dev_dataset(full, cfg.data, mean, std)
    val_ds = eval_dataset(cfg.data.dataset, cfg.data, mean, std)
    if rank0:
        atomic_write_text(rd.subset_path, "\n".join(full.relative_path(i) for i in idx) + "\n")
        atomic_write_text(rd.path / "dev_subset.txt", "".join(f"{full.relative_path(i)}\n" for i in dev_idx))
        from encseg.data.subsets import class_coverage
        atomic_write_json(rd.path / "subset.json", {
            "fraction": cfg.data.fraction, "subset_seed": cfg.data.subset_seed, "num_images": len(idx),
            "num_images_full": len(full), "dev_size": len(dev_idx), "num_images_pool": len(full) - len(dev_idx),
            "coverage": class_coverage(full, idx)})

    world = (cfg.train.devices if isinstance(cfg.train.devices, int) else max(1, torch.cuda.device_count())) \
        * cfg.train.num_nodes
    batches_per_epoch = max(1, len(train_ds) // (cfg.data.batch_size * world)) \
        if len(train_ds) >= cfg.data.batch_size * world else 1
    steps_per_epoch = max(1, batches_per_epoch // cfg.train.accumulate)
    if cfg.train.budget in ("iters", "converge"):
        total_steps = cfg.train.max_iters
        val_kw = dict(val_check_interval=cfg.train.val_every * cfg.train.accumulate, check_val_every_n_epoch=None)
    else:
        total_steps = cfg.train.max_epochs * steps_per_epoch
        val_kw = dict(check_val_every_n_epoch=cfg.train.val_every)

    module = SegmentationModule(seg, cfg.train, cfg.model.regime, cfg.eval, classes, total_steps, cfg.data.crop_size)
    module.val_confusion_path = rd.eval_dir / "val_confusion_last.npy"
    stop = None
    if cfg.train.budget == "converge":
        stop = ConvergeStop(Criterion.from_config(cfg.train), cfg.train.warmup_iters, cfg.train.warmup_ratio)
        module.lr_factor = lambda step: stop.lr_factor(step)  # a plain function: LambdaLR does not pickle it
    history = History(rd.history_path, cfg.train.log_every, steps_per_epoch)
    best = ModelCheckpoint(dirpath=rd.checkpoints, filename="best", monitor="val/miou", mode="max", save_top_k=1,
                           save_last=False, enable_version_counter=False, auto_insert_metric_name=False)
    last = ModelCheckpoint(dirpath=rd.checkpoints, filename="last", save_top_k=0, save_last=True,
                           every_n_train_steps=cfg.train.checkpoint_every, enable_version_counter=False)
    show_bar = {"on": True, "off": False}.get(cfg.logging.progress_bar, sys.stderr.isatty())
    callbacks = [history, best, last] + ([stop] if stop else [])
    if not show_bar:
        callbacks.append(PlainProgress(cfg.train.log_every, total_steps))

    trainer = L.Trainer(
        accelerator=accelerator, devices=cfg.train.devices, num_nodes=cfg.train.num_nodes,
        strategy="ddp" if world > 1 else "auto", precision=precision_for(cfg, accelerator),
        max_steps=total_steps, max_epochs=-1 if cfg.train.budget == "iters" else cfg.train.max_epochs,
        accumulate_grad_batches=cfg.train.accumulate,
        gradient_clip_val=cfg.train.grad_clip, gradient_clip_algorithm="norm",
        deterministic=(True if accelerator == "cpu" else "warn") if cfg.deterministic else None,
        callbacks=callbacks, logger=_loggers(cfg, rd), plugins=[AtomicCheckpointIO()],
        enable_progress_bar=show_bar, enable_model_summary=False, use_distributed_sampler=False,
        num_sanity_val_steps=1, log_every_n_steps=cfg.train.log_every, default_root_dir=str(rd.path),
        **val_kw,
    )
    if cfg.train.compile:
        seg.encoder.vit.compile()
    ckpt = rd.last_ckpt if rd.last_ckpt.is_file() else None
    if ckpt is not None and rank0:
        log.info("resuming %s from %s", rd.path.name, ckpt)
    with warnings.catch_warnings():
        # Lightning warns that few workers are used / that the val loader is not shuffled: both are deliberate
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*The number of training batches.*")
        # validation during training watches the dev split; the reported splits are scored once, in finalize
        trainer.fit(module, datamodule=_Data(cfg, train_ds, dev_ds or val_ds), ckpt_path=ckpt)
    if not trainer.is_global_zero:
        return
    from encseg.engine.finalize import finalize_run
    finalize_run(cfg, rd, trainer, module, history, classes, val_ds, t0, best_path=Path(best.best_model_path or ""),
                 dev_ds=dev_ds, converge_state=stop.state if stop else None)
    finish_env(rd)
    rd.mark_done()


def _loggers(cfg: RunConfig, rd: RunDir) -> list:
    from lightning.pytorch.loggers import CSVLogger
    out = [CSVLogger(save_dir=str(rd.path), name="logs", version="")]
    lg = cfg.logging
    if lg.tensorboard:
        from lightning.pytorch.loggers import TensorBoardLogger
        out.append(TensorBoardLogger(save_dir=str(rd.path), name="tensorboard", version=""))
    if lg.wandb is not None:
        from lightning.pytorch.loggers import WandbLogger
        out.append(WandbLogger(save_dir=str(rd.path), name=rd.path.name, **lg.wandb))
    if lg.mlflow is not None:
        from lightning.pytorch.loggers import MLFlowLogger
        out.append(MLFlowLogger(run_name=rd.path.name, **lg.mlflow))
    return out


def train_cli(config: str, overrides: list[str], runs_root: str = "runs", print_config: bool = False) -> int:
    cfg = load_run_config(config, overrides)
    if print_config:
        print(dump_config(cfg), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = train(cfg, runs_root)
    if not is_rank_zero():
        return 0
    summary = RunDir(path).summary_path
    if summary.is_file():
        import json
        s = json.loads(summary.read_text())
        print(f"{path}: mIoU {s.get('miou', math.nan):.4f} on {s.get('train_dataset')} "
              f"({s.get('steps')} steps, {s.get('train_time_s', math.nan):.0f} s)")
    else:
        print(path)
    return 0
