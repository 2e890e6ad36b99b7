import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerImageProcessor
from transformers.models.mask2former.modeling_mask2former import (
    Mask2FormerForUniversalSegmentationOutput,
    Mask2FormerLoss,
)

from encseg.config import HeadConfig
from encseg.models.heads import LabelError, build_head
from encseg.models.heads.linear import LinearHead
from encseg.models.heads.mask2former import (
    DistributedMask2FormerLoss,
    Mask2FormerHead,
    hf_config,
    semantic_targets,
)

C = 5
TINY = HeadConfig(hidden_dim=64, num_queries=16, encoder_layers=2, decoder_layers=3, dim_feedforward=128,
                  encoder_feedforward_dim=128, train_num_points=1024)


def _pyramid(size=64, batch=2, channels=64):
    return [torch.randn(batch, channels, size // s, size // s) for s in (4, 8, 16, 32)]


def _masks(size=64, batch=2):
    masks = torch.randint(0, C, (batch, size, size))
    masks[:, :8] = 255
    return masks


def test_head_is_initialised_by_hf_exactly_like_hf_own_model():
    torch.manual_seed(0)
    ours = dict(Mask2FormerHead([64] * 4, C, TINY).hf.named_parameters())
    # HF's own model with the same head settings (its Swin backbone is irrelevant here)
    swin = dict(model_type="swin", embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                out_features=["stage1", "stage2", "stage3", "stage4"])
    hf_cfg = Mask2FormerConfig(**{**hf_config(TINY, C).to_dict(), "backbone_config": swin})
    hf = Mask2FormerForUniversalSegmentation(hf_cfg)
    theirs = {k.replace("model.pixel_level_module.decoder.", "pixel_decoder.").replace("model.", ""): v
              for k, v in hf.named_parameters()}
    compared = 0
    for name, p in ours.items():
        q = theirs[name]
        if p.shape != q.shape:  # input projections: Swin's channels differ from our neck's
            continue
        if q.min() == q.max() or p.min() == p.max() or name.endswith("sampling_offsets.bias"):
            torch.testing.assert_close(p, q, msg=f"{name}: deterministic init differs from HF's")
        elif p.numel() >= 2048:
            assert abs(p.std() / q.std() - 1) < 0.2, name
            assert abs(p.mean() - q.mean()) < 0.1 * q.std() + 1e-3, name
        compared += 1
    assert compared > 50
    level_embed = ours["pixel_decoder.level_embed"]  # an uninitialised torch.Tensor unless HF init ran
    assert torch.isfinite(level_embed).all() and 0.5 < level_embed.std() < 1.5


def test_forward_shapes_and_deep_supervision():
    head = Mask2FormerHead([64] * 4, C, TINY)
    out = head(_pyramid())
    assert out.class_logits.shape == (2, 16, C + 1)
    assert out.mask_logits.shape == (2, 16, 16, 16)  # stride 4 of a 64-px image
    assert len(out.aux) == TINY.decoder_layers - 1  # the learnable-query prediction + every layer but the last
    assert all(a.mask_logits.shape == out.mask_logits.shape for a in out.aux)


def test_targets_drop_ignore_and_count_it_as_background():
    m = torch.tensor([[[0, 0, 255], [3, 3, 255]]])
    masks, classes = semantic_targets(m)
    assert classes[0].tolist() == [0, 3]
    assert masks[0].tolist() == [[[1, 1, 0], [0, 0, 0]], [[0, 0, 0], [1, 1, 0]]]


def test_loss_weights_terms_like_hf_and_backpropagates():
    torch.manual_seed(0)
    head = Mask2FormerHead([64] * 4, C, TINY)
    pyramid = [p.requires_grad_() for p in _pyramid()]
    out = head(pyramid)
    masks = _masks()
    torch.manual_seed(1)  # point sampling is random: same seed for both computations
    losses = head.loss(out, masks)
    # independent: HF's own loss module + get_loss_dict's weighting rule (substring match on the key)
    mask_labels = [(m[None] == m.unique()[m.unique() != 255][:, None, None]).float() for m in masks]
    class_labels = [m.unique()[m.unique() != 255] for m in masks]
    weights = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    torch.manual_seed(1)
    raw = Mask2FormerLoss(hf_config(TINY, C), weights)(
        out.mask_logits, out.class_logits, mask_labels, class_labels,
        [{"masks_queries_logits": a.mask_logits, "class_queries_logits": a.class_logits} for a in out.aux])
    assert len(raw) == 3 * TINY.decoder_layers
    expected = sum(v * next(w for k, w in weights.items() if k in name) for name, v in raw.items())
    torch.testing.assert_close(losses["loss"], expected)
    for k in weights:
        torch.testing.assert_close(losses[k], raw[k].detach())
    torch.testing.assert_close(losses["loss_aux"] + sum(weights[k] * raw[k] for k in weights), expected)
    losses["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pyramid)


def test_loss_runs_in_fp32_under_autocast():
    head = Mask2FormerHead([64] * 4, C, TINY)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(_pyramid())
        losses = head.loss(out, _masks())
    assert losses["loss"].dtype == torch.float32 and torch.isfinite(losses["loss"])


def test_labels_out_of_range_are_rejected():
    head = Mask2FormerHead([64] * 4, C, TINY)
    out = head(_pyramid())
    bad = _masks()
    bad[0, 10, 10] = 7
    with pytest.raises(LabelError, match=r"\[7\]"):
        head.loss(out, bad)


def test_semantic_scores_match_hf_post_processing_at_384():
    torch.manual_seed(0)
    head = Mask2FormerHead([64] * 4, C, TINY).eval()
    with torch.no_grad():
        out = head(_pyramid(size=96))
    ours = head.semantic_scores(out, (384, 384))
    hf_out = Mask2FormerForUniversalSegmentationOutput(class_queries_logits=out.class_logits,
                                                      masks_queries_logits=out.mask_logits)
    processor = Mask2FormerImageProcessor(do_resize=False, ignore_index=255, do_reduce_labels=False)
    theirs = processor.post_process_semantic_segmentation(hf_out, target_sizes=[(384, 384)] * 2,
                                                          return_segmentation_scores=True)
    for b in range(2):
        torch.testing.assert_close(ours[b], theirs[b].segmentation_scores)
        assert torch.equal(ours[b].argmax(0), theirs[b].segmentation)
    # at any other size ours is computed directly at that size
    assert head.semantic_scores(out, (100, 70)).shape == (2, C, 100, 70)


def _num_masks_worker(rank, world, init_file, counts, result_file):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        loss = DistributedMask2FormerLoss(hf_config(TINY, C), {})
        labels = [torch.arange(n) for n in counts[rank]]
        value = loss.get_num_masks(labels, torch.device("cpu"))
        torch.save(value, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_num_masks_is_the_global_average_across_processes(tmp_path):
    counts = [[3, 2], [1, 0]]  # rank 0 holds 5 masks, rank 1 holds 1: the official normaliser is 6 / 2 = 3
    mp.spawn(_num_masks_worker, args=(2, str(tmp_path / "init"), counts, str(tmp_path / "n")), nprocs=2)
    assert [float(torch.load(tmp_path / f"n.{r}", weights_only=True)) for r in (0, 1)] == [3.0, 3.0]
    # without a process group it is the local count, at least 1
    loss = DistributedMask2FormerLoss(hf_config(TINY, C), {})
    assert float(loss.get_num_masks([torch.arange(1), torch.arange(0)], torch.device("cpu"))) == 1.0
    assert float(loss.get_num_masks([torch.arange(0)], torch.device("cpu"))) == 1.0
    assert float(loss.get_num_masks([torch.arange(4)], torch.device("cpu"))) == 4.0


def test_linear_head_is_bn_plus_1x1_conv_with_cross_entropy():
    head = build_head(HeadConfig(type="linear"), [32], C)
    assert isinstance(head, LinearHead)
    taps = [torch.randn(2, 32, 8, 8), torch.randn(2, 32, 8, 8, requires_grad=True)]
    out = head(taps)
    assert out.logits.shape == (2, C, 8, 8)
    masks = _masks()
    losses = head.loss(out, masks)
    up = F.interpolate(out.logits, size=(64, 64), mode="bilinear", align_corners=False)
    valid = masks != 255
    manual = -up.log_softmax(1).gather(1, masks.clamp(max=C - 1)[:, None])[:, 0][valid].mean()
    torch.testing.assert_close(losses["loss"], manual)
    losses["loss"].backward()
    assert taps[0].grad is None and taps[1].grad.abs().sum() > 0  # the last tap only
    scores = head.semantic_scores(out, (64, 64))
    torch.testing.assert_close(scores.sum(1), torch.ones(2, 64, 64))
