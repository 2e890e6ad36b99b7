"""Aggregation of run directories written in the engine's contract format."""

import json

import numpy as np
import pytest
from _fake_runs import FakeEval, make_config, write_run

from encseg.study.aggregate import (
    RESULT_COLUMNS,
    StudyDataError,
    collect_confusions,
    collect_failures,
    collect_histories,
    collect_incomplete,
    collect_per_class,
    collect_protocol,
    collect_results,
    image_area_reader,
)


@pytest.fixture
def study(tmp_path):
    runs = tmp_path / "runs"
    for seed in (0, 1):
        write_run(runs, make_config("random", fraction=0.1, seed=seed),
                  evals={"synth_a": FakeEval(0.40 + seed / 100, per_image_miou=[0.3, None, 0.5],
                                             areas=(AREAS[0] + seed, AREAS[1] + seed)),
                         "synth_b": FakeEval(0.20, cross={"train_dataset": "synth_a",
                                                          "shared_classes": CLS})})
        write_run(runs, make_config("pretrained_b", fraction=0.1, seed=seed, weights="/w/b.safetensors"),
                  evals={"synth_a": FakeEval(0.55), "synth_b": FakeEval(0.35)})
    write_run(runs, make_config("pretrained_b", "frozen", fraction=0.1, seed=0), state="failed",
              error="ValueError: weights file not found: /w/b.safetensors")
    write_run(runs, make_config("random", fraction=1.0, seed=0), state="partial")
    return tmp_path


CLS = ["background", "square"]
AREAS = (np.array([[3, 0], [0, 0], [5, 1]]), np.array([[10, 2], [0, 0], [8, 4]]))  # 3 images x 2 classes


def test_results_one_row_per_done_run_and_eval(study):
    df = collect_results(study)
    assert list(df.columns) == RESULT_COLUMNS
    assert len(df) == 4 * 2  # 4 DONE runs x 2 eval datasets; failed and partial runs are not results
    assert set(df["encoder"]) == {"random", "pretrained_b"}
    assert set(df["regime"]) == {"finetune"}
    assert df["cross"].tolist() == (df["eval_dataset"] != "synth_a").tolist()
    row = df[(df["encoder"] == "random") & (df["seed"] == 1) & (df["eval_dataset"] == "synth_a")].iloc[0]
    assert row["miou"] == pytest.approx(0.41) and row["macc"] == pytest.approx(0.46)
    assert row["fraction"] == 0.1 and row["train_dataset"] == "synth_a" and row["encoder_name"] == "vit_test"
    assert row["epochs_to_converge"] == 5.0 and row["gflops"] == 1.5 and row["params_trainable"] == 5e6
    assert np.isnan(row["peak_mem_mb"])  # null in summary.json -> NaN
    assert set(df.loc[df["encoder"] == "pretrained_b", "weights"]) == {"/w/b.safetensors"}


def test_failures_incomplete_and_long_tables(study):
    fail = collect_failures(study)
    assert len(fail) == 1
    assert fail.iloc[0]["error"] == "ValueError: weights file not found: /w/b.safetensors"
    assert fail.iloc[0]["encoder"] == "pretrained_b" and fail.iloc[0]["regime"] == "frozen"
    inc = collect_incomplete(study)
    assert len(inc) == 1 and inc.iloc[0]["fraction"] == 1.0 and "no DONE" in inc.iloc[0]["reason"]

    pc = collect_per_class(study)
    assert {"run_id", "eval_dataset", "class", "iou"} <= set(pc.columns)
    assert len(pc) == 4 * 4 + 4 * 4  # synth_a has 4 classes; synth_b too (FakeEval default classes)
    own = pc[(pc["encoder"] == "pretrained_b") & (pc["eval_dataset"] == "synth_a")]
    assert own.groupby("run_id")["iou"].mean().to_numpy() == pytest.approx([0.55, 0.55])

    read = image_area_reader(study)
    rid = collect_results(study).query("encoder == 'random' and seed == 1")["run_id"].iloc[0]
    inter, union = read(rid, "synth_a")
    assert inter.tolist() == (AREAS[0] + 1).tolist() and union.tolist() == (AREAS[1] + 1).tolist()
    assert read(rid, "synth_b") is None  # a run whose evaluation stored no areas (an older run directory)
    assert read("synth_a__random__finetune__f100__s0", "synth_a") is None  # not finished

    hist = collect_histories(study)
    assert set(hist["run_id"]) == set(collect_results(study)["run_id"])
    assert {"encoder", "seed", "step", "loss", "val_miou"} <= set(hist.columns)

    proto = collect_protocol(study)
    assert set(proto["eval_mode"]) == {"whole"} and set(proto["budget"]) == {"iters"}


def test_failed_marker_with_bare_traceback_reports_the_exception(tmp_path):
    rd = write_run(tmp_path / "runs", make_config(), state="failed")
    (rd / "FAILED").write_text("Traceback (most recent call last):\n  File \"x.py\", line 3\n"
                               "KeyError: 'lr'\n")
    assert collect_failures(tmp_path).iloc[0]["error"] == "KeyError: 'lr'"


def test_done_run_with_bad_files_names_the_file(tmp_path):
    rd = write_run(tmp_path / "runs", make_config())
    (rd / "summary.json").unlink()
    with pytest.raises(StudyDataError, match="summary.json"):
        collect_results(tmp_path)
    write_run(tmp_path / "runs", make_config())
    ev = rd / "eval" / "synth_a.json"
    data = json.loads(ev.read_text())
    del data["metrics"]["fwiou"]
    ev.write_text(json.dumps(data))
    with pytest.raises(StudyDataError, match=r"synth_a\.json.*'fwiou'"):
        collect_results(tmp_path)


def test_missing_study_dir_and_confusions(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        collect_results(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="runs"):
        collect_results(tmp_path)
    rd = write_run(tmp_path / "runs", make_config(), evals={"synth_a": FakeEval(0.5),
                                                            "synth_b": FakeEval(0.3, write_confusion=False)})
    got = collect_confusions(tmp_path, [(rd.name, "synth_a"), (rd.name, "synth_b")])
    assert list(got) == [(rd.name, "synth_a")]  # the missing matrix is left out, not an error
    cm, classes = got[(rd.name, "synth_a")]
    assert cm.shape == (4, 4) and classes[0] == "background"
