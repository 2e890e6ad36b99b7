"""Augmentation draws from its own generator: loading batches leaves every device's global generator alone."""

import torch
from torch.utils.data import DataLoader

from encseg.config import DataConfig, DatasetConfig
from encseg.data.formats import build_dataset
from encseg.data.synthetic import write_synthetic
from encseg.engine.loaders import TrainSampler, collate, train_dataset

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _train_set(tmp_path):
    root = write_synthetic(tmp_path / "ds", classes=3, train=4, val=1, size=48, seed=0)
    data = DataConfig(dataset=DatasetConfig(root=str(root)), crop_size=32, base_size=40, batch_size=2,
                      num_workers=0)
    return train_dataset(build_dataset(data.dataset, "train"), data, MEAN, STD, seed=3)[0]


def test_loading_a_batch_leaves_global_generators_untouched(tmp_path, monkeypatch):
    ds = _train_set(tmp_path)
    loader = DataLoader(ds, batch_size=2, sampler=TrainSampler(len(ds), 3, 0, 1), num_workers=0,
                        collate_fn=collate, generator=torch.Generator().manual_seed(3))
    reseeded = []  # torch.manual_seed also reseeds every CUDA device (queued when CUDA is not initialised)
    for fn in ("manual_seed", "manual_seed_all"):
        real = getattr(torch.cuda, fn)
        monkeypatch.setattr(torch.cuda, fn, lambda *a, _real=real, _fn=fn, **k: (reseeded.append(_fn), _real(*a, **k)))
    torch.manual_seed(1234)
    reseeded.clear()
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, 32, 32)
    assert torch.equal(torch.get_rng_state(), cpu)
    assert reseeded == []
    if torch.cuda.is_available():
        assert all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), cuda, strict=True))


def test_augmentation_is_still_seeded_by_seed_epoch_and_index(tmp_path):
    ds = _train_set(tmp_path)
    torch.manual_seed(0)
    a = ds[5]
    torch.manual_seed(99)  # the global generator plays no part
    b = ds[5]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(ds[1]["image"], ds[5]["image"])  # index 5 = epoch 1 of image 1: drawn anew
