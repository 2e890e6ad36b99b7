"""How far ``build_encoder``'s features are from the released model's own, at the ADE20K 512 crop.

Random weights in the release layout (no download): a DINOv2 ViT-B/14 ``.pth`` (``mask_token`` added, as the
release has it) made at its native 518 px, and a CLIP ViT-L/14 timm ``.safetensors`` made at its native 224 px.
The reference is the same weights in timm built for the padded input's grid, its positional embedding
resampled once at load (for DINOv2 at 518 nothing is resampled: the padded 512 crop *is* the native grid).
Printed: max abs difference per default tap (blocks at depth 0.25/0.5/0.75/1.0) and the mean |feature|.

Then the interpolation rule itself: DINOv2's ``interpolate_pos_encoding`` (bicubic, ``scale_factor =
(g + 0.1) / 37``, no antialias) against timm's ``resample_abs_pos_embed`` (bicubic to ``size = g``, antialias)
on a 37 x 37 table, at 448 (grid 32, a downsample) and at 672 / 1022 (grid 48 / 73, upsamples), for a noise
table and for a smooth 2-D sin-cos table (a trained table is smooth, so the second is the realistic one); and
MAE's ``interpolate_pos_embed`` (bicubic, exact size, no antialias) against timm's on a 14 x 14 table.

    PYTHONPATH=src python benchmarks/pos_embed_fidelity.py          # this checkout (~10 min on 2 busy CPUs)
    PYTHONPATH=src python benchmarks/pos_embed_fidelity.py --rules-only   # the interpolation rules only
    PYTHONPATH=/path/to/old/src python benchmarks/pos_embed_fidelity.py  # another checkout, same numbers
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from encseg.config import EncoderConfig
from encseg.models.encoders import build_encoder

TAPS = [0.25, 0.5, 0.75, 1.0]


def randomize(model: torch.nn.Module, std: float = 0.05, seed: int = 0) -> torch.nn.Module:
    """Every parameter drawn anew (no near-identity layer scale), norms around 1."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "gamma")) else 0.0
            p.copy_(base + std * torch.randn(p.shape, generator=g))
    return model.eval()


def taps_of(vit, x, indices):
    with torch.no_grad():
        return vit.forward_intermediates(x, indices=indices, output_fmt="NCHW", intermediates_only=True)


def compare(label: str, name: str, arch: str, native: int, fmt_path: Path, crop: int) -> None:
    ref = randomize(timm.create_model(arch, pretrained=False, num_classes=0, img_size=native))
    sd = ref.state_dict()
    if fmt_path.suffix == ".pth":  # DINOv2 release layout: timm's keys + mask_token
        torch.save({**sd, "mask_token": torch.zeros(1, sd["cls_token"].shape[-1])}, fmt_path)
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(fmt_path))
    enc = build_encoder(EncoderConfig(name=name, weights=str(fmt_path), taps=TAPS), crop).eval()
    patch = enc.patch_size
    padded = math.ceil(crop / patch) * patch
    # reference: the released weights, positional table resampled once (by timm at load) to the padded grid
    once = timm.create_model(arch, pretrained=False, num_classes=0, img_size=padded)
    once.load_state_dict(timm.models.vision_transformer.checkpoint_filter_fn(sd, once))
    once.eval()
    x = torch.randn(1, 3, crop, crop, generator=torch.Generator().manual_seed(1))
    got = enc(x)
    want = taps_of(once, F.pad(x, (0, padded - crop, 0, padded - crop)), enc.tap_indices)
    diffs = [f"{(g - w).abs().max().item():.4f}" for g, w in zip(got, want, strict=True)]
    mean = sum(w.abs().mean().item() for w in want) / len(want)
    grid = tuple(enc.vit.patch_embed.grid_size)
    print(f"{label}: crop {crop} -> padded {padded}; encoder built for grid {grid}; blocks {enc.tap_indices}; "
          f"max |diff| per tap {' / '.join(diffs)}; mean |feature| {mean:.2f}")


def dinov2_resample(pos: torch.Tensor, g: int) -> torch.Tensor:
    """DINOv2's interpolate_pos_encoding on the patch part of a (1, M*M, D) table (release defaults)."""
    m, d = int(math.sqrt(pos.shape[1])), pos.shape[-1]
    grid = pos.reshape(1, m, m, d).permute(0, 3, 1, 2)
    s = (g + 0.1) / m
    out = F.interpolate(grid, scale_factor=(s, s), mode="bicubic", antialias=False)
    assert out.shape[-2:] == (g, g)
    return out.permute(0, 2, 3, 1).reshape(1, g * g, d)


