"""GEAR and KIVI (methods/inference/kv_cache.py): the decomposition X~ = D^ + L + S of one chunk in both
constructions (gear: against an independent reading of the official code; per_head), the streaming
compressed cache, its memory accounting, and generation through it on the trained tiny model."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

import kernels
from methods.inference.evaluation import greedy_generate
from methods.inference.kv_cache import (
    CompressedKVCache,
    CompressedKVLayer,
    Gear,
    Kivi,
    KVCompression,
    compare_with_full_cache,
    compress,
    power_iteration,
    seeded_prompts,
)
from tests.conftest import BASE, run_cli, run_dirs

QUANT = kernels.get("kv_quant", "reference")
GEAR_CHUNKS = dict(value_window="chunk", rank=4, stream_rank=2, outlier_ratio=0.02)



def heavy_tailed(shape=(2, 2, 64, 32), seed=0) -> torch.Tensor:
    """K/V-like chunks: Gaussian scale mixture (heavy tails) plus per-channel offsets, as keys have."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp(0.75 * torch.randn(shape, generator=g))
    return x + 2 * torch.randn(*shape[:2], 1, shape[-1], generator=g)


def error(x, axis, **spec) -> float:
    chunk = compress(x, axis, KVCompression(**{"bits": 2, "group_size": 16, "value_window": "chunk", **spec}),
                     spec.get("rank", 0), QUANT)
    return float((chunk.dequantize() - x).norm())


def plain(x, axis, bits=2, group_size=16, store_dtype=torch.float16) -> torch.Tensor:
    """The plain group-wise quantizer: keys per channel (groups along tokens), values per token."""
    w = x.transpose(-1, -2) if axis == "channel" else x
    out = QUANT.dequantize(QUANT(w, bits, group_size, scale_dtype=store_dtype))
    return out.transpose(-1, -2) if axis == "channel" else out


# ------------------------------------------------------------------------------------------------ one chunk
@pytest.mark.parametrize("axis", ["channel", "token"])
def test_rank_zero_no_outliers_is_exactly_the_plain_quantizer(axis):
    x = heavy_tailed()
    spec = KVCompression(bits=2, group_size=16, value_window="chunk", rank=0, stream_rank=0, outlier_ratio=0.0)
    chunk = compress(x, axis, spec, 0, QUANT)
    assert chunk.factors is None and chunk.outlier_index is None
    assert torch.equal(chunk.dequantize(), plain(x, axis))


@pytest.mark.parametrize("axis", ["channel", "token"])
def test_gear_error_is_below_the_quantizer_and_falls_with_rank_and_outliers(axis):
    x = heavy_tailed(seed=1)
    base = float((plain(x, axis) - x).norm())
    gear = error(x, axis, rank=4, outlier_ratio=0.02)  # fp16 storage, the defaults
    assert gear < 0.8 * base
    exact = dict(store_dtype=torch.float32)  # the projection bound is exact without fp16 rounding
    by_rank = [error(x, axis, rank=r, **exact) for r in (0, 1, 2, 4, 8, 16)]
    assert by_rank[0] == pytest.approx(float((plain(x, axis, store_dtype=torch.float32) - x).norm()), rel=1e-6)
    assert all(a > b for a, b in zip(by_rank, by_rank[1:])), by_rank
    by_ratio = [error(x, axis, outlier_ratio=s, **exact) for s in (0.0, 0.005, 0.01, 0.02, 0.05, 0.1)]
    assert all(a > b for a, b in zip(by_ratio, by_ratio[1:])), by_ratio


def test_power_iteration_is_a_projection_with_nested_spans():
    err = torch.randn(3, 40, 24, generator=torch.Generator().manual_seed(2))
    for r in (1, 3, 6):
        q, p = power_iteration(err, r, 3, seed=0)
        torch.testing.assert_close(q.transpose(-1, -2) @ q, torch.eye(r).expand(3, r, r), atol=1e-5, rtol=0)
        torch.testing.assert_close(p, err.transpose(-1, -2) @ q)  # L = Q Q^T err
    q2, _ = power_iteration(err, 2, 3, seed=0)
    q5, _ = power_iteration(err, 5, 3, seed=0)
    torch.testing.assert_close(q5 @ (q5.transpose(-1, -2) @ q2), q2, atol=1e-4, rtol=0)  # span(r=2) in span(r=5)


