"""Each dataset class on files in its real layout, with its label conversion checked pixel by pixel."""

import threading

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from encseg.config import DatasetConfig, SynthConfig
from encseg.data.formats import DATASETS, DatasetError, build_dataset
from encseg.data.formats.base import voc_palette
from encseg.data.formats.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE

# a hand-made 2 x 4 mask per format: on-disk ids -> expected train ids
ADE_RAW, ADE_TRAIN = [[0, 1, 150, 2], [75, 255, 1, 0]], [[255, 0, 149, 1], [74, 255, 0, 255]]
CS_RAW, CS_TRAIN = [[7, 26, 0, 255], [33, 4, 24, 25]], [[0, 13, 255, 255], [18, 255, 11, 12]]
VOC_RAW = [[0, 15, 255, 20], [1, 1, 0, 255]]
COCO_RAW, COCO_TRAIN = [[0, 12, 181, 255], [10, 13, 24, 26]], [[0, 11, 170, 255], [10, 12, 23, 24]]


def save_indices(path, arr, palette=None):
    im = Image.fromarray(np.asarray(arr, dtype=np.uint8))
    if palette is not None:
        im.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())  # "L" -> "P"
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def save_rgb(path, h, w, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _overwrite(ds, i, raw, palette=None):
    h, w = ds.read_image(i).shape[:2]
    save_indices(ds.files[i][1], _blocks(raw, h, w), palette)


def _blocks(expected, h, w):
    """The 2 x 4 hand-made mask blown up to ``h x w`` blocks."""
    return np.kron(np.asarray(expected), np.ones((h // 2, w // 4), dtype=int))


def test_ade20k_reduce_zero_label(synth_copy):
    ds = DATASETS["ade20k"](synth_copy("ade20k"), "training")
    assert len(ds) == 6 and len(ds.classes) == 150 and ds.classes[:3] == ["wall", "building", "sky"]
    _overwrite(ds, 0, ADE_RAW)
    mask = ds.read_mask(0)
    assert mask.dtype == np.int64
    np.testing.assert_array_equal(mask, _blocks(ADE_TRAIN, 64, 64))
    np.testing.assert_array_equal(ds.to_dataset_ids(np.array(ADE_TRAIN)), [[0, 1, 150, 2], [75, 0, 1, 0]])
    _overwrite(ds, 1, [[0, 151, 1, 200]] * 2)
    with pytest.raises(DatasetError, match=r"ADE_train_00000002\.png.*151, 200"):
        ds.read_mask(1)
    assert len(DATASETS["ade20k"](ds.root, "val")) == 3  # alias of "validation"


def test_cityscapes_label_ids_and_train_ids(synth_copy):
    root = synth_copy("cityscapes")
    ds = DATASETS["cityscapes"](root, "train")
    assert ds.classes[0] == "road" and ds.classes[13] == "car" and len(ds.classes) == 19
    assert ds.files[0][1].name.endswith("_gtFine_labelIds.png")
    _overwrite(ds, 0, CS_RAW)
    np.testing.assert_array_equal(ds.read_mask(0), _blocks(CS_TRAIN, 64, 64))
    np.testing.assert_array_equal(ds.to_dataset_ids(np.array([[0, 13, 255, 18]])), [[7, 26, 0, 33]])
    _overwrite(ds, 1, [[34, 7, 7, 100]] * 2)
    with pytest.raises(DatasetError, match=r"labelIds\.png.*34, 100"):
        ds.read_mask(1)
    # a *_labelTrainIds.png next to the labelIds file is preferred and read as train ids
    train_ids = ds.files[2][1].with_name(ds.files[2][1].name.replace("labelIds", "labelTrainIds"))
    save_indices(train_ids, _blocks([[0, 18, 255, 5]] * 2, 64, 64))
    ds2 = DATASETS["cityscapes"](root, "train")
    assert ds2.files[2][1] == train_ids
    np.testing.assert_array_equal(ds2.read_mask(2), _blocks([[0, 18, 255, 5]] * 2, 64, 64))
    save_indices(train_ids, _blocks([[19, 0, 0, 0]] * 2, 64, 64))
    with pytest.raises(DatasetError, match="19"):
        ds2.read_mask(2)
    assert DATASETS["cityscapes"](root, "train", {"mask": "labelids"}).files[2][1].name.endswith("_labelIds.png")
    with pytest.raises(DatasetError, match="unknown dataset option.*'typo'"):
        DATASETS["cityscapes"](root, "train", {"typo": 1})


def test_voc_palette_indices_boundary_and_sbd(synth_copy):
    root = synth_copy("voc")
    ds = DATASETS["voc"](root, "train")
    assert len(ds) == 6 and ds.classes[15] == "person"
    assert 255 in np.unique(ds.read_mask(0))  # synthetic VOC masks carry 255 outlines
    _overwrite(ds, 0, VOC_RAW, palette=voc_palette())
    with Image.open(ds.files[0][1]) as im:
        assert im.mode == "P"
    np.testing.assert_array_equal(ds.read_mask(0), _blocks(VOC_RAW, 64, 64))  # indices, not colours
    np.testing.assert_array_equal(ds.to_dataset_ids(np.array(VOC_RAW)), VOC_RAW)
    # RGB masks are refused, naming the file
    Image.fromarray(voc_palette()[ds.read_mask(1) % 256].astype(np.uint8)).save(ds.files[1][1])
    with pytest.raises(DatasetError, match=r"synth_train_00001\.png.*mode 'RGB'"):
        ds.read_mask(1)
    # SBD: aug.txt + SegmentationClassAug extend the train split only
    voc = root / "VOC2012"
    for k in range(2):
        save_rgb(voc / "JPEGImages" / f"sbd_{k}.jpg", 64, 64, seed=k)
        save_indices(voc / "SegmentationClassAug" / f"sbd_{k}.png", np.full((64, 64), 7))
    (voc / "ImageSets" / "Segmentation" / "aug.txt").write_text("sbd_0\nsbd_1\n")
    aug = DATASETS["voc"](root, "train")
    assert len(aug) == 8 and aug.files[-1][1].parent.name == "SegmentationClassAug"
    assert np.all(aug.read_mask(7) == 7)
    assert len(DATASETS["voc"](root, "val")) == 3
    assert len(DATASETS["voc"](root, "train", {"use_sbd": False})) == 6


def test_coco_stuff_182_ids_to_171(tmp_path):
    for k, raw in enumerate([COCO_RAW, [[11, 0, 0, 0], [90, 0, 0, 0]]]):
        save_rgb(tmp_path / "images" / "train2017" / f"{k:012d}.jpg", 16, 32, seed=k)
        save_indices(tmp_path / "annotations" / "train2017" / f"{k:012d}.png", _blocks(raw, 16, 32))
    ds = build_dataset(DatasetConfig(format="coco_stuff", root=tmp_path, train_split="train2017"), "train")
    assert len(ds.classes) == 171 and ds.classes[11] == "stop sign" and ds.classes[170] == "wood"
    np.testing.assert_array_equal(ds.read_mask(0), _blocks(COCO_TRAIN, 16, 32))
    np.testing.assert_array_equal(ds.to_dataset_ids(np.array(COCO_TRAIN)), COCO_RAW)
    with pytest.raises(DatasetError, match=r"000000000001\.png.*\{11, 90\}"):
        ds.read_mask(1)  # unused thing ids are not classes
    # mmseg's converted *_labelTrainIds.png is preferred when present
    save_indices(tmp_path / "annotations" / "train2017" / "000000000001_labelTrainIds.png",
                 _blocks([[170, 0, 255, 3]] * 2, 16, 32))
    ds2 = DATASETS["coco_stuff"](tmp_path, "train")  # "train" aliases train2017
    np.testing.assert_array_equal(ds2.read_mask(1), _blocks([[170, 0, 255, 3]] * 2, 16, 32))
    assert ds2.orphans == []


def test_gta5_palette_label_ids(tmp_path):
    for k in range(3):
        save_rgb(tmp_path / "images" / f"{k + 1:05d}.png", 16, 32, seed=k)
        save_indices(tmp_path / "labels" / f"{k + 1:05d}.png", _blocks(CS_RAW, 16, 32),
                     palette=np.concatenate([np.zeros((7, 3)), CITYSCAPES_PALETTE]))
    ds = DATASETS["gta5"](tmp_path, "all")
    assert len(ds) == 3 and ds.classes == list(CITYSCAPES_CLASSES)
    np.testing.assert_array_equal(ds.read_mask(0), _blocks(CS_TRAIN, 16, 32))
    np.testing.assert_array_equal(ds.to_dataset_ids(np.array([[13, 255]])), [[26, 0]])
    (tmp_path / "val.txt").write_text("00002\n")
    assert [p[0].name for p in DATASETS["gta5"](tmp_path, "val").files] == ["00002.png"]
    with pytest.raises(FileNotFoundError, match="split.mat"):
        DATASETS["gta5"](tmp_path, "train")


def test_folder_sample_dict_views_and_descriptor_errors(synth_copy):
    root = synth_copy("folder")
    ds = build_dataset(DatasetConfig(root=root), "train")
    s = ds[2]
    assert isinstance(s["image"], tv_tensors.Image) and s["image"].dtype == torch.uint8
    assert s["image"].shape == (3, 64, 64)
    assert isinstance(s["mask"], tv_tensors.Mask) and s["mask"].dtype == torch.int64
    assert s["path"] == "images/train/train_00002.png" and s["index"] == 2
    assert set(s["mask"].unique().tolist()) <= set(range(5))
    view = ds.select([4, 1])
    assert len(view) == 2 and view.classes == ds.classes and view[0]["path"] == ds[4]["path"]
    assert len(ds) == 6  # views do not change the parent
    t = ds.with_transform(lambda d: {**d, "seen": True})
    assert t[0]["seen"] and "seen" not in ds[0]
    (root / "dataset.yaml").write_text("classes: [a, b]\nclases: [c]\n")
    with pytest.raises(DatasetError, match=r"dataset\.yaml.*'clases'"):
        build_dataset(DatasetConfig(root=root), "train")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_dataset(DatasetConfig(root=root / "nowhere"), "train")


def test_build_dataset_generates_synthetic_once_under_a_race(tmp_path):
    cfg = DatasetConfig(root=tmp_path / "gen", synthetic=SynthConfig(classes=3, train=3, val=2, size=32))
    results, errors = [], []

    def build():
        try:
            results.append(len(build_dataset(cfg, "val")))
        except Exception as e:  # pragma: no cover - surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [2, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gen"]  # no temporary folder left behind
    with pytest.raises(ValueError, match="layout"):
        build_dataset(DatasetConfig(format="ade20k", root=tmp_path / "x", synthetic=SynthConfig()), "train")


def test_example_dataset_configs_validate():
    from pathlib import Path

    from encseg.config_io import read_yaml, validate

    configs = sorted(Path(__file__).parents[2].joinpath("configs", "datasets").glob("*.yaml"))
    formats = {validate(DatasetConfig, read_yaml(p), str(p)).format for p in configs}
    assert formats == set(DATASETS)
