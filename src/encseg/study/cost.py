"""What a study grid costs before it runs: optimiser steps and GPU-hours per cell, and the converge budget's
expected steps. Steps are counted by the trainer's own rule (``engine.schedule``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from encseg.config import DatasetConfig, RunConfig
from encseg.engine.rundir import resolve_runs_root, run_id
from encseg.engine.schedule import steps_per_epoch, total_steps, world_size
from encseg.study.config import StudyConfig
from encseg.study.grid import runs_root

# Assumed, not measured: ViT-B + Mask2Former, 512 crop, batch 16, bf16 on one A100. Measure a few hundred
# steps on your hardware and put the figure in the study's `cost: {sec_per_iter, device}`.
DEFAULT_SEC_PER_ITER = 0.6
DEFAULT_COST_DEVICE = "A100 (assumed default; set cost.sec_per_iter)"


# ----------------------------------------------------------------------------------------------- cost
@dataclass
class CellCost:
    run_id: str
    train_images: int | None  # images in the cell's subset; None when the dataset is not on disk
    iterations: int | None  # optimiser steps; None when the budget is in epochs and the size is unknown
    gpus: int
    gpu_hours: float | None
    pool_images: int | None = None  # train split minus its dev split: what fraction 1.0 trains on


@dataclass
class CostEstimate:
    cells: list[CellCost]
    sec_per_iter: float
    device: str
    notes: list[str] = field(default_factory=list)  # why a dataset size is unknown

    @property
    def total_iterations(self) -> int:
        return sum(c.iterations or 0 for c in self.cells)

    @property
    def total_gpu_hours(self) -> float:
        return sum(c.gpu_hours or 0.0 for c in self.cells)

    @property
    def unknown(self) -> int:
        return sum(c.iterations is None for c in self.cells)


def _dataset_size(ds: DatasetConfig, known: dict[str, int] | None = None) -> tuple[int | None, str | None]:
    """Images in the train split without generating or downloading anything; (None, reason) if unknown.

    ``known`` (the study's ``cost.train_images``) gives the size of a dataset that is not on disk.
    """
    if ds.synthetic is not None and not Path(ds.root).exists():
        return ds.synthetic.train, None  # generated on first use with exactly this many train images
    if not Path(ds.root).exists():
        if known and ds.display_name in known:
            return known[ds.display_name], None
        return None, (f"{ds.display_name}: {ds.root} does not exist (cost.train_images can give its size)")
    try:
        from encseg.data.formats import build_dataset

        return len(build_dataset(ds, ds.train_split)), None
    except (ImportError, OSError, ValueError) as e:
        return None, f"{ds.display_name}: cannot count images ({type(e).__name__}: {e})"


def _subset_size(n: int, fraction: float, subset_seed: int) -> int:
    from encseg.data.subsets import subset_indices

    return len(subset_indices(n, fraction, subset_seed))


def _pool_size(n: int, ds: DatasetConfig) -> int:
    """Train images left after the dev split is held out; fractions are fractions of these."""
    from encseg.data.subsets import dev_count

    return n - dev_count(n, ds.dev_size)


def _iterations(cfg: RunConfig, images: int | None) -> int | None:
    """Optimiser steps by the trainer's rule (``engine.schedule.total_steps``; a converge budget counts its cap,
    the worst case); None for an epochs budget on a dataset of unknown size."""
    if images is None and cfg.train.budget == "epochs":
        return None
    return total_steps(cfg, images or 0)


def estimate_cost(runs: list[RunConfig], sec_per_iter: float | None = None, device: str | None = None,
                  runs_root: Path | None = None, train_images: dict[str, int] | None = None) -> CostEstimate:
    """Iterations and GPU-hours per run: ``iterations * sec_per_iter * gpus / 3600``.

    ``runs_root`` fills ``{runs_root}`` in dataset roots, as ``train()`` does, so those datasets can be counted.
    """
    spi = sec_per_iter or DEFAULT_SEC_PER_ITER
    dev = device or (DEFAULT_COST_DEVICE if sec_per_iter is None else "unspecified device")
    sizes: dict[str, tuple[int | None, str | None]] = {}
    notes: list[str] = []
    cells = []
    for cfg in runs:
        ds = (resolve_runs_root(cfg, runs_root) if runs_root is not None else cfg).data.dataset
        key = f"{ds.display_name}|{ds.root}|{ds.train_split}"
        if key not in sizes:
            sizes[key] = _dataset_size(ds, train_images)
            if sizes[key][1]:
                notes.append(sizes[key][1])
        n = _pool_size(sizes[key][0], ds) if sizes[key][0] is not None else None
        images = _subset_size(n, cfg.data.fraction, cfg.data.subset_seed) if n is not None else None
        iters = _iterations(cfg, images)
        gpus = world_size(cfg.train)
        hours = iters * spi * gpus / 3600.0 if iters is not None else None
        cells.append(CellCost(run_id(cfg), images, iters, gpus, hours, n))
    return CostEstimate(cells, spi, dev, notes)


def study_cost(study: StudyConfig, runs: list[RunConfig], out: str | Path | None = None) -> CostEstimate:
    return estimate_cost(runs, study.cost.sec_per_iter, study.cost.device, runs_root(study, out),
                         study.cost.train_images)


# -------------------------------------------------------------------------------------- converge cost
def _steps_per_epoch(cfg: RunConfig, images: int) -> int:
    """Optimiser steps of one pass over ``images`` (``engine.schedule``'s rule), at least 1 (a divisor)."""
    return max(1, steps_per_epoch(images, cfg.data.batch_size, world_size(cfg.train), cfg.train.accumulate))


def default_plateau_epochs(runs: list[RunConfig], cost: CostEstimate) -> dict[str, float]:
    """Expected epochs before the dev curve stops improving, per train dataset, when the study does not say.

    The epochs that the longest ``max_iters`` of the dataset's cells makes over the whole pool (train split
    minus dev): the published schedule is taken to be about what the full training set needs, and a smaller
    subset is expected to need as many passes over its fewer images (floored by ``min_iters``). The longest
    cap is used so that a per-fraction cut of ``max_iters`` does not lower the expectation.
    """
    out: dict[str, float] = {}
    for cfg, cell in zip(runs, cost.cells, strict=True):
        if cfg.train.budget == "converge" and cell.pool_images is not None:
            epochs = cfg.train.max_iters / _steps_per_epoch(cfg, cell.pool_images)
            name = cfg.data.dataset.display_name
            out[name] = max(out.get(name, 0.0), epochs)
    return out


def expected_converge_iters(cfg: RunConfig, images: int, epochs: float) -> int:
    """Expected optimiser steps of a ``budget: converge`` cell with ``images`` training images, whose dev
    curve is expected to stop improving after ``epochs`` passes over them.

    The engine declares the plateau ``patience`` validations after the last improvement, never before
    ``min_iters``, then anneals for ``anneal_fraction`` of the steps so far (a whole number of validations,
    at least one) and stops; ``max_iters`` caps it all. So::

        declared = max(min_iters, epochs * steps_per_epoch + patience * val_every)
        expected = min(max_iters, declared + max(val_every, ceil(anneal_fraction * declared / val_every) * val_every))
    """
    t = cfg.train
    improving = math.ceil(epochs * _steps_per_epoch(cfg, images))
    declared = max(t.min_iters, improving + t.converge.patience * t.val_every)
    anneal = max(t.val_every, math.ceil(t.converge.anneal_fraction * declared / t.val_every) * t.val_every)
    return min(t.max_iters, declared + anneal)


@dataclass
class ConvergeCost:
    """Iterations and GPU-hours of a study's ``budget: converge`` cells.

    ``worst`` runs every cell to ``max_iters``, which is also what the fixed schedule of the same length costs.
    Cells whose subset size is unknown are counted at ``max_iters`` in ``expected`` too (``unknown``).
    """

    cells: int
    expected_iters: int
    worst_iters: int
    expected_gpu_hours: float
    worst_gpu_hours: float
    unknown: int
    per_fraction: dict[float, list[int]] = field(default_factory=dict)  # expected iterations of each cell


def converge_cost(runs: list[RunConfig], cost: CostEstimate, converge_epochs: float | None = None
                  ) -> ConvergeCost | None:
    """Expected and worst-case cost of the converge cells of ``runs`` (None when there are none)."""
    out = ConvergeCost(0, 0, 0, 0.0, 0.0, 0)
    default = default_plateau_epochs(runs, cost)
    for cfg, cell in zip(runs, cost.cells, strict=True):
        if cfg.train.budget != "converge":
            continue
        known = cell.train_images is not None and cell.pool_images is not None
        epochs = converge_epochs or default.get(cfg.data.dataset.display_name)
        iters = (expected_converge_iters(cfg, cell.train_images, epochs) if known and epochs
                 else cfg.train.max_iters)
        per_hour = cost.sec_per_iter * cell.gpus / 3600.0
        out.cells += 1
        out.unknown += not known
        out.expected_iters += iters
        out.worst_iters += cfg.train.max_iters
        out.expected_gpu_hours += iters * per_hour
        out.worst_gpu_hours += cfg.train.max_iters * per_hour
        out.per_fraction.setdefault(cfg.data.fraction, []).append(iters)
    return out if out.cells else None


def converge_lines(study: StudyConfig, runs: list[RunConfig], cost: CostEstimate) -> list[str]:
    """The plan's lines on converge budgets: expected vs worst case (= the fixed schedule), per fraction."""
    cc = converge_cost(runs, cost, study.cost.converge_epochs)
    if cc is None:
        return []
    at = f"at {cost.sec_per_iter:g} s/iteration"
    per_fraction = "; ".join(f"{f:g}: {round(sum(v) / len(v))}" for f, v in sorted(cc.per_fraction.items()))
    epochs = (f"{study.cost.converge_epochs:g} (cost.converge_epochs)" if study.cost.converge_epochs
              else ", ".join(f"{n} {e:.1f}" for n, e in default_plateau_epochs(runs, cost).items())
              + " (what the longest max_iters makes over the train split; set cost.converge_epochs to change)")
    lines = [
        f"converge budget, {cc.cells} runs: expected {cc.expected_iters} iterations, "
        f"{cc.expected_gpu_hours:.1f} GPU-hours {at}",
        f"  worst case (every run to max_iters): {cc.worst_iters} iterations, {cc.worst_gpu_hours:.1f} GPU-hours",
        f"  fixed schedule (budget iters, max_iters for every run): {cc.worst_iters} iterations, "
        f"{cc.worst_gpu_hours:.1f} GPU-hours",
        f"  expected iterations per run by fraction: {per_fraction}",
        f"  expected = min(max_iters, plateau + anneal), plateau = max(min_iters, epochs x steps/epoch + "
        f"patience x val_every), epochs = {epochs}; docs/recipes.md explains the model",
    ]
    if cc.unknown:
        lines.append(f"  {cc.unknown} run(s) of unknown size counted at max_iters in the expected figure")
    return lines
