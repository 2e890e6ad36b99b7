"""Run every cell of a study once: in this process, in N worker processes, or as one submitit array job.

Conventions
- A cell's state lives only in its run directory (``DONE`` / ``FAILED`` / partial), so ``study run`` can be
  killed at any moment and started again: DONE cells are skipped, partial ones resume (``train()`` picks up
  ``checkpoints/last.ckpt``), FAILED ones are retried once per invocation.
- While a cell trains, its process holds an exclusive lock on ``<study>/.locks/<run_id>.lock``; a second
  launcher (or an orphaned worker) on the same study skips that cell as ``busy`` instead of writing the same
  run directory twice. The lock is released by the OS when the process dies.
- ``train_fn(cfg, runs_root) -> run_dir`` defaults to ``encseg.engine.train.train``; it must write ``DONE``
  last and raise on failure. In worker processes and submitit jobs it is pickled by reference, so it must
  be a module-level function.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import submitit
import yaml

from encseg.atomic import atomic_write_json, atomic_write_text, read_json
from encseg.config import ConfigError, RunConfig
from encseg.engine.distributed import is_rank_zero
from encseg.engine.rundir import RunDir, run_id
from encseg.errors import InputError
from encseg.study.config import StudyConfig
from encseg.study.console import StudyConsole, cell_output
from encseg.study.grid import cell_state, config_drift, dump_study, expand, load_study, study_dir
from encseg.study.workers import WorkerPool

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; a single launcher per study is then the user's job
    fcntl = None

LAUNCHERS = ("local", "slurm", "submitit-local")
TrainFn = Callable[[RunConfig, Path], Any]


def _default_train() -> TrainFn:
    from encseg.engine.train import train

    return train


@contextlib.contextmanager
def _cell_lock(lock_dir: Path, name: str) -> Iterator[bool]:
    if fcntl is None:
        yield True
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError:  # e.g. ENOLCK on a network filesystem without lock support: run unguarded
            yield True
            return
        try:
            yield True
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def run_cell(cfg: RunConfig, runs: Path, train_fn: TrainFn | None = None) -> str:
    """Train one cell unless it is DONE; returns ``done``, ``skipped``, ``busy`` or ``failed``.

    A failure is recorded in the run's ``FAILED`` (error and traceback) and reported, never raised, so the
    study goes on with the next cell. KeyboardInterrupt and SystemExit still stop everything.
    """
    runs = Path(runs)
    rd = RunDir(runs / run_id(cfg))
    fn = train_fn or _default_train()
    if not is_rank_zero():  # DDP peers: rank 0 owns the markers, the lock and the skip decision
        fn(cfg, runs)
        return "done"
    if rd.is_done():
        return "skipped"
    with _cell_lock(runs.parent / ".locks", rd.name) as locked:
        if not locked:
            return "busy"
        if rd.is_done():  # finished by another launcher between the first check and the lock
            return "skipped"
        rd.clear_failed()
        try:
            fn(cfg, runs)
        except Exception as e:
            rd.mark_failed(e)  # train() records it too; a replacement train_fn may not
            return "failed"
        if not rd.is_done():
            rd.mark_failed(RuntimeError(f"train function returned without writing {rd.done_path}"))
            return "failed"
    return "done"


def _report(progress: StudyConsole, results: dict[str, str], rd: RunDir, status: str, t0: float) -> None:
    results[rd.name] = status
    progress.finished_cell(rd.name, status, time.monotonic() - t0, rd.failure_line() if status == "failed" else "")


# ---------------------------------------------------------------------------------------- local runs
def _run_sequential(todo: list[RunConfig], runs: Path, train_fn: TrainFn | None, progress: StudyConsole) -> dict:
    results: dict[str, str] = {}
    if not todo:
        return results
    fn = train_fn or _default_train()  # an import error surfaces once, not as a FAILED per cell
    for cfg in todo:
        t0 = time.monotonic()
        progress.started(run_id(cfg))
        with cell_output(run_id(cfg), console=progress):
            status = run_cell(cfg, runs, fn)
        _report(progress, results, RunDir(runs / run_id(cfg)), status, t0)
    return results


def _visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    import torch  # only when CUDA_VISIBLE_DEVICES is unset: the launcher itself does not need torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _run_parallel(todo: list[RunConfig], runs: Path, jobs: int, train_fn: TrainFn | None,
                  progress: StudyConsole) -> dict:
    """``jobs`` cells at a time in ``jobs`` reused worker processes (``study.workers``); GPUs round-robin by slot."""
    gpus = _visible_gpus()
    if gpus and jobs > len(gpus):
        print(f"note: {jobs} jobs share {len(gpus)} GPU(s)", flush=True)
    return WorkerPool(runs, jobs, train_fn, progress, gpus).run(todo)


# -------------------------------------------------------------------------------------------- submitit
def _threads_from_slurm() -> None:
    # torch would use every core of the node, also those SLURM gave to other jobs sharing it
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus and cpus.isdigit():
        import torch
        torch.set_num_threads(int(cpus))


class CellFailed(RuntimeError):
    """A cell's training failed inside a submitit job (its ``FAILED`` record holds the traceback)."""


