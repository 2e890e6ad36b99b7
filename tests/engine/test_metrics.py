import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchmetrics.classification import MulticlassJaccardIndex

from encseg.engine.metrics import (
    ConfusionMatrix,
    confusion_from_labels,
    metrics_from_confusion,
    per_image_areas,
    per_image_miou,
)

IGNORE = 255


# ------------------------------------------------------------------ independent mmseg reference (numpy)
def mmseg_intersect_and_union(pred, label, num_classes, ignore_index):
    """numpy port of mmseg IoUMetric.intersect_and_union (histogram over [0, C-1], C bins)."""
    mask = label != ignore_index
    pred, label = pred[mask], label[mask]
    intersect = pred[pred == label]
    area_i = np.histogram(intersect, bins=num_classes, range=(0, num_classes - 1))[0].astype(float)
    area_p = np.histogram(pred, bins=num_classes, range=(0, num_classes - 1))[0].astype(float)
    area_l = np.histogram(label, bins=num_classes, range=(0, num_classes - 1))[0].astype(float)
    return area_i, area_p + area_l - area_i, area_p, area_l


def mmseg_total_area_to_metrics(area_i, area_u, area_p, area_l):
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"aAcc": area_i.sum() / area_l.sum(), "IoU": area_i / area_u, "Acc": area_i / area_l}


def random_maps(gen, n, c, size=(17, 23), ignore_frac=0.15):
    target = torch.randint(0, c, (n, *size), generator=gen)
    # predictions agree with the target ~60% of the time, so the scores are far from both 0 and 1
    pred = torch.where(torch.rand(n, *size, generator=gen) < 0.6, target, torch.randint(0, c, (n, *size), generator=gen))
    target[torch.rand(n, *size, generator=gen) < ignore_frac] = IGNORE
    return pred, target


# ------------------------------------------------------------------------------------ hand-computed
def test_hand_computed_3x3_with_absent_and_false_positive_class():
    # 4 classes. GT (row-major 2x5 image, 255 = ignore):
    #   0 0 0 1 1
    #   1 1 255 255 0
    # Prediction:
    #   0 0 1 1 1
    #   1 3 2 0 0
    # Ignored pixels (GT 255) are dropped although the model predicted 2 and 0 there.
    # Class 2: no GT pixel and no *scored* prediction -> IoU NaN (excluded). Class 3: predicted once, no GT
    # -> IoU 0 (counted), Acc NaN.
    target = torch.tensor([[[0, 0, 0, 1, 1], [1, 1, IGNORE, IGNORE, 0]]])
    pred = torch.tensor([[[0, 0, 1, 1, 1], [1, 3, 2, 0, 0]]])
    m = ConfusionMatrix(num_classes=4)
    m.update(pred, target)
    cm = m.compute()
    expected = torch.tensor([
        # pred: 0  1  2  3
        [3, 1, 0, 0],  # gt 0: pixels (0,0),(0,1),(1,4) right, (0,2) -> 1
        [0, 3, 0, 1],  # gt 1: (0,3),(0,4),(1,0) right, (1,1) -> 3
        [0, 0, 0, 0],
        [0, 0, 0, 0],
    ])
    assert torch.equal(cm, expected)
    r = metrics_from_confusion(cm.numpy(), ["a", "b", "c", "d"])
    # IoU_0 = 3 / (4 + 3 - 3) = 3/4 ; IoU_1 = 3 / (4 + 4 - 3) = 3/5 ; IoU_3 = 0 / (0 + 1 - 0) = 0
    assert r["per_class_iou"] == {"a": 0.75, "b": 0.6, "c": None, "d": 0.0}
    assert r["per_class_acc"] == {"a": 0.75, "b": 0.75, "c": None, "d": None}
    assert r["miou"] == pytest.approx((0.75 + 0.6 + 0.0) / 3)
    assert r["macc"] == pytest.approx(0.75)
    assert r["aacc"] == pytest.approx(6 / 8)
    assert r["fwiou"] == pytest.approx(0.5 * 0.75 + 0.5 * 0.6)
    assert r["valid_classes"] == 3 and r["num_classes"] == 4 and r["pixels"] == 8


