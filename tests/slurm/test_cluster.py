"""``study run --launcher slurm`` against a real one-node SLURM cluster: the array job, a failing cell,
``scontrol requeue``, a time limit hit mid-run, and one run as two ``srun`` tasks (gloo DDP).

The requeued cell has the same config as the array study's ``random`` cell (tiny model, 12 steps, a checkpoint
every 2), so the array study is its uninterrupted reference; the time-limit cell is longer and has its own.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from encseg.data.synthetic import write_synthetic
from encseg.engine.rundir import RunDir

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from _tiny import tiny_config  # noqa: E402

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]

CELL = "synth__random__finetune__f100__s0"
BROKEN = "synth__broken__finetune__f100__s0"
TRAIN = {"max_iters": 12, "checkpoint_every": 2, "val_every": 6}
# long enough that the cell is still training when the lowered limit's USR2 arrives, even on an idle machine
LONG_TRAIN = {"max_iters": 3000, "checkpoint_every": 5, "val_every": 1500}
WAIT_S = 1500  # generous: the test machine may be shared; a tiny cell takes well under a minute alone


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "synth"
    write_synthetic(root, style="a", classes=4, train=8, val=5, size=64, seed=0)
    return root


@pytest.fixture(scope="module", autouse=True)
def _one_thread_per_cell():
    # jobs inherit the submitting environment; each cell gets one of the node's cores
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield
    if old is None:
        os.environ.pop("OMP_NUM_THREADS")
    else:
        os.environ["OMP_NUM_THREADS"] = old


def _write_study(tmp: Path, synth: Path, name: str, broken: bool = False, train: dict = TRAIN) -> Path:
    encoders = [{"label": "random", "encoder": {"weights": "none"}}]
    if broken:
        encoders.append({"label": "broken", "encoder": {"weights": str(tmp / "missing_encoder.safetensors")}})
    data = {"name": name, "out": str(tmp / name), "base": tiny_config(synth, train=train),
            "encoders": encoders, "seeds": [0],
            "slurm": {"gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 2, "timeout_min": 30}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _encseg(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "encseg.cli", *args], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _job_ids(study_out: Path) -> dict[str, str]:
    record = json.loads((study_out / "slurm_jobs.json").read_text())
    return {j["run_id"]: j["job_id"] for j in record["submissions"][-1]["jobs"]}


def _squeue(job: str) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %j %T"], capture_output=True, text=True)
    return out.stdout.strip().splitlines()


def _show_job(job: str) -> dict[str, str]:
    """``scontrol show job`` as key -> value (finished jobs stay there for the cluster's MinJobAge)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True, check=True)
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


def _wait(cond, what: str, timeout: float = WAIT_S, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)
    return value


def _job_logs(study_out: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((study_out / "submitit").rglob("*_log.*")))


def _assert_same_confusions(rd: RunDir, reference: RunDir) -> None:
    """Byte-identical evaluation confusion matrices: the final eval and the last validation."""
    for name in ("synth_confusion.npy", "val_confusion_last.npy"):
        got, want = (r.eval_dir / name for r in (rd, reference))
        assert got.read_bytes() == want.read_bytes(), f"{got} differs from {want}"


@pytest.fixture(scope="module")
def array_study(tmp_path_factory, synth):
    """`encseg study run --launcher slurm` on a 2-cell study (one cell cannot load its encoder), waited for."""
    tmp = tmp_path_factory.mktemp("array")
    path = _write_study(tmp, synth, "array", broken=True)
    out = tmp / "array"
    t0 = time.monotonic()
    proc = _encseg("study", "run", str(path), "--launcher", "slurm")
    jobs = _job_ids(out)
    array_ids = {j.split("_")[0] for j in jobs.values()}
    seen: set[str] = set()

    def finished() -> bool:
        lines = _squeue(next(iter(array_ids)))
        seen.update(lines)
        return not lines

    _wait(finished, "the array job to leave the queue")
    states = {rid: _show_job(job) for rid, job in jobs.items()}
    report = _encseg("study", "report", str(out))
    return {"out": out, "submit": proc.stdout, "jobs": jobs, "array_ids": array_ids, "seen": seen,
            "states": states, "report": report.stdout, "seconds": time.monotonic() - t0}


def test_study_runs_as_one_array_job_and_a_failing_cell_is_reported(array_study):
    s = array_study
    assert set(s["jobs"]) == {CELL, BROKEN}
    assert len(s["array_ids"]) == 1, s["jobs"]  # one sbatch --array for the whole study
    (array_id,) = s["array_ids"]
    assert array_id in s["submit"]  # the user is told the job id
    # squeue: tasks <array id>_<index>, named encseg-<study>
    assert s["seen"] and all(re.fullmatch(rf"{array_id}_\S+ encseg-array \w+", line) for line in s["seen"]), s["seen"]
    assert {st["JobState"] for st in s["states"].values()} == {"COMPLETED", "FAILED"}
    assert s["states"][CELL]["JobState"] == "COMPLETED" and s["states"][BROKEN]["JobState"] == "FAILED"
    assert s["states"][CELL]["ArrayJobId"] == array_id

    runs = s["out"] / "runs"
    assert RunDir(runs / CELL).is_done()
    broken = RunDir(runs / BROKEN)
    assert broken.state() == "failed" and "missing_encoder.safetensors" in broken.failed_path.read_text()
    report = (s["out"] / "report.md").read_text()
    assert "Failed (1)" in report and BROKEN in report and "missing_encoder.safetensors" in report
    print(f"array study (2 cells) took {s['seconds']:.0f} s")


def _submit_one(tmp: Path, synth: Path, name: str, train: dict | None = None) -> tuple[Path, str]:
    path = _write_study(tmp, synth, name, train=train or TRAIN)
    _encseg("study", "run", str(path), "--launcher", "slurm")
    out = tmp / name
    return out, _job_ids(out)[CELL]


def _running_with_checkpoint(out: Path, job: str) -> bool:
    return RunDir(out / "runs" / CELL).last_ckpt.is_file() and _show_job(job)["JobState"] == "RUNNING"


def _gone_releasing_requeued(job: str) -> bool:
    """True once ``job`` left the queue. A requeued job waits 2 minutes (SLURM's requeue delay, Reason=BeginTime)
    before it may start again; here it is made eligible at once."""
    lines = _squeue(job)
    if any(line.endswith("PENDING") for line in lines) and _show_job(job).get("Reason") == "BeginTime":
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True)
    return not lines


