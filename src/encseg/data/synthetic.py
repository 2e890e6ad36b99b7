"""Synthetic segmentation scenes, offline and deterministic, in the ``folder`` layout or a real dataset's layout.

Scene rules (chosen so that a model needs shape *and* texture, and so that pretraining on one style helps on
another): class 0 is ``background``; every other class is a (shape, texture) pair, e.g. ``striped_disc``.
Classes are enumerated by a growing square over the shape x texture grid, so the first four object classes
are {striped, checkered} x {disc, square}: no single cue identifies a class. Each image holds 3-6 objects of
random size, position and rotation that occlude one another, over a background of smooth colour noise, a
faint style texture and 0-2 *distractor* blobs that carry class textures but no class shape. Object colours
are drawn per instance from the style's palette, so colour never identifies a class; textures are drawn in
the image frame (a striped object keeps horizontal stripes when the shape rotates).

With ``cue="texture"`` a class is a texture alone: each object's shape is drawn at random from the first four
shapes, and the distractor blobs carry textures that belong to no class. That task needs texture features
(colour still never identifies a class) and is learnt in a few hundred steps by a tiny model, which is what
the demo needs; ``shape_texture`` (the default) is the harder task.

A style changes the colour palette, the texture period and contrast, and the background, and keeps the
class definitions: styles ``a`` and ``b`` (or any other name, derived deterministically from the name) form
a source/target pair with identical classes. The same ``(style, seed, size, counts)`` gives identical files.
"""

from __future__ import annotations

import colorsys
import os
import shutil
import uuid
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from encseg.data.formats.base import IGNORE_INDEX, DatasetError, voc_palette
from encseg.errors import InputError

SHAPES = ("disc", "square", "triangle", "ring", "cross", "diamond", "star", "hexagon", "crescent", "ellipse",
          "half_disc", "ell")
TEXTURES = ("striped", "checkered", "dotted", "barred", "wavy", "gridded", "slanted", "ringed", "zigzag",
            "speckled", "bricked", "backslanted")
COARSE_FACTOR = 1.8  # period multiplier of the "coarse_" classes that follow the 144 plain ones
LAYOUTS = ("folder", "ade20k", "voc", "cityscapes")
_LAYOUT_MAX_CLASSES = {"ade20k": 150, "voc": 21, "cityscapes": 19}
_SPLIT_NAMES = {"folder": ("train", "val"), "ade20k": ("training", "validation"), "voc": ("train", "val"),
                "cityscapes": ("train", "val")}


# ------------------------------------------------------------------------------------------ classes
def _grid_order(n: int) -> list[tuple[int, int]]:
    """(shape, texture) pairs of an n x n grid, grown one row and column at a time."""
    out = [(0, 0)]
    for m in range(1, n):
        for j in range(m):
            out += [(j, m), (m, j)]
        out.append((m, m))
    return out


_PAIRS = _grid_order(len(SHAPES))
MAX_CLASSES = 1 + 2 * len(_PAIRS)


def class_recipe(k: int) -> tuple[str, str, float]:
    """``(shape, texture, period factor)`` of object class ``k >= 1``."""
    if not 1 <= k < MAX_CLASSES:
        raise InputError(f"synthetic class {k} out of range 1..{MAX_CLASSES - 1}")
    shape, texture = _PAIRS[(k - 1) % len(_PAIRS)]
    return SHAPES[shape], TEXTURES[texture], 1.0 if k - 1 < len(_PAIRS) else COARSE_FACTOR


CUES = ("shape_texture", "texture")
MAX_TEXTURE_CLASSES = len(TEXTURES) - 1  # one texture stays free for the distractors


def _check_cue(cue: str, num_classes: int) -> None:
    if cue not in CUES:
        raise InputError(f"unknown synthetic cue {cue!r} (known: {', '.join(CUES)})")
    if cue == "texture" and not 2 <= num_classes <= MAX_TEXTURE_CLASSES + 1:
        raise InputError(f"cue 'texture' allows 2..{MAX_TEXTURE_CLASSES + 1} classes, got {num_classes}")


def texture_class(k: int) -> str:
    """The texture of object class ``k >= 1`` under ``cue="texture"``."""
    return TEXTURES[k - 1]


