"""The console of ``encseg study run``: one live view of the grid, each running cell named on its own line.

On a terminal the view is a set of tqdm bars: the study (cells done / running / failed / left, elapsed and
an ETA from measured cell times) and one bar per running cell, labelled with its run id. Anywhere else (CI,
SLURM logs, a pipe) it degrades to one line per event, each naming its cell: ``[<run id>] step 20/40 ...``.

A cell's own output never reaches the console directly. In a worker process ``cell_output`` sends its
progress records (``encseg.progress``, see ``engine/logs.py``) to the launcher through a queue and turns
its prints into log records, which ``train()`` writes to the run's ``train.log`` with everything else.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import math
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from encseg.engine.logs import PROGRESS, output_to_log

FINISHED = ("done", "failed", "skipped", "busy")


def clock(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(round(max(0.0, seconds)))
    h, rest = divmod(s, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class _Cell:
    start: float
    slot: int
    step: int = 0
    total: int | None = None
    bar: Any = None

    def estimate(self, now: float) -> float | None:
        """Whole-cell time extrapolated from its progress so far."""
        if not self.total or self.step <= 0:
            return None
        return (now - self.start) * self.total / self.step


@dataclass
class StudyConsole:
    """Counts, ETA and per-cell progress of one ``study run``; safe to call from several threads."""

    total: int
    jobs: int = 1
    stream: Any = None
    live: bool | None = None
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FINISHED, 0))
    durations: list[float] = field(default_factory=list)  # trained cells only: skipped/busy take no time
    running: dict[str, _Cell] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stream = self.stream or sys.stderr
        if self.live is None:
            self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self._lock = threading.RLock()
        self._bar = None
        if self.live:
            self._bar = tqdm(total=self.total, desc="study", unit="cell", file=self.stream, position=0,
                             dynamic_ncols=True, bar_format="{desc} {bar} {n_fmt}/{total_fmt} cells {postfix}")
            self._bar.set_postfix_str(self.status(), refresh=True)

    # ------------------------------------------------------------------------------------------ numbers
    @property
    def finished(self) -> int:
        return sum(self.counts.values())

    def left(self) -> int:
        return max(0, self.total - self.finished - len(self.running))

    def eta(self, now: float | None = None) -> float | None:
        """Seconds until the last cell ends: mean measured cell time (or, before any cell ended, the running
        cells' own extrapolations) for the cells left, spread over the parallel slots."""
        now = time.monotonic() if now is None else now
        guesses = [e for c in self.running.values() if (e := c.estimate(now)) is not None]
        per_cell = statistics.fmean(self.durations) if self.durations else (
            statistics.fmean(guesses) if guesses else None)
        if per_cell is None:
            return None if (self.running or self.left()) else 0.0
        work = self.left() * per_cell
        for c in self.running.values():
            # a cell at its last step still has its final evaluation to do: never below the measured mean
            own = c.estimate(now)
            work += max(0.0, max(own or 0.0, per_cell) - (now - c.start))
        return work / max(1, min(self.jobs, self.left() + len(self.running)))

    def status(self) -> str:
        c = self.counts
        text = (f"done {c['done'] + c['skipped']}, running {len(self.running)}, failed {c['failed']}, "
                f"left {self.left()}")
        if c["busy"]:
            text += f", busy elsewhere {c['busy']}"
        return f"{text} | elapsed {clock(time.monotonic() - self.t0)}, ETA {clock(self.eta())}"

    # ------------------------------------------------------------------------------------------- events
    def _line(self, text: str) -> None:
        if self.live:
            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def _refresh(self) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(self.status(), refresh=True)

    def note(self, text: str) -> None:
        """A study-level line (not about one cell)."""
        with self._lock:
            self._line(text)

    def started(self, cell: str) -> None:
        with self._lock:
            used = {c.slot for c in self.running.values()}
            slot = next(i for i in range(len(used) + 1) if i not in used)
            c = self.running[cell] = _Cell(start=time.monotonic(), slot=slot)
            if self.live:
                c.bar = tqdm(total=None, desc=cell, unit="step", file=self.stream, position=slot + 1,
                             leave=False, dynamic_ncols=True)
            else:
                self._line(f"[{cell}] started | {self.status()}")
            self._refresh()

    def progress(self, cell: str, record: logging.LogRecord) -> None:
        with self._lock:
            c = self.running.get(cell)
            if c is None:  # a record that outlived its cell (queue drained late)
                return
            step, total = getattr(record, "step", None), getattr(record, "total", None)
            if isinstance(total, int) and total > 0:
                c.total = total
            if isinstance(step, int):
                c.step = step
            if not self.live:
                self._line(f"[{cell}] {record.getMessage()}")
                return
            if getattr(record, "kind", "") == "val":
                self._line(f"[{cell}] {record.getMessage()}")
            if c.total and c.bar.total != c.total:
                c.bar.total = c.total
            loss = getattr(record, "loss", None)
            if isinstance(loss, float) and math.isfinite(loss):
                c.bar.set_postfix_str(f"loss {loss:.4f}", refresh=False)
            c.bar.update(max(0, c.step - c.bar.n))
            self._refresh()

    def finished_cell(self, cell: str, status: str, seconds: float, detail: str = "") -> None:
        with self._lock:
            c = self.running.pop(cell, None)
            if c is not None and c.bar is not None:
                c.bar.close()
            self.counts[status] = self.counts.get(status, 0) + 1
            if status in ("done", "failed"):
                self.durations.append(seconds)
            line = f"[{self.finished}/{self.total}] {status:<7} {cell} ({seconds:.1f} s)" + (
                f": {detail}" if detail else "")
            self._line(line if self.live else f"{line} | {self.status()}")
            if self._bar is not None:
                self._bar.update(1)
            self._refresh()

    def close(self) -> None:
        with self._lock:
            for c in self.running.values():
                if c.bar is not None:
                    c.bar.close()
            if self._bar is not None:
                self._bar.close()
                self._bar = None


# ------------------------------------------------------------------------------------ a cell's output
class _ToConsole(logging.Handler):
    """Hands progress records of the cell running in this process to the console."""

    def __init__(self, console: StudyConsole, cell: str):
        super().__init__()
        self.console, self.cell = console, cell

    def emit(self, record: logging.LogRecord) -> None:
        self.console.progress(self.cell, record)


class _TagCell(logging.Filter):
    def __init__(self, cell: str):
        super().__init__()
        self.cell = cell

    def filter(self, record: logging.LogRecord) -> bool:
        record.cell = self.cell
        return True


@contextlib.contextmanager
def cell_output(cell: str, console: StudyConsole | None = None, queue: Any = None) -> Iterator[None]:
    """While one cell trains in this process: its progress goes to ``console`` (same process) or ``queue``
    (a worker; the launcher's ``progress_listener`` reads it), its prints go to the log, not the console."""
    if console is not None:
        handler: logging.Handler = _ToConsole(console, cell)
    else:
        handler = logging.handlers.QueueHandler(queue)
        handler.addFilter(_TagCell(cell))
    progress = logging.getLogger(PROGRESS)
    saved_level = progress.level
    progress.setLevel(logging.INFO)
    progress.addHandler(handler)
    try:
        with output_to_log():
            yield
    finally:
        progress.removeHandler(handler)
        progress.setLevel(saved_level)


class _FromWorkers(logging.Handler):
    def __init__(self, console: StudyConsole):
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.console.progress(getattr(record, "cell", "?"), record)


def progress_listener(console: StudyConsole, queue: Any) -> logging.handlers.QueueListener:
    """A started thread that feeds the progress records workers put on ``queue`` to ``console``; ``stop()`` it."""
    listener = logging.handlers.QueueListener(queue, _FromWorkers(console))
    listener.start()
    return listener
