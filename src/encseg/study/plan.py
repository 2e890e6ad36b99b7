"""A study file -> the grid of validated RunConfigs, their state on disk and their estimated cost.

Conventions
- A cell is one (encoder entry, train dataset, fraction, seed). Its RunConfig is ``base`` with the encoder's
  sections merged in, the axis values set, then every matching ``overrides[].set`` applied in order.
- ``tags`` record the axes as strings: ``encoder`` (the study label), ``regime``, ``train_dataset``,
  ``fraction``, ``seed``, ``study``. The run directory name is ``engine.rundir.run_id(cfg)``.
- Paths inside a study file (``base_config``, dataset YAMLs) are read relative to the current directory
  when they exist there, else relative to the study file's folder. Dataset ``root``s follow the run-config
  rule (relative to the current directory).
- The study directory is ``out`` (default ``outputs/<name>``); runs live in ``<out>/runs/<run_id>/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from encseg.config import (
    ConfigError,
    DatasetConfig,
    RunConfig,
    StudyConfig,
    StudyMatch,
    deep_merge,
    read_yaml,
    regime_label,
    validate,
)
from encseg.engine.rundir import RunDir, config_diff, read_json, resolve_runs_root, run_id
from encseg.engine.schedule import total_steps, world_size
from encseg.study import aggregate

# Assumed, not measured: ViT-B + Mask2Former, 512 crop, batch 16, bf16 on one A100. Measure a few hundred
# steps on your hardware and put the figure in the study's `cost: {sec_per_iter, device}`.
DEFAULT_SEC_PER_ITER = 0.6
DEFAULT_COST_DEVICE = "A100 (assumed default; set cost.sec_per_iter)"

# Settings that change how a run is executed or logged but not what it computes: a finished run whose
# stored config differs only here still counts as the same cell.
_OPERATIONAL_KEYS = ("logging", "data.num_workers", "data.check", "train.compile")


# --------------------------------------------------------------------------------------------- loading
def _resolve_file(value: Any, base_dir: Path) -> Any:
    if not isinstance(value, str):
        return value
    p = Path(value)
    if p.is_absolute() or p.exists() or not (base_dir / p).exists():
        return value  # a missing file is reported with the path as written
    return str(base_dir / p)


def load_study(path: str | Path) -> StudyConfig:
    """Read and validate a study YAML; ``base_config`` and dataset paths are inlined in the result."""
    path = Path(path)
    raw = read_yaml(path)
    base_dir = path.resolve().parent
    if "base_config" in raw:
        raw["base_config"] = _resolve_file(raw["base_config"], base_dir)
    for key in ("train_datasets", "eval_datasets"):
        if isinstance(raw.get(key), list):
            raw[key] = [_resolve_file(v, base_dir) for v in raw[key]]
    study = validate(StudyConfig, raw, str(path))
    if study.out is None:
        study.out = Path("outputs") / study.name
    return study


def dump_study(study: StudyConfig) -> dict[str, Any]:
    """The resolved study as plain data; loading it again gives the same grid."""
    data = study.model_dump(mode="json", exclude_unset=True)
    data.pop("base_config", None)  # already merged into `base`
    return data


def study_dir(study: StudyConfig, out: str | Path | None = None) -> Path:
    return Path(out) if out is not None else (study.out or Path("outputs") / study.name)


def runs_root(study: StudyConfig, out: str | Path | None = None) -> Path:
    return study_dir(study, out) / "runs"


# ---------------------------------------------------------------------------------------------- expand
@dataclass(frozen=True)
class _Cell:
    encoder_index: int
    label: str
    regime: str
    dataset: DatasetConfig
    fraction: float
    seed: int

    def describe(self) -> str:
        return (f"encoder={self.label} regime={self.regime} train_dataset={self.dataset.display_name} "
                f"fraction={self.fraction:g} seed={self.seed}")


def _regime_id(regime: dict[str, Any]) -> str:
    return regime_label(regime.get("mode", "finetune"), regime.get("last_n", 0))


def _as_list(v: Any) -> list:
    return v if isinstance(v, list) else [v]


def _matches(rule: StudyMatch, cell: _Cell) -> bool:
    def hit(key: str, value: Any) -> bool:
        wanted = getattr(rule, key)
        if wanted is None:
            return True
        if key == "fraction":
            return any(math.isclose(value, w, rel_tol=1e-9, abs_tol=1e-12) for w in _as_list(wanted))
        return value in _as_list(wanted)

    return (hit("encoder", cell.label) and hit("regime", cell.regime)
            and hit("train_dataset", cell.dataset.display_name) and hit("fraction", cell.fraction)
            and hit("seed", cell.seed))


def _check_rule_values(rule: StudyMatch, where: str, axes: dict[str, list]) -> None:
    """A value that names no axis entry is almost always a typo that would silently match nothing."""
    for key, known in axes.items():
        wanted = getattr(rule, key)
        if wanted is None:
            continue
        for w in _as_list(wanted):
            ok = (any(math.isclose(w, k, rel_tol=1e-9, abs_tol=1e-12) for k in known) if key == "fraction"
                  else w in known)
            if not ok:
                raise ConfigError(f"{where}.{key}: {w!r} is not in the study (known: "
                                  f"{', '.join(str(k) for k in known)})")


def _nest(dotted: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in dotted.items():
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"override key {key!r} has an empty segment")
        tree = deep_merge(tree, _nest_one(parts, value))
    return tree


def _nest_one(parts: list[str], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {parts[-1]: value}
    for p in reversed(parts[:-1]):
        out = {p: out}
    return out


def _train_datasets(study: StudyConfig) -> list[DatasetConfig]:
    if study.train_datasets:
        return list(study.train_datasets)
    ds = validate(DatasetConfig, study.base["data"]["dataset"], f"study {study.name}: base.data.dataset")
    return [ds]


def _cells(study: StudyConfig) -> list[_Cell]:
    base_regime = (study.base.get("model") or {}).get("regime") or {}
    regimes = [_regime_id(deep_merge(base_regime, e.regime.model_dump(exclude_unset=True)))
               for e in study.encoders]
    datasets = _train_datasets(study)
    axes = {"encoder": [e.label for e in study.encoders], "regime": sorted(set(regimes)),
            "train_dataset": [d.display_name for d in datasets], "fraction": study.fractions, "seed": study.seeds}
    for i, rule in enumerate(study.exclude):
        _check_rule_values(rule, f"study {study.name}: exclude[{i}]", axes)
    for i, ov in enumerate(study.overrides):
        _check_rule_values(ov.match, f"study {study.name}: overrides[{i}].match", axes)
    cells = [_Cell(i, e.label, regimes[i], d, f, s)
             for i, e in enumerate(study.encoders) for d in datasets for f in study.fractions for s in study.seeds]
    return [c for c in cells if not any(_matches(rule, c) for rule in study.exclude)]


def _cell_config(study: StudyConfig, cell: _Cell) -> RunConfig:
    enc = study.encoders[cell.encoder_index]
    model: dict[str, Any] = {"encoder": enc.encoder.model_dump(mode="json", exclude_unset=True),
                             "regime": enc.regime.model_dump(mode="json", exclude_unset=True)}
    for section in ("neck", "head"):
        part = getattr(enc, section)
        if part is not None:
            model[section] = part.model_dump(mode="json", exclude_unset=True)
    d = deep_merge(study.base, {"model": model})
    data = dict(d.get("data") or {})
    data.update(dataset=cell.dataset.model_dump(mode="json"), fraction=cell.fraction,
                subset_seed=study.subset_seed)
    d["data"] = data
    if study.eval_datasets:
        extra = [x.model_dump(mode="json") for x in study.eval_datasets
                 if x.display_name != cell.dataset.display_name]
        d["eval"] = {**(d.get("eval") or {}), "datasets": extra}
    d["seed"] = cell.seed
    d["tags"] = {"encoder": cell.label, "regime": cell.regime, "train_dataset": cell.dataset.display_name,
                 "fraction": f"{cell.fraction:g}", "seed": str(cell.seed), "study": study.name}
    for ov in study.overrides:
        if _matches(ov.match, cell):
            d = deep_merge(d, _nest(ov.set))
    return validate(RunConfig, d, f"study {study.name}, cell [{cell.describe()}]")


def expand(study: StudyConfig) -> list[RunConfig]:
    """Every cell of the grid (minus exclusions) as a validated RunConfig, in encoder-dataset-fraction-seed order.

    Raises ConfigError naming the cell and key when a cell's config is invalid, and when two cells would
    share a run directory.
    """
    runs: list[RunConfig] = []
    seen: dict[str, str] = {}
    for cell in _cells(study):
        cfg = _cell_config(study, cell)
        rid = run_id(cfg)
        if rid in seen:
            raise ConfigError(f"study {study.name}: cells [{seen[rid]}] and [{cell.describe()}] share the run id "
                              f"{rid!r}; give the encoder entries distinct labels")
        seen[rid] = cell.describe()
        runs.append(cfg)
    return runs


# ---------------------------------------------------------------------------------------------- state
def cell_state(cfg: RunConfig, runs: Path) -> str:
    """``new`` / ``partial`` / ``done`` / ``failed`` of the cell's run directory under ``runs``."""
    return RunDir(runs / run_id(cfg)).state()


