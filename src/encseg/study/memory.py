"""Memory per GPU of a cell before it runs: weights, gradients, optimiser states and activations.

The model: parameters are counted exactly (encoder, neck and head built on the meta device: no memory, no
weights). Bytes per parameter follow ``train.precision``: mixed precision keeps fp32 weights (4 bytes), fp32
gradients (4) and AdamW's two fp32 moments (8) for the trainable part; ``bf16-true`` halves all three.
``train.strategy: fsdp`` shards weights, gradients and optimiser states over the processes (full sharding).
Activations kept for the backward pass, per image at the crop:
- ViT encoder: ``34 * tokens * width`` bytes per trained block at 16-bit (Korthikanti et al. 2022, with fused
  attention: no ``tokens^2`` term), doubled in fp32; a frozen encoder runs without autograd and keeps only one
  block's worth; ``last_n`` keeps its last N blocks.
- hierarchical encoder: ``12 * map elements`` per block of each stage (timm's layer groups, spread evenly over
  the 4 stages), at the activation width.
- neck and head: ``HEAD_BYTES_PER_PIXEL`` per input pixel at hidden_dim 256 in fp32, scaled by hidden_dim/256;
  measured on CPU for ViT-B/16 + Mask2Former at 512 x 512 (a frozen step peaked at 4.7 GB RSS for 2 images,
  about 1.7 GB of it the process and the weights), halved at 16-bit. ``train.precision: auto`` is counted as
  bf16-mixed: the plan is for GPUs.
Plus ``CUDA_CONTEXT_GB`` per process. It is an estimate (expect +-30 %): it exists to say *before* hours are
spent that a cell cannot fit, and which knob fixes it, not to replace a measured peak (``peak_mem`` in
``summary.json``).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

from encseg.config import RunConfig

HEAD_BYTES_PER_PIXEL = 1.5e9 / (512 * 512)
CUDA_CONTEXT_GB = 1.0
GB = 1e9


@dataclass(frozen=True)
class MemoryEstimate:
    """GB per GPU, by part."""

    weights: float
    grads: float
    optimizer: float
    activations: float
    overhead: float = CUDA_CONTEXT_GB

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer + self.activations + self.overhead

    def describe(self) -> str:
        return (f"~{self.total:.0f} GB/GPU (weights {self.weights:.1f}, grads {self.grads:.1f}, optimizer "
                f"{self.optimizer:.1f}, activations {self.activations:.1f})")


@functools.lru_cache(maxsize=64)
def _param_counts(model_json: str, num_classes: int, img_size: int) -> tuple[int, int, int, int]:
    """(encoder, encoder trainable, neck + head) parameters of the model config (json), on the meta device, and
    the encoder's blocks (ViT blocks it runs; a hierarchical encoder's timm layer groups but the stem)."""
    import torch

    from encseg.config import ModelConfig
    from encseg.config_io import validate
    from encseg.models.segmenter import build_segmenter

    model = validate(ModelConfig, json.loads(model_json), "model")
    model = model.model_copy(update={"encoder": model.encoder.model_copy(update={"weights": "none"})})
    with torch.device("meta"):
        seg = build_segmenter(model, num_classes, img_size)
    enc = sum(p.numel() for p in seg.encoder.parameters())
    trainable = sum(p.numel() for p in seg.encoder.parameters() if p.requires_grad)
    rest = sum(p.numel() for n, p in seg.named_parameters() if not n.startswith("encoder."))
    blocks = seg.encoder.layer_count - 1 if seg.encoder.hierarchical else len(seg.encoder.vit.blocks)
    return enc, trainable, rest, blocks


def _encoder_activation_bytes(cfg: RunConfig, blocks: int, bytes_per: int) -> float:
    """Bytes one image's encoder activations keep for the backward pass (module docstring)."""
    from encseg.models.specs import get_spec

    enc = cfg.model.encoder
    spec = get_spec(enc.name)
    crop = cfg.data.crop_size
    regime = cfg.model.regime
    if spec.hierarchical:
        elements = sum((crop / s) ** 2 * c for s, c in zip((4, 8, 16, 32), spec.channels, strict=True))
        per_block = 12 * elements / 4 * bytes_per
    else:
        width = int(enc.timm_kwargs.get("embed_dim", spec.embed_dim))
        patch = int(enc.timm_kwargs.get("patch_size", spec.patch))
        per_block = 34 * (crop / patch) ** 2 * width * bytes_per / 2
    if regime.mode == "frozen":
        return per_block  # no autograd: one block's transient activations
    if regime.mode == "last_n":
        blocks = min(blocks, regime.last_n * (blocks // 4 if spec.hierarchical else 1))
    return per_block * blocks


def estimate_memory(cfg: RunConfig, num_classes: int = 150) -> MemoryEstimate:
    """The memory one process of ``cfg`` needs on its GPU (rule in the module docstring)."""
    enc, enc_trainable, rest, blocks = _param_counts(cfg.model.model_dump_json(), num_classes, cfg.data.crop_size)
    true16 = cfg.train.precision == "bf16-true"
    mixed16 = true16 or cfg.train.precision in ("auto", "bf16-mixed", "16-mixed")  # auto: bf16 on GPUs
    weight_bytes = 2 if true16 else 4
    shards = cfg.train.devices * cfg.train.num_nodes if cfg.train.strategy == "fsdp" else 1
    shards = shards if isinstance(shards, int) else 1
    trainable = enc_trainable + rest
    act_bytes = 2 if mixed16 else 4
    activations = cfg.data.batch_size * (
        _encoder_activation_bytes(cfg, blocks, act_bytes)
        + HEAD_BYTES_PER_PIXEL * cfg.data.crop_size ** 2 * cfg.model.head.hidden_dim / 256 * act_bytes / 4)
    return MemoryEstimate(
        weights=(enc + rest) * weight_bytes / shards / GB,
        grads=trainable * weight_bytes / shards / GB,
        optimizer=trainable * 2 * weight_bytes / shards / GB,
        activations=activations / GB,
    )


def memory_warning(cfg: RunConfig, est: MemoryEstimate, gpu_gb: float) -> str | None:
    """A warning naming the fixes when ``est`` exceeds ``gpu_gb``; None when the cell fits."""
    if est.total <= gpu_gb:
        return None
    fixes = []
    if cfg.model.regime.mode != "frozen":
        fixes.append("model.regime.mode: frozen (no encoder gradients or optimizer states)")
    if cfg.train.precision != "bf16-true":
        fixes.append("train.precision: bf16-true (bf16 weights, grads and optimizer states)")
    if cfg.train.strategy != "fsdp":
        fixes.append("train.strategy: fsdp with train.devices > 1 (shards weights, grads and optimizer states)")
    if cfg.data.batch_size > 1:
        fixes.append("a smaller data.batch_size with train.accumulate (activations)")
    return f"{est.describe()} exceeds {gpu_gb:g} GB; fix: " + "; or ".join(fixes)


def memory_lines(study_gpu_gb: float, runs: list[RunConfig]) -> tuple[list[str], list[str]]:
    """(one ``mem/GPU`` cell per run, warning lines naming the fix for every distinct setting that cannot fit)."""
    cells, warnings = [], {}
    for cfg in runs:
        try:
            est = estimate_memory(cfg)
        except Exception as e:  # an encoder timm cannot build on the meta device: say so, do not fail the plan
            cells.append("?")
            warnings.setdefault(f"memory of {cfg.model.encoder.name} not estimated ({type(e).__name__}: {e})", [])
            continue
        cells.append(f"{est.total:.1f}GB")
        text = memory_warning(cfg, est, study_gpu_gb)
        if text is not None:
            warnings.setdefault(text, []).append(cfg.tags.get("encoder", cfg.model.encoder.name))
    lines = [f"warning: memory{' (' + ', '.join(sorted(set(w))) + ')' if w else ''}: {t}" for t, w in warnings.items()]
    return cells, lines
