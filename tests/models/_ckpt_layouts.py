"""Write random-weight checkpoints in the original release layouts (test helper).

Each ``to_*`` function is the inverse of the renames timm's ``checkpoint_filter_fn`` applies, written from the
release code's key names: DINOv2 ``dinov2/models/vision_transformer.py`` (``mask_token``, ``register_tokens``
whose class token carries its own position, SwiGLU ``mlp.w12``/``mlp.w3``), MAE ``models_mae.py``
(``{'model': ...}``, ``decoder_*``), SAM ``segment_anything/modeling`` (``image_encoder.*``, ``mlp.lin1``,
prompt encoder / mask decoder), EVA02 MIM (``q_proj``/``q_bias``/``v_bias``, ``mlp.w1/w2/ffn_ln/w3``, ``lm_head``).
"""

from __future__ import annotations

import timm
import torch
from torch import nn


def randomize(model: nn.Module, std: float = 0.05, seed: int = 0) -> nn.Module:
    """Every parameter drawn anew, so that no tensor keeps a structured init (layer scale 1e-5, zero biases,
    unit norms) under which a wrongly loaded tensor would go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "gamma")) else 0.0
            p.copy_(base + std * torch.randn(p.shape, generator=g))
    return model.eval()


def timm_reference(arch: str, **kwargs) -> nn.Module:
    return randomize(timm.create_model(arch, pretrained=False, num_classes=0, **kwargs))


def to_dinov2(sd: dict[str, torch.Tensor], seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        out[k.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.") if _swiglu(sd) else k] = v.clone()
    dim = sd["cls_token"].shape[-1]
    out["mask_token"] = torch.randn(1, dim, generator=g)
    if "reg_token" in sd:
        # release: pos_embed[:, 0] belongs to the class token; timm folds it into cls_token
        cls_pos = 0.05 * torch.randn(1, 1, dim, generator=g)
        out["register_tokens"] = out.pop("reg_token")
        out["cls_token"] = sd["cls_token"] - cls_pos
        out["pos_embed"] = torch.cat([cls_pos, sd["pos_embed"]], dim=1)
    return out


def _swiglu(sd: dict[str, torch.Tensor]) -> bool:
    w1, w2 = sd["blocks.0.mlp.fc1.weight"], sd["blocks.0.mlp.fc2.weight"]
    return w1.shape[0] == 2 * w2.shape[1]  # packed SwiGLU: fc1 emits gate and value halves


def mae_encoder(sd: dict[str, torch.Tensor]) -> dict:
    return {"model": {k: v.clone() for k, v in sd.items()}}


def mae_training(sd: dict[str, torch.Tensor], dec_dim: int = 32, seed: int = 2) -> dict:
    """A full MaskedAutoencoderViT state dict (encoder + decoder), as ``mae_visualize_*.pth`` holds it."""
    import argparse

    g = torch.Generator().manual_seed(seed)
    dim, n = sd["cls_token"].shape[-1], sd["pos_embed"].shape[1]
    model = {k: v.clone() for k, v in sd.items()}
    model["mask_token"] = torch.randn(1, 1, dec_dim, generator=g)
    model["decoder_embed.weight"] = torch.randn(dec_dim, dim, generator=g)
    model["decoder_embed.bias"] = torch.randn(dec_dim, generator=g)
    model["decoder_pos_embed"] = torch.randn(1, n, dec_dim, generator=g)
    for name, shape in [("norm1.weight", (dec_dim,)), ("attn.qkv.weight", (3 * dec_dim, dec_dim)),
                        ("mlp.fc1.weight", (4 * dec_dim, dec_dim))]:
        model[f"decoder_blocks.0.{name}"] = torch.randn(*shape, generator=g)
    model["decoder_norm.weight"] = torch.ones(dec_dim)
    model["decoder_pred.weight"] = torch.randn(16 * 16 * 3, dec_dim, generator=g)
    return {"model": model, "epoch": 799, "args": argparse.Namespace(model="mae_vit_base_patch16", mask_ratio=0.75)}


def to_sam(sd: dict[str, torch.Tensor], seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"image_encoder." + k.replace("mlp.fc", "mlp.lin"): v.clone() for k, v in sd.items()}
    out["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(2, 16, generator=g)
    out["prompt_encoder.no_mask_embed.weight"] = torch.randn(1, 32, generator=g)
    out["mask_decoder.iou_token.weight"] = torch.randn(1, 32, generator=g)
    out["mask_decoder.transformer.layers.0.self_attn.q_proj.weight"] = torch.randn(32, 32, generator=g)
    return out


def to_eva02(sd: dict[str, torch.Tensor], seed: int = 4) -> dict:
    g = torch.Generator().manual_seed(seed)
    renames = [("attn.q_proj.bias", "attn.q_bias"), ("attn.v_proj.bias", "attn.v_bias"),
               ("mlp.fc1_g.", "mlp.w1."), ("mlp.fc1_x.", "mlp.w2."), ("mlp.norm.", "mlp.ffn_ln."),
               ("mlp.fc2.", "mlp.w3."), ("fc_norm.", "norm.")]
    out = {}
    for k, v in sd.items():
        for a, b in renames:
            k = k.replace(a, b)
        out[k] = v.clone()
    dim = sd["cls_token"].shape[-1]
    out["mask_token"] = torch.randn(1, 1, dim, generator=g)
    out["lm_head.weight"] = torch.randn(64, dim, generator=g)
    out["lm_head.bias"] = torch.randn(64, generator=g)
    out["rope.freqs_cos"] = torch.randn(16, 8, generator=g)  # fixed buffers the release saved
    out["rope.freqs_sin"] = torch.randn(16, 8, generator=g)
    return {"module": out}
