#!/usr/bin/env python
"""Train-step and inference benchmark of the encseg segmenter (stand-alone; not a test).

For each case it prints the median time of ``--steps`` warm steps (after ``--warmup`` steps), the peak memory
(peak RSS of the process on CPU, peak allocated CUDA memory on GPU), the FLOPs of one step counted with
``torch.utils.flop_counter.FlopCounterMode``, and the achieved GFLOP/s next to this machine's fp32 matmul rate
(a 4096x4096 matmul, measured in the same run): the physical limit the model is judged against.

Cases: ``tiny`` = the tests' tiny model (ViT dim 192, depth 4, patch 8; Mask2Former hidden 64, 16 queries) at
128x128; ``vitb`` = ViT-B/16 + Mask2Former (hidden 256, 100 queries, decoder_layers 10, encoder_layers 6, FFN
2048/1024, 12544 points, 150 classes) at 512x512 (``--size`` overrides both). Each: a train step (batch 2;
forward, loss, backward, AdamW as the engine builds it) with the encoder frozen and fine-tuned, whole-image
inference of one image, and a validation step as the trainer runs it (``SegmentationModule.validation_step`` on
``--eval-batch`` images: inference, argmax, confusion matrix), all under ``--precision`` (the engine's
``train.precision``; auto = bf16 autocast on CUDA, fp32 on CPU). Every case runs in its own subprocess, so the
peak memory is that case's own. Weights are random (nothing is downloaded).

``--json`` prints one JSON object per model on stdout (``case, device, precision, frozen_step_s,
finetune_step_s, infer_s_per_image, val_s_per_image, gflop_per_step, gflops_per_s, peak_mem_mb``, plus ``size``,
``eval_batch`` and ``matmul_gflops``; the FLOPs and GFLOP/s are the fine-tune step's), measured side by side in
one run; the human-readable lines go to stderr.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_step.py --only tiny --steps 5
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_step.py --only vitb --steps 3 --warmup 1
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_step.py --only all --json --device cuda   # bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY = dict(
    encoder=dict(name="vit_base_patch16_224", weights="none",
                 timm_kwargs=dict(embed_dim=192, depth=4, num_heads=3, patch_size=8)),
    neck=dict(channels=64),
    head=dict(hidden_dim=64, num_queries=16, encoder_layers=2, decoder_layers=4, dim_feedforward=128,
              encoder_feedforward_dim=128, train_num_points=1024),
)
VITB = dict(
    encoder=dict(name="random_vitb16", weights="none"),
    neck=dict(channels=256),
    head=dict(hidden_dim=256, num_queries=100, encoder_layers=6, decoder_layers=10, dim_feedforward=2048,
              encoder_feedforward_dim=1024, train_num_points=12544),
)
MODELS = {"tiny": (TINY, 128, 5), "vitb": (VITB, 512, 150)}  # config, image size, classes
KINDS = ("frozen", "finetune", "infer", "val")
CASES = [f"{m}:{c}" for m in MODELS for c in KINDS]


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device, n: int = 4096, reps: int = 5) -> tuple[float, float]:
    """(median, best) GFLOP/s of an fp32 ``n x n`` matmul; the best is the machine's reachable rate."""
    import torch

    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b  # warm-up
    times = []
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        times.append(time.perf_counter() - t)
    flop = 2 * n**3 / 1e9
    return flop / statistics.median(times), flop / min(times)