@pytest.mark.parametrize("axis", ["channel", "token"])
def test_outliers_are_exactly_the_extreme_entries(axis):
    x = heavy_tailed(seed=3)
    spec = KVCompression(bits=2, group_size=16, value_window="chunk", rank=2, outlier_ratio=0.03,
                         store_dtype=torch.float32)
    chunk = compress(x, axis, spec, 2, QUANT)
    n, d = x.shape[-2:]
    k = math.ceil(0.03 * n * d / 2)
    flat = (x.transpose(-1, -2) if axis == "channel" else x).flatten(-2)
    order = flat.argsort(-1)
    expected = torch.cat([order[..., -k:], order[..., :k]], -1).sort(-1).values
    assert chunk.outlier_index.shape[-1] == 2 * k
    assert torch.equal(chunk.outlier_index.long().sort(-1).values, expected)
    restored = chunk.dequantize()
    restored = (restored.transpose(-1, -2) if axis == "channel" else restored).flatten(-2)
    assert torch.equal(restored.gather(-1, expected), flat.gather(-1, expected))  # kept exact


# ------------------------------------------------------------------------- the official construction
def official_gear(x: torch.Tensor, axis: str, bits: int, group_size: int, ratio: float) -> torch.Tensor:
    """An independent reading of the official GEAR code's D^ + S (`gears_channelQ` / `gears_tokenQ`, with
    2^b - 1 levels): rows per key channel over the tokens, or per token with the heads side by side; in every
    row the int(s H d / 2) largest and smallest entries set to the row's mean, the rows quantized in groups of
    G (keys: G tokens; values: G channels, across heads), the outliers put back. fp32, round-half-even."""
    B, H, n, d = x.shape
    rows = x.permute(0, 1, 3, 2).reshape(B, H * d, n) if axis == "channel" else x.permute(0, 2, 1, 3).reshape(B, n, H * d)
    k = int(int(x.numel() * ratio) / B / n / 2)
    low, high = rows.topk(k, -1, largest=False), rows.topk(k, -1)
    filled = rows.clone()
    mean = rows.mean(-1, keepdim=True).expand_as(rows)
    filled.scatter_(-1, low.indices, mean.gather(-1, low.indices))
    filled.scatter_(-1, high.indices, mean.gather(-1, high.indices))
    groups = filled.unflatten(-1, (-1, group_size))
    lo, hi = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scale = (hi - lo) / (2**bits - 1)
    out = (((groups - lo) / scale).relu().round() * scale + lo).flatten(-2)
    out.scatter_(-1, low.indices, low.values)
    out.scatter_(-1, high.indices, high.values)
    if axis == "channel":
        return out.reshape(B, H, d, n).permute(0, 1, 3, 2)
    return out.reshape(B, n, H, d).permute(0, 2, 1, 3)


GEAR_F32 = dict(bits=2, group_size=16, value_window="chunk", store_dtype=torch.float32)


@pytest.mark.parametrize("axis", ["channel", "token"])
def test_gear_construction_is_the_official_codes(axis):
    """Rank 0: construction=gear equals the official D^ + S to fp32 rounding; head_dim 8 < G = 16, so value
    groups span two heads. The per-head construction (the old default) is another function."""
    x = heavy_tailed((2, 4, 32, 8), seed=5)
    spec = KVCompression(**GEAR_F32, outlier_ratio=0.25, construction="gear")
    chunk = compress(x, axis, spec, 0, QUANT)
    want = official_gear(x, axis, 2, 16, 0.25)
    torch.testing.assert_close(chunk.dequantize(), want, atol=1e-5, rtol=0)
    k = int(0.25 * 4 * 8 / 2)  # 4 a side per row: keys 8 of a channel's 32 tokens, values 8 of a token's 32
    rows = 4 * 8 if axis == "channel" else 32
    assert chunk.outlier_index.shape == ((2, 4, 8 * 2 * k) if axis == "channel" else (2, 32 * 2 * k))
    assert chunk.outlier_value.numel() == 2 * rows * 2 * k
    if axis == "token":
        assert chunk.quantized.scale.shape == (2, 32, 2)  # a token's 4 x 8 channels in 2 groups of 16
    old = compress(x, axis, replace(spec, construction="per_head"), 0, QUANT).dequantize()
    assert (old - want).abs().max() > 0.1


