import json
import math
import os
import stat
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from encseg.config import ConfigError, load_run_config
from encseg.engine import rundir as rd_mod
from encseg.engine.rundir import (
    RunDir,
    atomic_save_fig,
    atomic_save_npy,
    atomic_write_json,
    atomic_write_text,
    finish_env,
    fraction_tag,
    read_json,
    run_id,
    write_env,
)


def make_cfg(**over):
    data = {"data": {"dataset": {"name": "synth_a", "root": "/tmp/x"}}}
    overrides = [f"{k}={v}" for k, v in over.items()]
    return load_run_config(data=data, overrides=overrides)


# ------------------------------------------------------------------------------------------ run id
def test_run_id_example_from_the_contract():
    cfg = make_cfg(**{"tags.encoder": "pretrained_b", "data.fraction": 0.1})
    assert run_id(cfg) == "synth_a__pretrained_b__finetune__f010__s0"


def test_run_id_parts_distinguish_runs():
    base = {"data.fraction": 0.005, "model.encoder.name": "vit_small_patch16_224.augreg_in21k"}
    ids = {
        run_id(make_cfg(**base)),
        run_id(make_cfg(**base, seed=1)),
        run_id(make_cfg(**base, **{"data.subset_seed": 2})),
        run_id(make_cfg(**base, **{"model.regime.mode": "frozen"})),
        run_id(make_cfg(**base, **{"model.regime.mode": "last_n", "model.regime.last_n": 4})),
        run_id(make_cfg(**base, **{"model.head.type": "linear"})),
        run_id(make_cfg(**{**base, "data.fraction": 0.5})),
    }
    assert len(ids) == 7
    assert "synth_a__vit_small_patch16_224.augreg_in21k__last4__f000.5__s0" in ids
    assert "synth_a__vit_small_patch16_224.augreg_in21k__finetune__linear__f000.5__s0" in ids
    assert "synth_a__vit_small_patch16_224.augreg_in21k__finetune__f000.5__ss2__s0" in ids
    assert all(not rd_mod._SAFE.search(i) for i in ids)


def test_run_id_sanitises_labels_and_honours_name():
    cfg = make_cfg(**{"tags.encoder": "hf:org/model v2"})
    assert run_id(cfg) == "synth_a__hf-org-model-v2__finetune__f100__s0"
    assert run_id(make_cfg(name="my_run")) == "my_run"
    with pytest.raises(ConfigError, match="my:run"):
        run_id(make_cfg(name="'my:run'"))


@pytest.mark.parametrize("fraction,tag", [(1.0, "f100"), (0.1, "f010"), (0.01, "f001"), (0.005, "f000.5"),
                                          (0.125, "f012.5"), (1 / 3, "f033.3333")])
def test_fraction_tag(fraction, tag):
    assert fraction_tag(fraction) == tag


# ------------------------------------------------------------------------------------------ atomic
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
        rd_mod._atomic_write(target, boom)
    assert target.read_text() == "old"
    assert sorted(os.listdir(tmp_path)) == ["f.txt"]
    mode = stat.S_IMODE(target.stat().st_mode)
    assert mode & stat.S_IRUSR and mode & stat.S_IWUSR and mode == 0o666 & ~rd_mod._UMASK


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


# ------------------------------------------------------------------------------------------ RunDir
def test_rundir_paths_and_state_machine(tmp_path: Path):
    cfg = make_cfg(**{"tags.encoder": "enc"})
    rd = RunDir.for_config(tmp_path, cfg)
    assert rd.path == tmp_path / run_id(cfg)
    assert rd.state() == "new"
    assert rd.last_ckpt == rd.path / "checkpoints" / "last.ckpt" and rd.best_ckpt.parent == rd.checkpoints
    assert rd.eval_json("ade20k") == rd.path / "eval" / "ade20k.json"
    assert rd.confusion_npy("ade20k") == rd.path / "eval" / "ade20k_confusion.npy"
    assert rd.model_dir == rd.path and rd.plots_dir == rd.path / "plots"
    with pytest.raises(ValueError, match="../x"):
        rd.eval_json("../x")

    rd.write_config(cfg)
    assert rd.state() == "partial"
    assert rd.read_config() == cfg

    try:
        raise RuntimeError("loss is NaN at step 12")
    except RuntimeError as e:
        rd.mark_failed(e)
    assert rd.state() == "failed"
    text = rd.failed_path.read_text()
    assert "RuntimeError: loss is NaN at step 12" in text and "Traceback" in text and "test_rundir.py" in text
    rd.clear_failed()
    assert rd.state() == "partial" and not rd.is_done()

    rd.mark_failed(ValueError("again"))
    rd.mark_done()
    assert rd.state() == "done" and rd.is_done() and not rd.failed_path.exists()
    assert rd.done_path.read_text().strip()[:4].isdigit()  # a timestamp


def test_read_config_missing_names_the_dir(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        RunDir(tmp_path / "r").read_config()


# ------------------------------------------------------------------------------------------ env.json
def test_write_env_and_finish(tmp_path: Path):
    rd = RunDir(tmp_path / "run")
    env = write_env(rd, ["encseg", "train", "a b.yaml"], extra={"rank": 0})
    on_disk = read_json(rd.env_path)
    assert on_disk["command"] == "encseg train 'a b.yaml'"
    assert on_disk["versions"]["torch"] == metadata.version("torch")
    for key in ("timm", "transformers", "lightning", "torchmetrics", "numpy", "encseg"):
        assert on_disk["versions"][key], key
    assert on_disk["cuda"]["available"] == torch.cuda.is_available()
    assert on_disk["host"] and on_disk["python"] and on_disk["start_time"] and on_disk["rank"] == 0
    assert on_disk["end_time"] is None and env["start_unix"] == on_disk["start_unix"]
    # this checkout is a git repository that tracks the package
    assert on_disk["git"] is None or len(on_disk["git_commit"]) == 40

    done = finish_env(rd)
    assert done["end_time"] and done["duration_s"] >= 0
    # a resumed run keeps the earlier session
    again = write_env(rd, ["encseg", "train", "resume"])
    assert again["previous_sessions"][0]["command"] == "encseg train 'a b.yaml'"
    assert again["previous_sessions"][0]["end_time"] == done["end_time"]


def test_git_commit_outside_a_checkout_is_none(tmp_path: Path):
    assert rd_mod.git_commit(tmp_path) is None


def test_git_commit_of_this_checkout():
    src = Path(rd_mod.__file__).resolve().parents[1]
    info = rd_mod.git_commit()
    if not (src.parents[1] / ".git").exists():
        pytest.skip("the sources are not a git checkout here")
    assert info is not None and len(info["commit"]) == 40 and isinstance(info["dirty"], bool)


def test_json_nan_roundtrip_is_null():
    assert rd_mod.to_jsonable([math.nan, -math.inf, 1]) == [None, None, 1]
