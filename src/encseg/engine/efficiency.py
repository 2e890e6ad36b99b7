"""Cost of a model: parameter counts, FLOPs, inference latency and peak memory, and a hardware reference.

- FLOPs come from ``torch.utils.flop_counter.FlopCounterMode``: one multiply-add counts as **2 FLOPs**. It
  counts the ops that have a FLOP formula (matmul/mm/bmm/addmm, convolutions, scaled-dot-product attention,
  their backward ops); element-wise ops, normalisation, softmax, interpolation and ``grid_sample`` (the
  sampling inside multi-scale deformable attention) count as 0. Those are a small share of a ViT +
  Mask2Former forward, but the number is a lower bound and is comparable only between models measured the
  same way. ``flop_counts_by_op`` shows what was counted. Torch has formulas for the CUDA attention kernels
  only; this module adds the same formula for the CPU kernel, so CPU and GPU counts agree.
- Latency: ``warmup`` untimed calls, then ``iters`` timed calls under ``torch.no_grad()``, each bracketed by
  ``torch.cuda.synchronize`` on CUDA, wall-clock ``time.perf_counter``. ``median_ms``/``p90_ms`` are per
  call (per batch); ``ms_per_image`` and ``images_per_s`` divide by the batch size.
- Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over warm-up + timing after resetting the peak
  (tensors held by the caching allocator, model weights included). On CPU the process's resident set size is
  sampled every millisecond from ``/proc/self/statm`` during warm-up + timing and the peak minus the RSS
  before ``make_input`` is reported (the memory the inference added; weights already loaded are not
  included). Where ``/proc`` is missing, the growth of ``ru_maxrss`` is used, which is 0 when the process
  peaked earlier. ``peak_mem_kind`` names the method.
"""

from __future__ import annotations

import contextlib
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_params", "count_flops", "flop_counts_by_op", "measure_latency", "matmul_gflops"]

_RESERVED = ("total", "trainable", "other")


def count_params(model: nn.Module, groups: dict[str, nn.Module]) -> dict[str, int]:
    """Parameter counts: ``total``, ``trainable``, and for each group ``<name>`` and ``<name>_trainable``.

    Shared (tied) parameters count once. ``other`` holds what no group covers (0 when the groups partition
    the model). A group with parameters outside ``model``, or two groups sharing a parameter, raise
    ``ValueError``.
    """
    params = {id(p): p for p in model.parameters()}
    out: dict[str, int] = {
        "total": sum(p.numel() for p in params.values()),
        "trainable": sum(p.numel() for p in params.values() if p.requires_grad),
    }
    seen: dict[int, str] = {}
    for name, module in groups.items():
        if name in _RESERVED or name.endswith("_trainable"):
            raise ValueError(f"parameter group name {name!r} is reserved")
        group = {id(p): p for p in module.parameters()}
        foreign = [i for i in group if i not in params]
        if foreign:
            raise ValueError(f"parameter group {name!r} holds {len(foreign)} tensors that are not in the model")
        shared = sorted({seen[i] for i in group if i in seen})
        if shared:
            raise ValueError(f"parameter group {name!r} shares parameters with group(s) {shared}")
        seen.update(dict.fromkeys(group, name))
        out[name] = sum(p.numel() for p in group.values())
        out[f"{name}_trainable"] = sum(p.numel() for p in group.values() if p.requires_grad)
    out["other"] = sum(p.numel() for i, p in params.items() if i not in seen)
    return out


def _sdpa_flops(query_shape, key_shape, value_shape, *args: Any, **kwargs: Any) -> int:
    """``Q K^T`` plus ``softmax(.) V`` as two batched matmuls, the formula torch uses for the CUDA kernels."""
    *batch, q_len, dim = query_shape
    k_len, v_dim = key_shape[-2], value_shape[-1]
    n = int(np.prod(batch)) if batch else 1
    return 2 * n * q_len * k_len * dim + 2 * n * q_len * k_len * v_dim


# torch registers FLOP formulas for the CUDA attention kernels only; on CPU, scaled_dot_product_attention
# dispatches to this op and would silently count 0 (a ViT's attention FLOPs missing from CPU measurements)
_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flops}


