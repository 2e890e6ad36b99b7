"""``encseg inspect``: what an encoder's taps look like on one image (shapes, PCA and norm pictures).

Writes into ``out``:
- ``shapes.json``: input size, tap block indices and ``(B, D, h, w)`` shapes, the pyramid shapes of the default
  neck (``null`` while ``encseg.models.necks`` does not exist), mean/std and the weight ``LoadReport``;
- ``tap<k>_block<i>.png`` per tap: the image, the first 3 PCA components of the patch features as RGB over it,
  and the per-patch feature norm as a heatmap over it.
The image (or, without one, a synthetic scene drawn with numpy) is resized so its short side is ``size``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from encseg.config import EncoderConfig, NeckConfig
from encseg.errors import InputError, MissingFileError
from encseg.models.encoders import Encoder, build_encoder


def _timm_kwargs(timm_kwargs: str | dict[str, Any] | None) -> dict[str, Any]:
    if timm_kwargs is None:
        return {}
    if isinstance(timm_kwargs, dict):
        return dict(timm_kwargs)
    try:
        parsed = yaml.safe_load(timm_kwargs)
    except yaml.YAMLError as e:
        raise InputError(f"--timm-kwargs is not valid YAML: {e}") from e
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise InputError(f"--timm-kwargs must be a YAML mapping, e.g. '{{depth: 4}}', got {timm_kwargs!r}")
    return parsed


def synthetic_scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A ``(H, W, 3)`` uint8 outdoor-like scene (sky, ground, sun, house, tree) with distinct regions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = yy / height, xx / width
    img = np.zeros((height, width, 3), np.float32)
    sky = y < 0.55
    img[sky] = np.stack([0.35 + 0.3 * y, 0.55 + 0.3 * y, np.full_like(y, 0.95)], -1)[sky]
    img[~sky] = np.stack([0.25 + 0.1 * x, 0.55 - 0.2 * y, 0.2 + 0.0 * x], -1)[~sky]
    img[(x - 0.8) ** 2 + (y - 0.18) ** 2 < 0.008] = (1.0, 0.85, 0.2)  # sun
    wall = (x > 0.15) & (x < 0.5) & (y > 0.4) & (y < 0.75)
    img[wall] = (0.75, 0.35, 0.25)
    roof = (y > 0.25) & (y <= 0.4) & (np.abs(x - 0.325) < (y - 0.25) / 0.15 * 0.2)
    img[roof] = (0.35, 0.2, 0.15)
    img[(x > 0.28) & (x < 0.36) & (y > 0.58) & (y < 0.75)] = (0.3, 0.2, 0.1)  # door
    img[(x > 0.665) & (x < 0.695) & (y > 0.45) & (y < 0.72)] = (0.4, 0.25, 0.1)  # trunk
    img[(x - 0.68) ** 2 + ((y - 0.42) * 0.8) ** 2 < 0.006] = (0.1, 0.45, 0.15)  # crown
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)  # texture, so no region is perfectly flat
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _load_image(image: str | Path | None, size: int) -> np.ndarray:
    from PIL import Image

    if image is None:
        return synthetic_scene(size, size)
    path = Path(image)
    if not path.is_file():
        raise MissingFileError(f"--image: file not found: {path}")
    pil = Image.open(path).convert("RGB")
    scale = size / min(pil.size)
    pil = pil.resize((max(1, round(pil.width * scale)), max(1, round(pil.height * scale))), Image.BICUBIC)
    return np.asarray(pil)


def _to_pixels(m: torch.Tensor, patch: int, height: int, width: int) -> torch.Tensor:
    """``(C, h, w)`` patch map -> ``(C, H, W)``; the grid covers the zero-padded input, so crop after upsampling."""
    up = F.interpolate(m[None], scale_factor=patch, mode="bilinear", align_corners=False)[0]
    return up[:, :height, :width]


def pca_rgb(feat: torch.Tensor) -> torch.Tensor:
    """``(D, h, w)`` -> ``(3, h, w)`` in [0, 1]: the first 3 principal components, each min-max scaled."""
    d, h, w = feat.shape
    x = feat.reshape(d, h * w).T.double()
    x = x - x.mean(0, keepdim=True)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    comps = x @ v[: min(3, v.shape[0])].T
    if comps.shape[1] < 3:
        comps = torch.cat([comps, comps.new_zeros(h * w, 3 - comps.shape[1])], 1)
    lo, hi = comps.min(0).values, comps.max(0).values
    comps = (comps - lo) / (hi - lo).clamp_min(1e-12)
    return comps.T.reshape(3, h, w).float()


def _pyramid_shapes(encoder: Encoder, taps: list[torch.Tensor], size: tuple[int, int]) -> list[list[int]] | None:
    try:
        necks = importlib.import_module("encseg.models.necks")
    except ModuleNotFoundError as e:
        if e.name != "encseg.models.necks":  # a broken necks module must fail loudly, not vanish
            raise
        return None
    if encoder.hierarchical:  # the stage maps already are the pyramid: the default neck maps their channels
        neck = necks.build_pyramid_neck(NeckConfig(), encoder.channels).eval()
    else:
        neck = necks.build_neck(NeckConfig(), encoder.embed_dim, len(taps), encoder.patch_size).eval()
    with torch.no_grad():
        return [list(p.shape) for p in neck(taps, size)]


def _save_png(path: Path, img: np.ndarray, rgb: torch.Tensor, norm: torch.Tensor, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    axes[0].imshow(img)
    axes[0].set_title("image")
    axes[1].imshow(img)
    axes[1].imshow(rgb.permute(1, 2, 0).numpy(), alpha=0.75)
    axes[1].set_title("PCA 1-3 as RGB")
    axes[2].imshow(img)
    im = axes[2].imshow(norm.numpy(), cmap="inferno", alpha=0.65)
    axes[2].set_title("feature norm")
    fig.colorbar(im, ax=axes[2], fraction=0.046)
    for a in axes:
        a.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def inspect_encoder(name: str, weights: str | None = None, image: str | Path | None = None,
                    out: str | Path = "outputs/inspect", size: int = 224,
                    timm_kwargs: str | dict[str, Any] | None = None) -> dict[str, Any]:
    """Build ``name`` (weights as in ``EncoderConfig.weights``), run one image, write the files listed above.

    ``timm_kwargs``: a YAML mapping string (as the CLI passes it), a dict, or None. Returns the shapes record.
    """
    cfg = EncoderConfig(name=name, weights=weights, timm_kwargs=_timm_kwargs(timm_kwargs))
    encoder = build_encoder(cfg, size).eval()
    img = _load_image(image, size)
    height, width = img.shape[:2]
    x = torch.from_numpy(img).permute(2, 0, 1).float().div(255)[None]
    x = (x - torch.tensor(encoder.mean)[:, None, None]) / torch.tensor(encoder.std)[:, None, None]
    with torch.no_grad():
        taps = encoder(x)
    pyramid = _pyramid_shapes(encoder, taps, (height, width))

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pictures = []
    for k, (idx, feat) in enumerate(zip(encoder.tap_indices, taps, strict=True)):
        f = feat[0].float()
        stride = encoder.strides[k] if encoder.hierarchical else encoder.patch_size
        rgb = _to_pixels(pca_rgb(f), stride, height, width).clamp(0, 1)
        norm = _to_pixels(f.norm(dim=0, keepdim=True), stride, height, width)[0]
        fname = f"tap{k}_block{idx}.png"
        _save_png(out / fname, img, rgb, norm, f"{name}: block {idx} ({f.shape[1]}x{f.shape[2]} patches)")
        pictures.append(fname)
    record = {
        "encoder": name,
        "arch": encoder.spec.pretrained_name,
        "weights": encoder.load_report.as_dict(),
        "input_size": [height, width],
        "patch_size": encoder.patch_size,
        "pos_embed_size": encoder.pos_size,  # the checkpoint's grid; this input resamples it once (if at all)
        "embed_dim": encoder.embed_dim,
        "depth": encoder.depth,
        "mean": list(encoder.mean),
        "std": list(encoder.std),
        "tap_indices": encoder.tap_indices,
        "taps": [list(t.shape) for t in taps],
        "pyramid_strides": [4, 8, 16, 32],
        "pyramid": pyramid,
        "pictures": pictures,
    }
    (out / "shapes.json").write_text(json.dumps(record, indent=2))
    return record
