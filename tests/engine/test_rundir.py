from pathlib import Path

import pytest

from encseg.config import ConfigError
from encseg.config_io import load_run_config
from encseg.engine import rundir as rd_mod
from encseg.engine.rundir import RunDir, fraction_tag, run_id


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


# ------------------------------------------------------------------------------------------ RunDir
def test_rundir_paths_and_state_machine(tmp_path: Path):
    cfg = make_cfg(**{"tags.encoder": "enc"})
    rd = RunDir(tmp_path / run_id(cfg))
    assert rd.path == tmp_path / run_id(cfg)
    assert rd.state() == "new"
    assert rd.last_ckpt == rd.path / "checkpoints" / "last.ckpt" and rd.best_ckpt.parent == rd.checkpoints
    assert rd.eval_json("ade20k") == rd.path / "eval" / "ade20k.json"
    assert rd.confusion_npy("ade20k") == rd.path / "eval" / "ade20k_confusion.npy"
    assert rd.plots_dir == rd.path / "plots"
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
    assert rd.failure_line() == "RuntimeError: loss is NaN at step 12"
    rd.clear_failed()
    assert rd.state() == "partial" and not rd.is_done()
    assert rd.failure_line() == "no FAILED record"

    rd.mark_failed(ValueError("again"))
    rd.mark_done()
    assert rd.state() == "done" and rd.is_done() and not rd.failed_path.exists()
    assert rd.done_path.read_text().strip()[:4].isdigit()  # a timestamp


def test_read_config_missing_names_the_dir(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        RunDir(tmp_path / "r").read_config()


def test_failure_line_of_a_bare_traceback_or_an_empty_marker(tmp_path: Path):
    rd = RunDir(tmp_path / "r")
    rd.path.mkdir()
    rd.failed_path.write_text("Traceback (most recent call last):\n  File x\nKeyError: 'k'\n")
    assert rd.failure_line() == "KeyError: 'k'"
    rd.failed_path.write_text("2026-01-01T00:00:00+00:00\n\n")
    assert rd.failure_line() == "(FAILED marker without a message)"


# ----------------------------------------------------------------------------- what changes a result
def test_operational_settings_do_not_change_the_result():
    old = make_cfg()
    new = make_cfg(**{"train.log_every": 10, "logging.progress_bar": "off", "data.num_workers": 0,
                      "train.checkpoint_every": 7, "logging.tensorboard": True, "eval.val_loss": True})
    assert rd_mod.config_diff(old, new) and rd_mod.result_diff(old, new) == []
    assert rd_mod.result_diff(old, make_cfg(**{"train.lr": 1e-3, "train.log_every": 10})) == ["train.lr"]


def test_the_batch_split_is_operational_only_at_the_same_global_batch():
    one = make_cfg(**{"data.batch_size": 8})
    assert rd_mod.result_diff(one, make_cfg(**{"train.devices": 2, "data.batch_size": 4})) == []
    assert rd_mod.result_diff(one, make_cfg(**{"train.devices": 2, "train.num_nodes": 2, "data.batch_size": 2})) == []
    assert rd_mod.result_diff(one, make_cfg(**{"train.devices": 2, "data.batch_size": 8})) == ["train.devices"]
    assert rd_mod.result_diff(one, make_cfg(**{"data.batch_size": 4, "train.accumulate": 2})) == []
    assert rd_mod.result_diff(one, make_cfg(**{"data.batch_size": 8, "train.accumulate": 2})) == ["train.accumulate"]