@pytest.mark.parametrize("axis", ["channel", "token"])
def test_gear_low_rank_is_added_on_top_of_the_restored_outliers(axis):
    """X~ = (D^ + S) + Q P^T, Q P^T the power iteration of X - (D^ + S) per head (n x d): the outliers move by
    L too (per_head keeps them exact)."""
    x = heavy_tailed((1, 4, 32, 8), seed=6)
    spec = KVCompression(**GEAR_F32, outlier_ratio=0.25, construction="gear")
    base = compress(x, axis, spec, 0, QUANT).dequantize()
    chunk = compress(x, axis, spec, 3, QUANT)
    q, p = power_iteration(x - base, 3, spec.power_iters, spec.seed)
    torch.testing.assert_close(chunk.dequantize(), base + q @ p.transpose(-1, -2), atol=1e-5, rtol=0)
    assert chunk.factors[0].shape == (1, 4, 32, 3) and chunk.factors[1].shape == (1, 4, 8, 3)
    layout = chunk.quantized.shape
    mask = torch.zeros(layout).flatten(-2).scatter(-1, chunk.outlier_index.long(), 1.0).reshape(layout)
    at_outliers = chunk._natural(mask).bool()  # (B, H, n, d)
    assert int(at_outliers.sum()) == chunk.outlier_index.numel()
    assert (chunk.dequantize() - x)[at_outliers].abs().max() > 1e-3  # moved by L
    per_head = compress(x, axis, replace(spec, construction="per_head"), 3, QUANT)
    flat = (x.transpose(-1, -2) if axis == "channel" else x).flatten(-2)
    restored = per_head.dequantize()
    restored = (restored.transpose(-1, -2) if axis == "channel" else restored).flatten(-2)
    idx = per_head.outlier_index.long()
    assert torch.equal(restored.gather(-1, idx), flat.gather(-1, idx))


def test_gear_keeps_the_official_outlier_count_per_row():
    """int(s H d / 2) a side in every key channel and every token: at the defaults (s = 2%) and llama-tiny's
    H d = 256, a 64-token chunk keeps 6.25% of its keys (3.1x the per-head s) and 1.56% of its values."""
    x = heavy_tailed((1, 4, 64, 64), seed=7)
    spec = KVCompression(bits=2, group_size=64, value_window="chunk", outlier_ratio=0.02, construction="gear")
    keys, values = compress(x, "channel", spec, 0, QUANT), compress(x, "token", spec, 0, QUANT)
    assert keys.outlier_index.numel() / x.numel() == 4 / 64
    assert values.outlier_index.numel() / x.numel() == 4 / 256
    per_head = compress(x, "channel", replace(spec, construction="per_head"), 0, QUANT)
    assert per_head.outlier_index.numel() == 4 * 2 * math.ceil(0.02 * 64 * 64 / 2)  # 2.0%
    # s too small for a row: none (the official int()); never more than half a row
    assert compress(x, "token", replace(spec, outlier_ratio=0.005), 0, QUANT).outlier_index is None
    assert compress(x, "channel", replace(spec, outlier_ratio=0.9), 0, QUANT).outlier_index.numel() == x.numel()


def test_gear_values_grouped_across_heads_lose_more_when_head_dim_is_below_the_group():
    """head_dim 16, G 64: a value group spans 4 heads (the official grouping), per_head's groups are the
    heads (16 channels): the same 2 bits, a larger error (measured 0.53 vs 0.35 relative)."""
    x = heavy_tailed((1, 8, 64, 16), seed=0)
    errs = {}
    for construction in ("gear", "per_head"):
        spec = KVCompression(bits=2, group_size=64, value_window="chunk", construction=construction)
        errs[construction] = float((compress(x, "token", spec, 0, QUANT).dequantize() - x).norm() / x.norm())
    assert errs["gear"] > 1.3 * errs["per_head"], errs


# ------------------------------------------------------------------------------------------------ the cache
def fill(update, prefill=40, steps=30, heads=2, d=12, seed=4):
    """Prefill then single-token steps through `update(keys, values)`; returns what every call returned and
    the inputs."""
    g = torch.Generator().manual_seed(seed)
    ks = torch.randn(1, heads, prefill + steps, d, generator=g)
    vs = torch.randn(1, heads, prefill + steps, d, generator=g)
    out = [update(ks[:, :, :prefill], vs[:, :, :prefill])]
    for t in range(prefill, prefill + steps):
        out.append(update(ks[:, :, t:t + 1], vs[:, :, t:t + 1]))
    return out, ks, vs


