"""``train.strategy``: DDP across processes by default, FSDP when asked for, refused on a CPU."""

import pytest

from encseg.engine.distributed import trainer_strategy
from encseg.errors import InputError


def test_strategy_resolution():
    assert trainer_strategy("auto", 1) == "auto" and trainer_strategy("auto", 4) == "ddp"
    assert trainer_strategy("ddp", 1) == "auto" and trainer_strategy("ddp", 2) == "ddp"
    assert trainer_strategy("fsdp", 1, "gpu") == "fsdp" and trainer_strategy("fsdp", 8, "cuda") == "fsdp"
    with pytest.raises(InputError, match="train.strategy=fsdp needs GPUs"):
        trainer_strategy("fsdp", 1, "cpu")
