"""``data check`` passes a clean synthetic dataset and catches each bad case on a corrupted copy."""

import numpy as np
import pytest
from PIL import Image

from encseg.cli import main
from encseg.data.check import DataCheckError, check_dataset, run_check_cli


def _corrupt(root):
    """One defect per file; returns {kind: offending path}."""
    img, ann = root / "images" / "train", root / "annotations" / "train"
    (ann / "train_00001.png").unlink()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(ann / "orphan.png")
    data = (img / "train_00002.png").read_bytes()
    (img / "train_00002.png").write_bytes(data[: len(data) // 2])  # truncated
    (img / "train_00003.png").write_bytes(b"not an image at all")
    with Image.open(ann / "train_00004.png") as m:
        m.resize((32, 32), Image.NEAREST).save(ann / "train_00004.png")
    with Image.open(ann / "train_00005.png") as m:
        m.convert("RGB").save(ann / "train_00005.png")
    val_mask = root / "annotations" / "val" / "val_00000.png"
    with Image.open(val_mask) as m:
        arr = np.array(m)
        pal = m.getpalette()
    arr[:3, :3] = 9
    out = Image.fromarray(arr)
    out.putpalette(pal)
    out.save(val_mask)
    return {"missing_mask": ann / "train_00001.png", "missing_image": ann / "orphan.png",
            "undecodable_image": img / "train_00003.png", "size_mismatch": img / "train_00004.png",
            "multichannel_mask": ann / "train_00005.png", "bad_labels": val_mask,
            "truncated": img / "train_00002.png"}


def test_clean_dataset_passes_with_class_frequencies(synth, capsys):
    root = synth("folder")
    report = check_dataset(root)
    assert report.ok and report.pairs == {"train": 6, "val": 3}
    assert set(report.class_pixels) == {"background", "striped_disc", "checkered_disc", "striped_square",
                                        "checkered_square"}
    assert sum(report.class_pixels.values()) + report.ignored_pixels == 9 * 64 * 64
    assert run_check_cli(root) == 0 and "OK" in capsys.readouterr().out
    assert check_dataset(root, fast=True).ok
    report.raise_if_errors()


def test_every_defect_is_reported_and_named(synth_copy, capsys):
    root = synth_copy("folder")
    bad = _corrupt(root)
    report = check_dataset(root)
    found = {(p.kind, p.path) for p in report.problems}
    for kind in ("missing_mask", "missing_image", "undecodable_image", "size_mismatch", "multichannel_mask",
                 "bad_labels"):
        assert (kind, str(bad[kind])) in found, kind
    assert ("undecodable_image", str(bad["truncated"])) in found
    assert "9" in next(p.detail for p in report.problems if p.kind == "bad_labels")
    assert len(report.offending_files()) == 7
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and str(bad["multichannel_mask"]) in out
    with pytest.raises(DataCheckError, match="train_00001.png"):
        report.raise_if_errors()


def test_fast_check_uses_headers(synth_copy, tmp_path):
    root = synth_copy("folder")
    bad = _corrupt(root)
    fast = check_dataset(root, split="train", fast=True)
    kinds = {p.kind: p.path for p in fast.problems}
    assert kinds["missing_mask"] == str(bad["missing_mask"])
    assert kinds["size_mismatch"] == str(bad["size_mismatch"])
    assert kinds["multichannel_mask"] == str(bad["multichannel_mask"])
    assert kinds["undecodable_image"] == str(bad["undecodable_image"])
    assert "bad_labels" not in kinds and fast.pairs == {"train": 6}
    # a dataset-config YAML works too, and a missing split is a problem, not a crash
    cfg = tmp_path / "ds.yaml"
    cfg.write_text(f"format: folder\nroot: {root}\nval_split: test\n")
    report = check_dataset(cfg, fast=True)
    assert any(p.kind == "split" and p.path == "test" for p in report.problems)
    cfg.write_text(f"format: folder\nroot: {root}\nval_splt: test\n")
    with pytest.raises(ValueError, match="val_splt"):
        check_dataset(cfg)