def class_names(num_classes: int, cue: str = "shape_texture") -> list[str]:
    """``background`` then ``<texture>_<shape>`` names (or ``<texture>`` names for ``cue="texture"``); class k
    is the same for every ``num_classes > k``."""
    if not 2 <= num_classes <= MAX_CLASSES:
        raise InputError(f"synthetic datasets have 2..{MAX_CLASSES} classes, got {num_classes}")
    _check_cue(cue, num_classes)
    if cue == "texture":
        return ["background"] + [texture_class(k) for k in range(1, num_classes)]
    names = ["background"]
    for k in range(1, num_classes):
        shape, texture, factor = class_recipe(k)
        names.append(("coarse_" if factor != 1.0 else "") + f"{texture}_{shape}")
    return names


def class_palette(num_classes: int) -> np.ndarray:
    return voc_palette()[:num_classes]


# ------------------------------------------------------------------------------------------- styles
@dataclass(frozen=True)
class Style:
    """What a style changes. Periods are fractions of the image size; hues in [0, 1)."""

    name: str
    hue: float  # centre of the object hues
    hue_spread: float
    saturation: tuple[float, float]
    value: tuple[float, float]
    period: float  # texture period / image size
    contrast: tuple[float, float]  # relative light/dark swing of a texture
    bg_hue: float
    bg_texture: str  # a faint texture laid over the whole background
    bg_period: float
    noise: float  # std of per-pixel noise, in 0-255 units


_STYLES = {
    "a": Style("a", hue=0.04, hue_spread=0.16, saturation=(0.45, 0.9), value=(0.45, 0.85), period=0.10,
               contrast=(0.5, 0.9), bg_hue=0.30, bg_texture="wavy", bg_period=0.22, noise=6.0),
    "b": Style("b", hue=0.58, hue_spread=0.16, saturation=(0.35, 0.8), value=(0.4, 0.8), period=0.08,
               contrast=(0.4, 0.8), bg_hue=0.10, bg_texture="dotted", bg_period=0.18, noise=8.0),
}


def get_style(name: str) -> Style:
    """The named style; names other than ``a``/``b`` get parameters drawn from a hash of the name."""
    if name in _STYLES:
        return _STYLES[name]
    r = np.random.default_rng(zlib.crc32(name.encode()))
    return Style(name, hue=float(r.uniform()), hue_spread=float(r.uniform(0.1, 0.25)),
                 saturation=(float(r.uniform(0.3, 0.5)), float(r.uniform(0.75, 0.95))),
                 value=(float(r.uniform(0.35, 0.5)), float(r.uniform(0.75, 0.9))),
                 period=float(r.uniform(0.07, 0.12)), contrast=(float(r.uniform(0.35, 0.5)), 0.85),
                 bg_hue=float(r.uniform()), bg_texture=str(r.choice(TEXTURES)),
                 bg_period=float(r.uniform(0.15, 0.25)), noise=float(r.uniform(4, 10)))


