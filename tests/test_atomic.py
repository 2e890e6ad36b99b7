"""encseg.atomic: complete file or old file, never a partial one; strict JSON."""

import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from encseg.atomic import (
    atomic_save_fig,
    atomic_save_npy,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    read_json,
    to_jsonable,
)


def test_atomic_json_handles_nan_numpy_and_torch(tmp_path: Path):
    obj = {"a": float("nan"), "b": np.float32(0.5), "c": np.arange(3), "d": torch.tensor([1.5, float("inf")]),
           "e": {1: np.int64(7), "p": Path("/x")}, "f": (True, np.bool_(False))}
    p = atomic_write_json(tmp_path / "sub" / "x.json", obj)
    text = p.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": 0.5, "c": [0, 1, 2], "d": [1.5, None], "e": {"1": 7, "p": "/x"},
                                "f": [True, False]}
    assert read_json(p)["b"] == 0.5
    with pytest.raises(TypeError, match=r"object at \$.bad"):
        atomic_write_json(tmp_path / "y.json", {"bad": object()})
    assert not (tmp_path / "y.json").exists()


def test_atomic_write_leaves_no_temp_and_keeps_old_file_on_failure(tmp_path: Path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["f.txt"]
    umask = os.umask(0)
    os.umask(umask)
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode & stat.S_IRUSR and mode & stat.S_IWUSR and mode == 0o666 & ~umask


def test_atomic_npy_and_fig(tmp_path: Path):
    from matplotlib.figure import Figure
    from PIL import Image

    cm = np.arange(9, dtype=np.int64).reshape(3, 3)
    np.testing.assert_array_equal(np.load(atomic_save_npy(tmp_path / "cm.npy", cm)), cm)
    fig = Figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    with Image.open(atomic_save_fig(tmp_path / "p.png", fig)) as im:
        assert im.format == "PNG"


def test_read_json_errors_name_the_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_json(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        read_json(tmp_path / "bad.json")


def test_json_nan_roundtrip_is_null():
    assert to_jsonable([math.nan, -math.inf, 1]) == [None, None, 1]