def test_gear_cache_bits_per_element_match_the_accounting():
    spec = KVCompression(bits=4, group_size=8, buffer=16, value_window="chunk", rank=3, stream_rank=2,
                         outlier_ratio=0.05)
    cache = CompressedKVCache(spec, QUANT)
    fill(lambda k, v: cache.update(k, v, layer_idx=0))  # T = 70: chunks of 32 (prefill, rank 3), 16, 16 (rank 2); 6 tokens left in the window
    heads, d = 2, 12

    def chunk_bits(n, r):
        keys = d * math.ceil(n * 4 / 32) * 32 + d * math.ceil(n / 8) * 2 * 16  # per channel: groups along n
        values = n * math.ceil(d * 4 / 32) * 32 + n * math.ceil(d / 8) * 2 * 16  # per token: groups along d
        low_rank = r * (n + d) * 16  # Q (n or d, r) and P in fp16
        outliers = 2 * math.ceil(0.05 * n * d / 2) * (16 + 32)  # fp16 value + int32 position
        return keys + values + 2 * (low_rank + outliers)

    expected = heads * (chunk_bits(32, 3) + chunk_bits(16, 2) + chunk_bits(16, 2) + 2 * 6 * d * 16)
    assert isinstance(cache.layers[0], CompressedKVLayer) and cache.get_seq_length() == 70
    assert cache.stored_bits() == expected
    assert cache.bits_per_element() == pytest.approx(expected / (2 * heads * 70 * d))
    assert cache.compressed_fraction() == pytest.approx(64 / 70)


def test_gear_construction_cache_bits_per_element_match_the_accounting():
    """construction=gear: values quantized per token across the heads (H d = 24 channels in groups of 8), and
    int(s H d / 2) = 3 outliers a side in every key channel and every token (s = 0.25)."""
    spec = KVCompression(bits=4, group_size=8, buffer=16, value_window="chunk", rank=3, stream_rank=2,
                         outlier_ratio=0.25, construction="gear")
    cache = CompressedKVCache(spec, QUANT)
    fill(lambda k, v: cache.update(k, v, layer_idx=0))  # chunks of 32 (prefill, rank 3), 16, 16 (rank 2)
    heads, d = 2, 12

    def chunk_bits(n, r):
        keys = heads * (d * math.ceil(n * 4 / 32) * 32 + d * math.ceil(n / 8) * 2 * 16)
        values = n * math.ceil(heads * d * 4 / 32) * 32 + n * math.ceil(heads * d / 8) * 2 * 16
        low_rank = heads * r * (n + d) * 16
        outliers = (heads * d + n) * 2 * 3 * (16 + 32)  # key channels and tokens, 3 a side each
        return keys + values + 2 * low_rank + outliers

    expected = chunk_bits(32, 3) + 2 * chunk_bits(16, 2) + heads * 2 * 6 * d * 16
    assert cache.stored_bits() == expected
    assert cache.compressed_fraction() == pytest.approx(64 / 70)

def test_kivi_cache_accounting_and_exact_window():
    spec = KVCompression(bits=2, group_size=8, buffer=16)  # KIVI: values slide, keys wait for 16
    layer = CompressedKVLayer(spec, QUANT)
    outs, ks, vs = fill(layer.update)
    heads, d = 2, 12
    assert layer.keys.shape[-2] == 6 and layer.values.shape[-2] == 16  # 64 keys and 54 values compressed
    keys_bits = sum(d * math.ceil(n * 2 / 32) * 32 + d * math.ceil(n / 8) * 2 * 16 for n in (32, 16, 16))
    values_bits = 54 * math.ceil(d * 2 / 32) * 32 + 54 * math.ceil(d / 8) * 2 * 16
    assert layer.stored_bits() == heads * (keys_bits + values_bits + (6 + 16) * d * 16)
    # what the last step read (the cache as it stood before it: 64 keys and 53 values compressed), and the
    # new token as computed
    keys, values = outs[-1]
    assert keys.shape == ks.shape and values.shape == vs.shape
    assert torch.equal(keys[..., -1:, :], ks[..., -1:, :]) and torch.equal(values[..., -1:, :], vs[..., -1:, :])
    assert torch.equal(keys[..., 64:-1, :], ks[..., 64:-1, :].half().float())
    assert torch.equal(values[..., 53:-1, :], vs[..., 53:-1, :].half().float())
    # older values: the fp16 window's entries, quantized per token as they left it
    assert torch.equal(values[..., :53, :], plain(vs[..., :53, :].half().float(), "token", group_size=8))
    assert (keys[..., :64, :] - ks[..., :64, :]).abs().max() < 1.5  # 2-bit codes: close, not equal
    assert not torch.equal(keys[..., :64, :], ks[..., :64, :])


# ------------------------------------------------------------------------------------------------ generation
def eight_bit_specs():
    gear = dict(bits=8, group_size=8, buffer=8, value_window="chunk", rank=2, stream_rank=2)
    return [KVCompression(bits=8, group_size=8, buffer=8),
            KVCompression(**gear, outlier_ratio=0.02),
            KVCompression(**gear, outlier_ratio=0.05, construction="gear")]  # H d = 64: 1 outlier a side per row


