"""A stand-in for ``encseg.engine.train.train`` that honours the run-directory contract in milliseconds.

Importable by reference from worker processes and submitit jobs (put this folder on PYTHONPATH). It is
steered through environment variables because those reach every process a launcher starts:
- ``FAKE_TRAIN_LOG``: file that gets one line per event: ``start <run_id> resumed=<0|1> gpu=<...>`` and
  ``end <run_id>`` (appended, so restarts and parallel workers share it);
- ``FAKE_TRAIN_SLEEP``: seconds each cell "trains";
- ``FAKE_TRAIN_FAIL``: run ids (comma separated) that raise instead of finishing;
- ``FAKE_TRAIN_CRASH``: run ids whose process dies on the spot (``os._exit``), as a worker killed for memory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from encseg.atomic import atomic_write_json, atomic_write_text
from encseg.engine.rundir import RunDir, run_id


def _log(line: str) -> None:
    path = os.environ.get("FAKE_TRAIN_LOG")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def read_log(path: Path) -> list[list[str]]:
    return [line.split() for line in Path(path).read_text().splitlines() if line.strip()]


def fake_train(cfg, runs_root) -> Path:
    rd = RunDir(Path(runs_root) / run_id(cfg))
    rd.path.mkdir(parents=True, exist_ok=True)
    resumed = rd.last_ckpt.is_file()
    _log(f"start {rd.name} resumed={int(resumed)} gpu={os.environ.get('CUDA_VISIBLE_DEVICES', '-')}")
    rd.write_config(cfg)
    atomic_write_text(rd.last_ckpt, "step 1\n")
    time.sleep(float(os.environ.get("FAKE_TRAIN_SLEEP", "0")))
    if rd.name in os.environ.get("FAKE_TRAIN_CRASH", "").split(","):
        os._exit(3)
    if rd.name in os.environ.get("FAKE_TRAIN_FAIL", "").split(","):
        raise RuntimeError(f"boom in {rd.name}")
    # pid + time make each training session's result distinguishable from a redone one
    atomic_write_json(rd.summary_path, {"run_id": rd.name, "pid": os.getpid(), "t": time.time()})
    _log(f"end {rd.name}")
    rd.mark_done()
    return rd.path
