"""What a study's SLURM job does without a cluster: a failed cell fails the job, keeping the cell's own error;
Lightning runs in SLURM's environment with its auto-requeue off (the run directory is the one resume path)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import yaml
from lightning.fabric.plugins.environments import SLURMEnvironment

import encseg.study.launch as launch
from encseg.engine.rundir import RunDir
from encseg.engine.train import _cluster_plugins

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from fake_train import fake_train  # noqa: E402


def _study(tmp_path: Path) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({
        "name": "mini", "out": str(tmp_path / "study"),
        "base": {"data": {"crop_size": 64, "base_size": 64}, "train": {"max_iters": 10}},
        "encoders": [{"label": "random", "encoder": {"weights": "none"}}],
        "train_datasets": [{"name": "synth_a", "root": str(tmp_path / "a")}]}))
    return path


def test_failed_cell_fails_its_job_with_the_cells_error(tmp_path, monkeypatch):
    cfg = launch.expand(launch.load_study(_study(tmp_path)))[0]
    runs = tmp_path / "study" / "runs"
    rd = RunDir(runs / launch.run_id(cfg))
    monkeypatch.setenv("FAKE_TRAIN_FAIL", rd.name)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    with pytest.raises(launch.CellFailed, match=f"RuntimeError: boom in {rd.name}"):
        launch.CellJob(runs, fake_train)(cfg)
    assert rd.state() == "failed" and f"boom in {rd.name}" in rd.failed_path.read_text()

    # submitted through submitit, the job's error does not replace the cell's record
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    summary = launch.run_study(_study(tmp_path), launcher="submitit-local", train_fn=fake_train)
    assert summary["failed"] == {rd.name: f"RuntimeError: boom in {rd.name}"}
    assert "submitit job" not in rd.failed_path.read_text()


def test_lightning_uses_slurm_ranks_without_its_own_requeue(monkeypatch):
    for key in ("SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_JOB_NAME", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    assert _cluster_plugins() == []
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    monkeypatch.setenv("SLURM_JOB_NAME", "encseg-mini")
    (env,) = _cluster_plugins()
    assert isinstance(env, SLURMEnvironment) and not env.auto_requeue
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # an interactive allocation: Lightning's own choice
    assert _cluster_plugins() == []
