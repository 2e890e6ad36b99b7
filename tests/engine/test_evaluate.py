"""``encseg eval`` on a real (tiny) trained run, cross-dataset scoring through the taxonomy, and the LUT logic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from _tiny import tiny_config
from PIL import Image

from encseg.cli import main
from encseg.config import DatasetConfig, EvalConfig
from encseg.config_io import load_run_config
from encseg.data.synthetic import class_names, write_synthetic
from encseg.data.taxonomy import cross_dataset_luts
from encseg.engine.evaluate import NOT_SHARED, evaluate
from encseg.engine.rundir import RunDir
from encseg.engine.train import train


def _dataset_yaml(path: Path, name: str, root: Path) -> Path:
    path.write_text(yaml.safe_dump({"name": name, "format": "folder", "root": str(root)}))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """One tiny run trained on synthetic style a (5 classes), plus a style-b twin and a 4-class dataset."""
    tmp = tmp_path_factory.mktemp("eval")
    write_synthetic(tmp / "a", style="a", classes=5, train=8, val=4, size=64, seed=0)
    write_synthetic(tmp / "b", style="b", classes=5, train=1, val=3, size=64, seed=1)
    write_synthetic(tmp / "c", style="a", classes=4, train=1, val=3, size=64, seed=2)
    # the 4-class dataset is also scored by the run itself after training (eval.datasets)
    cfg = tiny_config(tmp / "a", train={"max_iters": 20, "val_every": 10},
                      eval={"latency_iters": 0, "datasets": [{"name": "synth_c", "format": "folder",
                                                              "root": str(tmp / "c")}]})
    rd = RunDir(train(load_run_config(data=cfg), tmp / "runs", argv=["test"]))
    own = json.loads(rd.eval_json("synth").read_text())
    return {"rd": rd, "tmp": tmp, "own": own, "own_cm": np.load(rd.confusion_npy("synth")),
            "own_c": json.loads(rd.eval_json("synth_c").read_text()),
            "a": _dataset_yaml(tmp / "a.yaml", "synth", tmp / "a"),
            "b": _dataset_yaml(tmp / "b.yaml", "synth_b", tmp / "b"),
            "c": _dataset_yaml(tmp / "c.yaml", "synth_c", tmp / "c")}


def _eval(run, *args: str) -> int:
    return main(["eval", str(run["rd"].path), *args])


def test_eval_reproduces_the_runs_own_scores(run, capsys):
    assert _eval(run, "--dataset", str(run["a"])) == 0
    rd = run["rd"]
    ev = json.loads(rd.eval_json("synth").read_text())
    assert ev["metrics"] == run["own"]["metrics"]
    assert ev["per_image_miou"] == run["own"]["per_image_miou"]
    assert ev["protocol"] == run["own"]["protocol"] and ev["cross"] is None
    np.testing.assert_array_equal(np.load(rd.confusion_npy("synth")), run["own_cm"])
    # per-image areas beside the json: summed over the images they give the run's dataset mIoU
    with np.load(rd.image_areas_npz("synth"), allow_pickle=False) as z:
        inter, union = z["intersection"], z["union"]
    assert inter.shape == (ev["num_images"], len(ev["classes"]))
    iou = [i / u for i, u in zip(inter.sum(0), union.sum(0), strict=True) if u > 0]
    assert np.mean(iou) == pytest.approx(ev["metrics"]["miou"])
    out = capsys.readouterr().out
    assert f"mIoU {ev['metrics']['miou']:.4f}" in out and str(rd.eval_json("synth")) in out


def test_slide_with_a_window_equal_to_the_image_matches_whole(run):
    assert _eval(run, "--dataset", str(run["a"]), "--mode", "slide") == 0
    extra = run["rd"].eval_dir / "extra" / "synth__val__slide.json"
    ev = json.loads(extra.read_text())
    assert ev["protocol"]["mode"] == "slide" and ev["protocol"]["crop"] == 64
    np.testing.assert_array_equal(np.load(extra.with_name("synth__val__slide_confusion.npy")), run["own_cm"])
    # another protocol never replaces the run's own number, which a study aggregates
    assert json.loads(run["rd"].eval_json("synth").read_text())["protocol"]["mode"] == "whole"


def test_flip_tta_is_recorded_and_unknown_tta_is_refused(run, capsys):
    assert _eval(run, "--dataset", str(run["a"]), "--tta", "flip") == 0
    ev = json.loads((run["rd"].eval_dir / "extra" / "synth__val__whole_flip.json").read_text())
    assert ev["protocol"]["flip"] is True and ev["num_images"] == 4
    assert json.loads(run["rd"].eval_json("synth").read_text())["protocol"]["flip"] is False
    assert _eval(run, "--dataset", str(run["a"]), "--tta", "flip,zoom") == 2
    err = capsys.readouterr().err
    assert "encseg: error:" in err and "zoom" in err and "flip, ms" in err


def test_other_style_same_classes_is_scored_on_all_classes(run):
    assert _eval(run, "--dataset", str(run["b"])) == 0
    ev = json.loads(run["rd"].eval_json("synth_b").read_text())
    assert ev["classes"] == class_names(5)
    assert ev["cross"] == {"train_dataset": "synth", "shared_classes": class_names(5)}
    cm = np.load(run["rd"].confusion_npy("synth_b"))
    assert cm.shape == (5, 5) and cm.sum() == ev["metrics"]["pixels"] > 0
    assert (run["rd"].plots_dir / "confusion_synth_b.png").is_file()


def test_fewer_classes_are_scored_over_the_shared_names_only(run):
    """5-class model on a 4-class dataset: 4 shared classes; predictions of the 5th are errors, not ignored."""
    assert (run["rd"].plots_dir / "confusion_synth_c.png").is_file()  # scored after training too
    assert _eval(run, "--dataset", str(run["c"])) == 0
    ev = json.loads(run["rd"].eval_json("synth_c").read_text())
    assert ev == run["own_c"]
    shared = class_names(4)
    assert ev["cross"]["shared_classes"] == shared and list(ev["metrics"]["per_class_iou"]) == shared
    assert ev["classes"] == [*shared, NOT_SHARED]
    cm = np.load(run["rd"].confusion_npy("synth_c"))
    assert cm.shape == (5, 5) and cm[4].sum() == 0  # no ground truth is outside the shared space
    # the 4 per-class IoUs follow from the stored matrix, whose last column counts as false negatives
    tp = np.diag(cm)[:4].astype(float)
    union = cm.sum(1)[:4] + cm.sum(0)[:4] - tp
    expected = {n: (None if u == 0 else t / u) for n, t, u in zip(shared, tp, union, strict=True)}
    assert ev["metrics"]["per_class_iou"] == pytest.approx(expected)
    ious = [v for v in expected.values() if v is not None]
    assert ev["metrics"]["miou"] == pytest.approx(np.mean(ious))


def test_predict_on_the_trained_run_writes_its_argmax(run, tmp_path):
    from encseg.data.transforms import Normalize
    from encseg.models.segmenter import load_segmenter

    image = run["tmp"] / "a" / "images" / "val" / "val_00001.png"
    assert main(["predict", str(run["rd"].path), str(image), "--out", str(tmp_path)]) == 0
    labels = np.asarray(Image.open(tmp_path / "labels" / "val_00001.png"))
    seg, _ = load_segmenter(run["rd"].path)
    rgb = torch.from_numpy(np.array(Image.open(image).convert("RGB"))).permute(2, 0, 1)
    x = Normalize(seg.encoder.mean, seg.encoder.std)({"image": rgb, "mask": torch.zeros(1)})["image"]
    with torch.no_grad():
        expected = seg.inference(x[None]).argmax(1)[0].numpy()
    np.testing.assert_array_equal(labels, expected)  # folder format: dataset ids are the train ids


class _FixedScores(torch.nn.Module):
    """A segmenter whose class scores are the one-hot encoding of a fixed label map."""

    def __init__(self, labels: torch.Tensor, num_classes: int):
        super().__init__()
        self.scores = torch.nn.functional.one_hot(labels, num_classes).permute(2, 0, 1)[None].float()
        self.num_classes = num_classes

    def inference(self, images, **_):
        return self.scores.expand(images.shape[0], -1, -1, -1)


def _synth_cfg(name: str) -> DatasetConfig:
    return DatasetConfig(name=name, format="folder", root=Path("/nonexistent") / name, taxonomy="synthetic")


def test_cross_dataset_luts_map_both_sides_into_the_shared_space():
    """Hand computation: train classes [bg, A, B, X], eval classes [bg, B, A, Y] -> shared [bg, A, B].

    pred (train ids)  0 1 2 3      shared  bg A B (not shared)
                      1 1 2 0              A  A B bg
    gt   (eval ids)   0 2 1 1      shared  bg A B B
                      3 255 1 0            -  -  B bg     (Y and 255 ignored)
    Scored pixels: 5 right, 1 wrong (B predicted as X): IoU bg 2/2, A 1/1, B 2/3.
    """
    train_classes, eval_classes = ["background", "A", "B", "X"], ["background", "B", "A", "Y"]
    lut_p, lut_g, names, cross = cross_dataset_luts(_synth_cfg("src"), _synth_cfg("tgt"), train_classes,
                                                    eval_classes)
    assert names == ["background", "A", "B"] and cross == {"train_dataset": "src", "shared_classes": names}
    assert list(lut_p[:4]) == [0, 1, 2, 255] and list(lut_g[:4]) == [0, 2, 1, 255] and lut_g[255] == 255

    pred = torch.tensor([[0, 1, 2, 3], [1, 1, 2, 0]])
    gt = torch.tensor([[0, 2, 1, 1], [3, 255, 1, 0]])
    loader = [{"image": torch.zeros(1, 3, 2, 4), "target": gt[None], "path": ["img.png"]}]
    res = evaluate(_FixedScores(pred, 4), loader, EvalConfig(), 4, names, dataset="tgt", split="val",
                   lut_pred=lut_p, lut_gt=lut_g)
    assert res.classes == [*names, NOT_SHARED]
    expected_cm = np.zeros((4, 4), dtype=np.int64)
    expected_cm[0, 0], expected_cm[1, 1], expected_cm[2, 2], expected_cm[2, 3] = 2, 1, 2, 1
    np.testing.assert_array_equal(res.confusion, expected_cm)
    m = res.metrics
    assert m["per_class_iou"] == pytest.approx({"background": 1.0, "A": 1.0, "B": 2 / 3})
    assert m["miou"] == pytest.approx(8 / 9) and m["aacc"] == pytest.approx(5 / 6)
    assert m["num_classes"] == 3 and m["pixels"] == 6
    assert res.per_image_miou == pytest.approx([8 / 9])


def test_a_model_with_fewer_classes_needs_no_extra_column():
    lut_p, lut_g, names, _ = cross_dataset_luts(_synth_cfg("src"), _synth_cfg("tgt"), ["background", "A"],
                                                ["background", "A", "B"])
    pred = torch.tensor([[0, 1, 1]])
    gt = torch.tensor([[0, 2, 1]])  # B is not shared: ignored
    loader = [{"image": torch.zeros(1, 3, 1, 3), "target": gt[None]}]
    res = evaluate(_FixedScores(pred, 2), loader, EvalConfig(), 3, names, dataset="tgt", split="val",
                   lut_pred=lut_p, lut_gt=lut_g)
    assert res.classes == ["background", "A"]
    np.testing.assert_array_equal(res.confusion, [[1, 0], [0, 1]])
    assert res.metrics["miou"] == 1.0


def test_datasets_without_a_common_taxonomy_are_refused_by_name():
    plain = DatasetConfig(name="mine", format="folder", root=Path("/nonexistent/mine"))
    with pytest.raises(ValueError, match="mine.*taxonomy"):
        cross_dataset_luts(_synth_cfg("src"), plain, ["background", "A"], ["background", "B"])


def test_real_formats_with_taxonomy_common_map_through_their_format():
    voc = DatasetConfig(format="voc", root=Path("/nonexistent/voc"), taxonomy="common")
    ade = DatasetConfig(format="ade20k", root=Path("/nonexistent/ade"), taxonomy="common")
    from encseg.data.taxonomy import FORMAT_CLASSES

    lut_p, lut_g, names, cross = cross_dataset_luts(voc, ade, FORMAT_CLASSES["voc"], FORMAT_CLASSES["ade20k"])
    assert "person" in names and "car" in names and cross["train_dataset"] == "voc"
    assert lut_p[FORMAT_CLASSES["voc"].index("person")] == lut_g[FORMAT_CLASSES["ade20k"].index("person")]
    assert lut_p[0] == 255  # VOC background is not shared
