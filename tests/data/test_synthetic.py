"""Synthetic scenes: deterministic, classes need shape and texture, styles keep classes, layouts readable."""

import hashlib

import numpy as np
import pytest
import yaml

from encseg.data.formats import DATASETS, DatasetError
from encseg.data.synthetic import class_names, class_recipe, get_style, render_scene, write_synthetic


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_files_other_seed_or_style_differs(tmp_path):
    kw = dict(classes=4, train=2, val=1, size=32)
    a1 = write_synthetic(tmp_path / "a1", style="a", seed=1, **kw)
    a2 = write_synthetic(tmp_path / "a2", style="a", seed=1, **kw)
    assert _digest(a1) == _digest(a2)
    assert _digest(write_synthetic(tmp_path / "a3", style="a", seed=2, **kw)) != _digest(a1)
    b = write_synthetic(tmp_path / "b", style="b", seed=1, **kw)
    desc_a, desc_b = (yaml.safe_load((r / "dataset.yaml").read_text()) for r in (a1, b))
    assert desc_a["classes"] == desc_b["classes"] == class_names(4)  # a style keeps the classes
    assert desc_a["ignore_index"] == 255 and len(desc_a["palette"]) == 4
    with pytest.raises(DatasetError, match="not empty"):
        write_synthetic(a1, style="a", seed=1, **kw)


def test_first_classes_need_shape_and_texture():
    recipes = [class_recipe(k)[:2] for k in range(1, 5)]
    assert {s for s, _ in recipes} == {"disc", "square"} and {t for _, t in recipes} == {"striped", "checkered"}
    assert len(set(recipes)) == 4  # every class is a distinct (shape, texture) pair
    names = class_names(250)
    assert len(set(names)) == 250 and names[:3] == ["background", "striped_disc", "checkered_disc"]
    assert class_names(9)[:5] == class_names(5)  # class k does not depend on the class count


def test_styles_are_deterministic_and_change_appearance():
    assert get_style("zebra") == get_style("zebra") and get_style("zebra") != get_style("a")
    img_a, lab_a = render_scene(get_style("a"), 5, 64, np.random.default_rng(0))
    img_b, lab_b = render_scene(get_style("b"), 5, 64, np.random.default_rng(0))
    assert img_a.shape == (64, 64, 3) and img_a.dtype == np.uint8 and lab_a.shape == (64, 64)
    assert set(np.unique(lab_a)) <= set(range(5)) and len(np.unique(lab_a)) >= 2
    # same geometry from the same RNG stream, different colours: a style is appearance only
    assert np.abs(img_a.astype(int) - img_b.astype(int)).mean() > 20


@pytest.mark.parametrize("layout,split,classes", [("ade20k", "training", 150), ("voc", "train", 21),
                                                  ("cityscapes", "train", 19), ("folder", "train", 5)])
def test_layouts_read_back_with_the_same_labels(synth, layout, split, classes):
    ds = DATASETS[layout](synth(layout), split)
    ref = DATASETS["folder"](synth("folder"), "train")
    assert len(ds) == 6 and len(ds.classes) == classes
    for i in range(2):
        got, want = ds.read_mask(i), ref.read_mask(i)
        keep = got != 255  # VOC outlines are void
        np.testing.assert_array_equal(got[keep], want[keep])
        assert keep.mean() > 0.7


def test_layout_class_limits(tmp_path):
    with pytest.raises(ValueError, match="at most 19"):
        write_synthetic(tmp_path / "c", classes=20, layout="cityscapes")
    with pytest.raises(ValueError, match="layout"):
        write_synthetic(tmp_path / "c", layout="kitti")


def test_texture_cue_names_classes_by_texture_and_keeps_them_across_styles(tmp_path):
    import numpy as np
    import yaml
    from PIL import Image

    from encseg.data.synthetic import class_names, write_synthetic

    assert class_names(4, cue="texture") == ["background", "striped", "checkered", "dotted"]
    a = write_synthetic(tmp_path / "a", style="a", classes=4, train=6, val=2, size=48, seed=3, cue="texture")
    b = write_synthetic(tmp_path / "b", style="b", classes=4, train=6, val=2, size=48, seed=3, cue="texture")
    for root in (a, b):
        desc = yaml.safe_load((root / "dataset.yaml").read_text())
        assert desc["classes"] == class_names(4, cue="texture") and desc["synthetic"]["cue"] == "texture"
    labels = np.concatenate([np.asarray(Image.open(p)).ravel() for p in sorted((a / "annotations" / "train").iterdir())])
    assert set(np.unique(labels)) <= {0, 1, 2, 3} and len(np.unique(labels)) >= 3
    with pytest.raises(ValueError, match="unknown synthetic cue"):
        class_names(4, cue="colour")
