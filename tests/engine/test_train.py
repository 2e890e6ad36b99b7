"""End-to-end behaviour of ``encseg train``: files, overfitting, determinism, resume after a kill, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from _tiny import tiny_config

from encseg.config import ConfigError
from encseg.config_io import load_run_config
from encseg.data.synthetic import write_synthetic
from encseg.engine import train as train_mod
from encseg.engine.loaders import ResumableLoader
from encseg.engine.rundir import RunDir
from encseg.engine.train import ZeroStepsError, train
from encseg.study.cost import estimate_cost


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "synth"
    write_synthetic(root, style="a", classes=4, train=8, val=5, size=64, seed=0)
    return root


def _run(cfg_dict, runs_root: Path) -> Path:
    return train(load_run_config(data=cfg_dict), runs_root, argv=["test"])


def test_run_directory_holds_every_file_the_study_needs(synth, tmp_path):
    rd = RunDir(_run(tiny_config(synth), tmp_path))
    for name in ["config.yaml", "env.json", "subset.txt", "history.csv", "model.safetensors", "model.json",
                 "summary.json", "DONE", "checkpoints/last.ckpt", "checkpoints/best.ckpt", "eval/synth.json",
                 "eval/synth_confusion.npy", "plots/loss.png", "plots/val_miou.png", "plots/confusion_synth.png"]:
        assert (rd.path / name).is_file(), name
    hist = pd.read_csv(rd.history_path)
    assert {"step", "epoch", "time_s", "lr", "loss", "val_miou", "val_loss"} <= set(hist.columns)
    assert hist["step"].max() == 20
    val = hist.dropna(subset=["val_miou"])
    assert list(val["step"]) == [10, 20]
    # validation is inference only by default: no dev loss (eval.val_loss off, the rule judges the dev mIoU)
    assert hist["val_loss"].isna().all()
    summary = json.loads(rd.summary_path.read_text())
    ev = json.loads(rd.eval_json("synth").read_text())
    assert summary["miou"] == ev["metrics"]["miou"]
    assert ev["num_images"] == 5 and len(ev["per_image_miou"]) == 5
    assert ev["protocol"]["mode"] == "whole"
    assert summary["params_total"] > summary["params_head"] > 0 and summary["gflops"] > 0
    # the default dev split (5 % of 8 -> 1 image) is held out of the train subset and watched during training
    dev = (rd.path / "dev_subset.txt").read_text().split()
    assert len(dev) == 1 and len(rd.subset_path.read_text().split()) == 7
    assert not set(dev) & set(rd.subset_path.read_text().split())
    assert summary["dev_images"] == 1 and summary["budget"] == "iters" and summary["max_iters"] == 20
    assert summary["iters_trained"] == 20 and summary["epochs_trained"] == 20 / 1 and summary["train_wall_s"] > 0
    assert isinstance(summary["converged"], bool) and summary["criterion"]["stopped_by"] == "schedule"
    env = json.loads(rd.env_path.read_text())
    assert env["versions"]["torch"] and env["end_time"]
    # a finished run is not trained again
    mtime = rd.done_path.stat().st_mtime
    _run(tiny_config(synth), tmp_path)
    assert rd.done_path.stat().st_mtime == mtime


@pytest.mark.slow
def test_tiny_model_overfits_eight_images(synth, tmp_path):
    cfg = tiny_config(synth, data={"dataset": {"val_split": "train", "dev_size": 0}},
                      train={"max_iters": 300, "lr": 2e-3, "val_every": 300})
    summary = json.loads(RunDir(_run(cfg, tmp_path)).summary_path.read_text())
    assert summary["miou"] >= 0.9, summary["miou"]


def test_same_seed_is_identical_and_other_seed_differs(synth, tmp_path):
    a = RunDir(_run(tiny_config(synth), tmp_path / "a"))
    b = RunDir(_run(tiny_config(synth), tmp_path / "b"))
    c = RunDir(_run(tiny_config(synth, seed=1), tmp_path / "c"))
    cm_a, cm_b, cm_c = (np.load(r.confusion_npy("synth")) for r in (a, b, c))
    np.testing.assert_array_equal(cm_a, cm_b)
    assert json.loads(a.eval_json("synth").read_text())["metrics"] == \
        json.loads(b.eval_json("synth").read_text())["metrics"]
    assert not np.array_equal(cm_a, cm_c)


def _cli(config: Path, runs_root: Path, *overrides: str) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "encseg.cli", "train", str(config), "--runs-root", str(runs_root),
                             *overrides],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    """Wait for a CLI run; on timeout kill its whole process group (DDP workers included)."""
    try:
        return proc.communicate(timeout=timeout)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _cli_run(cfg: dict, tmp_path: Path, timeout: float) -> RunDir:
    """``encseg train`` on ``cfg`` in a subprocess (DDP spawns its ranks from there); the finished run."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = _cli(path, tmp_path / "runs")
    out = _finish(proc, timeout)
    assert proc.returncode == 0, out[-4000:]
    return RunDir(next(p for p in (tmp_path / "runs").iterdir() if (p / "DONE").is_file()))