def config_drift(cfg: RunConfig, runs: Path) -> list[str]:
    """Keys where the run directory's stored config differs from the cell's (empty when none stored).

    ``train()`` refuses to resume a partial run with another config but returns a DONE run as is, so a grid
    whose settings were edited after some cells finished would silently mix old and new results.
    """
    rd = RunDir(runs / run_id(cfg))
    if not rd.config_path.is_file():
        return []
    # train() substitutes {runs_root} in dataset roots before writing config.yaml
    diffs = config_diff(rd.read_config(), resolve_runs_root(cfg, runs))
    return [k for k in diffs if not any(k == o or k.startswith(o + ".") for o in _OPERATIONAL_KEYS)]


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
    """Optimiser steps, counted by the trainer's own rule (``engine.schedule``); a converge budget counts its
    cap, i.e. the worst case."""
    if cfg.train.budget in ("iters", "converge"):
        return cfg.train.max_iters
    return None if images is None else total_steps(cfg, images)


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
def steps_per_epoch(cfg: RunConfig, images: int) -> int:
    """Optimiser steps of one pass over ``images`` training images, by the same rule as an epochs budget."""
    one = cfg.train.model_copy(update={"budget": "epochs", "max_epochs": 1})
    return _iterations(cfg.model_copy(update={"train": one}), images) or 1


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
            epochs = cfg.train.max_iters / steps_per_epoch(cfg, cell.pool_images)
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
    improving = math.ceil(epochs * steps_per_epoch(cfg, images))
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
    header = ("run id", "encoder", "regime", "dataset", "fraction", "seed", "images", "iterations", "state")
    rows = []
    states: dict[str, int] = {}
    drifted = []
    for cfg, c in zip(runs, cost.cells, strict=True):
        state = cell_state(cfg, root)
        states[state] = states.get(state, 0) + 1
        if state != "new" and config_drift(cfg, root):
            drifted.append(c.run_id)
        rows.append((c.run_id, cfg.tags["encoder"], cfg.tags["regime"], cfg.tags["train_dataset"],
                     f"{cfg.data.fraction:g}", str(cfg.seed), "?" if c.train_images is None else str(c.train_images),
                     "unknown" if c.iterations is None else str(c.iterations), state))
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
    if drifted:
        lines.append(f"warning: {len(drifted)} run(s) on disk were made with a different config: "
                     f"{', '.join(drifted[:5])}{' ...' if len(drifted) > 5 else ''}")
    return "\n".join(lines)