def test_hand_computed_3x3_matrix_directly():
    cm = np.array([[5, 1, 0], [2, 2, 0], [0, 0, 0]])
    r = metrics_from_confusion(cm)
    assert r["per_class_iou"]["0"] == pytest.approx(5 / (6 + 7 - 5))
    assert r["per_class_iou"]["1"] == pytest.approx(2 / (4 + 3 - 2))
    assert r["per_class_iou"]["2"] is None
    assert r["miou"] == pytest.approx((5 / 8 + 2 / 5) / 2)
    assert r["macc"] == pytest.approx((5 / 6 + 2 / 4) / 2)
    assert r["aacc"] == pytest.approx(7 / 10)
    assert r["fwiou"] == pytest.approx(0.6 * 5 / 8 + 0.4 * 2 / 5)


def test_empty_matrix_gives_nan_not_error():
    r = metrics_from_confusion(np.zeros((3, 3), dtype=np.int64))
    assert math.isnan(r["miou"]) and math.isnan(r["aacc"]) and r["valid_classes"] == 0


# ------------------------------------------------------------------------------------ references
def test_equals_torchmetrics_jaccard_when_all_classes_present():
    gen = torch.Generator().manual_seed(1)
    c = 6
    pred, target = random_maps(gen, 4, c)
    m = ConfusionMatrix(c)
    m.update(pred, target)
    r = m.metrics()
    per_class = MulticlassJaccardIndex(c, average=None, ignore_index=IGNORE)(pred, target)
    macro = MulticlassJaccardIndex(c, average="macro", ignore_index=IGNORE)(pred, target)
    ours = torch.tensor([r["per_class_iou"][str(i)] for i in range(c)], dtype=torch.float64)
    torch.testing.assert_close(ours, per_class.double(), rtol=0, atol=1e-6)
    assert r["miou"] == pytest.approx(macro.item(), abs=1e-6)


def test_torchmetrics_differs_only_per_class_when_a_class_is_absent():
    # Class 5 never appears in GT or prediction: torchmetrics reports IoU 0 per class (zero_division=0),
    # we report NaN. Its 'macro' average drops the class like our nanmean, so mIoU agrees.
    gen = torch.Generator().manual_seed(2)
    pred, target = random_maps(gen, 3, 5)
    c = 6
    m = ConfusionMatrix(c)
    m.update(pred, target)
    r = m.metrics()
    per_class = MulticlassJaccardIndex(c, average=None, ignore_index=IGNORE)(pred, target)
    macro = MulticlassJaccardIndex(c, average="macro", ignore_index=IGNORE)(pred, target)
    assert r["per_class_iou"]["5"] is None and per_class[5].item() == 0.0
    assert r["miou"] == pytest.approx(macro.item(), abs=1e-6)
    assert r["miou"] != pytest.approx(per_class.mean().item(), abs=1e-3)  # a plain mean would be diluted


@pytest.mark.parametrize("seed", [3, 4])
def test_equals_numpy_mmseg_reference_with_absent_and_fp_classes(seed):
    gen = torch.Generator().manual_seed(seed)
    c = 7
    pred, target = random_maps(gen, 5, c)
    target[target == 6] = 0  # class 6: predicted but never in GT -> IoU 0, Acc NaN
    pred[pred == 5] = 1
    target[target == 5] = 1  # class 5: nowhere -> IoU NaN
    m = ConfusionMatrix(c)
    for i in range(5):  # per-image accumulation, as mmseg sums per-image areas
        m.update(pred[i:i + 1], target[i:i + 1])
    r = m.metrics()
    areas = [mmseg_intersect_and_union(p.numpy(), t.numpy(), c, IGNORE) for p, t in zip(pred, target, strict=True)]
    ref = mmseg_total_area_to_metrics(*(sum(a[k] for a in areas) for k in range(4)))
    ours_iou = np.array([np.nan if v is None else v for v in r["per_class_iou"].values()])
    ours_acc = np.array([np.nan if v is None else v for v in r["per_class_acc"].values()])
    np.testing.assert_allclose(ours_iou, ref["IoU"], equal_nan=True)
    np.testing.assert_allclose(ours_acc, ref["Acc"], equal_nan=True)
    assert np.isnan(ref["IoU"][5]) and ref["IoU"][6] == 0.0 and np.isnan(ref["Acc"][6])
    assert r["miou"] == pytest.approx(np.nanmean(ref["IoU"]))
    assert r["macc"] == pytest.approx(np.nanmean(ref["Acc"]))
    assert r["aacc"] == pytest.approx(ref["aAcc"])


