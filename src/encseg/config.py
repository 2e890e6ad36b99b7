"""Strict run configuration: pydantic models, YAML loading, ``key.path=value`` overrides.

Every section forbids unknown keys, and a misspelt key fails with the closest valid one before anything
expensive starts (``ConfigError``). The resolved config is written into every run directory, so the file is
the single record of what was run.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from encseg.errors import EncsegError


class ConfigError(EncsegError, ValueError):
    """A config file or override that cannot be turned into a valid config; the message names the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


# ----------------------------------------------------------------------------------------------- data
DatasetFormat = Literal["ade20k", "cityscapes", "voc", "coco_stuff", "gta5", "folder"]


class SynthConfig(Strict):
    """A synthetic dataset to generate at ``DatasetConfig.root`` when it does not exist yet."""

    style: str = "a"
    classes: int = Field(5, ge=2, le=250)
    train: int = Field(64, ge=1)
    val: int = Field(16, ge=1)
    size: int = Field(128, ge=16)
    seed: int = 0
    layout: Literal["folder", "ade20k", "voc", "cityscapes"] = "folder"
    cue: Literal["shape_texture", "texture"] = "shape_texture"  # what defines a class (see data/synthetic.py)


class DatasetConfig(Strict):
    """Where a dataset lives and how it is laid out (``configs/datasets/*.yaml``)."""

    name: str | None = None  # the name used in run ids and eval file names; defaults to the format
    format: DatasetFormat = "folder"
    root: Path
    train_split: str = "train"
    val_split: str = "val"
    synthetic: SynthConfig | None = None  # generate the data at ``root`` on first use
    taxonomy: str | None = None  # name of the taxonomy whose shared label space this dataset maps into
    options: dict[str, Any] = Field(default_factory=dict)  # format-specific switches, e.g. use_sbd: true
    # train images held out as the dev split (int: a count, float: a fraction); 0: none (see data/subsets.py)
    dev_size: int | float = 0.05

    @field_validator("dev_size")
    @classmethod
    def _dev_size(cls, v: int | float) -> int | float:
        if isinstance(v, float) and not 0.0 < v < 1.0:
            raise ValueError(f"dev_size {v} must be a fraction in (0, 1) or an image count (an int >= 0)")
        if v < 0:
            raise ValueError(f"dev_size {v} must not be negative")
        return v

    @property
    def display_name(self) -> str:
        return self.name or self.format


class DataConfig(Strict):
    dataset: DatasetConfig
    fraction: float = Field(1.0, gt=0.0, le=1.0)  # share of the train split, nested across fractions
    subset_seed: int = 0  # independent of the training seed, so every encoder sees the same images
    crop_size: int = Field(512, ge=16)
    base_size: int = Field(512, ge=16)  # short side before the random scale jitter
    scale_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = Field(0.75, gt=0.0, le=1.0)
    flip: bool = True
    photometric: bool = True
    batch_size: int = Field(16, ge=1)  # per device
    num_workers: int = Field(4, ge=0)
    eval_size: int | None = 512  # short side at evaluation; None keeps the original size
    check: bool = True  # fast existence/size check of every file before the first step


# ---------------------------------------------------------------------------------------------- model
class EncoderConfig(Strict):
    name: str = "random_vitb16"  # an entry of ``encseg encoders`` or any timm ViT architecture
    weights: str | None = None  # None: the entry's default; "hub"; "none" (random init); or a local file path
    ignore_prefixes: list[str] = Field(default_factory=list)  # checkpoint keys allowed to be left unused
    taps: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75, 1.0])  # depth fractions (<=1) or block indices
    # input size of the positional table for a random init (None: the padded crop); with a checkpoint it must be
    # None or the checkpoint's own size (see models/encoders.py: resampled at most once)
    img_size: int | None = None
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0)
    timm_kwargs: dict[str, Any] = Field(default_factory=dict)  # e.g. depth/embed_dim for tiny test encoders


class NeckConfig(Strict):
    type: Literal["simple_fpn", "multilevel"] = "simple_fpn"
    channels: int = Field(256, ge=8)
    fuse: bool = False  # multilevel: top-down fusion across levels


class HeadConfig(Strict):
    """Mask2Former settings (HF ``Mask2FormerConfig`` names) or the linear probe."""

    type: Literal["mask2former", "linear"] = "mask2former"
    hidden_dim: int = Field(256, ge=8)
    num_queries: int = Field(100, ge=1)
    num_attention_heads: int = Field(8, ge=1)
    dim_feedforward: int = Field(2048, ge=8)
    encoder_layers: int = Field(6, ge=1)  # deformable pixel-decoder layers
    decoder_layers: int = Field(10, ge=2)  # HF counts the learnable-query layer: 10 = the paper's 9
    encoder_feedforward_dim: int = Field(1024, ge=8)
    train_num_points: int = Field(12544, ge=16)
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1

    @model_validator(mode="after")
    def _group_norm(self) -> HeadConfig:
        if self.type == "mask2former" and self.hidden_dim % 32:
            raise ValueError(f"model.head.hidden_dim={self.hidden_dim} must be divisible by 32 (GroupNorm(32))")
        return self