def _counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> float:
    """FLOPs (2 per multiply-add) of one call ``fn(*args, **kwargs)`` under ``torch.no_grad()``."""
    with _counter() as counter, torch.no_grad():
        fn(*args, **kwargs)
    return float(counter.get_total_flops())


def flop_counts_by_op(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, float]:
    """FLOPs of one call split by aten op (e.g. ``{"aten.convolution": ..., "aten.mm": ...}``)."""
    with _counter() as counter, torch.no_grad():
        fn(*args, **kwargs)
    return {str(op): float(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}


def _as_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class _RssSampler:
    """Background thread recording the peak RSS while the timed code runs (CPU only)."""

    def __init__(self, interval_s: float = 0.001):
        self.interval_s = interval_s
        self.peak = _rss_bytes() or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes()
            if rss is not None and rss > self.peak:
                self.peak = rss
            self._stop.wait(self.interval_s)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        rss = _rss_bytes()  # the last state, in case the peak fell between two samples at the very end
        if rss is not None and rss > self.peak:
            self.peak = rss


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024  # bytes on macOS, KiB on Linux


def _batch_size(inputs: tuple[Any, ...]) -> int:
    for x in inputs:
        if isinstance(x, torch.Tensor) and x.dim() > 0:
            return int(x.shape[0])
    return 1


def measure_latency(fn: Callable[..., Any], make_input: Callable[[], Any], iters: int, warmup: int,
                    device: str | torch.device | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """Time ``fn(*make_input())`` (or ``fn(make_input())`` when it returns a single value); see module doc.

    ``make_input`` is called once, before timing, and should put its tensors on ``device``. The batch size is
    the first dimension of the first tensor argument unless given.
    """
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters must be >= 1 and warmup >= 0, got iters={iters}, warmup={warmup}")
    dev = _as_device(device)
    cuda = dev.type == "cuda"
    rss_before = None if cuda else _rss_bytes()
    maxrss_before = None if cuda else _maxrss_bytes()
    inputs = make_input()
    args = inputs if isinstance(inputs, tuple) else (inputs,)
    bs = batch_size or _batch_size(args)
    if cuda:
        _sync(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    times: list[float] = []
    sampler = _RssSampler() if rss_before is not None else None
    with sampler or contextlib.nullcontext(), torch.no_grad():
        for _ in range(warmup):
            fn(*args)
        _sync(dev)
        for _ in range(iters):
            t0 = time.perf_counter()
            fn(*args)
            _sync(dev)
            times.append(time.perf_counter() - t0)
    if cuda:
        peak_mb, kind = torch.cuda.max_memory_allocated(dev) / 2**20, "cuda_max_allocated"
    elif sampler is not None and rss_before is not None:
        peak_mb, kind = max(0, sampler.peak - rss_before) / 2**20, "cpu_rss_delta_sampled"
    else:
        peak_mb, kind = max(0, _maxrss_bytes() - (maxrss_before or 0)) / 2**20, "cpu_maxrss_delta"
    ms = np.asarray(times) * 1000.0
    median = float(statistics.median(ms))
    return {
        "median_ms": median,
        "p90_ms": float(np.percentile(ms, 90)),
        "mean_ms": float(ms.mean()),
        "ms_per_image": median / bs,
        "images_per_s": bs * 1000.0 / median if median > 0 else float("inf"),
        "batch_size": bs,
        "peak_mem_mb": float(peak_mb),
        "peak_mem_kind": kind,
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if cuda else _cpu_name(),
        "iters": iters,
        "warmup": warmup,
    }


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    import platform

    return f"{platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def matmul_gflops(n: int = 4096, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                  iters: int = 5) -> float:
    """Achieved GFLOP/s of an ``n x n`` matmul (``2 n^3`` FLOPs): a reference to compare latencies across machines.

    Best of ``iters`` timed calls after one warm-up. TF32 follows the global
    ``torch.backends.cuda.matmul.allow_tf32`` setting in force.
    """
    dev = _as_device(device)
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dev, dtype)
    b = torch.randn(n, n, generator=gen).to(dev, dtype)
    torch.mm(a, b)
    _sync(dev)
    best = float("inf")
    for _ in range(max(1, iters)):
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9
