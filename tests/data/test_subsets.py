"""Nested, deterministic, encoder-independent k% subsets; coverage; subset files."""

import pytest

from encseg.config import DatasetConfig
from encseg.data.formats import build_dataset
from encseg.data.subsets import class_coverage, dev_count, dev_indices, subset_indices

FRACTIONS = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0]


@pytest.mark.parametrize("n", [1, 7, 100, 2023])
@pytest.mark.parametrize("seed", [0, 3])
def test_subsets_are_nested_and_sized(n, seed):
    previous: set[int] = set()
    for f in FRACTIONS:
        idx = subset_indices(n, f, seed)
        assert idx == sorted(set(idx)) and all(0 <= i < n for i in idx)
        assert len(idx) == max(1, int(f * n + 0.5))  # the documented rounding (half up)
        assert previous <= set(idx)  # every smaller fraction is inside this one
        previous = set(idx)
    assert previous == set(range(n))


def test_subsets_depend_only_on_n_fraction_and_subset_seed():
    import torch

    a = subset_indices(500, 0.1, subset_seed=1)
    torch.manual_seed(123)  # a different training seed / encoder run changes global RNG state, not the subset
    import random

    import numpy as np

    random.seed(9)
    np.random.seed(9)
    assert subset_indices(500, 0.1, subset_seed=1) == a
    assert subset_indices(500, 0.1, subset_seed=2) != a
    with pytest.raises(ValueError, match="fraction"):
        subset_indices(10, 0.0, 0)


def test_coverage_counts_every_pixel_of_the_subset(synth):
    ds = build_dataset(DatasetConfig(root=synth("folder")), "train")
    idx = subset_indices(len(ds), 0.5, 0)
    cov = class_coverage(ds, idx)
    assert cov["num_images"] == 3 and set(cov["pixels"]) == set(ds.classes)
    assert sum(cov["pixels"].values()) + cov["ignored_pixels"] == 3 * 64 * 64
    assert cov["missing"] == [c for c, n in cov["pixels"].items() if n == 0]
    one = class_coverage(ds, [idx[0]])
    assert set(one["missing"]) == set(ds.classes) - {ds.classes[k] for k in set(ds.read_mask(idx[0]).ravel())}


@pytest.mark.parametrize("n", [2, 7, 100, 2023])
@pytest.mark.parametrize("dev_size", [1, 0.05, 0.2, 40])
@pytest.mark.parametrize("seed", [0, 3])
def test_dev_split_never_overlaps_any_fraction_and_is_the_same_for_every_cell(n, dev_size, seed):
    if isinstance(dev_size, int) and dev_size >= n:
        with pytest.raises(ValueError, match="no training images"):
            dev_indices(n, dev_size, seed)
        return
    dev = dev_indices(n, dev_size, seed)
    assert len(dev) == dev_count(n, dev_size) >= 1 and dev == sorted(set(dev))
    pool = n - len(dev)
    previous: set[int] = set()
    for f in FRACTIONS:
        idx = subset_indices(n, f, seed, dev_size)
        assert not set(idx) & set(dev)
        assert len(idx) == max(1, int(f * pool + 0.5))  # fractions of the train split minus the dev split
        assert previous <= set(idx)
        previous = set(idx)
    assert previous | set(dev) == set(range(n))  # 100 % = every train image but the dev split
    assert dev_indices(n, dev_size, seed) == dev  # depends on (n, dev_size, subset_seed) only


def test_no_dev_split_keeps_the_old_subsets_and_bad_sizes_are_refused():
    assert subset_indices(100, 0.3, 0, dev_size=0) == subset_indices(100, 0.3, 0)
    assert dev_indices(100, 0, 0) == []
    for bad in (-1, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="dev_size"):
            dev_count(100, bad)


def test_dev_split_is_disjoint_from_the_scored_split(synth):
    from encseg.config import DataConfig
    from encseg.engine.loaders import dev_dataset, eval_dataset, train_dataset

    data = DataConfig(dataset=DatasetConfig(root=synth("folder"), dev_size=2), crop_size=64, base_size=64)
    full = build_dataset(data.dataset, "train")
    dev, dev_idx = dev_dataset(full, data, (0.5,) * 3, (0.5,) * 3)
    train, train_idx = train_dataset(full, data, (0.5,) * 3, (0.5,) * 3, seed=0)
    val = eval_dataset(data.dataset, data, (0.5,) * 3, (0.5,) * 3)
    dev_files = {dev[i]["path"] for i in range(len(dev))}
    val_files = {(val.dataset.root / val.dataset.relative_path(i)).resolve() for i in range(len(val))}
    assert len(dev_files) == 2 and len(train_idx) == len(full) - 2
    assert not dev_files & {full.relative_path(i) for i in train_idx}
    assert not {(full.root / p).resolve() for p in dev_files} & val_files


def test_dev_size_is_validated_in_the_config(tmp_path):
    from encseg.config import ConfigError
    from encseg.config_io import load_run_config

    base = {"data": {"dataset": {"root": str(tmp_path), "dev_size": 1.5}}}
    with pytest.raises(ConfigError, match="dev_size"):
        load_run_config(data=base)
    base["data"]["dataset"]["dev_size"] = 0
    assert load_run_config(data=base).data.dataset.dev_size == 0
    for key, value in (("train", {"budget": "converge"}), ("eval", {"checkpoint": "best"})):
        with pytest.raises(ConfigError, match="dev split"):
            load_run_config(data={**base, key: value})