def _resumed(out: Path, job: str) -> tuple[dict[str, str], RunDir]:
    _wait(lambda: _gone_releasing_requeued(job), f"job {job} to finish")
    state = _show_job(job)
    rd = RunDir(out / "runs" / CELL)
    assert state["JobState"] == "COMPLETED" and rd.is_done(), (state, _job_logs(out)[-3000:])
    assert int(state["Restarts"]) >= 1
    assert json.loads(rd.env_path.read_text())["previous_sessions"]  # a second process worked on the run
    # ... starting from last.ckpt: Lightning's line goes to the run's own train.log (the console stays quiet)
    assert "Restoring states from the checkpoint path at" in (rd.path / "train.log").read_text()
    return state, rd


def test_scontrol_requeue_resumes_from_last_ckpt_to_the_same_result(tmp_path, synth, array_study):
    out, job = _submit_one(tmp_path, synth, "requeued")
    _wait(lambda: _running_with_checkpoint(out, job), "a checkpoint of the running cell", poll=0.5)
    assert not RunDir(out / "runs" / CELL).is_done()
    subprocess.run(["scontrol", "requeue", job], check=True)
    state, rd = _resumed(out, job)
    assert state["Restarts"] == "1"
    _assert_same_confusions(rd, RunDir(array_study["out"] / "runs" / CELL))


def test_time_limit_hit_mid_run_requeues_and_resumes_to_the_same_result(tmp_path, synth):
    # a longer cell, so that it is still training when the limit's warning arrives (SLURM checks time limits
    # every 30 s); its uninterrupted reference runs at the same time on the node's other core
    out, job = _submit_one(tmp_path, synth, "timelimit", LONG_TRAIN)
    ref_out, ref_job = _submit_one(tmp_path, synth, "timelimit_ref", LONG_TRAIN)
    _wait(lambda: _running_with_checkpoint(out, job), "a checkpoint of the running cell", poll=0.5)
    # lower --time so that the limit falls 1-2 minutes from now: SLURM sends submitit's USR2 (90 s before the
    # limit, --signal=USR2@90), submitit requeues the job itself; without that the job would end TIMEOUT
    h, m, sec = (int(x) for x in _show_job(job)["RunTime"].split("-")[-1].split(":"))
    limit = math.ceil((h * 3600 + m * 60 + sec) / 60) + 2
    subprocess.run(["scontrol", "update", f"JobId={job}", f"TimeLimit={limit}"], check=True)
    _wait(lambda: int(_show_job(job)["Restarts"]) >= 1, f"job {job} to be requeued")
    # the requeued task would be cut short the same way (and requeue again); give it its time back
    subprocess.run(["scontrol", "update", f"JobId={job}", "TimeLimit=30"], check=True)
    _, rd = _resumed(out, job)
    # the requeue came from the limit's warning signal (submitit calls it "preempted": it measures the run
    # against the --time it submitted, which the update above shortened behind its back)
    assert "Caught signal SIGUSR2" in _job_logs(out)
    _wait(lambda: not _squeue(ref_job), f"reference job {ref_job} to finish")
    reference = RunDir(ref_out / "runs" / CELL)
    assert _show_job(ref_job)["Restarts"] == "0" and reference.is_done()
    _assert_same_confusions(rd, reference)


def test_two_srun_tasks_train_one_run_with_gloo_ddp(tmp_path, synth):
    # no dev split: validation during training is the val split, compared below with its single-process evaluation
    cfg = tiny_config(synth, data={"dataset": {"dev_size": 0}},
                      train={"devices": 2, "accelerator": "cpu", "max_iters": 4, "val_every": 4})
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run(["srun", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--mem=4G",
                           "--job-name=encseg-ddp", sys.executable, "-m", "encseg.cli", "train", str(path),
                           "--runs-root", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=WAIT_S)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in log  # both tasks joined one process group via SLURM's variables
    rd = RunDir(next(p for p in (tmp_path / "runs").iterdir() if (p / "DONE").is_file()))
    ddp_cm = np.load(rd.eval_dir / "val_confusion_last.npy")  # summed over both ranks' halves of val
    single_cm = np.load(rd.confusion_npy("synth"))  # this process alone, the same final weights
    assert ddp_cm.sum() == single_cm.sum() == 5 * 64 * 64
    np.testing.assert_array_equal(ddp_cm, single_cm)
