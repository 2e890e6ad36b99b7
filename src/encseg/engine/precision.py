"""One numeric precision per run, and the CUDA switches that go with it.

A run trains under ``train.precision`` resolved for its device (``resolve``): ``auto`` is bf16 autocast on a GPU
and fp32 elsewhere, ``32`` is fp32 everywhere (the bit-exact check), ``bf16-mixed`` / ``16-mixed`` autocast on
any device (on a CPU only when asked: slow without bf16 hardware). Validation runs inside the trainer's
autocast; the final evaluation, the latency record, ``encseg eval`` and ``encseg predict`` run under the same
resolved precision (``autocast``), so a latency is the speed of the precision the model was trained and scored
in, and each record names it (Lightning's names: ``32-true``, ``bf16-mixed``, ``16-mixed``).

On CUDA, ``train.tf32`` (default on) lets fp32 matmuls and convolutions use TF32 tensor cores on Ampere and
later (``torch.set_float32_matmul_precision("high")``); off, they stay full fp32. Nothing here touches a CPU
run's numerics: a CPU run is bit-identical with or without it.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true")
# bf16-true (bf16 weights): evaluated under bf16 autocast, which casts the fp32 inputs of matmuls and convolutions
# and runs the norms in fp32, as Lightning's bf16-true plugin keeps them numerically
_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16, "bf16-true": torch.bfloat16}


def resolve(setting: str, device_type: str) -> str:
    """``train.precision`` (``auto``, ``32``, ``bf16-mixed``, ``16-mixed``) as used on ``device_type``."""
    if setting == "auto":
        return "bf16-mixed" if device_type in ("gpu", "cuda") else "32-true"
    resolved = {"32": "32-true"}.get(setting, setting)
    if resolved not in PRECISIONS:
        raise ValueError(f"unknown precision {setting!r}; use auto, 32, bf16-mixed, 16-mixed or bf16-true")
    return resolved


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved precision on ``device`` (no context for ``32-true``), as Lightning's
    mixed-precision plugin enters it around a training or validation step."""
    dtype = _DTYPES.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def configure_cuda(tf32: bool) -> None:
    """TF32 for fp32 matmuls and cuDNN convolutions on CUDA (``train.tf32``); call only for a CUDA run."""
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    torch.backends.cudnn.allow_tf32 = tf32