def _masks(batch: int, size: int, classes: int, generator):
    """Blocky label maps (64-px cells, a few classes per image) with some ignore pixels, like real data."""
    import torch
    import torch.nn.functional as F

    cells = max(1, size // 64)
    coarse = torch.randint(0, min(classes, 12), (batch, 1, cells, cells), generator=generator).float()
    masks = F.interpolate(coarse, size=(size, size), mode="nearest")[:, 0].long()
    masks[:, : size // 16] = 255
    return masks


def _validation(seg, cfg, size: int, classes: int, images, masks):
    """One validation step as the trainer runs it (``SegmentationModule.validation_step``: inference, argmax,
    the confusion matrix; no loss unless asked), on a batch of ``images``."""
    from encseg.config import EvalConfig, RegimeConfig, TrainConfig
    from encseg.engine.module import SegmentationModule

    module = SegmentationModule(seg, TrainConfig(), RegimeConfig(), EvalConfig(), [str(c) for c in range(classes)],
                                total_steps=1, crop_size=size).to(images.device)
    batch = {"image": images, "mask": masks, "target": masks}

    def step():
        module.validation_step(batch, 0)
    return step


def _train_step(seg, cfg, images, masks, scaler_needed: bool):
    import torch

    from encseg.models.regimes import param_groups

    kernel = {"fused": True} if images.device.type == "cuda" else {"foreach": True}  # as the engine's AdamW
    opt = torch.optim.AdamW(param_groups(seg, cfg.regime, lr=1e-4, weight_decay=0.05), lr=1e-4, **kernel)
    scaler = torch.amp.GradScaler(images.device.type, enabled=scaler_needed)

    def step():
        opt.zero_grad(set_to_none=True)
        with _autocast():
            loss = seg.loss(images, masks)["loss"]
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return step


_PRECISION = {"value": "32-true", "device": "cpu"}


def _autocast():
    from encseg.engine.precision import autocast

    return autocast(_PRECISION["value"], _PRECISION["device"])


def _timed(step, steps: int, warmup: int, device) -> tuple[list[float], float]:
    first = time.perf_counter()
    for _ in range(warmup):
        step()
    _sync(device)
    first = (time.perf_counter() - first) / max(warmup, 1)
    times = []
    for _ in range(steps):
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times, first


def run_case(case: str, steps: int, warmup: int, device_name: str, precision: str, size: int | None = None,
             eval_batch: int = 2) -> dict:
    """One ``model:kind`` case (kind: frozen, finetune, infer, val) in this process."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from encseg.config import ModelConfig
    from encseg.models.segmenter import build_segmenter

    model_name, kind = case.split(":")
    cfg_dict, default_size, classes = MODELS[model_name]
    size = size or default_size
    device = torch.device(device_name)
    _PRECISION.update(value=precision, device=device.type)
    cfg = ModelConfig.model_validate({**cfg_dict, "regime": {"mode": "frozen" if kind == "frozen" else "finetune"}})
    torch.manual_seed(0)
    seg = build_segmenter(cfg, classes, size).to(device)
    g = torch.Generator().manual_seed(0)
    batch = {"infer": 1, "val": eval_batch}.get(kind, 2)
    images = torch.randn(batch, 3, size, size, generator=g).to(device)
    masks = _masks(batch, size, classes, g).to(device)
    if kind in ("infer", "val"):
        seg.eval()
        inner = (lambda: seg.inference(images)) if kind == "infer" else _validation(seg, cfg, size, classes, images,
                                                                                    masks)

        def step():
            with torch.no_grad(), _autocast():
                inner()
    else:
        seg.train()
        step = _train_step(seg, cfg, images, masks, scaler_needed=precision == "16-mixed")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, first = _timed(step, steps, warmup, device)
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    med = statistics.median(times)
    return {
        "case": case, "image": f"{batch}x{size}^2", "batch": batch, "median_s": med,
        "min_s": min(times), "max_s": max(times), "warmup_s": first, "gflop": flops / 1e9,
        "gflops_per_s": flops / 1e9 / med, "peak_mb": peak_mb,
        "params_m": sum(p.numel() for p in seg.parameters()) / 1e6,
        "trainable_m": sum(p.numel() for p in seg.parameters() if p.requires_grad) / 1e6,
    }


def _model_record(model: str, rows: dict[str, dict], device: str, precision: str) -> dict:
    """The one ``--json`` line of a model: what a user pays per step and per image, measured side by side."""
    ft = rows[f"{model}:finetune"]
    return {
        "case": model, "device": device, "precision": precision,
        "frozen_step_s": rows[f"{model}:frozen"]["median_s"], "finetune_step_s": ft["median_s"],
        "infer_s_per_image": rows[f"{model}:infer"]["median_s"] / rows[f"{model}:infer"]["batch"],
        "val_s_per_image": rows[f"{model}:val"]["median_s"] / rows[f"{model}:val"]["batch"],
        "gflop_per_step": ft["gflop"], "gflops_per_s": ft["gflops_per_s"],
        "peak_mem_mb": max(r["peak_mb"] for r in rows.values()),
        "size": int(ft["image"].split("x")[1][:-2]), "eval_batch": rows[f"{model}:val"]["batch"],
    }


def _print_row(r: dict, rate: float) -> None:
    print(f"{r['case']:14s} {r['image']:>9s}  median {r['median_s']:7.3f} s (min {r['min_s']:.3f}, "
          f"max {r['max_s']:.3f}, first {r['warmup_s']:.2f})  {r['gflop']:8.1f} GFLOP  "
          f"{r['gflops_per_s']:6.1f} GFLOP/s ({100 * r['gflops_per_s'] / rate:4.1f}% of matmul)  "
          f"peak {r['peak_mb']:7.0f} MB  params {r['params_m']:.1f}M ({r['trainable_m']:.1f}M trainable)",
          flush=True)


def _run_subprocess(case: str, args) -> dict | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--case", case, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--device", args.device, "--precision", args.precision,
           "--eval-batch", str(args.eval_batch)]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--size", str(args.size)] if args.size else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(f"{case}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(lines[-1][len("RESULT "):])


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["tiny", "vitb", "all"], default="all", help="which model(s) to run")
    ap.add_argument("--steps", type=int, default=5, help="timed warm steps per case (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ap.add_argument("--precision", default="auto", choices=["auto", "32", "32-true", "bf16-mixed", "16-mixed"],
                    help="as train.precision: auto = bf16 autocast on CUDA, fp32 on CPU")
    ap.add_argument("--size", type=int, default=None, help="image size for every model (default: 128 / 512)")
    ap.add_argument("--eval-batch", type=int, default=2, help="validation batch (data.eval_batch_size)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--json", action="store_true", help="one JSON object per model on stdout, nothing else")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process, print JSON
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.eval_batch < 1:
        ap.error("--steps and --eval-batch must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import torch

    from encseg.engine.precision import configure_cuda, resolve

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.precision = resolve(args.precision, device.type)
    if device.type == "cuda":
        configure_cuda(True)  # the engine's default: TF32 for what stays fp32
        torch.backends.cudnn.benchmark = True
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case, args.steps, args.warmup, args.device, args.precision,
                                              args.size, args.eval_batch)), flush=True)
        return 0
    say = (lambda *a, **k: print(*a, file=sys.stderr, **k)) if args.json else print
    med_rate, rate = matmul_gflops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    say(f"device: {name}; torch {torch.__version__}; precision {args.precision}; fp32 4096^2 matmul: best "
        f"{rate:.0f} GFLOP/s (median {med_rate:.0f}); % below = share of the best", flush=True)
    for model in [m for m in MODELS if args.only in ("all", m)]:
        rows = {}
        for case in [f"{model}:{k}" for k in KINDS]:
            r = _run_subprocess(case, args)
            if r is None:
                return 1
            rows[case] = r
            if not args.json:
                _print_row(r, rate)
        if args.json:
            rec = _model_record(model, rows, name, args.precision)
            print(json.dumps({**rec, "matmul_gflops": rate}), flush=True)
    med_rate, best = matmul_gflops(device)
    say(f"fp32 4096^2 matmul again after the cases: best {best:.0f} GFLOP/s (median {med_rate:.0f}); "
        "a large change means other processes competed for the cores", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
