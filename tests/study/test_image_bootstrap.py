"""The evaluation-image bootstrap recomputes dataset-level mIoU from per-image areas, paired across runs."""

import math

import numpy as np
import pytest

from encseg.study.image_bootstrap import dataset_miou, image_weights, paired_gain


def test_dataset_miou_sums_areas_before_dividing_and_skips_undefined_classes():
    inter = np.array([[2, 0, 0], [6, 1, 0]])
    union = np.array([[4, 1, 0], [8, 3, 0]])  # class 2 appears nowhere: undefined
    assert dataset_miou(inter.sum(0), union.sum(0)) == pytest.approx((8 / 12 + 1 / 4) / 2)
    # not the mean of the per-image mIoUs (0.25 and 0.54): the printed quantity pools pixels
    assert dataset_miou(inter.sum(0), union.sum(0)) != pytest.approx(np.nanmean(dataset_miou(inter, union)))


def test_the_point_is_the_printed_gain_and_the_interval_contains_it():
    rng = np.random.default_rng(0)
    union = rng.integers(50, 100, size=(40, 4))
    base = (union * rng.uniform(0.3, 0.6, size=union.shape)).astype(int)
    enc = np.minimum(union, base + rng.integers(0, 15, size=union.shape))
    seeds_enc, seeds_base = [(enc, union), (enc - 1, union)], [(base, union), (base, union)]
    r = paired_gain(seeds_enc, seeds_base, n_boot=500, seed=1)
    printed = np.mean([dataset_miou(a.sum(0), u.sum(0)) - dataset_miou(b.sum(0), u.sum(0))
                       for (a, u), (b, _) in zip(seeds_enc, seeds_base, strict=True)])
    assert r.gain == pytest.approx(printed) and r.n_images == 40 and r.n_boot == 500
    assert r.low < r.gain < r.high
    assert paired_gain(seeds_enc, seeds_base, n_boot=500, seed=1) == r  # deterministic for a seed


def test_identical_per_image_gains_leave_no_image_uncertainty():
    union = np.full((10, 2), 10)
    r = paired_gain([(np.full((10, 2), 6), union)], [(np.full((10, 2), 5), union)], n_boot=200)
    assert r.low == pytest.approx(0.1) and r.high == pytest.approx(0.1)


def test_two_images_give_the_known_resamples():
    # resamples hold image 1 twice, once each, or image 2 twice: gains 0.0, 0.25, 0.5 (when one image has
    # all of a class's union, the pooled IoU is that image's)
    union = np.array([[10], [10]])
    base = [(np.array([[5], [5]]), union)]
    enc = [(np.array([[5], [10]]), union)]
    r = paired_gain(enc, base, n_boot=4000, seed=0)
    assert r.gain == pytest.approx(0.25) and r.low == pytest.approx(0.0) and r.high == pytest.approx(0.5)
    w = image_weights(2, 4000, 0)
    assert (w[0] == 1).all() and (w[1:].sum(axis=1) == 2).all()


def test_mismatched_runs_are_refused():
    a = (np.ones((3, 2)), np.ones((3, 2)))
    with pytest.raises(ValueError, match="same number"):
        paired_gain([a], [a, a])
    with pytest.raises(ValueError, match="shape"):
        paired_gain([a], [(np.ones((4, 2)), np.ones((4, 2)))])
    nan = paired_gain([(np.zeros((2, 1)), np.zeros((2, 1)))], [(np.zeros((2, 1)), np.zeros((2, 1)))], n_boot=10)
    assert math.isnan(nan.gain) and math.isnan(nan.low)
