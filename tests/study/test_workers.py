"""A reused worker process trains a cell to the same bytes as a fresh process (``study.workers``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "engine"))
from _tiny import tiny_config  # noqa: E402

from encseg.engine.rundir import run_id  # noqa: E402
from encseg.study.config import StudyConfig  # noqa: E402
from encseg.study.console import StudyConsole  # noqa: E402
from encseg.study.grid import expand  # noqa: E402
from encseg.study.launch import generate_synthetic  # noqa: E402
from encseg.study.workers import WorkerPool  # noqa: E402


def _cells(tmp_path: Path, out: str) -> list:
    base = tiny_config(tmp_path / "data", train={"max_iters": 6, "val_every": 3, "log_every": 2},
                       eval={"latency_iters": 0})
    base["data"]["dataset"]["synthetic"] = {"style": "a", "classes": 3, "train": 8, "val": 3, "size": 64}
    study = StudyConfig.model_validate({"name": "w", "out": str(tmp_path / out), "base": base,
                                        "encoders": [{"label": "random", "encoder": {"weights": "none"}}],
                                        "seeds": [0, 1]})
    return expand(study)


def _result_bytes(run_dir: Path) -> dict[str, bytes]:
    files = sorted((run_dir / "eval").glob("*_confusion.npy")) + sorted((run_dir / "eval").glob("*_areas.npz"))
    files += [run_dir / "model.safetensors", run_dir / "subset.txt"]
    return {p.name: p.read_bytes() for p in files}


@pytest.mark.slow
def test_a_reused_worker_writes_the_bytes_of_fresh_processes(tmp_path):
    reused, fresh = _cells(tmp_path, "reused"), _cells(tmp_path, "fresh")
    assert generate_synthetic(reused) == [tmp_path / "data"]
    assert generate_synthetic(fresh) == []  # already there: nothing written twice
    runs = tmp_path / "reused" / "runs"
    one = WorkerPool(runs, 1, None, StudyConsole(2, jobs=1), [])
    assert set(one.run(reused).values()) == {"done"} and len(one.pids) == 1  # both cells in one process
    fresh_runs = tmp_path / "fresh" / "runs"
    for cfg in fresh:
        pool = WorkerPool(fresh_runs, 1, None, StudyConsole(1, jobs=1), [])
        assert set(pool.run([cfg]).values()) == {"done"}
    for cfg in reused:
        name = run_id(cfg)
        assert _result_bytes(runs / name) == _result_bytes(fresh_runs / name), name
