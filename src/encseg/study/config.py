"""Strict models of a study file: the encoders, axes, exclusions, per-cell overrides, SLURM resources, cost.

A study expands into run configs (``study.grid``); the run-config models it reuses are ``encseg.config``'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from encseg.config import DatasetConfig, EncoderConfig, HeadConfig, NeckConfig, RegimeConfig, Strict
from encseg.config_io import deep_merge, read_yaml

# Keys of a cell's RunConfig that the study axes own; an ``overrides[].set`` on them would break the grid.
STUDY_AXIS_KEYS = ("name", "tags", "seed", "data.dataset", "data.fraction", "data.subset_seed")


def _safe_label(v: str, what: str) -> str:
    if not v or any(not (c.isalnum() or c in "_.-") for c in v) or v in (".", ".."):
        raise ValueError(f"{what} {v!r} may only use the characters [A-Za-z0-9_.-]")
    return v


def _dataset_entry(v: Any) -> Any:
    """A dataset given as a path is replaced by the DatasetConfig in that YAML file (relative to CWD)."""
    return read_yaml(v) if isinstance(v, (str, Path)) else v


class StudyEncoder(Strict):
    """One encoder of a study. Each section is merged over the same section of the study's ``base``.

    Only the keys written here change the base (so ``encoder: {weights: b.safetensors}`` keeps the base's
    architecture). The same label may appear with several regimes (e.g. ``pretrained_b`` finetuned and
    frozen); the cells' run ids must still be distinct.
    """

    label: str
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    regime: RegimeConfig = Field(default_factory=RegimeConfig)
    neck: NeckConfig | None = None
    head: HeadConfig | None = None

    @field_validator("label")
    @classmethod
    def _label(cls, v: str) -> str:
        return _safe_label(v, "encoder label")


class StudyBaseline(Strict):
    """The cells that gains are measured against: an encoder label in one regime (``frozen``, ``finetune``,
    ``last<N>``). The plain string form ``baseline: random`` is shorthand for ``{encoder: random, regime:
    finetune}``."""

    encoder: str = "random"
    regime: str = "finetune"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"encoder": data} if isinstance(data, str) else data

    def label(self) -> str:
        return f"{self.encoder} ({self.regime})"


class StudyMatch(Strict):
    """A partial match on the cell axes; a list matches any of its values, an absent key matches all."""

    encoder: str | list[str] | None = None  # the encoder label
    regime: str | list[str] | None = None  # frozen / finetune / last<N>
    train_dataset: str | list[str] | None = None  # the dataset's display name
    fraction: float | list[float] | None = None
    seed: int | list[int] | None = None


class StudyOverride(Strict):
    """Per-cell settings: ``{match: {fraction: 0.1}, set: {train.max_iters: 2000}}``; applied in order."""

    match: StudyMatch = Field(default_factory=StudyMatch)
    set: dict[str, Any]

    @field_validator("set")
    @classmethod
    def _not_axes(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if any(key == k or key.startswith(k + ".") for k in STUDY_AXIS_KEYS):
                raise ValueError(f"overrides cannot set {key!r}: the study axes own {', '.join(STUDY_AXIS_KEYS)}")
        return v


class SlurmConfig(Strict):
    """Resources of each array task (one task = one cell); None leaves the cluster's default."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_node: int = Field(1, ge=0)
    nodes: int = Field(1, ge=1)
    cpus_per_task: int = Field(8, ge=1)
    mem_gb: float | None = Field(None, gt=0)
    timeout_min: int = Field(24 * 60, ge=1)
    array_parallelism: int | None = Field(None, ge=1)  # cells running at once; None: the cluster's limit
    constraint: str | None = None
    additional_parameters: dict[str, Any] = Field(default_factory=dict)  # extra #SBATCH keys


class CostConfig(Strict):
    """Measured speed for ``study plan``'s time estimate (seconds per optimiser step on ``device``)."""

    sec_per_iter: float | None = Field(None, gt=0.0)
    device: str | None = None
    # budget converge: expected epochs over a cell's subset before its dev curve plateaus; None: the epochs
    # that max_iters makes over the whole train split (docs/recipes.md "Expected GPU-hours")
    converge_epochs: float | None = Field(None, gt=0.0)
    # train-split sizes by dataset name, for planning when the data is not on disk (the study plan counts
    # the images on disk when it can)
    train_images: dict[str, int] = Field(default_factory=dict)
    gpu_mem_gb: float = Field(80.0, gt=0.0)  # memory of one GPU: the plan warns about cells estimated above it


class StudyConfig(Strict):
    """An ablation grid: encoders x train datasets x fractions x seeds, minus ``exclude``d cells.

    ``base`` is a partial RunConfig shared by every cell (``base_config`` names a run YAML that ``base`` is
    merged over). Datasets may be given inline or as paths to dataset YAML files. The train dataset's val
    split is always scored; ``eval_datasets`` other than the train dataset become cross-dataset evals.
    """

    name: str
    out: Path | None = None  # the study directory; None: outputs/<name>
    base_config: Path | None = None  # merged under ``base`` while loading, then cleared
    base: dict[str, Any] = Field(default_factory=dict)
    baseline: StudyBaseline = Field(default_factory=StudyBaseline)  # gains are measured against it
    encoders: list[StudyEncoder] = Field(min_length=1)
    train_datasets: list[DatasetConfig] = Field(default_factory=list)  # empty: the base's data.dataset
    fractions: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    # per_seed: seed s of every cell trains on the nested subsets drawn with subset_seed = s (the subset is
    # sampled with the seed); an int: one subset for every seed
    subset_seed: int | Literal["per_seed"] = "per_seed"
    eval_datasets: list[DatasetConfig] = Field(default_factory=list)
    exclude: list[StudyMatch] = Field(default_factory=list)
    overrides: list[StudyOverride] = Field(default_factory=list)
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    cost: CostConfig = Field(default_factory=CostConfig)

    @model_validator(mode="before")
    @classmethod
    def _inline_base_config(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("base_config") is not None:
            data = dict(data)
            base = data.get("base") or {}
            if not isinstance(base, dict):
                raise ValueError("base must be a mapping (a partial run config)")
            data["base"] = deep_merge(read_yaml(data.pop("base_config")), base)
        return data

    @field_validator("train_datasets", "eval_datasets", mode="before")
    @classmethod
    def _dataset_paths(cls, v: Any) -> Any:
        return [_dataset_entry(x) for x in v] if isinstance(v, list) else v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _safe_label(v, "study name")

    @field_validator("fractions")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        bad = [f for f in v if not 0.0 < f <= 1.0]
        if bad:
            raise ValueError(f"fractions must lie in (0, 1], got {bad}")
        if len({round(f, 9) for f in v}) != len(v):
            raise ValueError(f"fractions repeat a value: {v}")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds repeat a value: {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> StudyConfig:
        if "name" in self.base:
            raise ValueError("base.name would give every cell the same run directory; remove it")
        labels = [e.label for e in self.encoders]
        if self.baseline.encoder not in labels:
            raise ValueError(f"baseline {self.baseline.encoder!r} is not an encoder label ({', '.join(labels)}); "
                             f"set `baseline:` to one of them")
        if not self.train_datasets and "dataset" not in (self.base.get("data") or {}):
            raise ValueError("no train dataset: give train_datasets or base.data.dataset")
        for what, dsets in (("train_datasets", self.train_datasets), ("eval_datasets", self.eval_datasets)):
            names = [d.display_name for d in dsets]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what}: several datasets are named {dup}; give each a distinct `name`")
        return self
