"""How long a run trains, in optimiser steps: one rule for the trainer and the study planner.

Steps per epoch are those of the real training loader (``engine.loaders.steps_per_epoch``: each rank's share of
the images, its last incomplete batch dropped unless that share is under one batch, ``ceil(batches /
accumulate)`` optimiser steps). ``budget: iters`` trains ``max_iters`` steps; ``budget: epochs`` trains
``max_epochs`` x steps per epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from encseg.config import RunConfig, TrainConfig
from encseg.engine.loaders import steps_per_epoch


def world_size(train: TrainConfig) -> int:
    """Processes that train one run: ``devices`` per node (``auto``: the visible GPUs, at least 1) x nodes."""
    devices = train.devices if isinstance(train.devices, int) else max(1, torch.cuda.device_count())
    return devices * train.num_nodes


@dataclass
class Schedule:
    steps_per_epoch: int
    total_steps: int
    world_size: int
    val_kw: dict  # Lightning's validation interval arguments


def total_steps(cfg: RunConfig, n_images: int) -> int:
    """Optimiser steps of the whole run on ``n_images`` training images."""
    if cfg.train.budget == "iters":
        return cfg.train.max_iters
    world = world_size(cfg.train)
    return cfg.train.max_epochs * steps_per_epoch(n_images, cfg.data.batch_size, world, cfg.train.accumulate)


def schedule(cfg: RunConfig, n_images: int) -> Schedule:
    world = world_size(cfg.train)
    per_epoch = steps_per_epoch(n_images, cfg.data.batch_size, world, cfg.train.accumulate)
    if cfg.train.budget == "iters":
        # Lightning counts this interval in batches, the config in optimiser steps
        val_kw = dict(val_check_interval=cfg.train.val_every * cfg.train.accumulate, check_val_every_n_epoch=None)
    else:
        val_kw = dict(check_val_every_n_epoch=cfg.train.val_every)
    return Schedule(per_epoch, total_steps(cfg, n_images), world, val_kw)