class RegimeConfig(Strict):
    mode: Literal["frozen", "finetune", "last_n"] = "finetune"
    last_n: int = Field(0, ge=0)  # trainable final blocks in ``last_n`` mode
    lr_mult: float = Field(0.1, ge=0.0)  # encoder LR relative to the head
    layer_decay: float = Field(1.0, gt=0.0, le=1.0)  # 1.0 disables layer-wise decay

    @model_validator(mode="after")
    def _last_n(self) -> RegimeConfig:
        if self.mode == "last_n" and self.last_n < 1:
            raise ValueError("model.regime.last_n must be >= 1 when mode is 'last_n'")
        return self

    @property
    def label(self) -> str:
        return regime_label(self.mode, self.last_n)


def regime_label(mode: str, last_n: int = 0) -> str:
    """The regime as results, summaries, plots and run ids name it: ``frozen``, ``finetune`` or ``last<N>``,
    so that runs training different depths are never merged into one ``last_n`` row."""
    return f"last{last_n}" if mode == "last_n" else mode


class ModelConfig(Strict):
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    neck: NeckConfig = Field(default_factory=NeckConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    regime: RegimeConfig = Field(default_factory=RegimeConfig)


# ---------------------------------------------------------------------------------------------- train
class ConvergeConfig(Strict):
    """When the dev curve has stopped improving (engine/convergence.py): ``patience`` validations in a row
    without an mIoU gain above ``min_delta`` AND without a relative dev-loss drop above ``loss_min_delta``."""

    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.005, ge=0.0)  # absolute dev mIoU
    loss_min_delta: float | None = Field(0.01, ge=0.0)  # relative dev loss; None: judge on mIoU alone
    anneal_fraction: float = Field(0.2, gt=0.0, le=1.0)  # final LR decay, as a share of the steps so far


class TrainConfig(Strict):
    optimizer: Literal["adamw"] = "adamw"
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    budget: Literal["iters", "epochs", "converge"] = "iters"  # converge: until the dev curve plateaus
    max_iters: int = Field(160_000, ge=1)  # the schedule (iters) or the cap (converge)
    min_iters: int = Field(0, ge=0)  # converge: no plateau is declared before this step
    converge: ConvergeConfig = Field(default_factory=ConvergeConfig)
    max_epochs: int = Field(100, ge=1)
    warmup_iters: int = Field(0, ge=0)
    warmup_ratio: float = Field(1e-6, gt=0.0, le=1.0)  # start LR as a fraction of the base LR
    poly_power: float = Field(0.9, ge=0.0)
    grad_clip: float | None = Field(0.01, gt=0.0)  # clip by norm; None disables
    accumulate: int = Field(1, ge=1)
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | Literal["auto"] = 1
    num_nodes: int = Field(1, ge=1)
    val_every: int = Field(5000, ge=1)  # in iterations (budget iters) or epochs (budget epochs)
    log_every: int = Field(50, ge=1)
    checkpoint_every: int | None = None  # iterations between `last` saves; None: at every validation
    compile: bool = False

    @model_validator(mode="after")
    def _min_iters(self) -> TrainConfig:
        if self.min_iters > self.max_iters:
            raise ValueError(f"train.min_iters={self.min_iters} exceeds train.max_iters={self.max_iters}")
        return self


class EvalConfig(Strict):
    mode: Literal["whole", "slide"] = "whole"
    crop_size: int | None = None  # slide: window size; None: data.crop_size
    stride: int | None = None  # slide: window stride; None: 2/3 of the window
    flip: bool = False
    scales: list[float] = Field(default_factory=lambda: [1.0])
    batch_size: int = Field(1, ge=1)
    datasets: list[DatasetConfig] = Field(default_factory=list)  # extra (cross-dataset) evals after training
    checkpoint: Literal["last", "best"] = "last"  # weights that are exported and scored; "best" selects on the dev split
    latency_iters: int = Field(10, ge=0)  # timed forwards for the efficiency record; 0 skips timing
    converge_target: float | None = None  # absolute mIoU target for time-to-target


class LoggingConfig(Strict):
    tensorboard: bool = False
    wandb: dict[str, Any] | None = None  # kwargs of lightning's WandbLogger (project, entity, ...)
    mlflow: dict[str, Any] | None = None
    progress_bar: Literal["auto", "on", "off"] = "auto"


class RunConfig(Strict):
    name: str | None = None  # overrides the derived run id
    tags: dict[str, str] = Field(default_factory=dict)  # study labels, e.g. {"encoder": "pretrained_b"}
    seed: int = 0
    deterministic: bool = False
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        if v is not None and (not v or any(c in v for c in "/\\ ")):
            raise ValueError(f"name {v!r} must be a non-empty string without slashes or spaces")
        return v

    @model_validator(mode="after")
    def _dev_split_for_decisions(self) -> RunConfig:
        # without a dev split the validation curve is the reported split: no decision may be made on it
        if self.data.dataset.dev_size == 0 and (self.train.budget == "converge" or self.eval.checkpoint == "best"):
            raise ValueError("data.dataset.dev_size is 0 (no dev split), so train.budget 'converge' and "
                             "eval.checkpoint 'best' would select on the reported val split; set a dev_size")
        return self