class CellJob(submitit.helpers.Checkpointable):
    """One cell as a submitit job. On preemption or timeout submitit calls ``checkpoint``, and the job is
    requeued with the same cell; ``train()`` then resumes from ``checkpoints/last.ckpt``."""

    def __init__(self, runs: str | Path, train_fn: TrainFn | None = None):
        self.runs = str(runs)
        self.train_fn = train_fn

    def __call__(self, cfg: RunConfig) -> str:
        _threads_from_slurm()
        status = run_cell(cfg, Path(self.runs), self.train_fn)
        if status == "failed":  # the job ends FAILED in squeue/sacct too; the error is in the run's FAILED
            raise CellFailed(RunDir(Path(self.runs) / run_id(cfg)).failure_line())
        return status

    def checkpoint(self, cfg: RunConfig) -> submitit.helpers.DelayedSubmission:
        # nothing to carry over in memory: the run directory holds the state
        return submitit.helpers.DelayedSubmission(CellJob(self.runs, self.train_fn), cfg)


def executor_parameters(study: StudyConfig, launcher: str, jobs: int) -> dict[str, Any]:
    """submitit AutoExecutor parameters; ``slurm_*`` keys only reach SLURM (the local executor ignores them)."""
    s = study.slurm
    local = launcher == "submitit-local"
    params: dict[str, Any] = {
        "name": f"encseg-{study.name}",
        "timeout_min": s.timeout_min,
        "nodes": 1 if local else s.nodes,
        # one task per GPU: Lightning's SLURM environment expects ntasks-per-node == devices
        "tasks_per_node": 1 if local else max(1, s.gpus_per_node),
        "gpus_per_node": min(s.gpus_per_node, len(_visible_gpus())) if local else s.gpus_per_node,
        "cpus_per_task": s.cpus_per_task,
    }
    if s.mem_gb is not None:
        params["mem_gb"] = s.mem_gb
    parallel = jobs if jobs > 1 else s.array_parallelism
    for key, value in (("partition", s.partition), ("account", s.account), ("qos", s.qos),
                       ("constraint", s.constraint), ("array_parallelism", parallel)):
        if value is not None:
            params[f"slurm_{key}"] = value
    if s.additional_parameters:
        params["slurm_additional_parameters"] = dict(s.additional_parameters)
    return params


def _record_jobs(sdir: Path, launcher: str, folder: Path, jobs: list, todo: list[RunConfig]) -> Path:
    """Append this submission to ``<study>/slurm_jobs.json`` (earlier submissions are kept)."""
    path = sdir / "slurm_jobs.json"
    record = read_json(path) if path.is_file() else {"submissions": []}
    record["submissions"].append({
        "time": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "launcher": launcher,
        "folder": str(folder),
        "jobs": [{"run_id": run_id(cfg), "job_id": str(job.job_id)} for job, cfg in zip(jobs, todo, strict=True)],
    })
    return atomic_write_json(path, record)


