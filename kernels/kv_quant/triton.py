"""Group-wise asymmetric quantization in Triton (see kernels/kv_quant for the scheme).

The input is viewed as rows (R, N) with the groups along N. Three kernels:

- `_minmax_kernel`, grid (row blocks, groups): min and max of each (row, group); writes the stored zero
  and scale (scale_dtype), computed as in the reference.
- `_quantize_pack_kernel`, grid (row blocks, word blocks): for each of the 32/b codes of a word, loads that
  column, looks up its group's zero and scale, rounds, shifts and ORs it into the word. No unpacked codes
  are ever written.
- `_dequantize_kernel`, grid (row blocks, column blocks): unpacks a tile of codes and applies scale and zero.

Everything is computed in fp32 (inputs of any float dtype are loaded and converted in the kernel), with
correctly rounded division (`tl.math.div_rn`; Triton's `/` is approximate on GPUs), so scales, zeros and
codes equal the reference's; only the dequantized `code * scale + zero` may differ in the last bit where
the GPU fuses it into one multiply-add. The kernels use no `libdevice` and no `.to()` on scalar
arguments, so they run under the Triton interpreter (`TRITON_INTERPRET=1`, CPU tensors) for the parity
tests, where they match the reference bit for bit.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from kernels.kv_quant import KVQuantizer, QuantizedTensor, check_args, groups_per_row, words_per_row

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
BLOCK_R = 4 if INTERPRETED else 32  # rows per program; tiny under the interpreter so tests hit ragged edges
BLOCK_N = 16 if INTERPRETED else 128  # columns (dequantize) / words (pack) per program

_TL_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}


@triton.jit
def _minmax_kernel(x_ptr, zero_ptr, scale_ptr, R, N, n_groups, qmax,
                   GROUP: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_R: tl.constexpr, OUT_DTYPE: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    g = tl.program_id(1)
    cols = g * GROUP + tl.arange(0, BLOCK_G)
    col_ok = (tl.arange(0, BLOCK_G) < GROUP) & (cols < N)
    mask = (rows[:, None] < R) & col_ok[None, :]
    x = tl.load(x_ptr + rows[:, None] * N + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    lo = tl.min(tl.where(mask, x, float("inf")), axis=1)
    hi = tl.max(tl.where(mask, x, float("-inf")), axis=1)
    zero = lo.to(OUT_DTYPE)
    scale = tl.math.div_rn(hi - zero.to(tl.float32), qmax).to(OUT_DTYPE)  # IEEE division, as torch's
    out = rows * n_groups + g
    tl.store(zero_ptr + out, zero, mask=rows < R)
    tl.store(scale_ptr + out, scale, mask=rows < R)


@triton.jit
def _quantize_pack_kernel(x_ptr, zero_ptr, scale_ptr, codes_ptr, R, N, n_groups, n_words, qmax,
                          GROUP: tl.constexpr, BITS: tl.constexpr, PER_WORD: tl.constexpr,
                          BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    words = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    row_ok = rows < R
    packed = tl.zeros((BLOCK_R, BLOCK_W), dtype=tl.int32)
    for j in tl.static_range(PER_WORD):
        cols = words * PER_WORD + j
        mask = row_ok[:, None] & (cols < N)[None, :]
        x = tl.load(x_ptr + rows[:, None] * N + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        gidx = rows[:, None] * n_groups + (cols // GROUP)[None, :]
        z = tl.load(zero_ptr + gidx, mask=mask, other=0.0).to(tl.float32)
        s = tl.load(scale_ptr + gidx, mask=mask, other=1.0).to(tl.float32)
        s = tl.where(s == 0.0, 1.0, s)
        v = tl.minimum(tl.maximum(tl.math.div_rn(x - z, s), 0.0), qmax)
        code = (v + 0.5).to(tl.int32)
        code = tl.where(mask, code, 0)
        packed = packed | (code << (j * BITS))
    out_mask = row_ok[:, None] & (words < n_words)[None, :]
    tl.store(codes_ptr + rows[:, None] * n_words + words[None, :], packed, mask=out_mask)


@triton.jit
def _dequantize_kernel(codes_ptr, zero_ptr, scale_ptr, out_ptr, R, N, n_groups, n_words,
                       GROUP: tl.constexpr, BITS: tl.constexpr, PER_WORD: tl.constexpr,
                       BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, OUT_DTYPE: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < R)[:, None] & (cols < N)[None, :]
    word = tl.load(codes_ptr + rows[:, None] * n_words + (cols // PER_WORD)[None, :], mask=mask, other=0)
    code = (word >> ((cols % PER_WORD) * BITS)[None, :]) & ((1 << BITS) - 1)
    gidx = rows[:, None] * n_groups + (cols // GROUP)[None, :]
    z = tl.load(zero_ptr + gidx, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(scale_ptr + gidx, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * N + cols[None, :], (code.to(tl.float32) * s + z).to(OUT_DTYPE), mask=mask)


def _launch_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else _NoGuard()


class _NoGuard:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def quantize(x: torch.Tensor, bits: int, group_size: int, *, scale_dtype: torch.dtype = torch.float16
             ) -> QuantizedTensor:
    check_args(x, bits, group_size)
    if scale_dtype not in _TL_DTYPES:
        raise ValueError(f"kv_quant: scale_dtype must be one of {list(_TL_DTYPES)}, got {scale_dtype}")
    lead, n = x.shape[:-1], x.shape[-1]
    x2 = x.reshape(-1, n).contiguous()
    r, n_groups, n_words, per_word = x2.shape[0], groups_per_row(n, group_size), words_per_row(n, bits), 32 // bits
    zero = torch.empty(r, n_groups, dtype=scale_dtype, device=x.device)
    scale = torch.empty_like(zero)
    codes = torch.empty(r, n_words, dtype=torch.int32, device=x.device)
    qmax = float(2**bits - 1)
    if r:
        with _launch_guard(x):
            _minmax_kernel[(triton.cdiv(r, BLOCK_R), n_groups)](
                x2, zero, scale, r, n, n_groups, qmax, GROUP=group_size,
                BLOCK_G=triton.next_power_of_2(group_size), BLOCK_R=BLOCK_R, OUT_DTYPE=_TL_DTYPES[scale_dtype])
            _quantize_pack_kernel[(triton.cdiv(r, BLOCK_R), triton.cdiv(n_words, BLOCK_N))](
                x2, zero, scale, codes, r, n, n_groups, n_words, qmax, GROUP=group_size, BITS=bits,
                PER_WORD=per_word, BLOCK_R=BLOCK_R, BLOCK_W=BLOCK_N)
    return QuantizedTensor(codes.reshape(*lead, n_words), scale.reshape(*lead, n_groups),
                           zero.reshape(*lead, n_groups), n, bits, group_size)


def dequantize(q: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    if dtype not in _TL_DTYPES:
        raise ValueError(f"kv_quant: dtype must be one of {list(_TL_DTYPES)}, got {dtype}")
    lead, n = q.codes.shape[:-1], q.length
    codes = q.codes.reshape(-1, q.codes.shape[-1]).contiguous()
    r, n_words = codes.shape
    n_groups = q.scale.shape[-1]
    out = torch.empty(r, n, dtype=dtype, device=codes.device)
    if r:
        with _launch_guard(codes):
            _dequantize_kernel[(triton.cdiv(r, BLOCK_R), triton.cdiv(n, BLOCK_N))](
                codes, q.zero.reshape(r, n_groups).contiguous(), q.scale.reshape(r, n_groups).contiguous(), out,
                r, n, n_groups, n_words, GROUP=q.group_size, BITS=q.bits, PER_WORD=32 // q.bits, BLOCK_R=BLOCK_R,
                BLOCK_N=BLOCK_N, OUT_DTYPE=_TL_DTYPES[dtype])
    return out.reshape(*lead, n)


kv_quant = KVQuantizer("triton", quantize, dequantize)
