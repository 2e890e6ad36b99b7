#!/usr/bin/env python
"""Train-step and inference benchmark of the encseg segmenter (stand-alone; not a test).

For each case it prints the median time of ``--steps`` warm steps (after ``--warmup`` steps), the peak memory
(peak RSS of the process on CPU, peak allocated CUDA memory on GPU), the FLOPs of one step counted with
``torch.utils.flop_counter.FlopCounterMode``, and the achieved GFLOP/s next to this machine's fp32 matmul rate
(a 4096x4096 matmul, measured in the same run): the physical limit the model is judged against.

Cases: ``tiny`` = the tests' tiny model (ViT dim 192, depth 4, patch 8; Mask2Former hidden 64, 16 queries) at
128x128; ``vitb`` = ViT-B/16 + Mask2Former (hidden 256, 100 queries, decoder_layers 10, encoder_layers 6, FFN
2048/1024, 12544 points, 150 classes) at 512x512. Each: a train step (batch 2; forward, loss, backward, AdamW)
with the encoder frozen and fine-tuned, and whole-image inference of one image. Every case runs in its own
subprocess, so the peak memory is that case's own. Weights are random (nothing is downloaded).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_step.py --only tiny --steps 5
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_step.py --only vitb --steps 3 --warmup 1
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
CASES = [f"{m}:{c}" for m in MODELS for c in ("frozen", "finetune", "infer")]


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


def run_case(case: str, steps: int, warmup: int, device_name: str) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from encseg.config import ModelConfig
    from encseg.models.regimes import param_groups
    from encseg.models.segmenter import build_segmenter

    model_name, kind = case.split(":")
    cfg_dict, size, classes = MODELS[model_name]
    device = torch.device(device_name)
    regime = "frozen" if kind == "frozen" else "finetune"
    cfg = ModelConfig.model_validate({**cfg_dict, "regime": {"mode": regime}})
    torch.manual_seed(0)
    seg = build_segmenter(cfg, classes, size).to(device)
    g = torch.Generator().manual_seed(0)
    if kind == "infer":
        images = torch.randn(1, 3, size, size, generator=g).to(device)
        seg.eval()

        def step():
            seg.inference(images)
    else:
        images = torch.randn(2, 3, size, size, generator=g).to(device)
        masks = _masks(2, size, classes, g).to(device)
        opt = torch.optim.AdamW(param_groups(seg, cfg.regime, lr=1e-4, weight_decay=0.05), lr=1e-4)
        seg.train()

        def step():
            opt.zero_grad(set_to_none=True)
            seg.loss(images, masks)["loss"].backward()
            opt.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
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
        "case": case, "image": f"{'1' if kind == 'infer' else '2'}x{size}^2", "median_s": med,
        "min_s": min(times), "max_s": max(times), "warmup_s": first, "gflop": flops / 1e9,
        "gflops_per_s": flops / 1e9 / med, "peak_mb": peak_mb,
        "params_m": sum(p.numel() for p in seg.parameters()) / 1e6,
        "trainable_m": sum(p.numel() for p in seg.parameters() if p.requires_grad) / 1e6,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=["tiny", "vitb", "all"], default="all", help="which model(s) to run")
    ap.add_argument("--steps", type=int, default=5, help="timed warm steps per case (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before timing")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process, print JSON
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case:
        print("RESULT " + json.dumps(run_case(args.case, args.steps, args.warmup, args.device)), flush=True)
        return 0

    device = torch.device(args.device)
    med_rate, rate = matmul_gflops(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; fp32 4096^2 matmul: best {rate:.0f} GFLOP/s "
          f"(median {med_rate:.0f}); % below = share of the best", flush=True)
    cases = [c for c in CASES if args.only in ("all", c.split(":")[0])]
    rows = []
    for case in cases:
        cmd = [sys.executable, os.path.abspath(__file__), "--case", case, "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--device", args.device]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{case}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}", file=sys.stderr)
            return 1
        r = json.loads(lines[-1][len("RESULT "):])
        rows.append(r)
        print(f"{case:14s} {r['image']:>9s}  median {r['median_s']:7.3f} s (min {r['min_s']:.3f}, "
              f"max {r['max_s']:.3f}, first {r['warmup_s']:.2f})  {r['gflop']:8.1f} GFLOP  "
              f"{r['gflops_per_s']:6.1f} GFLOP/s ({100 * r['gflops_per_s'] / rate:4.1f}% of matmul)  "
              f"peak {r['peak_mb']:7.0f} MB  params {r['params_m']:.1f}M ({r['trainable_m']:.1f}M trainable)",
              flush=True)
    med_rate, best = matmul_gflops(device)
    print(f"fp32 4096^2 matmul again after the cases: best {best:.0f} GFLOP/s (median {med_rate:.0f}); "
          "a large change means other processes competed for the cores", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