def test_accumulation_over_updates_equals_one_update():
    gen = torch.Generator().manual_seed(5)
    pred, target = random_maps(gen, 6, 4)
    one, many = ConfusionMatrix(4), ConfusionMatrix(4)
    one.update(pred, target)
    for i in range(0, 6, 2):
        many.update(pred[i:i + 2], target[i:i + 2])
    assert torch.equal(one.compute(), many.compute())
    assert one.compute().sum() == (target != IGNORE).sum()
    many.reset()
    assert many.confmat.sum() == 0


def test_ignore_is_decided_by_target_only():
    target = torch.full((1, 4, 4), IGNORE)
    target[0, 0, 0] = 1
    pred = torch.zeros(1, 4, 4, dtype=torch.long)  # wrong everywhere the GT is ignore: must not matter
    cm = confusion_from_labels(pred, target, 3)
    assert cm.sum() == 1 and cm[1, 0] == 1


def test_out_of_range_target_raises_naming_values():
    m = ConfusionMatrix(3)
    target = torch.tensor([[[0, 1, 7], [3, IGNORE, 2]]])
    with pytest.raises(ValueError, match=r"\[3, 7\]"):
        m.update(torch.zeros_like(target), target)
    with pytest.raises(ValueError, match=r"\[-1\]"):
        m.update(torch.full_like(target, -1), torch.zeros_like(target))
    with pytest.raises(ValueError, match="shape"):
        m.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="dtype"):
        m.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))


def test_metrics_from_confusion_rejects_bad_input():
    with pytest.raises(ValueError, match="square"):
        metrics_from_confusion(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="3 class names"):
        metrics_from_confusion(np.zeros((2, 2)), ["a", "b", "c"])


def test_per_image_miou_matches_dataset_rule_per_image():
    gen = torch.Generator().manual_seed(6)
    pred, target = random_maps(gen, 3, 4)
    target[2] = IGNORE
    scores = per_image_miou(pred, target, 4, IGNORE)
    assert len(scores) == 3 and math.isnan(scores[2])
    for i in range(2):
        expected = metrics_from_confusion(confusion_from_labels(pred[i], target[i], 4).numpy())["miou"]
        assert scores[i] == pytest.approx(expected)
    single = per_image_miou(pred[0].numpy(), target[0].numpy(), 4)
    assert isinstance(single, float) and single == pytest.approx(scores[0])


def test_per_image_areas_sum_to_the_dataset_confusion_scores():
    gen = torch.Generator().manual_seed(7)
    pred, target = random_maps(gen, 5, 4)
    target[1, :3] = IGNORE
    inter, union = per_image_areas(pred, target, 4, IGNORE)
    assert inter.shape == union.shape == (5, 4) and inter.dtype == union.dtype == np.int64
    m = metrics_from_confusion(confusion_from_labels(pred, target, 4, IGNORE).numpy())
    pooled = inter.sum(0) / union.sum(0)  # every class present somewhere in this draw
    assert np.nanmean(pooled) == pytest.approx(m["miou"])
    # per image, the same areas give per_image_miou
    with np.errstate(invalid="ignore", divide="ignore"):
        own = np.nanmean(np.where(union > 0, inter / union, np.nan), axis=1)
    assert own == pytest.approx(per_image_miou(pred, target, 4, IGNORE))
    # a trailing NOT_SHARED class is not scored: its predictions only enlarge the other classes' unions
    inter3, union3 = per_image_areas(pred, target, 4, IGNORE, n_scored=3)
    assert (inter3 == inter[:, :3]).all() and (union3 == union[:, :3]).all()


# ------------------------------------------------------------------------------------------- DDP
def _ddp_worker(rank: int, world: int, store: str, out: str):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        gen = torch.Generator().manual_seed(100 + rank)
        pred, target = random_maps(gen, 2, 5)
        m = ConfusionMatrix(5)
        m.update(pred, target)
        synced = m.compute()
        torch.save({"local": confusion_from_labels(pred, target, 5), "synced": synced}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gloo_confmat_is_the_sum_over_ranks(tmp_path: Path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    total = r0["local"] + r1["local"]
    assert not torch.equal(r0["local"], r1["local"])
    assert torch.equal(r0["synced"], total) and torch.equal(r1["synced"], total)
