"""``study run``: every cell once, failures recorded, restart after a kill, worker processes, submitit."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

import encseg.study.launch as launch
from encseg.config import ConfigError
from encseg.engine.rundir import RunDir
from encseg.study.launch import run_cli, run_study

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # fake_train must be importable by the same name here and in child processes
from fake_train import fake_train, read_log  # noqa: E402


def _write_study(tmp_path: Path, fractions=(0.5, 1.0), seeds=(0, 1), **changes) -> Path:
    data = {
        "name": "mini",
        "out": str(tmp_path / "study"),
        "base": {"data": {"crop_size": 64, "base_size": 64}, "train": {"max_iters": 10}},
        "encoders": [{"label": "random", "encoder": {"weights": "none"}},
                     {"label": "other", "encoder": {"weights": "none", "drop_path_rate": 0.1}}],
        "train_datasets": [{"name": "synth_a", "root": str(tmp_path / "a")}],
        "fractions": list(fractions),
        "seeds": list(seeds),
        **changes,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    """Environment that reaches every process the launcher starts; returns the shared event log."""
    log = tmp_path / "train.log"
    monkeypatch.setenv("FAKE_TRAIN_LOG", str(log))
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "0")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    return log


def _runs(tmp_path: Path) -> dict[str, RunDir]:
    root = tmp_path / "study" / "runs"
    return {p.name: RunDir(p) for p in sorted(root.iterdir()) if p.is_dir()} if root.is_dir() else {}


def test_one_failing_cell_is_recorded_and_the_others_finish(tmp_path, fake_env, monkeypatch, capsys):
    path = _write_study(tmp_path)
    bad = "synth_a__other__finetune__f050__ss1__s1"  # per-seed subsets: subset_seed 1
    monkeypatch.setenv("FAKE_TRAIN_FAIL", bad)
    monkeypatch.setattr(launch, "_default_train", lambda: fake_train)  # what `encseg study run` calls

    assert run_cli(path) == 1
    runs = _runs(tmp_path)
    assert len(runs) == 8
    assert {name for name, rd in runs.items() if rd.state() != "done"} == {bad}
    assert runs[bad].state() == "failed" and f"RuntimeError: boom in {bad}" in runs[bad].failed_path.read_text()
    out = capsys.readouterr().out
    assert "7 done, 1 failed, 0 skipped" in out and f"FAILED {bad}: RuntimeError: boom in {bad}" in out
    saved = yaml.safe_load((tmp_path / "study" / "study.yaml").read_text())
    assert saved["name"] == "mini" and saved["out"] == str(tmp_path / "study")

    # the next invocation retries only the failed cell; once it succeeds its FAILED record is gone
    monkeypatch.setenv("FAKE_TRAIN_FAIL", "")
    summary = run_study(path, train_fn=fake_train)
    assert summary["done"] == [bad] and len(summary["skipped"]) == 7 and not summary["failed"]
    assert runs[bad].state() == "done" and not runs[bad].failed_path.exists()
    assert Counter(e[1] for e in read_log(fake_env) if e[0] == "end") == Counter(list(runs))


def test_train_that_returns_without_done_counts_as_failed(tmp_path, fake_env):
    def forgetful(cfg, runs_root):
        (Path(runs_root) / "x").mkdir(parents=True, exist_ok=True)

    summary = run_study(_write_study(tmp_path, fractions=[1.0], seeds=[0]), train_fn=forgetful)
    assert len(summary["failed"]) == 2
    assert all("without writing" in line for line in summary["failed"].values())


_RUN_STUDY = """
import sys
from encseg.study.launch import run_study
from fake_train import fake_train
run_study(sys.argv[1], train_fn=fake_train)
"""


@pytest.mark.slow
def test_kill_and_restart_finishes_without_redoing_or_losing_results(tmp_path, fake_env, monkeypatch):
    path = _write_study(tmp_path, fractions=[0.5, 1.0], seeds=[0, 1, 2])  # 12 cells
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "0.3")
    proc = subprocess.Popen([sys.executable, "-c", _RUN_STUDY, str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30

    def killed_mid_study() -> bool:  # a cell finished and the next one has saved a checkpoint
        states = [(rd.is_done(), rd.last_ckpt.is_file()) for rd in _runs(tmp_path).values()]
        return any(done for done, _ in states) and any(ckpt and not done for done, ckpt in states)

    while not killed_mid_study():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the study never got past its first cell"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()

    before = _runs(tmp_path)
    done_before = {name: rd.summary_path.read_bytes() for name, rd in before.items() if rd.is_done()}
    checkpointed = {name for name, rd in before.items() if rd.last_ckpt.is_file() and not rd.is_done()}
    assert 1 <= len(done_before) < 12 and checkpointed

    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "0")
    summary = run_study(path, train_fn=fake_train)
    assert sorted(summary["skipped"]) == sorted(done_before) and not summary["failed"]

    after = _runs(tmp_path)
    assert len(after) == 12 and all(rd.is_done() for rd in after.values())
    # finished results are untouched: the same bytes, written by the first session
    assert {name: after[name].summary_path.read_bytes() for name in done_before} == done_before
    events = read_log(fake_env)
    starts = Counter(e[1] for e in events if e[0] == "start")
    ends = Counter(e[1] for e in events if e[0] == "end")
    assert ends == Counter(list(after))  # every cell trained to the end exactly once
    assert all(starts[name] == 1 for name in done_before)
    # a cell interrupted after its first checkpoint was resumed, not started over; no cell ran a third time
    for name in checkpointed:
        assert [e[2] for e in events if e[:2] == ["start", name]] == ["resumed=0", "resumed=1"]
    assert all(c <= 2 for c in starts.values())


@pytest.mark.slow
def test_parallel_jobs_share_out_gpus_round_robin(tmp_path, fake_env, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setenv("FAKE_TRAIN_SLEEP", "0.5")
    summary = run_study(_write_study(tmp_path, fractions=[1.0], seeds=[0, 1]), jobs=2, train_fn=fake_train)
    assert len(summary["done"]) == 4 and not summary["failed"]
    assert all(rd.is_done() for rd in _runs(tmp_path).values())
    events = read_log(fake_env)
    assert {e[3] for e in events if e[0] == "start"} == {"gpu=3", "gpu=5"}
    # two cells were in flight at once: a second start came before the first end
    first_end = next(i for i, e in enumerate(events) if e[0] == "end")
    assert sum(e[0] == "start" for e in events[:first_end]) == 2


def test_parallel_workers_are_reused_and_a_dead_worker_loses_only_its_cell(tmp_path, fake_env, monkeypatch):
    path = _write_study(tmp_path, fractions=[0.5, 1.0], seeds=[0, 1, 2])  # 12 cells on 2 workers
    crashing = "synth_a__other__finetune__f050__ss1__s1"
    monkeypatch.setenv("FAKE_TRAIN_CRASH", crashing)
    summary = run_study(path, jobs=2, train_fn=fake_train)
    assert list(summary["failed"]) == [crashing] and len(summary["done"]) == 11
    assert "worker process exited with code 3" in _runs(tmp_path)[crashing].failure_line()
    pids = {json.loads(rd.summary_path.read_text())["pid"] for rd in _runs(tmp_path).values() if rd.is_done()}
    # one process per slot, plus the one that replaced the dead worker: not one per cell
    assert 2 <= len(pids) <= 3 and os.getpid() not in pids


@pytest.mark.slow
def test_submitit_local_array_runs_cells_and_records_job_ids(tmp_path, fake_env, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    path = _write_study(tmp_path, fractions=[1.0], seeds=[0])
    summary = run_study(path, launcher="submitit-local", train_fn=fake_train)
    runs = _runs(tmp_path)
    assert len(runs) == 2 and all(rd.is_done() for rd in runs.values())
    assert sorted(summary["done"]) == sorted(runs) and not summary["failed"]
    record = json.loads((tmp_path / "study" / "slurm_jobs.json").read_text())
    jobs = record["submissions"][0]["jobs"]
    assert sorted(j["run_id"] for j in jobs) == sorted(runs) and all(j["job_id"] for j in jobs)
    # the requeue path: checkpoint() hands submitit the same cell again
    job = launch.CellJob(tmp_path / "study" / "runs", fake_train)
    cfg = launch.expand(launch.load_study(path))[0]
    delayed = job.checkpoint(cfg)
    assert isinstance(delayed.function, launch.CellJob) and delayed.args == (cfg,)
    assert delayed.function(cfg) == "skipped"  # rerunning a finished cell does not train it again


def test_dry_run_writes_nothing_and_names_what_would_run(tmp_path, fake_env, capsys):
    path = _write_study(tmp_path, fractions=[1.0], seeds=[0])
    run_study(path, train_fn=fake_train)
    (tmp_path / "study" / "runs" / "synth_a__other__finetune__f100__s0" / "DONE").unlink()
    path = _write_study(tmp_path, fractions=[1.0], seeds=[0, 1])
    summary = run_study(path, launcher="slurm", dry_run=True)
    out = capsys.readouterr().out
    assert "would resume synth_a__other__finetune__f100__s0" in out
    assert "would train  synth_a__random__finetune__f100__ss1__s1" in out and "'gpus_per_node': 1" in out
    assert summary["skipped"] == ["synth_a__random__finetune__f100__s0"] and len(summary["todo"]) == 3
    assert len(read_log(fake_env)) == 4  # only the first, real run trained


def test_edited_settings_after_finished_runs_are_refused(tmp_path, fake_env):
    run_study(_write_study(tmp_path, fractions=[1.0], seeds=[0]), train_fn=fake_train)
    edited = _write_study(tmp_path, fractions=[1.0], seeds=[0], base={"train": {"max_iters": 11}})
    with pytest.raises(ConfigError, match="train.max_iters"):
        run_study(edited, train_fn=fake_train)