# ------------------------------------------------------------------------------------ load / override
def parse_overrides(overrides: list[str], model: type[BaseModel] | None = None) -> dict[str, Any]:
    """``["train.lr=1e-3", "model.encoder.name=dinov2_vitb14"]`` -> nested dict.

    Values are parsed as YAML, then read against the type of the field they set (``model``, default
    ``RunConfig``): where that field does not take the YAML value but takes the text as written, the text wins,
    so ``logging.progress_bar=off`` stays the string ``off`` (YAML 1.1 reads it as False) while a bool field
    still reads ``off`` as False.
    """
    model = model or RunConfig
    tree: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r} has an empty key segment")
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {p!r}")
        node[parts[-1]] = _typed_value(raw, _field_type(model, parts))
    return tree


_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
_MISSING = object()


def _parse_value(raw: str) -> Any:
    if raw == "":
        return ""
    value = yaml.safe_load(raw)
    # YAML 1.1 reads "1e-3" as a string; on a command line it always means a number
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    return value


def _field_type(model: type[BaseModel], parts: list[str]) -> Any:
    """The annotation of the field at ``parts`` (through nested models and ``dict[str, V]`` values), or
    ``_MISSING`` for a key that is not a field (validation names it later)."""
    current: Any = model
    for part in parts:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            if field is None:
                return _MISSING
            current = field.annotation
            continue
        mapping = next((a for a in (current, *get_args(current)) if get_origin(a) is dict), None)
        if mapping is None:
            nested = _unwrap(current)
            if not (isinstance(nested, type) and issubclass(nested, BaseModel)):
                return _MISSING
            return _field_type(nested, [part])
        current = get_args(mapping)[1] if get_args(mapping) else Any
    return current


def _accepts(annotation: Any, value: Any) -> bool:
    try:
        TypeAdapter(annotation).validate_python(value)
    except (ValidationError, TypeError, ValueError):
        return False
    return True


def _typed_value(raw: str, annotation: Any) -> Any:
    value = _parse_value(raw)
    if annotation is _MISSING or annotation is Any or _accepts(annotation, value):
        return value
    if _accepts(annotation, raw) or isinstance(value, bool):
        return raw  # the text as written; a YAML word (on/off/yes/no) keeps its spelling in any error message
    return value


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc`` (for suggesting the closest key)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):  # a list index: the list's item model owns the next key
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(part))
        if field is None:
            return None
        current = _unwrap(field.annotation)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any) -> Any:
    args = getattr(annotation, "__args__", None)
    if args:
        for a in args:
            inner = _unwrap(a)
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return annotation


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    lines = [f"{source}: invalid config"]
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            owner = _model_at(model, loc[:-1])
            hint = ""
            if owner is not None:
                close = difflib.get_close_matches(str(loc[-1]), list(owner.model_fields), n=1, cutoff=0.5)
                valid = ", ".join(owner.model_fields)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (valid keys: {valid})"
            lines.append(f"  unknown key {key!r}{hint}")
        else:
            lines.append(f"  {key or '<root>'}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def validate(model: type[BaseModel], data: dict[str, Any], source: str = "config"):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, model, source)) from None


# Keys that earlier versions wrote into run configs and that are gone: (why, the key that replaces it or None).
# A run directory's stored config.yaml is read without them (a renamed key's value moves to its new name), so
# finished results stay readable; a config a user writes that still has one fails with the reason.
RETIRED_KEYS: dict[str, tuple[str, str | None]] = {
    "eval.converge_fraction": ("convergence is judged by the dev-curve criterion (train.converge); the "
                               "95%-of-best rule it set was no longer reported", None),
}


def _retire(raw: dict[str, Any], stored: bool, source: str) -> dict[str, Any]:
    for key, (why, new) in RETIRED_KEYS.items():
        *parents, leaf = key.split(".")
        node = raw
        for p in parents:
            node = node.get(p) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            continue
        if not stored:
            hint = f"; use {new!r}" if new else "; remove it"
            raise ConfigError(f"{source}: {key!r} no longer exists: {why}{hint}")
        value = node.pop(leaf)
        if new is not None:
            raw = deep_merge(_nest_key(new, value), raw)
    return raw


def _nest_key(dotted: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None,
                    data: dict[str, Any] | None = None, stored: bool = False) -> RunConfig:
    """Read a run YAML (or a dict), apply overrides, validate. Relative dataset roots resolve against CWD.

    ``stored``: the file is a run directory's ``config.yaml`` written by an earlier version (``RETIRED_KEYS``)."""
    source = str(path) if path else "config"
    raw = read_yaml(path) if path is not None else dict(data or {})
    raw = _retire(deep_merge(raw, parse_overrides(overrides or [])), stored, source)
    return validate(RunConfig, raw, source)


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
