"""One run: one encoder, one seed, one fraction of one dataset -> a complete run directory.

``train(cfg, runs_root)`` is idempotent: a finished run (``DONE``) is returned as is, a partial one resumes
from ``checkpoints/last.ckpt`` (an interrupted run repeats at most the steps since its last checkpoint), and
a failure is recorded in ``FAILED`` before the error propagates.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from encseg.atomic import atomic_write_json, atomic_write_text
from encseg.config import ConfigError, RunConfig
from encseg.config_io import dump_config, load_run_config
from encseg.engine import precision
from encseg.engine.callbacks import (
    AtomicCheckpointIO,
    ConvergeStop,
    History,
    LastCheckpoint,
    PlainProgress,
    ValidationConfusion,
)
from encseg.engine.compilation import compile_segmenter
from encseg.engine.convergence import Criterion
from encseg.engine.distributed import is_rank_zero, trainer_strategy
from encseg.engine.loaders import dev_dataset, eval_dataset, eval_loader, train_dataset, train_loader
from encseg.engine.logs import LOG_NAME, console_handler, run_log
from encseg.engine.module import SegmentationModule, ValidationResult
from encseg.engine.rundir import BATCH_SPLIT_KEYS, RunDir, config_diff, resolve_runs_root, result_diff, run_id
from encseg.engine.runenv import finish_env, write_env
from encseg.engine.schedule import Schedule, schedule
from encseg.errors import EncsegError, InputError

log = logging.getLogger("encseg")


class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage().lower()


_DROP_ADVERTS = _DropAdverts()


class ZeroStepsError(EncsegError, RuntimeError):
    """Training ended without a single optimiser step; the message compares batch size x processes to images."""


def resume_check(rd: RunDir, cfg: RunConfig) -> tuple[RunConfig | None, list[str]]:
    """The config stored in ``rd`` (None for a new run) and its operational changes as ``key: old -> new``
    lines; a change to anything that alters the result is refused, for a partial and a finished run alike."""
    if not rd.config_path.is_file():
        return None, []
    old = rd.read_config()
    changed = result_diff(old, cfg)
    if changed:
        kind = "finished run" if rd.is_done() else "run"
        raise ConfigError(f"{rd.path} already holds a {kind} with a different config ({', '.join(changed[:10])}); "
                          f"use another runs root or `name`, or delete the directory to start over")
    a, b = old.model_dump(mode="json"), cfg.model_dump(mode="json")
    return old, [f"{k}: {_at(a, k)!r} -> {_at(b, k)!r}" for k in config_diff(old, cfg)]


def _at(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def check_same_schedule(previous: RunConfig | None, cfg: RunConfig, n_images: int, sched: Schedule) -> None:
    """A resume over another batch split (processes x per-process batch) must keep the step schedule: the same
    steps per epoch and in all, so every step trains on the images it would have."""
    if previous is None or not set(config_diff(previous, cfg)) & set(BATCH_SPLIT_KEYS):
        return
    before = schedule(previous, n_images)
    if (before.steps_per_epoch, before.total_steps) != (sched.steps_per_epoch, sched.total_steps):
        raise ConfigError(f"resuming over another batch split ({', '.join(BATCH_SPLIT_KEYS)}) changes the step "
                          f"schedule ({before.steps_per_epoch} -> {sched.steps_per_epoch} steps per epoch, "
                          f"{before.total_steps} -> {sched.total_steps} in all) on {n_images} images; keep the "
                          "run's split or start a new run")


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
        loader = train_loader(self.train_ds, self.cfg.data, self.cfg.seed, t.global_rank, t.world_size,
                              self.cfg.train.accumulate)
        loader.resume_at(t.global_step, self.cfg.train.accumulate)  # 0 on a fresh run
        return loader

    def val_dataloader(self):
        t = self.trainer
        # persistent: validation runs many times, its workers stay up between runs
        return eval_loader(self.val_ds, self.cfg.data.eval_batch_size, self.cfg.data.num_workers,
                           t.global_rank, t.world_size, persistent=True)


def train(cfg: RunConfig, runs_root: str | Path, argv: list[str] | None = None) -> Path:
    runs_root = Path(runs_root)
    cfg = resolve_runs_root(cfg, runs_root)
    rd = RunDir(runs_root / run_id(cfg))
    rank0 = is_rank_zero()
    previous, changes = resume_check(rd, cfg) if rank0 else (None, [])
    if rd.is_done():
        log.info("%s is done; skipping", rd.path)
        return rd.path
    # Lightning advertises a logging service on every fit
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DROP_ADVERTS)
    if rank0:
        rd.path.mkdir(parents=True, exist_ok=True)
        rd.clear_failed()
        rd.write_config(cfg)
    # rank 0 owns the run directory; DDP peers keep their output on their own stderr
    with run_log(rd.path / LOG_NAME) if rank0 else contextlib.nullcontext():
        if changes:
            log.info("resuming with operational changes (the result does not depend on them): %s",
                     "; ".join(changes))
        try:
            _train(cfg, rd, argv if argv is not None else sys.argv, rank0, previous)
        except Exception as e:
            if rank0:
                log.error("run failed", exc_info=True)
                rd.mark_failed(e)
            raise
    return rd.path


def _train(cfg: RunConfig, rd: RunDir, argv: list[str], rank0: bool, previous: RunConfig | None = None) -> None:
    """The named steps of one run: check, build, record the subset, fit, and (rank 0) finalize."""
    t0 = time.time()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if rank0:
        write_env(rd, argv)
    check_data(cfg)
    full, seg = build_model(cfg)
    train_ds, idx = train_dataset(full, cfg.data, seg.encoder.mean, seg.encoder.std, cfg.seed)
    dev_ds, dev_idx = dev_dataset(full, cfg.data, seg.encoder.mean, seg.encoder.std)
    val_ds = eval_dataset(cfg.data.dataset, cfg.data, seg.encoder.mean, seg.encoder.std)
    if rank0:
        write_subset(rd, cfg, full, idx, dev_idx)
    sched = schedule(cfg, len(train_ds))
    check_same_schedule(previous, cfg, len(train_ds), sched)
    check_dev_split(len(dev_idx), sched.world_size)
    # validation during training watches the dev split; the reported splits are scored once, in finalize
    fitted = fit(cfg, rd, seg, list(full.classes), train_ds, dev_ds or val_ds, sched)
    check_trained(fitted.trainer, cfg, len(train_ds), sched)
    if not fitted.trainer.is_global_zero:
        return
    from encseg.engine.finalize import finalize_run
    finalize_run(cfg, rd, fitted.trainer, fitted.module, fitted.history, list(full.classes), val_ds, t0,
                 best_path=Path(fitted.best.best_model_path or ""), dev_ds=dev_ds,
                 converge_state=fitted.stop.state if fitted.stop else None)
    finish_env(rd)
    rd.mark_done()


def check_data(cfg: RunConfig) -> None:
    """Fail on bad data before any model is built (existence, decodable headers, sizes)."""
    from encseg.data.check import check_dataset

    if not cfg.data.check:
        return
    for split in (cfg.data.dataset.train_split, cfg.data.dataset.val_split):
        check_dataset(cfg.data.dataset, split=split, fast=True).raise_if_errors()
    # cross-dataset evaluations run after training: a missing folder must fail now, not hours later
    for ds in cfg.eval.datasets:
        check_dataset(ds, split=ds.val_split, fast=True).raise_if_errors()


def build_model(cfg: RunConfig):
    """The full train split and the segmenter for its classes (regime applied by ``build_segmenter``)."""
    from encseg.data.formats import build_dataset
    from encseg.models.segmenter import build_segmenter

    full = build_dataset(cfg.data.dataset, cfg.data.dataset.train_split)
    img_size = cfg.model.encoder.img_size or cfg.data.crop_size
    return full, build_segmenter(cfg.model, num_classes=len(full.classes), img_size=img_size, seed=cfg.seed)


def write_subset(rd: RunDir, cfg: RunConfig, full, idx: list[int], dev_idx: list[int]) -> None:
    """``subset.txt`` and ``dev_subset.txt`` (the chosen images, relative to the dataset root) and
    ``subset.json`` (sizes, coverage)."""
    from encseg.data.subsets import class_coverage

    atomic_write_text(rd.subset_path, "\n".join(full.relative_path(i) for i in idx) + "\n")
    atomic_write_text(rd.path / "dev_subset.txt", "".join(f"{full.relative_path(i)}\n" for i in dev_idx))
    atomic_write_json(rd.path / "subset.json", {
        "fraction": cfg.data.fraction, "subset_seed": cfg.data.subset_seed, "num_images": len(idx),
        "num_images_full": len(full), "dev_size": len(dev_idx), "num_images_pool": len(full) - len(dev_idx),
        "coverage": class_coverage(full, idx)})


@dataclass
class _Fitted:
    trainer: L.Trainer
    module: SegmentationModule
    history: History
    best: ModelCheckpoint
    stop: ConvergeStop | None


def fit(cfg: RunConfig, rd: RunDir, seg, classes: list[str], train_ds, val_ds, sched: Schedule) -> _Fitted:
    """Train (or resume from ``checkpoints/last.ckpt``) to the end of the schedule."""
    validation = ValidationResult()
    criterion = Criterion.from_config(cfg.train)
    # the dev loss costs the Mask2Former loss at every validation: only when it is reported or the rule reads it
    module = SegmentationModule(seg, cfg.train, cfg.model.regime, cfg.eval, classes, sched.total_steps,
                                cfg.data.crop_size, validation, val_loss=cfg.eval.val_loss or criterion.uses_loss,
                                log_every=cfg.train.log_every)
    stop = None
    if cfg.train.budget == "converge":
        stop = ConvergeStop(criterion, validation, cfg.train.warmup_iters, cfg.train.warmup_ratio)
        module.lr_factor = lambda step: stop.lr_factor(step)  # a plain function: LambdaLR does not pickle it
    history = History(rd.history_path, cfg.train.log_every, sched.steps_per_epoch, validation)
    best = ModelCheckpoint(dirpath=rd.checkpoints, filename="best", monitor="val/miou", mode="max", save_top_k=1,
                           save_last=False, enable_version_counter=False, auto_insert_metric_name=False)
    last = LastCheckpoint(rd.last_ckpt, cfg.train.checkpoint_every)
    show_bar = {"on": True, "off": False}.get(cfg.logging.progress_bar, sys.stderr.isatty())
    # progress lines always reach train.log; the console gets them only when it has no tqdm bar
    callbacks = [history, ValidationConfusion(rd.eval_dir / "val_confusion_last.npy", validation), best, last,
                 PlainProgress(cfg.train.log_every, sched.total_steps, validation, console=not show_bar,
                               stop_step=stop.stop_step if stop else None)]
    callbacks += [stop] if stop else []
    trainer = _trainer(cfg, rd, sched, callbacks, show_bar)
    if cfg.train.compile:
        compile_segmenter(seg)
    ckpt = rd.last_ckpt if rd.last_ckpt.is_file() else None
    if ckpt is not None and trainer.is_global_zero:
        log.info("resuming %s from %s", rd.path.name, ckpt)
    with warnings.catch_warnings():
        # Lightning warns that few workers are used / that the val loader is not shuffled: both are deliberate
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*The number of training batches.*")
        trainer.fit(module, datamodule=_Data(cfg, train_ds, val_ds), ckpt_path=ckpt)
    return _Fitted(trainer, module, history, best, stop)


def _trainer(cfg: RunConfig, rd: RunDir, sched: Schedule, callbacks: list, show_bar: bool) -> L.Trainer:
    accelerator = _accelerator(cfg)
    cuda = accelerator in ("gpu", "cuda")
    if cuda:
        precision.configure_cuda(cfg.train.tf32)
    return L.Trainer(
        accelerator=accelerator, devices=cfg.train.devices, num_nodes=cfg.train.num_nodes,
        strategy=trainer_strategy(cfg.train.strategy, sched.world_size, accelerator),
        precision=precision.resolve(cfg.train.precision, accelerator),
        # training crops have one size: let cuDNN pick its fastest kernels for it (not when deterministic)
        benchmark=cuda and not cfg.deterministic,
        max_steps=sched.total_steps, max_epochs=cfg.train.max_epochs if cfg.train.budget == "epochs" else -1,
        accumulate_grad_batches=cfg.train.accumulate,
        gradient_clip_val=cfg.train.grad_clip, gradient_clip_algorithm="norm",
        deterministic=(True if accelerator == "cpu" else "warn") if cfg.deterministic else None,
        callbacks=callbacks, logger=_loggers(cfg, rd), plugins=[AtomicCheckpointIO(), *_cluster_plugins()],
        enable_progress_bar=show_bar, enable_model_summary=False, use_distributed_sampler=False,
        num_sanity_val_steps=1, log_every_n_steps=cfg.train.log_every, default_root_dir=str(rd.path),
        **sched.val_kw,
    )


def check_dev_split(n_dev: int, world_size: int) -> None:
    """Every process validates its own share of the dev split, and Lightning refuses a rank with none."""
    if 0 < n_dev < world_size:
        raise InputError(f"data.dataset.dev_size: the dev split has {n_dev} image(s) for {world_size} processes; "
                         f"each process validates a share of it, so it needs at least {world_size} images "
                         "(a larger dev_size, or dev_size: 0 to validate on the val split)")


def check_trained(trainer: L.Trainer, cfg: RunConfig, n_images: int, sched: Schedule) -> None:
    """A run that made no optimiser step must not be scored and marked DONE as if it had trained."""
    if trainer.global_step > 0:
        return
    raise ZeroStepsError(
        f"training made 0 optimiser steps: {n_images} training image(s) shared by {sched.world_size} "
        f"process(es) is {math.ceil(n_images / sched.world_size)} per process, at data.batch_size "
        f"{cfg.data.batch_size} (x train.accumulate {cfg.train.accumulate}) the schedule has "
        f"{sched.steps_per_epoch} step(s) per epoch and {sched.total_steps} in all; use more images "
        f"(data.fraction), a smaller batch size or fewer processes")


def _cluster_plugins() -> list:
    """Lightning's SLURM environment (ranks from ``srun``) without its SIGUSR1 auto-requeue.

    A requeued run resumes from ``checkpoints/last.ckpt``, which every requeue path leaves in place (submitit's
    USR2 checkpoint-and-requeue, ``scontrol requeue``, a rerun of ``study run``); Lightning's own requeue would
    write a second, unused ``hpc_ckpt_*.ckpt`` and requeue the job a second time.
    """
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect() or not SLURMEnvironment.detect():  # Lightning's own precedence
        return []
    return [SLURMEnvironment(auto_requeue=False)]


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
    logging.getLogger().addHandler(console_handler())
    logging.getLogger("encseg").setLevel(logging.INFO)
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
