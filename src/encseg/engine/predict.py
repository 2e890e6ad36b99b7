"""``encseg predict RUN_DIR IMAGES... --out DIR``: label PNGs in the dataset's own ids, colour masks, overlays.

``<out>/labels/<stem>.png`` holds the dataset's on-disk ids (e.g. ADE20K 1..150 with 0 = other, Cityscapes
labelIds), ready for an official evaluation script or a benchmark server; ``<out>/color/`` the palette
rendering; ``<out>/overlay/`` the colour mask blended over the image.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from encseg.atomic import atomic_write_bytes
from encseg.engine.evaluate import cli_eval_config, predict_scores
from encseg.engine.precision import autocast
from encseg.engine.precision import resolve as resolve_precision
from encseg.engine.rundir import RunDir
from encseg.errors import InputError, MissingFileError

log = logging.getLogger("encseg")


def _png_bytes(img: Image.Image) -> bytes:
    import io
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _palette(n: int) -> np.ndarray:
    from encseg.data.formats.base import voc_palette
    return voc_palette(max(256, n))[:n]


def _dataset_converter(cfg):
    """The run's dataset class converts train ids back to on-disk ids; without its files, keep train ids."""
    from encseg.data.formats import build_dataset
    ds_cfg = cfg.data.dataset
    problems = []
    for split in dict.fromkeys((ds_cfg.val_split, ds_cfg.train_split)):
        try:
            ds = build_dataset(ds_cfg, split)
            return ds.to_dataset_ids, ds.palette, "dataset ids"
        except (FileNotFoundError, ValueError) as e:
            problems.append(str(e))
    log.warning("dataset %s is not readable here (%s): label PNGs hold train ids", ds_cfg.display_name,
                "; ".join(problems))
    return (lambda t: t), None, "train ids"


def predict_cli(run_dir: str, images: list[str], out: str, mode: str | None = None,
                precision: str | None = None) -> int:
    """Label PNGs, colour masks and overlays of ``images``, under the run's precision on this device (or
    ``precision``; see ``engine.precision``)."""
    from torchvision import tv_tensors

    from encseg.data.transforms import eval_transforms
    from encseg.models.segmenter import load_segmenter

    rd = RunDir(Path(run_dir))
    if not (rd.path / "model.safetensors").is_file():
        raise MissingFileError(f"{rd.path}: no model.safetensors (is the run finished?)")
    paths = [Path(p) for p in images]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MissingFileError(f"images not found: {', '.join(missing[:20])}")
    stems = [p.stem for p in paths]
    clashes = sorted({str(p) for p in paths if stems.count(p.stem) > 1})
    if clashes:
        raise InputError(f"images with the same file stem would overwrite each other's outputs: {clashes[:20]}")
    cfg = rd.read_config()
    e = cli_eval_config(cfg.eval, mode, "")
    seg, meta = load_segmenter(rd.path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    used_prec = resolve_precision(precision or cfg.train.precision, device)
    seg.eval().to(device)
    to_ids, palette, kind = _dataset_converter(cfg)
    transform = eval_transforms(cfg.data, seg.encoder.mean, seg.encoder.std)
    palette = np.asarray(palette if palette is not None else _palette(seg.num_classes), dtype=np.uint8)
    out_dir = Path(out)
    for p in paths:
        try:
            with Image.open(p) as im:
                rgb = np.array(im.convert("RGB"))
        except OSError as err:
            raise InputError(f"{p}: cannot decode image: {err}") from err
        sample = transform({"image": tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1)),
                            "mask": tv_tensors.Mask(torch.zeros(rgb.shape[:2], dtype=torch.int64))})
        x = sample["image"].as_subclass(torch.Tensor)[None].to(device)
        with autocast(used_prec, device):
            train_ids = predict_scores(seg, x, e, cfg.data.crop_size, out_size=rgb.shape[:2]).argmax(1)[0]
        train_ids = train_ids.cpu().numpy().astype(np.int64)
        ids = np.asarray(to_ids(train_ids))
        mode_img = "L" if ids.max(initial=0) < 256 else "I;16"
        atomic_write_bytes(out_dir / "labels" / f"{p.stem}.png",
                           _png_bytes(Image.fromarray(ids.astype(np.uint8 if mode_img == "L" else np.uint16))))
        color = palette[np.clip(train_ids, 0, len(palette) - 1)]
        atomic_write_bytes(out_dir / "color" / f"{p.stem}.png", _png_bytes(Image.fromarray(color)))
        overlay = (0.5 * rgb + 0.5 * color).astype(np.uint8)
        atomic_write_bytes(out_dir / "overlay" / f"{p.stem}.png", _png_bytes(Image.fromarray(overlay)))
    print(f"wrote {len(paths)} predictions ({kind}, {used_prec}) to {out_dir}", file=sys.stderr)
    return 0