# ------------------------------------------------------------------------------------------ drawing
def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in object coordinates (unit radius, ``v`` up)."""
    r = np.hypot(u, v)
    au, av = np.abs(u), np.abs(v)
    if shape == "disc":
        return r <= 1
    if shape == "square":
        return np.maximum(au, av) <= 0.8
    if shape == "triangle":
        return (v >= -0.55) & (v <= 1 - np.sqrt(3) * au)
    if shape == "ring":
        return (r <= 1) & (r >= 0.55)
    if shape == "cross":
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if shape == "diamond":
        return au + av <= 1
    if shape == "star":
        return r <= 0.6 + 0.4 * np.cos(5 * np.arctan2(v, u))
    if shape == "hexagon":
        return np.maximum(au * np.sqrt(3) / 2 + av / 2, av) <= 0.9
    if shape == "crescent":
        return (r <= 1) & (np.hypot(u - 0.45, v) > 0.75)
    if shape == "ellipse":
        return np.hypot(u, v / 0.55) <= 1
    if shape == "half_disc":
        return (r <= 1) & (v >= -0.1)
    if shape == "ell":
        return ((u >= -0.8) & (u <= -0.2) & (av <= 0.8)) | ((au <= 0.8) & (v >= -0.8) & (v <= -0.2))
    raise InputError(f"unknown shape {shape!r}")


def _texture(name: str, x: np.ndarray, y: np.ndarray, period: float, phase: float, centre: tuple[float, float],
             rng: np.random.Generator) -> np.ndarray:
    """A 0/1 pattern in image coordinates (pixels)."""
    w = 2 * np.pi / period
    ph = 2 * np.pi * phase
    fx, fy = (x / period + phase) % 1, (y / period + phase) % 1
    if name == "striped":
        return np.sin(w * y + ph) > 0
    if name == "barred":
        return np.sin(w * x + ph) > 0
    if name == "slanted":
        return np.sin(w * (x + y) / np.sqrt(2) + ph) > 0
    if name == "backslanted":
        return np.sin(w * (x - y) / np.sqrt(2) + ph) > 0
    if name == "checkered":
        return np.sin(w * x + ph) * np.sin(w * y + ph) > 0
    if name == "dotted":
        return (fx - 0.5) ** 2 + (fy - 0.5) ** 2 < 0.3**2
    if name == "gridded":
        return (np.abs(fx - 0.5) < 0.16) | (np.abs(fy - 0.5) < 0.16)
    if name == "wavy":
        return np.sin(w * (y + 0.3 * period * np.sin(w * x / 1.5)) + ph) > 0
    if name == "ringed":
        return np.sin(w * np.hypot(x - centre[0], y - centre[1]) + ph) > 0
    if name == "zigzag":
        return np.sin(w * (y + 0.5 * period * np.abs(fx - 0.5) * 2) + ph) > 0
    if name == "speckled":
        cell = max(period / 3, 1.0)
        grid = rng.random((int(y.max() / cell) + 2, int(x.max() / cell) + 2)) > 0.5
        return grid[(y / cell).astype(int), (x / cell).astype(int)]
    if name == "bricked":
        row = np.floor(y / period + phase)
        return (fy < 0.2) | (((x / period + 0.5 * row + phase) % 1) < 0.12)
    raise InputError(f"unknown texture {name!r}")


def _colour(style: Style, rng: np.random.Generator) -> np.ndarray:
    h = (style.hue + rng.uniform(-style.hue_spread, style.hue_spread)) % 1.0
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(*style.saturation), rng.uniform(*style.value)))


def _paint(img: np.ndarray, inside: np.ndarray, pattern: np.ndarray, base: np.ndarray, contrast: float) -> None:
    col = base[None, :] * (1 + contrast * (pattern[inside][:, None] - 0.5))
    img[inside] = np.clip(col, 0, 1)


def _hsv_to_rgb(h: np.ndarray, s: float, v: np.ndarray) -> np.ndarray:
    """Vectorised ``colorsys.hsv_to_rgb`` -> (..., 3)."""
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    return np.stack([np.choose(i, [row[c] for row in table]) for c in range(3)], axis=-1)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    """Bilinearly upsampled random grid in [0, 1], shape (size, size, channels)."""
    grid = (rng.random((cells, cells, channels)) * 255).astype(np.uint8)
    up = Image.fromarray(grid.squeeze(-1) if channels == 1 else grid).resize((size, size), Image.BILINEAR)
    return np.asarray(up, dtype=np.float64).reshape(size, size, channels) / 255


def render_scene(style: Style, num_classes: int, size: int, rng: np.random.Generator,
                 cue: str = "shape_texture") -> tuple[np.ndarray, np.ndarray]:
    """One ``(image uint8 (S,S,3), train ids uint8 (S,S))`` scene; see the module docstring for the rules."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    period = max(style.period * size, 3.0)
    # background: smooth colour noise around the style's background hue, a faint texture, then distractors
    h = (style.bg_hue + 0.08 * (_smooth_noise(rng, size, 4, 1)[..., 0] - 0.5)) % 1.0
    v = 0.35 + 0.4 * _smooth_noise(rng, size, 5, 1)[..., 0]
    bg_rgb = _hsv_to_rgb(h, 0.3, v)
    faint = _texture(style.bg_texture, x, y, max(style.bg_period * size, 4.0), rng.uniform(), (size / 2, size / 2), rng)
    img = np.clip(bg_rgb * (1 + 0.25 * (faint[..., None] - 0.5)), 0, 1)
    label = np.zeros((size, size), dtype=np.uint8)
    for _ in range(rng.integers(0, 3)):
        if cue == "texture":  # a texture of no class: texture alone must still decide
            texture, factor = TEXTURES[int(rng.integers(num_classes - 1, len(TEXTURES)))], 1.0
        else:
            _, texture, factor = class_recipe(int(rng.integers(1, num_classes)))
        blob = _smooth_noise(rng, size, int(rng.integers(3, 6)), 1)[..., 0] > rng.uniform(0.7, 0.8)
        pattern = _texture(texture, x, y, period * factor, rng.uniform(), (size / 2, size / 2), rng).astype(float)
        _paint(img, blob, pattern, _colour(style, rng), 0.5 * rng.uniform(*style.contrast))
    # objects, painted in order so that later ones occlude earlier ones
    for _ in range(rng.integers(3, 7)):
        k = int(rng.integers(1, num_classes))
        if cue == "texture":
            shape, texture, factor = SHAPES[int(rng.integers(0, 4))], texture_class(k), 1.0
        else:
            shape, texture, factor = class_recipe(k)
        cx, cy = rng.uniform(0, size, 2)
        radius = rng.uniform(0.12, 0.25) * size
        theta = rng.uniform(0, 2 * np.pi)
        dx, dy = (x - cx) / radius, (cy - y) / radius
        u, vv = np.cos(theta) * dx + np.sin(theta) * dy, -np.sin(theta) * dx + np.cos(theta) * dy
        inside = _shape_mask(shape, u, vv)
        if not inside.any():
            continue
        pattern = _texture(texture, x, y, period * factor, rng.uniform(), (cx, cy), rng).astype(float)
        _paint(img, inside, pattern, _colour(style, rng), rng.uniform(*style.contrast))
        label[inside] = k
    img = img * 255 + rng.normal(0, style.noise, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8), label