@pytest.mark.e2e
@pytest.mark.parametrize("spec", eight_bit_specs(), ids=["kivi", "gear-per_head", "gear"])
def test_eight_bit_cache_generates_what_the_full_cache_generates(base_lm, spec):
    model, data = base_lm
    prompts = seeded_prompts(data.val, 4, 40, seed=0)
    reference = greedy_generate(model, prompts, 20)
    cache = CompressedKVCache(spec, QUANT)
    tokens = greedy_generate(model, prompts, 20, cache=cache)
    assert cache.compressed_fraction() > 0.8  # most of what was read came from the compressed store
    assert torch.equal(tokens, reference)


@pytest.mark.e2e
@pytest.mark.parametrize("construction,ratio", [("per_head", 0.02), ("gear", 0.05)])
def test_gear_is_closer_to_lossless_than_its_quantizer_alone(base_lm, construction, ratio):
    """The paper's claim at small scale: same bits, groups and chunks; low-rank + outliers cut the KL. (The
    official count keeps no outlier at s = 2% when H d = 64: int(0.64) = 0; s = 5% keeps 1 a side a row.)"""
    model, data = base_lm
    prompts = seeded_prompts(data.val, 6, 48, seed=1)
    common = dict(bits=2, group_size=8, buffer=8, value_window="chunk", construction=construction)
    quant = compare_with_full_cache(model, prompts, 16, KVCompression(**common), QUANT)
    gear = compare_with_full_cache(model, prompts, 16, KVCompression(**common, rank=2, stream_rank=2,
                                                                      outlier_ratio=ratio), QUANT)
    assert 0 < gear["kl"] < 0.7 * quant["kl"]
    assert gear["bits_per_element"] > quant["bits_per_element"]  # what it pays for it


# ------------------------------------------------------------------------------------------------ methods
def test_methods_take_the_papers_defaults_and_reject_bad_config():
    gear, kivi = Gear(), Kivi()
    assert not gear.trains and gear.stages == ["evaluate"]
    assert (gear.spec.bits, gear.spec.group_size, gear.spec.buffer, gear.spec.rank, gear.spec.stream_rank,
            gear.spec.outlier_ratio, gear.spec.power_iters, gear.spec.value_window,
            gear.spec.construction) == (2, 64, 64, 4, 2, 0.02, 3, "chunk", "gear")
    assert (kivi.spec.bits, kivi.spec.group_size, kivi.spec.buffer, kivi.spec.rank, kivi.spec.outlier_ratio,
            kivi.spec.value_window, kivi.spec.construction) == (2, 32, 128, 0, 0.0, "sliding", "per_head")
    assert Gear(construction="per_head").spec.construction == "per_head"
    with pytest.raises(ValueError, match="method.construction: must be one of gear, per_head, got 'official'"):
        Gear(construction="official")
    with pytest.raises(ValueError, match="method.bits: must be one of 1, 2, 4, 8"):
        Gear(bits=3)
    with pytest.raises(ValueError, match="method.store_dtype: 'int8' is not one of float16, bfloat16, float32"):
        Kivi(store_dtype="int8")
    with pytest.raises(ValueError, match="method.backend: 'cuda' is not one of reference, triton"):
        Gear(backend="cuda")


@pytest.mark.e2e
def test_runner_evaluates_the_cache(tmp_path):
    """`python -m runner method=gear model.init_from=base`: no training, the cache metrics in summary.json."""
    run_cli("method=gear", *BASE, "logger=none", "method.buffer=16", "method.group_size=16", "method.new_tokens=8",
            "method.n_prompts=2", runs_dir=tmp_path)
    summary = json.loads((run_dirs(tmp_path)[-1] / "summary.json").read_text())
    assert summary["stages"] == ["evaluate"] and summary["steps"] == 0
    assert summary["eval/compressed_fraction"] > 0.5 and summary["eval/bits_per_element"] < 16
    assert 0 <= summary["eval/kl"] < 1 and 0 <= summary["eval/token_match"] <= 1


def test_kernel_backend_follows_the_hardware_map_unless_the_method_names_one():
    g = Gear()  # backend: null
    g.bind_kernels({"kv_quant": "triton"}, fallback=True)  # what the runner does for hardware=h100
    assert g.quantizer() is kernels.get("kv_quant", "triton", fallback=True)
    g.bind_kernels({"kv_quant": "reference"})  # hardware=cpu
    assert g.quantizer() is kernels.get("kv_quant", "reference")
    pinned = Gear(backend="reference")
    pinned.bind_kernels({"kv_quant": "triton"}, fallback=True)
    assert pinned.quantizer() is kernels.get("kv_quant", "reference")
