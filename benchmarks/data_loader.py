"""Data-loader throughput: images/s of the train pipeline at a 512 crop with 0, 1 and 2 workers.

    .venv/bin/python benchmarks/data_loader.py [--images 64] [--size 640] [--workers 0 1 2] [--epochs 2]

Writes a synthetic folder dataset (``--size`` px squares) into a temporary directory, then times full passes
of a ``DataLoader`` (batch 8, train transforms: random resize 0.5-2.0 of 512, cat_max_ratio crop 512, flip,
photometric distortion, pad, normalise) after one warm-up batch. PNG decoding dominates; real JPEG datasets
decode faster per pixel. The target it is compared with: ViT-B + Mask2Former at 512^2 trains at roughly
10 images/s per A100/H100-class GPU with batch 16 (an assumption, not a measurement here), so each GPU
needs 10 images/s from its loader, i.e. 10 / num_workers per worker.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from encseg.config import DataConfig, DatasetConfig
from encseg.data.formats import build_dataset
from encseg.data.synthetic import write_synthetic
from encseg.data.transforms import train_transforms

GPU_IMAGES_PER_S = 10.0  # assumed ViT-B + M2F training speed per GPU at 512^2, batch 16


def measure(root: Path, workers: int, epochs: int, batch: int) -> float:
    cfg = DataConfig(dataset=DatasetConfig(root=root), crop_size=512, base_size=512, batch_size=batch,
                     num_workers=workers)
    ds = build_dataset(cfg.dataset, "train", train_transforms(cfg, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it)  # warm-up: worker start-up and first decode are not throughput
    n, start = 0, time.perf_counter()
    for batch_ in it:
        n += batch_["image"].shape[0]
    for _ in range(epochs - 1):
        for batch_ in loader:
            n += batch_["image"].shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(1)  # one core per loader process, as each DataLoader worker gets
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        root = write_synthetic(Path(tmp) / "ds", style="a", classes=8, train=a.images, val=1, size=a.size, seed=0)
        print(f"wrote {a.images} images of {a.size}x{a.size} px in {time.perf_counter() - t0:.1f} s "
              f"(cpus visible: {os.cpu_count()})")
        print(f"{'workers':>8} {'images/s':>10} {'per worker':>11}")
        for w in a.workers:
            rate = measure(root, w, a.epochs, a.batch)
            print(f"{w:>8} {rate:>10.1f} {rate / max(w, 1):>11.1f}")
    print(f"need: {GPU_IMAGES_PER_S:.0f} images/s per GPU (assumed ViT-B + Mask2Former, 512^2, batch 16), "
          f"i.e. {GPU_IMAGES_PER_S / 4:.1f} images/s per worker with the default 4 workers per GPU")


if __name__ == "__main__":
    main()
