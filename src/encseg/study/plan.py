"""``encseg study plan STUDY``: the grid, each cell's state on disk, and what it will cost."""

from __future__ import annotations

from pathlib import Path

from encseg.config import RunConfig
from encseg.study.config import StudyConfig
from encseg.study.cost import converge_lines, study_cost
from encseg.study.grid import cell_state, config_drift, expand, load_study, runs_root, study_dir
from encseg.study.memory import memory_lines


# ------------------------------------------------------------------------------------------------ CLI
def budget_rule(runs: list[RunConfig]) -> str:
    """The k% budget rule in words, e.g. ``fixed iterations (max_iters 2000 or 8000, set per cell)``."""
    parts = []
    for budget, what, key in (("iters", "fixed iterations", "max_iters"),
                              ("epochs", "fixed epochs; iterations scale with the subset size", "max_epochs")):
        values = sorted({getattr(c.train, key) for c in runs if c.train.budget == budget})
        if values:
            per_cell = ", set per cell" if len(values) > 1 else ""
            parts.append(f"{what} ({key} {' or '.join(map(str, values))}{per_cell})")
    conv = [c.train for c in runs if c.train.budget == "converge"]
    if conv:
        lo = " or ".join(map(str, sorted({t.min_iters for t in conv})))
        hi = " or ".join(map(str, sorted({t.max_iters for t in conv})))
        parts.append(f"until the dev curve converges (min_iters {lo}, max_iters {hi})")
    return "; ".join(parts)


def format_plan(study: StudyConfig, runs: list[RunConfig], out: str | Path | None = None) -> str:
    root = runs_root(study, out)
    cost = study_cost(study, runs, out)
    header = ("run id", "encoder", "regime", "dataset", "fraction", "seed", "images", "iterations", "mem/GPU",
              "state")
    mem_cells, mem_warnings = memory_lines(study.cost.gpu_mem_gb, runs)
    rows = []
    states: dict[str, int] = {}
    drifted = []
    for cfg, c, mem in zip(runs, cost.cells, mem_cells, strict=True):
        state = cell_state(cfg, root)
        states[state] = states.get(state, 0) + 1
        if state != "new" and config_drift(cfg, root):
            drifted.append(c.run_id)
        rows.append((c.run_id, cfg.tags["encoder"], cfg.tags["regime"], cfg.tags["train_dataset"],
                     f"{cfg.data.fraction:g}", str(cfg.seed), "?" if c.train_images is None else str(c.train_images),
                     "unknown" if c.iterations is None else str(c.iterations), mem, state))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"study {study.name}: {study_dir(study, out)}", f"budget: {budget_rule(runs)}", ""]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.append("")
    state_txt = ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
    lines.append(f"runs: {len(runs)} ({state_txt}); iterations: {cost.total_iterations}"
                 + (f" (+{cost.unknown} unknown)" if cost.unknown else ""))
    hours = cost.total_gpu_hours
    lines.append(f"estimated GPU-hours: {hours:.1f}" if hours >= 1 else f"estimated GPU-hours: {hours:.2g}")
    lines[-1] += (f" at {cost.sec_per_iter:g} s/iteration on "
                 f"{cost.device}" + (" (runs of unknown size not counted)" if cost.unknown else ""))
    if any(c.train.budget == "converge" for c in runs):
        lines[-1] += " (converge runs counted at max_iters)"
    lines += converge_lines(study, runs, cost)
    lines += [f"note: {n}" for n in cost.notes]
    lines.append(f"mem/GPU: estimated peak per GPU (study/memory.py, +-30 %); cost.gpu_mem_gb = {study.cost.gpu_mem_gb:g}")
    lines += mem_warnings
    if drifted:
        lines.append(f"warning: {len(drifted)} run(s) on disk were made with a different config: "
                     f"{', '.join(drifted[:5])}{' ...' if len(drifted) > 5 else ''}")
    return "\n".join(lines)


def plan_cli(path: str | Path) -> int:
    study = load_study(path)
    print(format_plan(study, expand(study)))
    return 0