def _kill_then_resume(cfg: dict, tmp_path: Path, ready, timeout: float,
                      resume_overrides: tuple[str, ...] = ()) -> tuple[RunDir, RunDir]:
    """Run ``cfg`` once uninterrupted (the reference), then as a CLI process SIGKILLed as soon as ``ready(run_dir)``
    holds, then resumed to the end (with ``resume_overrides`` on its command line). Returns (reference, resumed);
    their confusion matrices are already equal."""
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    reference = RunDir(_run(cfg, tmp_path / "ref"))
    root = tmp_path / "killed"
    proc = _cli(path, root)
    rd = RunDir(root / reference.name)
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline and not ready(rd):
        time.sleep(0.2)
    assert proc.poll() is None, _finish(proc, 10)[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not rd.is_done()

    resumed = _cli(path, root, *resume_overrides)
    out = _finish(resumed, timeout)
    assert resumed.returncode == 0, out[-3000:]
    assert "resuming" in out
    assert rd.is_done()
    np.testing.assert_array_equal(np.load(rd.confusion_npy("synth")), np.load(reference.confusion_npy("synth")))
    return reference, rd


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(synth, tmp_path):
    cfg = tiny_config(synth, train={"max_iters": 30, "checkpoint_every": 5, "val_every": 15})
    _, rd = _kill_then_resume(cfg, tmp_path, lambda rd: rd.last_ckpt.is_file(), timeout=300)
    hist = pd.read_csv(rd.history_path)
    assert not hist.duplicated(subset=["step", "val_miou"]).any()


@pytest.mark.slow
def test_a_killed_run_resumes_under_operational_edits_to_the_same_result(synth, tmp_path):
    # the default checkpoint_every (None): last.ckpt is written at every validation
    cfg = tiny_config(synth, train={"max_iters": 30, "val_every": 10}, logging={"progress_bar": "auto"})
    reference, rd = _kill_then_resume(cfg, tmp_path, lambda rd: rd.last_ckpt.is_file(), timeout=300,
                                      resume_overrides=("train.log_every=10", "logging.progress_bar=off"))
    for name in ("synth.json", "val_confusion_last.npy"):
        assert (rd.eval_dir / name).read_bytes() == (reference.eval_dir / name).read_bytes(), name
    log = (rd.path / "train.log").read_text()
    assert "resuming with operational changes" in log
    assert "train.log_every: 5 -> 10" in log and "logging.progress_bar: 'auto' -> 'off'" in log
    assert load_run_config(rd.config_path).train.log_every == 10  # the record follows the run


def test_a_stored_run_is_reused_under_operational_edits_and_refused_under_others(synth, tmp_path):
    rd = RunDir(_run(tiny_config(synth), tmp_path))
    mtime = rd.done_path.stat().st_mtime
    assert _run(tiny_config(synth, train={"log_every": 10}), tmp_path) == rd.path
    assert rd.done_path.stat().st_mtime == mtime  # reused, not trained again
    with pytest.raises(ConfigError, match=r"already holds a finished run with a different config \(train\.lr\)"):
        _run(tiny_config(synth, train={"lr": 1e-3}), tmp_path)
    rd.done_path.unlink()  # a partial run: the same rule
    with pytest.raises(ConfigError, match=r"already holds a run with a different config \(train\.lr\)"):
        train_mod.resume_check(rd, load_run_config(data=tiny_config(synth, train={"lr": 1e-3})))
    previous, changes = train_mod.resume_check(rd, load_run_config(data=tiny_config(synth, train={"log_every": 10})))
    assert previous == rd.read_config() and changes == ["train.log_every: 5 -> 10"]


def test_a_resume_over_another_batch_split_must_keep_the_step_schedule(synth):
    from encseg.engine.schedule import schedule

    def cfg(devices: int, batch: int):
        return load_run_config(data=tiny_config(synth, data={"batch_size": batch}, train={"devices": devices}))

    one, two = cfg(1, 4), cfg(2, 2)
    train_mod.check_same_schedule(one, two, 8, schedule(two, 8))  # 2 steps an epoch either way
    with pytest.raises(ConfigError, match=r"changes the step schedule \(1 -> 2 steps per epoch"):
        train_mod.check_same_schedule(one, two, 7, schedule(two, 7))  # 7 // 4 = 1, but 4 per rank // 2 = 2


@pytest.mark.slow
def test_validation_falls_on_optimiser_steps_under_accumulation(synth, tmp_path):
    # 7 train images at batch 2: 3 batches an epoch, padded to 4 at accumulate 2, so 2 steps an epoch; counting
    # batches over the unpadded epochs validated at steps 4 and 8 instead of 3, 6 and 9
    cfg = tiny_config(synth, data={"batch_size": 2}, train={"accumulate": 2, "max_iters": 9, "val_every": 3})
    hist = pd.read_csv(RunDir(_run(cfg, tmp_path)).history_path)
    assert list(hist.dropna(subset=["val_miou"])["step"]) == [3, 6, 9]
    assert hist["step"].max() == 9


def _validated_past(step: int):
    def ready(rd: RunDir) -> bool:
        if not rd.history_path.is_file():
            return False
        return bool((pd.read_csv(rd.history_path).dropna(subset=["val_miou"])["step"] >= step).any())
    return ready


@pytest.mark.slow  # two subprocess runs and a SIGKILL
def test_converge_budget_killed_after_the_plateau_resumes_to_the_same_decisions_and_result(synth, tmp_path):
    # min_delta 0.5: only the first validation improves, so the plateau is declared at step 15 (patience 2),
    # the LR then decays to 0 over 15 steps and the run stops at step 30, well before max_iters (min_rise 0: the
    # curve never rises 0.05 above its first validation, and this test is about resume, not the rise guard)
    cfg = tiny_config(synth, train={"budget": "converge", "max_iters": 60, "val_every": 5, "checkpoint_every": 5,
                                    "converge": {"patience": 2, "min_delta": 0.5, "loss_min_delta": None,
                                                 "min_rise": 0.0, "anneal_fraction": 1.0}})
    # killed once the run has validated past the plateau, so the resumed run must restore the decision
    reference, rd = _kill_then_resume(cfg, tmp_path, _validated_past(20), timeout=600)
    ref = json.loads(reference.summary_path.read_text())
    assert ref["converged"] is True and ref["converged_iter"] == 15 and ref["iters_trained"] == 30
    assert ref["criterion"]["stopped_by"] == "criterion" and ref["epochs_to_converge"] == 15.0
    got = json.loads(rd.summary_path.read_text())
    for key in ("converged", "converged_iter", "iters_trained", "epochs_to_converge", "miou"):
        assert got[key] == ref[key], key
    lr = [pd.read_csv(r.history_path).dropna(subset=["lr"])[["step", "lr"]] for r in (rd, reference)]
    pd.testing.assert_frame_equal(lr[0].reset_index(drop=True), lr[1].reset_index(drop=True))


def test_config_typo_names_the_closest_key(synth):
    cfg = tiny_config(synth, train={"weight_decy": 1.0})
    with pytest.raises(ConfigError, match=r"unknown key 'train\.weight_decy' \(did you mean 'weight_decay'\?\)"):
        load_run_config(data=cfg)


def test_missing_dataset_root_fails_before_training(tmp_path):
    cfg = tiny_config(tmp_path / "nowhere")
    with pytest.raises((FileNotFoundError, ValueError), match="nowhere"):
        _run(cfg, tmp_path / "runs")
    assert not any((tmp_path / "runs").rglob("*.ckpt"))


def test_nan_loss_stops_with_step_terms_and_files(synth, tmp_path, monkeypatch):
    from encseg.engine.module import NonFiniteLossError
    from encseg.models.segmenter import Segmenter

    original = Segmenter.loss
    calls = {"n": 0}

    def poisoned(self, images, masks):
        out = original(self, images, masks)
        calls["n"] += 1
        if self.training and calls["n"] >= 3:
            out = dict(out, loss=out["loss"] * float("nan"))
        return out

    monkeypatch.setattr(Segmenter, "loss", poisoned)
    cfg = tiny_config(synth)
    with pytest.raises(NonFiniteLossError, match=r"step \d+.*terms.*batch files.*\.png"):
        _run(cfg, tmp_path)
    failed = next(tmp_path.glob("*/FAILED"))
    assert "NonFiniteLossError" in failed.read_text()


@pytest.mark.slow
def test_two_process_ddp_validation_counts_every_image_once(synth, tmp_path):
    """gloo DDP on CPU: the validation confusion matrix (summed over both ranks, 5 images split 3 + 2) equals
    a single-process evaluation of the same final weights on the same images."""
    # no dev split: validation during training is the val split, compared below with its single-process evaluation
    cfg = tiny_config(synth, data={"dataset": {"dev_size": 0}},
                      train={"devices": 2, "accelerator": "cpu", "max_iters": 4, "val_every": 4})
    rd = _cli_run(cfg, tmp_path, timeout=400)
    ddp_cm = np.load(rd.eval_dir / "val_confusion_last.npy")
    single_cm = np.load(rd.confusion_npy("synth"))
    assert ddp_cm.sum() == single_cm.sum() == 5 * 64 * 64
    np.testing.assert_array_equal(ddp_cm, single_cm)


@pytest.mark.slow
def test_planner_counts_the_steps_a_run_trains_with_accumulation(synth, tmp_path):
    """8 images at batch 1 with accumulate 3: batches 3 + 3 + 2 make 3 optimiser steps per epoch."""
    cfg = tiny_config(synth, data={"batch_size": 1},
                      train={"budget": "epochs", "max_epochs": 2, "accumulate": 3, "val_every": 1})
    planned = estimate_cost([load_run_config(data=cfg)]).cells[0].iterations
    rd = RunDir(_run(cfg, tmp_path))
    summary = json.loads(rd.summary_path.read_text())
    assert planned == summary["steps"] == 6
    assert summary["epochs"] == 2
    hist = pd.read_csv(rd.history_path)
    assert list(hist.dropna(subset=["val_miou"])["step"]) == [3, 6]


@pytest.mark.slow
def test_two_processes_train_what_the_planner_counts_when_a_rank_holds_less_than_a_batch(synth, tmp_path):
    """8 images over 2 processes at batch 5: each rank holds 4 images. Deciding drop_last on the whole dataset
    (8 >= 5) left every rank without a batch, and the untrained model was scored and marked DONE."""
    cfg = tiny_config(synth, data={"batch_size": 5, "dataset": {"dev_size": 0}},
                      train={"devices": 2, "accelerator": "cpu", "budget": "epochs", "max_epochs": 2,
                             "accumulate": 2, "val_every": 1})
    planned = estimate_cost([load_run_config(data=cfg)]).cells[0].iterations
    rd = _cli_run(cfg, tmp_path, timeout=400)
    assert planned == json.loads(rd.summary_path.read_text())["steps"] == 2


def test_a_run_that_makes_no_optimiser_step_fails_and_says_why(synth, tmp_path, monkeypatch):
    def no_batches(ds, data, seed, rank, world, accumulate):
        return ResumableLoader([], batch_size=data.batch_size)

    monkeypatch.setattr(train_mod, "train_loader", no_batches)
    with pytest.raises(ZeroStepsError, match="0 optimiser steps"):
        _run(tiny_config(synth), tmp_path)
    rd = RunDir(next(tmp_path.iterdir()))
    assert rd.state() == "failed" and not rd.summary_path.exists()
    line = rd.failure_line()
    # 8 train images, one of them held out as the dev split (dev_size 0.05)
    assert "ZeroStepsError" in line and "7 training image(s)" in line and "batch_size 4" in line


@pytest.mark.parametrize("budget", ["iters", "converge", "epochs"])
def test_only_an_epochs_budget_is_capped_by_max_epochs(synth, tmp_path, budget):
    # a converge cell on a small fraction (2 steps per epoch) must reach max_iters, not stop at max_epochs x 2
    from encseg.engine.schedule import schedule

    cfg = load_run_config(data=tiny_config(synth, train={"budget": budget, "max_iters": 500, "max_epochs": 3}))
    trainer = train_mod._trainer(cfg, RunDir(tmp_path / "run"), schedule(cfg, 8), [], False)
    assert trainer.max_epochs == (3 if budget == "epochs" else -1)
    assert trainer.max_steps == (500 if budget != "epochs" else 3 * 2)


def test_a_dev_split_smaller_than_the_process_count_is_refused_by_name():
    from encseg.errors import InputError

    train_mod.check_dev_split(2, 2)
    train_mod.check_dev_split(0, 8)  # no dev split: the val split is validated
    with pytest.raises(InputError, match=r"data\.dataset\.dev_size: the dev split has 1 image\(s\) for 2 processes"):
        train_mod.check_dev_split(1, 2)


def test_eval_val_loss_reports_the_dev_loss_without_changing_training(synth, tmp_path):
    plain = RunDir(_run(tiny_config(synth), tmp_path / "plain"))
    with_loss = RunDir(_run(tiny_config(synth, eval={"val_loss": True}), tmp_path / "loss"))
    hist = pd.read_csv(with_loss.history_path)
    val = hist.dropna(subset=["val_miou"])
    assert list(val["step"]) == [10, 20] and np.isfinite(val["val_loss"]).all() and (val["val_loss"] > 0).all()
    # the dev loss's point sampling runs on a forked RNG: the training after a validation is the same
    ref = pd.read_csv(plain.history_path)
    for col in ("loss", "val_miou"):
        pd.testing.assert_series_equal(hist[col], ref[col])
    assert (with_loss.path / "model.safetensors").read_bytes() == (plain.path / "model.safetensors").read_bytes()
