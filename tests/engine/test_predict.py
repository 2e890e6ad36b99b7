"""``encseg predict``: label PNGs in the dataset's own ids, colour masks and overlays, bad input.

The run directories here hold a saved (untrained) tiny segmenter and its config, which is all that predict
reads; test_evaluate.py runs predict on a trained run.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny import tiny_config
from PIL import Image

from encseg.cli import main
from encseg.config_io import load_run_config
from encseg.data.synthetic import write_synthetic
from encseg.data.transforms import Normalize
from encseg.engine.rundir import RunDir
from encseg.models.segmenter import build_segmenter, load_segmenter, save_segmenter


def _saved_run(path: Path, data_root: Path, fmt: str, num_classes: int) -> Path:
    cfg = load_run_config(data=tiny_config(data_root, data={"dataset": {"format": fmt, "name": f"synth_{fmt}"}}))
    torch.manual_seed(1)
    seg = build_segmenter(cfg.model, num_classes=num_classes, img_size=64)
    save_segmenter(seg, path, extra={"classes": [str(i) for i in range(num_classes)],
                                     "mean": list(seg.encoder.mean), "std": list(seg.encoder.std)})
    RunDir(path).write_config(cfg)
    return path


def _argmax(run: Path, image: Path) -> np.ndarray:
    seg, _ = load_segmenter(run)
    rgb = torch.from_numpy(np.array(Image.open(image).convert("RGB"))).permute(2, 0, 1)
    x = Normalize(seg.encoder.mean, seg.encoder.std)({"image": rgb, "mask": torch.zeros(1)})["image"]
    with torch.no_grad():
        return seg.inference(x[None]).argmax(1)[0].numpy()


@pytest.fixture(scope="module")
def ade(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("predict")
    write_synthetic(tmp / "ade", style="a", classes=5, train=1, val=1, size=64, seed=0, layout="ade20k")
    write_synthetic(tmp / "folder", style="a", classes=5, train=1, val=1, size=64, seed=0)
    image = tmp / "wide.png"  # not square, not the training size
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 72, 3), dtype=np.uint8)).save(image)
    return {"run": _saved_run(tmp / "run_ade", tmp / "ade", "ade20k", 150),
            "folder_run": _saved_run(tmp / "run_folder", tmp / "folder", "folder", 5),
            "image": image, "tmp": tmp}


def test_ade20k_labels_are_train_ids_plus_one(ade, tmp_path):
    assert main(["predict", str(ade["run"]), str(ade["image"]), "--out", str(tmp_path)]) == 0
    labels = np.asarray(Image.open(tmp_path / "labels" / "wide.png"))
    expected = _argmax(ade["run"], ade["image"])
    assert labels.shape == (48, 72) and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, expected + 1)
    assert labels.min() >= 1  # 0 ("other") is only the export of ignore, which a prediction never is
    for kind in ("color", "overlay"):
        img = Image.open(tmp_path / kind / "wide.png")
        assert img.size == (72, 48) and img.mode == "RGB"


def test_folder_labels_are_the_train_ids_and_slide_mode_runs(ade, tmp_path):
    run, image = ade["folder_run"], ade["image"]
    assert main(["predict", str(run), str(image), "--out", str(tmp_path), "--mode", "slide"]) == 0
    labels = np.asarray(Image.open(tmp_path / "labels" / "wide.png"))
    assert labels.shape == (48, 72) and labels.max() < 5
    assert main(["predict", str(run), str(image), "--out", str(tmp_path / "whole")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "whole" / "labels" / "wide.png")),
                                  _argmax(run, image))
    colour = np.asarray(Image.open(tmp_path / "whole" / "color" / "wide.png"))
    overlay = np.asarray(Image.open(tmp_path / "whole" / "overlay" / "wide.png"))
    rgb = np.asarray(Image.open(image))
    np.testing.assert_array_equal(overlay, (0.5 * rgb + 0.5 * colour).astype(np.uint8))


def test_without_the_dataset_labels_hold_train_ids_with_a_warning(ade, tmp_path, caplog):
    data = ade["tmp"] / "moved"
    run = _saved_run(ade["tmp"] / "run_moved", data, "ade20k", 150)  # the dataset root does not exist
    with caplog.at_level(logging.WARNING, logger="encseg"):
        assert main(["predict", str(run), str(ade["image"]), "--out", str(tmp_path)]) == 0
    assert "train ids" in caplog.text and str(data) in caplog.text
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "labels" / "wide.png")),
                                  _argmax(run, ade["image"]))
    shutil.rmtree(run)


def test_bad_input_names_the_file(ade, tmp_path, capsys):
    missing = tmp_path / "nope.jpg"
    assert main(["predict", str(ade["run"]), str(ade["image"]), str(missing), "--out", str(tmp_path)]) == 2
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "labels").exists()  # checked before anything is written

    twin = tmp_path / "sub" / "wide.png"
    twin.parent.mkdir()
    shutil.copy(ade["image"], twin)
    assert main(["predict", str(ade["run"]), str(ade["image"]), str(twin), "--out", str(tmp_path)]) == 2
    assert "same file stem" in capsys.readouterr().err

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    assert main(["predict", str(ade["run"]), str(broken), "--out", str(tmp_path)]) == 2
    assert str(broken) in capsys.readouterr().err

    assert main(["predict", str(tmp_path), str(ade["image"]), "--out", str(tmp_path)]) == 2
    assert "model.safetensors" in capsys.readouterr().err
