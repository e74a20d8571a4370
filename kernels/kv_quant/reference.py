"""Group-wise asymmetric quantization, packing and dequantization in plain torch (see kernels/kv_quant)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.kv_quant import KVQuantizer, QuantizedTensor, check_args, groups_per_row, words_per_row


def _grouped(x: torch.Tensor, group_size: int, fill: float) -> torch.Tensor:
    """x (..., N) -> (..., ceil(N / G), G), the last group padded with `fill`."""
    n = x.shape[-1]
    pad = groups_per_row(n, group_size) * group_size - n
    if pad:
        x = F.pad(x, (0, pad), value=fill)
    return x.reshape(*x.shape[:-1], -1, group_size)


def quantize(x: torch.Tensor, bits: int, group_size: int, *, scale_dtype: torch.dtype = torch.float16
             ) -> QuantizedTensor:
    check_args(x, bits, group_size)
    n, qmax, per_word = x.shape[-1], 2**bits - 1, 32 // bits
    xf = x.float()
    zero = _grouped(xf, group_size, float("inf")).amin(-1).to(scale_dtype)
    top = _grouped(xf, group_size, float("-inf")).amax(-1)
    scale = ((top - zero.float()) / qmax).to(scale_dtype)
    # codes from the stored (rounded) zero and scale, so that dequantization inverts exactly these
    z = zero.float().repeat_interleave(group_size, -1)[..., :n]
    s = scale.float().repeat_interleave(group_size, -1)[..., :n]
    s = torch.where(s == 0, torch.ones_like(s), s)
    codes = ((xf - z) / s).clamp_(0, qmax).add_(0.5).to(torch.int32)  # floor(v + 1/2) for v >= 0
    pad = words_per_row(n, bits) * per_word - n
    if pad:
        codes = F.pad(codes, (0, pad))
    codes = codes.reshape(*codes.shape[:-1], -1, per_word)
    packed = torch.zeros(codes.shape[:-1], dtype=torch.int32, device=x.device)
    for j in range(per_word):
        packed |= codes[..., j] << (bits * j)
    return QuantizedTensor(packed, scale, zero, n, bits, group_size)


def dequantize(q: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    per_word, n = 32 // q.bits, q.length
    col = torch.arange(n, device=q.codes.device)
    words = q.codes[..., col // per_word]
    codes = (words >> (q.bits * (col % per_word))) & (2**q.bits - 1)
    s = q.scale.float()[..., col // q.group_size]
    z = q.zero.float()[..., col // q.group_size]
    return (codes.float() * s + z).to(dtype)


kv_quant = KVQuantizer("reference", quantize, dequantize)