def _boundary(label: np.ndarray) -> np.ndarray:
    """Pixels on either side of a class change (VOC-style void outlines)."""
    edge = np.zeros(label.shape, dtype=bool)
    dv, dh = label[1:] != label[:-1], label[:, 1:] != label[:, :-1]
    edge[1:] |= dv
    edge[:-1] |= dv
    edge[:, 1:] |= dh
    edge[:, :-1] |= dh
    return edge


# ------------------------------------------------------------------------------------------ writers
def _save_png_indices(path: Path, label: np.ndarray, palette: np.ndarray | None) -> None:
    """A single-channel PNG of label indices: palette ("P") when a palette is given, else greyscale ("L")."""
    im = Image.fromarray(label.astype(np.uint8))
    if palette is not None:
        im.putpalette(np.asarray(palette, dtype=np.uint8).reshape(-1).tolist())  # turns "L" into "P"
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _save_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(image).save(path)


def _write_item(out: Path, layout: str, split: str, i: int, image: np.ndarray, label: np.ndarray,
                palette: np.ndarray) -> str:
    """Write one pair in ``layout``; returns the item id (used by VOC's split lists)."""
    if layout == "folder":
        stem = f"{split}_{i:05d}"
        _save_image(out / "images" / split / f"{stem}.png", image)
        _save_png_indices(out / "annotations" / split / f"{stem}.png", label, palette)
        return stem
    if layout == "ade20k":
        stem = f"ADE_{'train' if split == 'training' else 'val'}_{i + 1:08d}"
        _save_image(out / "images" / split / f"{stem}.jpg", image)
        _save_png_indices(out / "annotations" / split / f"{stem}.png", label.astype(np.int64) + 1, None)
        return stem
    if layout == "voc":
        stem = f"synth_{split}_{i:05d}"
        voc = out / "VOC2012"
        _save_image(voc / "JPEGImages" / f"{stem}.jpg", image)
        _save_png_indices(voc / "SegmentationClass" / f"{stem}.png", np.where(_boundary(label), IGNORE_INDEX, label),
                          voc_palette())
        return stem
    if layout == "cityscapes":
        from encseg.data.formats.cityscapes import train_to_label_id_lut

        stem = f"synth_{i:06d}_000019"
        _save_image(out / "leftImg8bit" / split / "synth" / f"{stem}_leftImg8bit.png", image)
        _save_png_indices(out / "gtFine" / split / "synth" / f"{stem}_gtFine_labelIds.png",
                          train_to_label_id_lut()[label], None)
        return stem
    raise InputError(f"unknown synthetic layout {layout!r} (known: {', '.join(LAYOUTS)})")