def _run_submitit(study: StudyConfig, todo: list[RunConfig], sdir: Path, runs: Path, launcher: str, jobs: int,
                  train_fn: TrainFn | None, wait: bool, progress: StudyConsole) -> tuple[dict, list[str]]:
    folder = sdir / "submitit" / "%j"
    ex = submitit.AutoExecutor(folder=folder, cluster="local" if launcher == "submitit-local" else "slurm")
    ex.update_parameters(**executor_parameters(study, launcher, jobs))
    submitted = ex.map_array(CellJob(runs, train_fn), todo)
    _record_jobs(sdir, launcher, folder, submitted, todo)
    ids = sorted({str(j.job_id).split("_")[0] for j in submitted})
    print(f"submitted {len(submitted)} cell(s) as job(s) {', '.join(ids)}; ids in {sdir / 'slurm_jobs.json'}",
          flush=True)
    results: dict[str, str] = {}
    if not wait:
        return results, [run_id(c) for c in todo]
    t0 = time.monotonic()
    by_job = {id(j): cfg for j, cfg in zip(submitted, todo, strict=True)}
    for job in submitit.helpers.as_completed(submitted, poll_frequency=0.5):
        rd = RunDir(runs / run_id(by_job[id(job)]))
        try:
            status = job.result()
        except Exception as e:  # the job itself died (killed, out of memory, requeues exhausted)
            status = "done" if rd.is_done() else "failed"
            if status == "failed" and not rd.failed_path.is_file():  # the cell's own record says more
                rd.mark_failed(RuntimeError(f"submitit job {job.job_id} failed: {e}"))
        _report(progress, results, rd, status, t0)
    return results, []


# ---------------------------------------------------------------------------------------------- study
def _check_same_study(sdir: Path, study: StudyConfig) -> None:
    path = sdir / "study.yaml"
    if path.is_file():
        old = (yaml.safe_load(path.read_text()) or {}).get("name")
        if old != study.name:
            raise ConfigError(f"{sdir} holds study {old!r}, not {study.name!r}; choose another `out`")


def _check_no_drift(cfgs: list[RunConfig], states: dict[str, str], runs: Path) -> None:
    drift: dict[str, list[str]] = {}
    for c in cfgs:
        if states[run_id(c)] != "new" and (keys := config_drift(c, runs)):
            drift[run_id(c)] = keys
    if drift:
        lines = [f"  {rid}: {', '.join(keys[:8])}" for rid, keys in list(drift.items())[:10]]
        raise ConfigError(f"{len(drift)} run(s) under {runs} were made with a different config; move them away, "
                          f"restore the study's settings or give it another `out`:\n" + "\n".join(lines))


def _print_dry_run(study: StudyConfig, todo: list[RunConfig], states: dict[str, str], launcher: str,
                   jobs: int, n_cells: int, n_done: int) -> None:
    verbs = {"new": "train", "partial": "resume", "failed": "retry"}
    print(f"study {study.name}: {n_cells} cells, {n_done} done, {len(todo)} would run ({launcher})")
    for c in todo:
        print(f"  would {verbs[states[run_id(c)]]:<6} {run_id(c)}")
    if launcher != "local":
        print(f"  executor parameters: {executor_parameters(study, launcher, jobs)}")


def generate_synthetic(todo: list[RunConfig]) -> list[Path]:
    """Write every synthetic dataset the cells train or evaluate on that does not exist yet, once, before any
    cell starts: parallel cells would otherwise each generate it and keep the first copy. Returns the roots."""
    from encseg.data.synthetic import ensure_synthetic

    missing = {}
    for cfg in todo:
        for ds in [cfg.data.dataset, *cfg.eval.datasets]:
            if ds.synthetic is not None and not ds.root.exists():
                missing.setdefault(ds.root, ds)
    for root, ds in missing.items():
        ensure_synthetic(root, ds.synthetic, expected_format=ds.format)
    return list(missing)


