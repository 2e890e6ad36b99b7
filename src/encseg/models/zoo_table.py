"""The table ``encseg encoders`` prints: every zoo entry with what timm knows about it."""

from __future__ import annotations

import timm
import torch

from encseg.models import zoo
from encseg.models.specs import EncoderSpec, get_spec


def count_params(spec: EncoderSpec) -> int:
    """Parameters of the full architecture (head included), counted on the meta device (no memory, fast)."""
    with torch.device("meta"):
        model = timm.create_model(spec.arch, pretrained=False, num_classes=0)
    return sum(p.numel() for p in model.parameters())


def _hub_id(spec: EncoderSpec) -> str:
    if spec.hub_tag is None:
        return "-"
    cfg = timm.models.get_pretrained_cfg(spec.pretrained_name)
    return (cfg.hf_hub_id or cfg.url or spec.pretrained_name) if cfg is not None else spec.pretrained_name


def _shape_cells(spec: EncoderSpec) -> list[str]:
    """patch, width, depth: a ViT's patch/width/blocks; a hierarchical backbone's first stride/stage widths."""
    if spec.hierarchical:
        return [f"s{spec.patch}", "/".join(str(c) for c in spec.channels), f"{spec.depth} stages"]
    return [str(spec.patch), str(spec.embed_dim), str(spec.depth)]


def encoder_table(params: bool = False) -> list[list[str]]:
    """Rows (with a header row) of the zoo table that ``encseg encoders`` prints."""
    header = ["name", "family", "timm architecture", "patch", "width", "depth", "native px"]
    header += ["params"] if params else []
    header += ["norm", "feature_norm", "hub", "local formats"]
    rows = [header]
    for name in zoo._ZOO:
        spec = get_spec(name)
        row = [spec.name, spec.family, spec.pretrained_name, *_shape_cells(spec), str(spec.native_size or "-")]
        if params:
            row.append(f"{count_params(spec) / 1e6:.1f}M")
        feature_norm = "stages" if spec.hierarchical else ("final norm" if spec.feature_norm else "raw")
        row += [spec.norm_name, feature_norm, _hub_id(spec), ",".join(spec.formats)]
        rows.append(row)
    return rows


def print_encoder_table(params: bool = False) -> None:
    rows = encoder_table(params)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
    print("\nAny other timm ViT, or timm backbone with stages at strides 4-32 (feature_info), is accepted too.")
    print("weights: null = the entry's default (hub, or none for random_*); 'hub'; 'none'; or a local file.")
    print("native px: the size the weights were trained at; ViT positional tables are resampled once per input.")
    print("feature_norm: taps as the family's dense protocol reads them (final norm or raw block outputs; "
          "model.encoder.feature_norm overrides); hierarchical backbones give their 4 stage maps.")