def sincos_table(m: int, d: int) -> torch.Tensor:
    from timm.layers import build_sincos2d_pos_embed

    return build_sincos2d_pos_embed((m, m), dim=d, temperature=100.0).reshape(1, m * m, d)


def interpolation_rules() -> None:
    m, d = 37, 768
    tables = {"noise (std 0.05)": 0.05 * torch.randn(1, m * m, d, generator=torch.Generator().manual_seed(2)),
              "smooth sin-cos": sincos_table(m, d)}
    for size in (448, 672, 1022):
        g = size // 14
        for label, pos in tables.items():
            ours = resample_abs_pos_embed(pos, new_size=(g, g), old_size=(m, m), num_prefix_tokens=0)
            theirs = dinov2_resample(pos, g)
            print(f"pos-embed 37x37 -> {g}x{g} ({size} px), {label}: max |timm - DINOv2| "
                  f"{(ours - theirs).abs().max().item():.4f} (table max |x| {pos.abs().max().item():.3f})")
    # MAE's (and DeiT's) interpolate_pos_embed: bicubic to the exact size, no antialias; timm's antialiased
    # bicubic uses another kernel (Pillow's a = -0.5 instead of -0.75), which shows even when upsampling
    pos = sincos_table(14, d)
    for size in (512, 768):
        g = size // 16
        ours = resample_abs_pos_embed(pos, new_size=(g, g), old_size=(14, 14), num_prefix_tokens=0)
        grid = pos.reshape(1, 14, 14, d).permute(0, 3, 1, 2)
        theirs = F.interpolate(grid, size=(g, g), mode="bicubic", align_corners=False)
        theirs = theirs.permute(0, 2, 3, 1).reshape(1, g * g, d)
        print(f"pos-embed 14x14 -> {g}x{g} ({size} px), smooth sin-cos: max |timm - MAE| "
              f"{(ours - theirs).abs().max().item():.4f} (table max |x| 1.000)")


def dinov2_rule_features(size: int = 448) -> None:
    """The same random DINOv2 ViT-B/14 at ``size`` with its table resampled by timm's rule and by DINOv2's."""
    native = randomize(timm.create_model("vit_base_patch14_dinov2", pretrained=False, num_classes=0, img_size=518))
    pos = native.pos_embed.detach()
    g = size // 14
    tables = {"timm": resample_abs_pos_embed(pos, new_size=(g, g), old_size=(37, 37), num_prefix_tokens=1),
              "dinov2": torch.cat([pos[:, :1], dinov2_resample(pos[:, 1:], g)], dim=1)}
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    taps = {}
    for rule, table in tables.items():
        vit = timm.create_model("vit_base_patch14_dinov2", pretrained=False, num_classes=0, img_size=size)
        sd = {**native.state_dict(), "pos_embed": table}
        vit.load_state_dict(sd)
        taps[rule] = taps_of(vit.eval(), x, [2, 5, 8, 11])
    diffs = [f"{(a - b).abs().max().item():.4f}" for a, b in zip(taps["timm"], taps["dinov2"], strict=True)]
    mean = sum(t.abs().mean().item() for t in taps["dinov2"]) / 4
    print(f"DINOv2 ViT-B/14 at {size} px (random weights): timm's vs DINOv2's resampling rule, max |diff| per tap "
          f"{' / '.join(diffs)}; mean |feature| {mean:.2f}")


def main() -> None:
    torch.manual_seed(0)
    if "--rules-only" in sys.argv:
        interpolation_rules()
        dinov2_rule_features()
        return
    with tempfile.TemporaryDirectory() as tmp:
        compare("DINOv2 ViT-B/14 (release .pth)", "dinov2_vitb14", "vit_base_patch14_dinov2", 518,
                Path(tmp) / "dinov2_vitb14_pretrain.pth", 512)
        if "--dinov2-only" not in sys.argv:
            compare("CLIP ViT-L/14 (timm .safetensors)", "clip_openai_vitl14", "vit_large_patch14_clip_quickgelu_224",
                    224, Path(tmp) / "clip_vitl14.safetensors", 512)
    interpolation_rules()
    dinov2_rule_features()


if __name__ == "__main__":
    main()