def write_synthetic(out: str | Path, style: str = "a", classes: int = 5, train: int = 64, val: int = 16,
                    size: int = 128, seed: int = 0, layout: str = "folder", cue: str = "shape_texture") -> Path:
    """Write a synthetic dataset to ``out`` (which must not exist or be empty) and return ``out``.

    ``layout``: ``folder`` (``images/<split>``, ``annotations/<split>`` palette PNGs, ``dataset.yaml``),
    ``ade20k`` (ids + 1, 0 unused), ``voc`` (palette PNGs with 255 outlines, split lists) or ``cityscapes``
    (``*_gtFine_labelIds.png`` holding labelIds, so the on-the-fly conversion is exercised). In a real
    layout, synthetic class k is written as that dataset's train id k.
    """
    out = Path(out)
    if layout not in LAYOUTS:
        raise InputError(f"unknown synthetic layout {layout!r} (known: {', '.join(LAYOUTS)})")
    names = class_names(classes, cue)
    if classes > _LAYOUT_MAX_CLASSES.get(layout, MAX_CLASSES):
        raise InputError(f"layout {layout!r} holds at most {_LAYOUT_MAX_CLASSES[layout]} classes, got {classes}")
    if train < 1 or val < 1 or size < 16:
        raise InputError(f"need train >= 1, val >= 1 and size >= 16 (got {train}, {val}, {size})")
    if out.exists() and any(out.iterdir()):
        raise DatasetError(f"{out} already exists and is not empty; choose another output or remove it")
    st = get_style(style)
    palette = class_palette(classes)
    for role, (split, count) in enumerate(zip(_SPLIT_NAMES[layout], (train, val), strict=True)):
        ids = []
        for i in range(count):
            # keyed by the split's role, not its name, so every layout holds the same scenes
            rng = np.random.default_rng([seed, zlib.crc32(style.encode()), role, i])
            image, label = render_scene(st, classes, size, rng, cue)
            ids.append(_write_item(out, layout, split, i, image, label, palette))
        if layout == "voc":
            lists = out / "VOC2012" / "ImageSets" / "Segmentation"
            lists.mkdir(parents=True, exist_ok=True)
            (lists / f"{split}.txt").write_text("".join(f"{s}\n" for s in ids))
    record = {"style": asdict(st), "classes": classes, "cue": cue, "train": train, "val": val, "size": size,
              "seed": seed, "layout": layout}
    if layout == "folder":
        desc = {"name": f"synthetic_{style}", "classes": names, "palette": palette.tolist(),
                "ignore_index": IGNORE_INDEX, "taxonomy": "synthetic", "synthetic": record}
        (out / "dataset.yaml").write_text(yaml.safe_dump(desc, sort_keys=False))
    else:
        (out / "synthetic.yaml").write_text(yaml.safe_dump({"class_names": names, **record}, sort_keys=False))
    return out


def ensure_synthetic(root: Path, synth, expected_format: str) -> Path:
    """Generate ``synth`` (a ``SynthConfig``) at ``root`` unless it exists. Writes into a private temporary
    folder next to ``root`` and renames it into place, so concurrent callers never see a half-written dataset:
    the first rename wins and the others discard their copy."""
    root = Path(root)
    if synth.layout != expected_format:
        raise InputError(f"dataset format {expected_format!r} cannot read synthetic layout {synth.layout!r}; "
                         "set synthetic.layout to the dataset format")
    if root.exists():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        write_synthetic(tmp, style=synth.style, classes=synth.classes, train=synth.train, val=synth.val,
                        size=synth.size, seed=synth.seed, layout=synth.layout, cue=synth.cue)
        try:
            os.rename(tmp, root)
        except OSError:
            if not root.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root
