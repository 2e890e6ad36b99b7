"""``study run --jobs N``: N long-lived worker processes that train the study's cells one after another.

A worker process is spawned once per slot and reused for every cell it is handed: the interpreter, torch,
timm, transformers and Lightning are imported once per slot, not once per cell (on a 2-core CPU that start-up
was ~10 s of each small cell). A cell's numbers do not depend on which process trains it: ``train()`` seeds
every generator from the cell's config, and the worker drops what a cell left behind (dynamo's compiled
graphs, the CUDA cache) before the next one, so a reused worker writes the bytes a fresh one would (tested).

Failure isolation is kept: a cell that raises is recorded as ``failed`` by ``run_cell`` and the worker goes on;
a worker that dies (out of memory, a signal) loses only its cell, which is recorded as failed unless it had
written ``DONE``, and a fresh worker takes the slot. A worker whose launcher died exits (``_exit_with_parent``),
so a restarted launcher retries the cell. GPUs are handed out round-robin by slot, one per worker for life.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import queue as queue_mod
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encseg.engine.rundir import RunDir, run_id
from encseg.study.console import StudyConsole, cell_output, progress_listener


def exit_with_parent(parent_pid: int) -> None:
    # a worker whose launcher was killed must not keep training: the restarted launcher retries the cell
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(1)


def release_cell_state() -> None:
    """What one cell leaves in its process and the next must not inherit: compiled graphs (dynamo's per-code
    cache and its recompile limit), cached CUDA blocks, garbage holding tensors."""
    if "torch" not in sys.modules:
        return
    import torch

    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def worker_loop(slot: int, runs: str, train_fn, gpu: str | None, parent_pid: int, threads: int | None,
                progress_queue: Any, tasks: Any, results: Any) -> None:
    """One worker process: take a cell from ``tasks``, train it (``run_cell``), put ``(slot, run_id, status)``
    on ``results``; stop at ``None``."""
    from encseg.study.launch import run_cell

    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    if threads is not None:  # CPU cells share the cores instead of each oversubscribing all of them
        import torch
        torch.set_num_threads(threads)
    threading.Thread(target=exit_with_parent, args=(parent_pid,), daemon=True).start()
    while (cfg := tasks.get()) is not None:
        with cell_output(run_id(cfg), queue=progress_queue):  # the launcher's console shows this cell's progress
            status = run_cell(cfg, Path(runs), train_fn)
        release_cell_state()
        results.put((slot, run_id(cfg), status))


@dataclass
class _Slot:
    proc: Any
    tasks: Any
    cell: Any = None  # the RunConfig in flight, None when idle
    t0: float = 0.0


class WorkerPool:
    """``jobs`` reusable workers; ``run(todo)`` trains every cell and returns ``{run_id: status}``."""

    def __init__(self, runs: Path, jobs: int, train_fn: Callable | None, progress: StudyConsole, gpus: list[str]):
        self.runs, self.jobs, self.train_fn, self.progress, self.gpus = Path(runs), jobs, train_fn, progress, gpus
        self.ctx = mp.get_context("spawn")  # CUDA and fork do not mix
        self.results_q = self.ctx.Queue()
        self.progress_q = self.ctx.Queue()  # workers' progress records, drawn by the console
        self.slots: dict[int, _Slot] = {}
        self.results: dict[str, str] = {}
        self.pids: set[int] = set()  # every worker process started (a test reads how many)

    def _spawn(self, slot: int) -> _Slot:
        gpu = self.gpus[slot % len(self.gpus)] if self.gpus else None
        threads = None if self.gpus else max(1, (os.cpu_count() or 1) // self.jobs)
        tasks = self.ctx.Queue()
        proc = self.ctx.Process(target=worker_loop, name=f"encseg-worker-{slot}",
                                args=(slot, str(self.runs), self.train_fn, gpu, os.getpid(), threads,
                                      self.progress_q, tasks, self.results_q))
        proc.start()
        self.pids.add(proc.pid)
        self.slots[slot] = _Slot(proc, tasks)
        return self.slots[slot]

    def _hand_out(self, pending: deque) -> None:
        for slot in range(self.jobs):
            s = self.slots.get(slot)
            if not pending or (s is not None and s.cell is not None):
                continue
            if s is None or not s.proc.is_alive():
                s = self._spawn(slot)
            s.cell, s.t0 = pending.popleft(), time.monotonic()
            s.tasks.put(s.cell)
            self.progress.started(run_id(s.cell))

    def _finish(self, slot: int, status: str) -> None:
        s = self.slots[slot]
        rd = RunDir(self.runs / run_id(s.cell))
        self.results[rd.name] = status
        self.progress.finished_cell(rd.name, status, time.monotonic() - s.t0,
                                    rd.failure_line() if status == "failed" else "")
        s.cell = None

    def _drain_results(self, timeout: float) -> None:
        try:
            slot, _, status = self.results_q.get(timeout=timeout)
        except queue_mod.Empty:
            return
        self._finish(slot, status)
        while True:
            try:
                slot, _, status = self.results_q.get_nowait()
            except queue_mod.Empty:
                return
            self._finish(slot, status)

    def _reap_dead(self) -> None:
        """A worker that died with a cell in flight (killed before it could report): the cell is failed unless
        it wrote DONE; the slot gets a fresh worker when there is more to do."""
        for slot, s in list(self.slots.items()):
            if s.proc.is_alive():
                continue
            s.proc.join()
            if s.cell is not None:
                self._drain_results(timeout=0.5)  # a report that raced the exit
            if s.cell is not None:
                rd = RunDir(self.runs / run_id(s.cell))
                status = "done" if rd.is_done() else "failed"
                if status == "failed":
                    rd.mark_failed(RuntimeError(f"worker process exited with code {s.proc.exitcode}"))
                self._finish(slot, status)
            del self.slots[slot]

    def run(self, todo: list) -> dict[str, str]:
        pending = deque(todo)
        listener = progress_listener(self.progress, self.progress_q)
        try:
            while pending or any(s.cell is not None for s in self.slots.values()):
                self._hand_out(pending)
                self._drain_results(timeout=1.0)  # reports; a worker that died cannot report: checked next
                self._reap_dead()
            self._stop_workers()
        finally:
            self._end_workers()
            listener.stop()
        return self.results

    def _stop_workers(self) -> None:
        for s in self.slots.values():
            s.tasks.put(None)
        for s in self.slots.values():
            s.proc.join(timeout=30)

    def _end_workers(self) -> None:
        for s in self.slots.values():  # interrupted: give workers a moment to stop, then end them
            s.proc.join(timeout=10)
            if s.proc.is_alive():
                s.proc.terminate()
