"""Whether this process is rank 0, known before any trainer exists; the Lightning strategy of a run."""

from __future__ import annotations

import os

from encseg.errors import InputError


def is_rank_zero() -> bool:
    """Rank before the trainer exists (torchrun: RANK; SLURM: SLURM_PROCID; Lightning's launcher: LOCAL/NODE_RANK)."""
    if "RANK" in os.environ:
        return os.environ["RANK"] == "0"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return os.environ["SLURM_PROCID"] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


def trainer_strategy(strategy: str, world_size: int, accelerator: str = "gpu") -> str:
    """Lightning's ``strategy`` for ``train.strategy``: ``auto`` is DDP across processes and Lightning's
    single-device strategy for one; ``ddp`` and ``fsdp`` are used as named (FSDP also on one GPU, where it
    still shards nothing but lets a config move between machines unchanged). FSDP needs GPUs: on a CPU the run
    fails here, before the first step, naming the key."""
    if strategy == "fsdp" and accelerator not in ("gpu", "cuda"):
        raise InputError(f"train.strategy=fsdp needs GPUs (Lightning's FSDP), but this run's accelerator is "
                         f"{accelerator!r}; use train.strategy: auto here")
    if strategy == "auto":
        return "ddp" if world_size > 1 else "auto"
    if strategy == "ddp" and world_size == 1:
        return "auto"
    return strategy
