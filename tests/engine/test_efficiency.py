import sys
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from encseg.engine.efficiency import (
    count_flops,
    count_params,
    flop_counts_by_op,
    matmul_gflops,
    measure_latency,
)


def small_model() -> nn.Sequential:
    # encoder: Conv2d(3->8, 3x3) = 8*3*3*3 + 8 = 224 ; neck: Conv2d(8->4, 1x1) = 32 + 4 = 36 ;
    # head: Linear(4->5) = 20 + 5 = 25
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 1), nn.Flatten(2), nn.Linear(4, 5))


def test_count_params_by_hand():
    m = small_model()
    m[0].requires_grad_(False)
    r = count_params(m, {"encoder": m[0], "neck": m[1], "head": m[3]})
    assert r == {"total": 285, "trainable": 61, "encoder": 224, "encoder_trainable": 0, "neck": 36,
                 "neck_trainable": 36, "head": 25, "head_trainable": 25, "other": 0}


def test_count_params_tied_uncovered_and_bad_groups():
    emb = nn.Embedding(10, 4)
    out = nn.Linear(4, 10, bias=False)
    out.weight = emb.weight  # tied: counted once
    m = nn.ModuleDict({"emb": emb, "out": out, "extra": nn.Linear(2, 1)})
    r = count_params(m, {"embedding": emb})
    assert r["total"] == 40 + 3 and r["embedding"] == 40 and r["other"] == 3
    with pytest.raises(ValueError, match="'output' shares parameters with group\\(s\\) \\['embedding'\\]"):
        count_params(m, {"embedding": emb, "output": out})
    with pytest.raises(ValueError, match="'stray'.*not in the model"):
        count_params(m, {"stray": nn.Linear(1, 1)})
    with pytest.raises(ValueError, match="reserved"):
        count_params(m, {"total": emb})


def test_flops_linear_and_conv_are_two_macs():
    lin = nn.Linear(16, 32)
    x = torch.randn(4, 16)
    assert count_flops(lin, x) == 2 * 4 * 16 * 32
    conv = nn.Conv2d(3, 8, 3, padding=1)
    img = torch.randn(2, 3, 10, 12)
    # MACs = output pixels * out channels * (in channels * kernel area)
    assert count_flops(conv, img) == 2 * (2 * 10 * 12) * 8 * (3 * 3 * 3)


def test_cpu_attention_flops_are_counted():
    q = torch.randn(2, 3, 16, 8)
    k = torch.randn(2, 3, 20, 8)
    v = torch.randn(2, 3, 20, 6)
    expected = 2 * (2 * 3) * 16 * 20 * 8 + 2 * (2 * 3) * 16 * 20 * 6
    assert count_flops(F.scaled_dot_product_attention, q, k, v) == expected
    by_op = flop_counts_by_op(F.scaled_dot_product_attention, q, k, v)
    assert sum(by_op.values()) == expected
    # the same as the explicit formulation, whose matmuls torch always counts
    assert count_flops(lambda: (q @ k.transpose(-1, -2)).softmax(-1) @ v) == expected


def test_latency_fields_are_sane():
    lin = nn.Linear(64, 64)
    r = measure_latency(lin, lambda: torch.randn(8, 64), iters=5, warmup=2, device="cpu")
    assert r["iters"] == 5 and r["warmup"] == 2 and r["device"] == "cpu" and r["batch_size"] == 8
    assert 0 < r["median_ms"] <= r["p90_ms"]
    assert r["ms_per_image"] == pytest.approx(r["median_ms"] / 8)
    assert r["images_per_s"] == pytest.approx(8000 / r["median_ms"])
    assert r["peak_mem_mb"] >= 0 and r["peak_mem_kind"].startswith("cpu_")
    with pytest.raises(ValueError, match="iters"):
        measure_latency(lin, lambda: torch.randn(1, 64), iters=0, warmup=0, device="cpu")


def test_latency_sees_a_slow_function_and_counts_calls():
    calls = []

    def slow(x, y):
        calls.append(1)
        time.sleep(0.02)

    r = measure_latency(slow, lambda: (torch.zeros(2, 3), 1), iters=3, warmup=1, device="cpu")
    assert len(calls) == 4
    assert r["median_ms"] >= 19 and r["batch_size"] == 2


def test_cpu_peak_memory_sees_a_large_allocation():
    def big(x):
        t = torch.ones(64, 1024, 1024)  # 256 MiB, touched so it is resident
        time.sleep(0.01)
        return float(t[-1, -1, -1])

    r = measure_latency(big, lambda: torch.zeros(1), iters=1, warmup=0, device="cpu")
    if sys.platform == "linux":  # /proc/self/statm exists
        assert r["peak_mem_kind"] == "cpu_rss_delta_sampled"
    assert r["peak_mem_mb"] > 200


def test_matmul_gflops_positive():
    assert matmul_gflops(n=128, device="cpu", iters=2) > 0.01
