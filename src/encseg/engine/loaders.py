"""Datasets and dataloaders for one run: subset selection, transforms, samplers, collate.

Validation uses a sampler that splits the images across ranks *without* padding, so under DDP no image is
counted twice and none is dropped (``torch.utils.data.DistributedSampler`` repeats images to even out ranks).
An evaluation batch (``data.eval_batch_size``) is split into groups of equal image and ground-truth size
(``collate_by_size``): images share a forward only with images of their own size, so none is padded beyond what
it gets alone (the segmenter pads each to a multiple of 32) and its scores are those of batch 1.
Evaluation scores predictions against the ORIGINAL-resolution ground truth, as mmsegmentation does: the
model sees the resized image and its class scores are resized back to the mask's size.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from encseg.config import DataConfig, DatasetConfig
from encseg.data.formats import build_dataset
from encseg.data.formats.base import DatasetError
from encseg.data.subsets import dev_indices, subset_indices
from encseg.data.transforms import drawing_from, eval_transforms, train_transforms
from encseg.engine.schedule import drop_last, samples_per_epoch, samples_per_rank
from encseg.errors import InputError


class ShardSampler(Sampler[int]):
    """Rank r of w takes images r, r+w, r+2w, ...: every image exactly once over all ranks."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


class TrainSampler(Sampler[int]):
    """Seeded shuffling, sharded across ranks; ``set_epoch`` (called by Lightning) reshuffles.

    Yields ``epoch * n + index`` so that ``SeededAugment`` can draw each sample's augmentation from
    (seed, epoch, index) alone. The order depends only on (seed, epoch): a resumed run sees the order and
    the crops it would have seen. Each rank yields ``length`` samples (default: its share, ``ceil(n / world)``);
    what the ranks need beyond ``n`` (the last incomplete round, padding to whole accumulations) is drawn
    from the start of the permutation, so every rank has the same number of batches.
    """

    def __init__(self, n: int, seed: int, rank: int = 0, world_size: int = 1, length: int | None = None):
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.length = samples_per_rank(n, world_size) if length is None else length
        self.epoch = 0
        self.skip = 0  # samples of this rank already consumed in the current epoch (a resumed run)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        total = len(self) * self.world_size
        order = (order * math.ceil(total / max(1, self.n)))[:total]
        mine = order[self.rank::self.world_size][self.skip:]
        self.skip = 0
        return iter([self.epoch * self.n + i for i in mine])

    def __len__(self) -> int:
        return self.length


class ResumableLoader(DataLoader):
    """A train loader that a run resumed mid-epoch continues where the checkpoint left it.

    ``resume_at(global_step, accumulate)`` makes the next iteration skip the batches of the current epoch that
    were already trained on (the sampler's order is a function of (seed, epoch), so nothing needs saving).
    ``state_dict``/``load_state_dict`` mark the loader as resumable for Lightning; the state itself is the
    trainer's step count.
    """

    def resume_at(self, global_step: int, accumulate: int) -> None:
        steps = math.ceil(len(self) / accumulate)
        if steps:
            self.sampler.skip = global_step % steps * accumulate * self.batch_size

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


class SeededAugment(Dataset):
    """Applies the train transforms drawing from their own generator, seeded from (seed, epoch, index).

    Augmentation then does not depend on worker count, rank, or process history, which is what makes a
    resumed run and a multi-worker run reproduce an uninterrupted single-worker one; and no device's global
    generator is read or reseeded (with ``num_workers=0`` they are the model's: Mask2Former's point sampling).
    """

    def __init__(self, dataset, transform, seed: int):
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, k: int) -> dict:
        epoch, i = divmod(int(k), len(self.dataset))
        sample = self.dataset[i]
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + i)
        with drawing_from(generator):
            return self.transform(sample)


