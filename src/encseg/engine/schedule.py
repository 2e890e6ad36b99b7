"""How long a run trains, in optimiser steps: one rule for the trainer and the study planner.

Steps per epoch are those of the real training loader (``engine.loaders.train_loader`` is built from the same
functions): each rank gets ``ceil(n / world)`` images and drops its last incomplete batch unless that share is
under one batch. With ``accumulate > 1`` an epoch is padded with batches drawn from the start of its order up to a
whole number of accumulation groups, so every optimiser step accumulates ``accumulate`` full batches and the
trainer's batch count is always ``accumulate`` x its step count (validation then falls on optimiser steps);
``ceil(batches / accumulate)`` steps an epoch. ``budget: iters`` trains ``max_iters`` steps; ``budget: epochs``
trains ``max_epochs`` x steps per epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from encseg.config import RunConfig, TrainConfig


def samples_per_rank(n: int, world_size: int) -> int:
    """Images of one rank's share of an epoch: ``ceil(n / world_size)``."""
    return math.ceil(n / world_size)


def drop_last(n: int, batch_size: int, world_size: int) -> bool:
    """Drop a rank's last incomplete batch, unless the rank's share is smaller than one batch (then it trains
    on that one short batch instead of none). Decided on what one rank sees, not on the whole dataset."""
    return samples_per_rank(n, world_size) >= batch_size


def _own_batches(n: int, batch_size: int, world_size: int) -> int:
    per_rank = samples_per_rank(n, world_size)
    return per_rank // batch_size if drop_last(n, batch_size, world_size) else math.ceil(per_rank / batch_size)


def batches_per_epoch(n: int, batch_size: int, world_size: int, accumulate: int = 1) -> int:
    """Length of each rank's train loader (``train_loader``): its share's batches, padded to whole accumulations."""
    return math.ceil(_own_batches(n, batch_size, world_size) / accumulate) * accumulate


def samples_per_epoch(n: int, batch_size: int, world_size: int, accumulate: int = 1) -> int:
    """What ``TrainSampler`` yields each rank per epoch: its share, or full batches up to the padded length."""
    padded = batches_per_epoch(n, batch_size, world_size, accumulate)
    if padded == _own_batches(n, batch_size, world_size):
        return samples_per_rank(n, world_size)
    return padded * batch_size


def steps_per_epoch(n: int, batch_size: int, world_size: int, accumulate: int) -> int:
    """Optimiser steps per epoch, ``ceil(batches / accumulate)``; the trainer and the study planner both count
    with this."""
    return batches_per_epoch(n, batch_size, world_size, accumulate) // accumulate


def world_size(train: TrainConfig) -> int:
    """Processes that train one run: ``devices`` per node (``auto``: the visible GPUs, at least 1) x nodes."""
    if isinstance(train.devices, int):
        return train.devices * train.num_nodes
    import torch  # only here: the planner imports this module and should not pay for torch

    return max(1, torch.cuda.device_count()) * train.num_nodes


@dataclass
class Schedule:
    steps_per_epoch: int
    total_steps: int
    world_size: int
    val_kw: dict  # Lightning's validation interval arguments


def total_steps(cfg: RunConfig, n_images: int) -> int:
    """Optimiser steps of the whole run on ``n_images`` training images."""
    if cfg.train.budget in ("iters", "converge"):  # converge: max_iters is the cap
        return cfg.train.max_iters
    world = world_size(cfg.train)
    return cfg.train.max_epochs * steps_per_epoch(n_images, cfg.data.batch_size, world, cfg.train.accumulate)


def schedule(cfg: RunConfig, n_images: int) -> Schedule:
    world = world_size(cfg.train)
    per_epoch = steps_per_epoch(n_images, cfg.data.batch_size, world, cfg.train.accumulate)
    if cfg.train.budget in ("iters", "converge"):  # converge: max_iters is the cap
        # Lightning counts this interval in batches, the config in optimiser steps
        val_kw = dict(val_check_interval=cfg.train.val_every * cfg.train.accumulate, check_val_every_n_epoch=None)
    else:
        val_kw = dict(check_val_every_n_epoch=cfg.train.val_every)
    return Schedule(per_epoch, total_steps(cfg, n_images), world, val_kw)
