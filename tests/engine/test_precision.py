"""One precision per run: training, the final evaluation, the latency record, ``encseg eval`` and ``predict``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _tiny import tiny_config

from encseg.cli import main
from encseg.config_io import load_run_config
from encseg.data.synthetic import write_synthetic
from encseg.engine import precision
from encseg.engine.rundir import RunDir
from encseg.engine.train import train


@pytest.mark.parametrize("setting,device,resolved", [
    ("auto", "cpu", "32-true"), ("auto", "cuda", "bf16-mixed"), ("auto", "gpu", "bf16-mixed"),
    ("32", "cuda", "32-true"), ("bf16-mixed", "cpu", "bf16-mixed"), ("16-mixed", "cuda", "16-mixed")])
def test_resolve_maps_the_setting_to_the_device(setting, device, resolved):
    assert precision.resolve(setting, device) == resolved


def test_resolve_refuses_an_unknown_precision():
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        precision.resolve("fp8", "cpu")


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory) -> tuple[RunDir, Path]:
    tmp = tmp_path_factory.mktemp("bf16")
    write_synthetic(tmp / "a", style="a", classes=4, train=8, val=2, size=64, seed=0)
    cfg = tiny_config(tmp / "a", data={"dataset": {"dev_size": 0}},
                      train={"precision": "bf16-mixed", "max_iters": 4, "val_every": 4},
                      eval={"latency_iters": 2})
    rd = RunDir(train(load_run_config(data=cfg), tmp / "runs", argv=["test"]))
    ds_yaml = tmp / "a.yaml"
    ds_yaml.write_text(json.dumps({"name": "synth", "format": "folder", "root": str(tmp / "a")}))
    return rd, ds_yaml


def test_a_bf16_run_scores_and_times_itself_under_bf16(bf16_run):
    rd, _ = bf16_run
    summary = json.loads(rd.summary_path.read_text())
    assert summary["precision"] == summary["latency_precision"] == "bf16-mixed"
    assert summary["latency_device"] == "cpu" and summary["infer_ms_per_image"] > 0
    assert json.loads(rd.eval_json("synth").read_text())["protocol"]["precision"] == "bf16-mixed"


def test_encseg_eval_uses_the_runs_precision_unless_asked(bf16_run):
    rd, ds_yaml = bf16_run
    own = json.loads(rd.eval_json("synth").read_text())
    assert main(["eval", str(rd.path), "--dataset", str(ds_yaml)]) == 0
    again = json.loads(rd.eval_json("synth").read_text())
    assert again["protocol"] == own["protocol"] and again["metrics"] == own["metrics"]
    # fp32 for a bit-exact check: another protocol, so it goes to eval/extra and never replaces the run's number
    assert main(["eval", str(rd.path), "--dataset", str(ds_yaml), "--precision", "32"]) == 0
    fp32 = json.loads((rd.eval_dir / "extra" / "synth__val__whole_32-true.json").read_text())
    assert fp32["protocol"]["precision"] == "32-true"
    assert json.loads(rd.eval_json("synth").read_text())["protocol"]["precision"] == "bf16-mixed"


def test_predict_runs_under_the_runs_precision(bf16_run, tmp_path, capsys):
    rd, ds_yaml = bf16_run
    image = next((ds_yaml.parent / "a" / "images" / "val").glob("*.png"))
    assert main(["predict", str(rd.path), str(image), "--out", str(tmp_path / "p")]) == 0
    assert "bf16-mixed" in capsys.readouterr().err
    assert main(["predict", str(rd.path), str(image), "--out", str(tmp_path / "q"), "--precision", "32"]) == 0
    assert "32-true" in capsys.readouterr().err
