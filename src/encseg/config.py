"""Strict run configuration: the pydantic models of a run file (reading, overrides: ``encseg.config_io``).

Every section forbids unknown keys, and a misspelt key fails with the closest valid one before anything
expensive starts (``ConfigError``). The resolved config is written into every run directory, so the file is
the single record of what was run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    # per device, validation and evaluation; only images of the same size share a forward, so no image sees
    # another's padding and the scores are those of batch 1 (up to float rounding in batched kernels)
    eval_batch_size: int = Field(1, ge=1)
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
    # the final norm on every ViT tap: None = the family's dense protocol (``encseg encoders``, models/zoo.py)
    feature_norm: bool | None = None
    timm_kwargs: dict[str, Any] = Field(default_factory=dict)  # e.g. depth/embed_dim for tiny test encoders

    @field_validator("timm_kwargs", mode="before")
    @classmethod
    def _no_kwargs(cls, v: Any) -> Any:
        return {} if v is None else v  # ``timm_kwargs=null`` on the command line clears a config's kwargs


class NeckConfig(Strict):
    # simple_fpn / multilevel: ViT necks; a hierarchical encoder maps its stages with channel_mapper (what
    # simple_fpn, the default, becomes for it) or passes them on unchanged (identity, as Mask2Former's paper)
    type: Literal["simple_fpn", "multilevel", "channel_mapper", "identity"] = "simple_fpn"
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
    freeze_bn: bool = True  # encoder BatchNorm: eval statistics, no gradient (CNN backbones; ViTs have none)

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
    without a dev-mIoU gain above ``min_delta`` (and, with ``loss_min_delta`` set, without a relative dev-loss drop
    above it), once the best dev mIoU has risen ``min_rise`` above the first validation's."""

    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.005, ge=0.0)  # absolute dev mIoU
    # relative dev loss; None (default): judge on the dev mIoU alone, and validation computes no loss
    loss_min_delta: float | None = Field(None, ge=0.0)
    # absolute dev mIoU above the first validation's before a plateau may be declared (a random encoder's initial
    # plateau is not convergence); 0 disables the guard
    min_rise: float = Field(0.05, ge=0.0)
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
    # auto: bf16 on CUDA, fp32 on CPU; bf16-true: bf16 weights too (Lightning's "bf16-true"), for huge encoders.
    # Evaluation, latency, `encseg eval` and `predict` use the same (engine/precision.py)
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed", "bf16-true"] = "auto"
    tf32: bool = True  # CUDA: TF32 matmuls/convolutions for fp32 ops (Ampere+); false: full fp32
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | Literal["auto"] = 1
    # auto: DDP when several processes, else single-device; fsdp: Lightning's FSDPStrategy (full sharding of
    # weights, gradients and optimiser states) for encoders that do not fit one GPU (``encseg study plan``)
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
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
    # the dev loss as a reported curve (history.csv ``val_loss``), from validation's own forward; off: validation
    # is inference only (the loss is still computed when train.converge.loss_min_delta asks for it)
    val_loss: bool = False
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
