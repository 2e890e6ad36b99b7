"""engine.loaders and engine.schedule: sharding, the augmentation stream, the mid-epoch skip on resume, and the
steps-per-epoch rule that the trainer and the planner share."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from encseg.config import DataConfig, DatasetConfig
from encseg.config_io import load_run_config
from encseg.data.formats import build_dataset
from encseg.data.synthetic import write_synthetic
from encseg.engine.loaders import (
    SeededAugment,
    ShardSampler,
    TrainSampler,
    collate,
    train_dataset,
    train_loader,
)
from encseg.engine.schedule import batches_per_epoch, drop_last, steps_per_epoch, total_steps, world_size


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "synth"
    write_synthetic(root, style="a", classes=4, train=7, val=2, size=32, seed=0)
    return root


def _data(root: Path, **kw) -> DataConfig:
    base = {"dataset": {"name": "synth", "format": "folder", "root": str(root)}, "crop_size": 32, "base_size": 32,
            "scale_range": [0.5, 2.0], "photometric": True, "batch_size": 2, "num_workers": 0, "eval_size": None}
    return DataConfig.model_validate({**base, **kw})


def _plain(batch_size: int) -> DataConfig:
    return DataConfig.model_validate({"dataset": {"name": "x", "root": "/nonexistent"}, "batch_size": batch_size,
                                      "num_workers": 0})


class _Indices(torch.utils.data.Dataset):
    """Yields its index, so a loader's batches show which samples it drew."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k: int) -> dict:
        return {"k": torch.tensor(k)}


