"""Batched evaluation (``data.eval_batch_size``) scores exactly what batch 1 scores, and under the asked precision.

Images share a forward only with images of their own size (``loaders.collate_by_size``), so a batch of mixed
sizes gives every image the padding it gets alone: the confusion matrix and the per-image list (in the loader's
order) are those of batch 1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny import TINY_MODEL
from PIL import Image

from encseg.config import DataConfig, DatasetConfig, EvalConfig, ModelConfig
from encseg.data.synthetic import class_names, write_synthetic
from encseg.engine.evaluate import evaluate
from encseg.engine.loaders import collate_by_size, eval_dataset, eval_loader
from encseg.models.segmenter import build_segmenter


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> dict:
    """Seven val images of three sizes, interleaved (64x64, 48x80, 96x64), and a random tiny segmenter."""
    root = tmp_path_factory.mktemp("mixed") / "synth"
    write_synthetic(root, style="a", classes=4, train=1, val=7, size=96, seed=0)
    sizes = [(64, 64), (80, 48), (64, 96), (80, 48), (64, 64), (64, 96), (80, 48)]  # PIL (W, H)
    for i, size in enumerate(sizes):
        for sub, resample in (("images", Image.BILINEAR), ("annotations", Image.NEAREST)):
            path = next((root / sub / "val").glob(f"val_{i:05d}.png"))
            Image.open(path).resize(size, resample).save(path)
    ds_cfg = DatasetConfig(name="synth", format="folder", root=str(root))
    torch.manual_seed(0)
    seg = build_segmenter(ModelConfig.model_validate(TINY_MODEL), 4, 64)
    return {"ds_cfg": ds_cfg, "seg": seg, "names": class_names(4)}


def _scored(mixed, batch: int, prec: str = "32-true"):
    data = DataConfig(dataset=mixed["ds_cfg"], crop_size=64, eval_size=None, eval_batch_size=batch)
    ds = eval_dataset(mixed["ds_cfg"], data, mixed["seg"].encoder.mean, mixed["seg"].encoder.std)
    return evaluate(mixed["seg"], eval_loader(ds, batch, 0), EvalConfig(), 64, mixed["names"], dataset="synth",
                    split="val", precision=prec)


def test_collate_by_size_groups_by_shape_and_keeps_positions(mixed):
    data = DataConfig(dataset=mixed["ds_cfg"], crop_size=64, eval_size=None)
    ds = eval_dataset(mixed["ds_cfg"], data, mixed["seg"].encoder.mean, mixed["seg"].encoder.std)
    groups = collate_by_size([ds[i] for i in range(7)])
    assert [g["positions"] for g in groups] == [[0, 4], [1, 3, 6], [2, 5]]
    assert [tuple(g["image"].shape) for g in groups] == [(2, 3, 64, 64), (3, 3, 48, 80), (2, 3, 96, 64)]


@pytest.mark.parametrize("batch", [3, 8])
def test_batched_evaluation_equals_batch_one(mixed, batch):
    one, many = _scored(mixed, 1), _scored(mixed, batch)
    np.testing.assert_array_equal(many.confusion, one.confusion)
    assert many.metrics == one.metrics
    assert many.files == one.files and len(many.files) == 7
    np.testing.assert_allclose(many.per_image_miou, one.per_image_miou, rtol=0, atol=1e-12)
    for k in (0, 1):  # the per-image (intersection, union) areas the image bootstrap resamples, in image order
        np.testing.assert_array_equal(np.concatenate([a[k] for a in many.image_areas]),
                                      np.concatenate([a[k] for a in one.image_areas]))


def test_evaluation_runs_under_the_given_precision(mixed):
    dtypes = []
    linear = next(m for m in mixed["seg"].encoder.modules() if isinstance(m, torch.nn.Linear))
    hook = linear.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    try:
        fp32, bf16 = _scored(mixed, 8), _scored(mixed, 8, "bf16-mixed")
    finally:
        hook.remove()
    assert set(dtypes[:3]) == {torch.float32} and set(dtypes[3:]) == {torch.bfloat16}  # 3 size groups each
    assert bf16.confusion.sum() == fp32.confusion.sum() and len(bf16.per_image_miou) == 7