class WithOriginalMask(Dataset):
    """Adds ``target``: the untransformed ground truth, for scoring at the original resolution."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict:
        sample = self.dataset[i]
        sample["target"] = torch.as_tensor(self.dataset.read_mask(i), dtype=torch.int64)
        return sample


def collate(samples: list[dict]) -> dict:
    """Stack tensors; images of different sizes in one batch are an error that says how to fix it."""
    out: dict = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if isinstance(values[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise InputError(f"cannot batch {key!r} of different sizes {sorted(shapes)} "
                                 f"(files {[s.get('path') for s in samples]}); use data.batch_size: 1")
            out[key] = torch.stack([v.as_subclass(torch.Tensor) for v in values])
        else:
            out[key] = values
    return out


def collate_by_size(samples: list[dict]) -> list[dict]:
    """An evaluation batch as groups of samples with the same image and ground-truth shape (first appearance
    order), each stacked by ``collate`` with ``positions``: where its samples were in the batch."""
    groups: dict[tuple, list[int]] = {}
    for i, s in enumerate(samples):
        key = (tuple(s["image"].shape), tuple(s["target"].shape) if "target" in s else None)
        groups.setdefault(key, []).append(i)
    return [{**collate([samples[i] for i in idx]), "positions": idx} for idx in groups.values()]


def train_dataset(full, data: DataConfig, mean, std, seed: int):
    """The k% subset of the train split ``full`` with seeded train transforms, and the selected indices."""
    if len(full) == 0:
        raise DatasetError(f"dataset {data.dataset.display_name}: split {data.dataset.train_split!r} under "
                         f"{data.dataset.root} has no images")
    idx = subset_indices(len(full), data.fraction, data.subset_seed, data.dataset.dev_size)
    return SeededAugment(full.select(idx), train_transforms(data, mean, std), seed), idx


def dev_dataset(full, data: DataConfig, mean, std):
    """The dev split of the train split ``full`` with eval transforms (None without one), and its indices."""
    idx = dev_indices(len(full), data.dataset.dev_size, data.subset_seed)
    if not idx:
        return None, idx
    return WithOriginalMask(full.select(idx).with_transform(eval_transforms(data, mean, std))), idx


def eval_dataset(ds_cfg: DatasetConfig, data: DataConfig, mean, std, split: str | None = None):
    ds = build_dataset(ds_cfg, split or ds_cfg.val_split)
    if len(ds) == 0:
        raise DatasetError(f"dataset {ds_cfg.display_name}: split {split or ds_cfg.val_split!r} under "
                         f"{ds_cfg.root} has no images")
    return WithOriginalMask(ds.with_transform(eval_transforms(data, mean, std)))


def train_loader(ds, data: DataConfig, seed: int, rank: int, world_size: int, accumulate: int = 1) -> ResumableLoader:
    """Each epoch ``schedule.batches_per_epoch`` batches: whole accumulations of ``accumulate`` batches."""
    length = samples_per_epoch(len(ds), data.batch_size, world_size, accumulate)
    sampler = TrainSampler(len(ds), seed, rank, world_size, length)
    # an own generator keeps the loader from drawing on the global RNG, which the model's point sampling uses
    return ResumableLoader(ds, batch_size=data.batch_size, sampler=sampler,
                      num_workers=data.num_workers, collate_fn=collate,
                      drop_last=drop_last(len(ds), data.batch_size, world_size),
                      pin_memory=torch.cuda.is_available(), persistent_workers=data.num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))


def eval_loader(ds, batch_size: int, num_workers: int, rank: int = 0, world_size: int = 1,
                persistent: bool = False) -> DataLoader:
    """Batches of ``collate_by_size`` groups; ``persistent``: keep the workers between passes (validation)."""
    return DataLoader(ds, batch_size=batch_size, sampler=ShardSampler(len(ds), rank, world_size),
                      num_workers=num_workers, collate_fn=collate_by_size, pin_memory=torch.cuda.is_available(),
                      persistent_workers=persistent and num_workers > 0, generator=torch.Generator().manual_seed(0))
