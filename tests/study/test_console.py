"""The console of ``study run``: every line of a running cell names it, framework chatter goes to train.log."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from encseg.study.console import StudyConsole, clock

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))
from _tiny import tiny_config  # noqa: E402

BANNERS = ("GPU available", "TPU available", "HPU available", "LOCAL_RANK", "Warning", "warn(", "LeafSpec")


def _record(msg: str, **attrs) -> logging.LogRecord:
    r = logging.LogRecord("encseg.progress", logging.INFO, __file__, 1, msg, (), None)
    r.__dict__.update(attrs)
    return r


def test_plain_console_names_the_cell_on_every_line_and_counts_the_grid():
    out = io.StringIO()
    con = StudyConsole(total=3, jobs=2, stream=out)
    con.started("cell_a")
    con.started("cell_b")
    con.progress("cell_a", _record("step 5/10  loss 1.0", kind="step", step=5, total=10, loss=1.0))
    con.finished_cell("cell_a", "done", 12.0)
    con.finished_cell("cell_b", "failed", 4.0, "RuntimeError: boom")
    con.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[cell_a] started") and lines[1].startswith("[cell_b] started")
    assert lines[2] == "[cell_a] step 5/10  loss 1.0"
    assert lines[3].startswith("[1/3] done    cell_a (12.0 s) | done 1, running 1, failed 0, left 1")
    assert lines[4].startswith("[2/3] failed  cell_b (4.0 s): RuntimeError: boom | done 1, running 0, failed 1, "
                               "left 1")
    # one cell left, measured cells took 12 s and 4 s: ETA 8 s
    assert lines[4].endswith("ETA 0:08")


def test_eta_before_any_cell_ends_extrapolates_the_running_cells():
    con = StudyConsole(total=3, jobs=1, stream=io.StringIO())
    con.started("a")
    t0 = con.running["a"].start
    assert con.eta(t0 + 1) is None  # no step yet: nothing measured
    con.progress("a", _record("step 5/20", step=5, total=20))
    # 10 s for a quarter of the steps: 40 s per cell; 30 s left of this one, then 2 more cells of 40 s each
    assert con.eta(t0 + 10) == pytest.approx(30 + 2 * 40)
    assert clock(3725) == "1:02:05" and clock(65) == "1:05" and clock(None) == "?"


@pytest.mark.slow
def test_two_cells_in_parallel_name_themselves_and_banners_stay_in_train_log(tmp_path):
    base = tiny_config(tmp_path / "data", train={"max_iters": 6, "val_every": 3, "log_every": 2})
    base["data"]["dataset"]["synthetic"] = {"style": "a", "classes": 3, "train": 8, "val": 4, "size": 64}
    study = {"name": "two", "out": str(tmp_path / "study"), "base": base,
             "encoders": [{"label": "random", "encoder": {"weights": "none"}}], "seeds": [0, 1]}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    # through a pipe, as in CI or a SLURM log: one line per event
    proc = subprocess.run([sys.executable, "-m", "encseg.cli", "study", "run", str(path), "--jobs", "2"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert proc.returncode == 0, proc.stdout
    runs = sorted(p for p in (tmp_path / "study" / "runs").iterdir() if p.is_dir() and not p.name.startswith("_"))
    cells = [p.name for p in runs]
    assert len(cells) == 2

    study_lines = [line for line in lines if line.startswith("study two:")]
    cell_lines = [line for line in lines if line not in study_lines]
    assert len(study_lines) == 2, lines  # the header and the summary
    for line in cell_lines:
        assert any(line.startswith(f"[{c}] ") or f" {c} (" in line for c in cells), line
        assert not any(b in line for b in BANNERS), line
    for c in cells:  # each cell's progress reached the console under its own name
        assert any(line.startswith(f"[{c}] step 6/6") for line in cell_lines), lines
        assert any(line.startswith(f"[{c}] val @ step") for line in cell_lines), lines
        log = (tmp_path / "study" / "runs" / c / "train.log").read_text()
        assert "GPU available" in log and "step 6/6" in log  # the full log kept Lightning's banner