# ------------------------------------------------------------------------------------------- sharding
@pytest.mark.parametrize("n", [1, 5, 8, 13])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_eval_shards_cover_every_image_exactly_once_without_padding(n, world):
    shards = [list(ShardSampler(n, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(ShardSampler(n, r, world)) for r in range(world)] == [len(s) for s in shards]


@pytest.mark.parametrize("n,world", [(7, 2), (8, 3), (5, 4)])
def test_train_shards_are_equal_in_length_and_cover_every_image(n, world):
    samplers = [TrainSampler(n, seed=3, rank=r, world_size=world) for r in range(world)]
    for s in samplers:
        s.set_epoch(1)
    draws = [list(s) for s in samplers]
    assert {len(d) for d in draws} == {-(-n // world)} == {len(s) for s in samplers}
    images = {k - n for d in draws for k in d}  # epoch 1 yields n + index
    assert images == set(range(n))


def test_train_order_is_a_function_of_seed_and_epoch():
    def order(seed, epoch):
        s = TrainSampler(10, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    torch.manual_seed(123)
    a = order(0, 2)
    torch.rand(100)  # the global generator must not matter
    assert order(0, 2) == a
    assert order(0, 3) != [k + 10 for k in a] and order(1, 2) != a


# ------------------------------------------------------------------------- the steps-per-epoch rule
@pytest.mark.parametrize("n", [1, 3, 6, 7, 8, 16, 17])
@pytest.mark.parametrize("batch_size", [1, 2, 4, 5])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_every_rank_loader_has_the_scheduled_number_of_batches(n, batch_size, world):
    data = _plain(batch_size)
    for rank in range(world):
        loader = train_loader(_Indices(n), data, seed=0, rank=rank, world_size=world)
        assert len(loader) == len(list(loader)) == batches_per_epoch(n, batch_size, world) >= 1


def test_drop_last_is_decided_on_what_one_rank_sees():
    # 6 images, batch 4, 2 processes: 3 per rank. Deciding on the whole dataset (6 >= 4) dropped each rank's only
    # batch, so such a run trained nothing
    assert not drop_last(6, 4, 2) and batches_per_epoch(6, 4, 2) == 1
    assert drop_last(8, 4, 2) and batches_per_epoch(9, 4, 2) == 1
    assert drop_last(7, 3, 1) and batches_per_epoch(7, 3, 1) == 2


def test_steps_per_epoch_counts_the_short_accumulation_at_the_end_of_an_epoch():
    assert steps_per_epoch(8, 1, 1, accumulate=3) == 3  # batches 3 + 3 + 2, the last accumulation padded to 3
    assert steps_per_epoch(8, 1, 1, accumulate=1) == 8
    assert steps_per_epoch(10, 1, 2, accumulate=2) == 3  # 5 batches per rank


@pytest.mark.parametrize("n,batch_size,world,accumulate", [(8, 1, 1, 3), (7, 2, 1, 2), (10, 2, 2, 3), (3, 4, 1, 2)])
def test_an_epoch_is_whole_accumulations_of_full_batches(n, batch_size, world, accumulate):
    """Every optimiser step accumulates ``accumulate`` full batches, so the trainer's batch count is always
    ``accumulate`` x its step count and validation (counted in batches) falls on optimiser steps."""
    data = _plain(batch_size)
    for rank in range(world):
        loader = train_loader(_Indices(n), data, seed=0, rank=rank, world_size=world, accumulate=accumulate)
        batches = [b["k"] for b in loader]
        assert len(batches) == len(loader) == steps_per_epoch(n, batch_size, world, accumulate) * accumulate
        own = batches_per_epoch(n, batch_size, world)
        if own % accumulate:  # padded: full batches only
            assert {len(b) for b in batches} == {batch_size}
    plain = [b["k"].tolist() for b in train_loader(_Indices(n), data, seed=0, rank=0, world_size=world)]
    padded = [b["k"].tolist() for b in train_loader(_Indices(n), data, seed=0, rank=0, world_size=world,
                                                   accumulate=accumulate)]
    whole = [b for b in plain if len(b) == batch_size]
    assert padded[:len(whole)] == whole  # the epoch's own batches come first, in their order


def test_total_steps_follow_the_budget():
    def cfg(**train):
        return load_run_config(data={"data": {"dataset": {"name": "x", "root": "/x"}, "batch_size": 1},
                                     "train": train})

    assert total_steps(cfg(budget="iters", max_iters=77), 1000) == 77
    assert total_steps(cfg(budget="epochs", max_epochs=2, accumulate=3), 8) == 6
    assert total_steps(cfg(budget="epochs", max_epochs=2, devices=2), 8) == 8
    assert world_size(cfg(devices=2, num_nodes=3).train) == 6


# ------------------------------------------------------------------------------ augmentation stream
def test_augmentation_is_a_function_of_seed_epoch_and_index(synth):
    data = _data(synth)
    full = build_dataset(data.dataset, "train")
    ds, _ = train_dataset(full, data, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), seed=5)
    assert isinstance(ds, SeededAugment)
    n = len(ds)
    torch.manual_seed(0)
    first = ds[n + 3]["image"]  # epoch 1, image 3
    state = torch.get_rng_state()
    for k in (0, 2 * n + 1, n + 4):  # other samples in between, and a different global state
        ds[k]
    torch.manual_seed(999)
    assert torch.equal(ds[n + 3]["image"], first)
    assert not torch.equal(ds[2 * n + 3]["image"], first)  # the same image in another epoch
    other, _ = train_dataset(full, data, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), seed=6)
    assert not torch.equal(other[n + 3]["image"], first)
    torch.manual_seed(0)
    ds[n + 3]
    assert torch.equal(torch.get_rng_state(), state)  # drawing a sample leaves the global generator alone


# ---------------------------------------------------------------------------------- resume mid-epoch
@pytest.mark.parametrize("accumulate", [1, 2, 3])
@pytest.mark.parametrize("global_step", [1, 4, 5, 7])
def test_a_resumed_loader_yields_the_rest_of_the_interrupted_epoch(accumulate, global_step):
    """10 images, batch 2: 5 batches per epoch, padded to 6 with accumulate 2 or 3."""
    data = _plain(2)
    per_epoch = steps_per_epoch(10, 2, 1, accumulate)
    epoch, step_in_epoch = divmod(global_step, per_epoch)

    def batches(resume_step: int | None) -> list[list[int]]:
        loader = train_loader(_Indices(10), data, seed=1, rank=0, world_size=1, accumulate=accumulate)
        loader.sampler.set_epoch(epoch)
        if resume_step is not None:
            loader.resume_at(resume_step, accumulate)
        return [b["k"].tolist() for b in loader]

    full = batches(None)
    assert len(full) == per_epoch * accumulate
    assert batches(global_step) == full[step_in_epoch * accumulate:]
    assert batches(global_step)  # never resumes past the end of an epoch


def test_collate_names_the_files_of_a_ragged_batch():
    a = {"image": torch.zeros(3, 4, 4), "path": "a.png"}
    b = {"image": torch.zeros(3, 4, 5), "path": "b.png"}
    with pytest.raises(ValueError, match=r"a\.png.*b\.png"):
        collate([a, b])
    assert collate([a, a])["image"].shape == (2, 3, 4, 4)


def test_train_split_without_images_is_named(tmp_path):
    ds_cfg = DatasetConfig(name="empty", root=tmp_path)
    with pytest.raises(ValueError, match="empty"):
        train_dataset([], _data(tmp_path).model_copy(update={"dataset": ds_cfg}), (0.5,) * 3, (0.2,) * 3, 0)
