"""Whether this process is rank 0, known before any trainer exists."""

from __future__ import annotations

import os


def is_rank_zero() -> bool:
    """Rank before the trainer exists (torchrun: RANK; SLURM: SLURM_PROCID; Lightning's launcher: LOCAL/NODE_RANK)."""
    if "RANK" in os.environ:
        return os.environ["RANK"] == "0"
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return os.environ["SLURM_PROCID"] == "0"
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