def _launch(study: StudyConfig, todo: list[RunConfig], sdir: Path, launcher: str, jobs: int,
            train_fn: TrainFn | None, wait: bool | None) -> tuple[dict[str, str], list[str]]:
    """Run (or submit) ``todo``; returns each finished cell's status and the submitted run ids."""
    runs = sdir / "runs"
    generate_synthetic(todo)
    progress = StudyConsole(len(todo), jobs=jobs if launcher == "local" else len(todo))
    try:
        if launcher == "local":
            results = (_run_sequential(todo, runs, train_fn, progress) if jobs == 1
                       else _run_parallel(todo, runs, jobs, train_fn, progress))
            return results, []
        if not todo:
            return {}, []
        return _run_submitit(study, todo, sdir, runs, launcher, jobs, train_fn,
                             wait if wait is not None else launcher == "submitit-local", progress)
    finally:
        progress.close()


def _print_outcome(study: StudyConfig, summary: dict[str, Any], runs: Path) -> None:
    print(f"study {study.name}: {len(summary['done'])} done, {len(summary['failed'])} failed, "
          f"{len(summary['skipped'])} skipped (already done)"
          + (f", {len(summary['busy'])} busy (running elsewhere)" if summary["busy"] else "")
          + (f", {len(summary['submitted'])} submitted" if summary["submitted"] else ""), flush=True)
    for rid, line in summary["failed"].items():
        print(f"  FAILED {rid}: {line} (see {runs / rid / 'FAILED'})")


def run_study(study: StudyConfig | str | Path, launcher: str = "local", jobs: int = 1, dry_run: bool = False,
              out: str | Path | None = None, train_fn: TrainFn | None = None,
              wait: bool | None = None) -> dict[str, Any]:
    """Run every cell of ``study`` once; see the module docstring for what "once" means after a restart.

    ``wait`` (submitit launchers): block until the jobs end; default True for ``submitit-local``, False for
    ``slurm`` (a cluster study outlives the login session: run ``study run`` again to resubmit what is left).
    Returns ``{"study_dir", "runs", "skipped", "done", "failed", "busy", "submitted", "todo"}`` (run-id lists;
    ``failed`` maps run id -> error line).
    """
    if launcher not in LAUNCHERS:
        raise InputError(f"launcher {launcher!r}: choose one of {', '.join(LAUNCHERS)}")
    if jobs < 1:
        raise InputError(f"jobs must be >= 1, got {jobs}")
    if not isinstance(study, StudyConfig):
        study = load_study(study)
    cfgs = expand(study)
    sdir = study_dir(study, out)
    runs = sdir / "runs"
    _check_same_study(sdir, study)
    states = {run_id(c): cell_state(c, runs) for c in cfgs}
    _check_no_drift(cfgs, states, runs)
    skipped = [rid for rid, s in states.items() if s == "done"]
    todo = [c for c in cfgs if states[run_id(c)] != "done"]
    summary: dict[str, Any] = {"study_dir": str(sdir), "runs": len(cfgs), "skipped": skipped, "done": [],
                               "failed": {}, "busy": [], "submitted": [], "todo": [run_id(c) for c in todo]}
    if dry_run:
        _print_dry_run(study, todo, states, launcher, jobs, len(cfgs), len(skipped))
        return summary

    sdir.mkdir(parents=True, exist_ok=True)
    resolved = {**dump_study(study), "out": str(sdir)}
    atomic_write_text(sdir / "study.yaml", yaml.safe_dump(resolved, sort_keys=False))
    print(f"study {study.name}: {len(cfgs)} cells, {len(skipped)} already done, {len(todo)} to run "
          f"({launcher}{f', {jobs} at a time' if jobs > 1 else ''}) -> {sdir}", flush=True)
    results, summary["submitted"] = _launch(study, todo, sdir, launcher, jobs, train_fn, wait)
    summary["skipped"] += [rid for rid, s in results.items() if s == "skipped"]
    summary["done"] = [rid for rid, s in results.items() if s == "done"]
    summary["busy"] = [rid for rid, s in results.items() if s == "busy"]
    summary["failed"] = {rid: RunDir(runs / rid).failure_line() for rid, s in results.items() if s == "failed"}
    _print_outcome(study, summary, runs)
    return summary


def run_cli(path: str | Path, launcher: str = "local", jobs: int = 1, dry_run: bool = False,
            out: str | Path | None = None) -> int:
    summary = run_study(path, launcher=launcher, jobs=jobs, dry_run=dry_run, out=out)
    return 1 if summary["failed"] else 0