def plan_cli(path: str | Path) -> int:
    study = load_study(path)
    print(format_plan(study, expand(study)))
    return 0


# ------------------------------------------------------------------------------------- compute used
COMPUTE_COLUMNS = ["run_id", "train_dataset", "fraction", "budget", "converged", "gpus", "iters_trained",
                   "fixed_iters", "train_wall_s", "fixed_wall_s", "gpu_hours", "fixed_gpu_hours"]


def compute_used(study_dir: str | Path) -> pd.DataFrame:
    """One row per finished run: the iterations and GPU-hours it used, and what the fixed schedule would have.

    The fixed schedule of a ``converge`` run is its ``max_iters`` cap (the published schedule in the shipped
    studies), costed at the run's own measured seconds per iteration (``train_wall_s / iters_trained``); a
    run on a fixed budget used its fixed schedule. Runs that did not record ``iters_trained`` fall back to
    ``steps`` and ``train_time_s`` of their summary.json.
    """
    rows = []
    for rd in aggregate.finished_runs(study_dir):
        cfg = rd.read_config()
        summary = read_json(rd.summary_path)
        rec = aggregate.convergence(summary, cfg, rd.summary_path)
        iters = rec["iters_trained"] if not math.isnan(rec["iters_trained"]) else float(summary.get("steps") or 0)
        wall = rec["train_wall_s"]
        if math.isnan(wall):
            wall = float(summary.get("train_time_s") or math.nan)
        fixed = rec["max_iters"] if rec["budget"] == "converge" else iters
        fixed_wall = fixed * wall / iters if iters > 0 else math.nan
        gpus = world_size(cfg.train)
        rows.append({"run_id": rd.name, "train_dataset": cfg.data.dataset.display_name,
                     "fraction": float(cfg.data.fraction), "budget": rec["budget"], "converged": rec["converged"],
                     "gpus": gpus, "iters_trained": iters, "fixed_iters": fixed, "train_wall_s": wall,
                     "fixed_wall_s": fixed_wall, "gpu_hours": wall * gpus / 3600.0,
                     "fixed_gpu_hours": fixed_wall * gpus / 3600.0})
    return pd.DataFrame(rows, columns=COMPUTE_COLUMNS)
