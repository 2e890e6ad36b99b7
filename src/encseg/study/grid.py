"""A study file -> the grid of validated RunConfigs, and the state of each cell's run directory on disk.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from encseg.config import ConfigError, DatasetConfig, RunConfig, regime_label
from encseg.config_io import deep_merge, nest_key, read_yaml, validate
from encseg.engine.rundir import RunDir, resolve_runs_root, result_diff, run_id
from encseg.study.config import StudyConfig, StudyMatch


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
        tree = deep_merge(tree, nest_key(key, value))
    return tree


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
    base = study.baseline
    if not any(e.label == base.encoder and r == base.regime for e, r in zip(study.encoders, regimes, strict=True)):
        trained = sorted({r for e, r in zip(study.encoders, regimes, strict=True) if e.label == base.encoder})
        raise ConfigError(f"study {study.name}: baseline {base.label()} is not a cell of the study: "
                          f"{base.encoder} is trained as {', '.join(trained)}; set baseline.regime")
    axes = {"encoder": [e.label for e in study.encoders], "regime": sorted(set(regimes)),
            "train_dataset": [d.display_name for d in datasets], "fraction": study.fractions, "seed": study.seeds}
    for i, rule in enumerate(study.exclude):
        _check_rule_values(rule, f"study {study.name}: exclude[{i}]", axes)
    for i, ov in enumerate(study.overrides):
        _check_rule_values(ov.match, f"study {study.name}: overrides[{i}].match", axes)
    cells = [_Cell(i, e.label, regimes[i], d, f, s)
             for i, e in enumerate(study.encoders) for d in datasets for f in study.fractions for s in study.seeds]
    return [c for c in cells if not any(_matches(rule, c) for rule in study.exclude)]


def subset_seed(study: StudyConfig, seed: int) -> int:
    """The run's ``data.subset_seed``: the training seed itself under ``subset_seed: per_seed``, else the study's.

    Every encoder and fraction of one seed then share one permutation (nested subsets, paired runs), and the
    seeds of a cell sample the subset as well as the initialisation and data order.
    """
    return seed if study.subset_seed == "per_seed" else int(study.subset_seed)


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
                subset_seed=subset_seed(study, cell.seed))
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
    return result_diff(rd.read_config(), resolve_runs_root(cfg, runs))
