"""Cut Cross-Entropy (Wijmans et al., 2024) in Triton: the loss and its gradients from E and C without
writing a logit to memory.

Forward, `_lse_forward_kernel`, grid (row blocks x vocabulary splits): each program walks its share of
(BLOCK_B x BLOCK_V) logit tiles, each a `tl.dot` over D with an fp32 accumulator; adds the bias and the
softcap, folds the tile into a running max / sum of exponentials (online log-sum-exp), and picks up the
target logit when the target falls in the tile. It writes one partial LSE and one partial target logit
per (token, split); torch combines the few splits. With gradients and filtering on, it also adds each
tile's column sums into the per-vocabulary average logit.

Backward, `_backward_kernel`, one program per (row block, vocabulary tile), tiles grouped GROUP_B row
blocks at a time: recompute the logit tile, S = exp(z - lse) - onehot(y), and

- gradient filtering: skip the tile when every |S| < filter_eps (default finfo(dtype).eps / 32): its
  contribution is below what the output dtype can hold;
- vocabulary order: tile v covers the vocabulary entries argsort(average logit)[v*BLOCK_V : ...], so the
  many negligible entries fill whole tiles and get skipped;
- G = S * grad (per token; plus exp(z - lse) * grad_lse when the LSE is used), times 1 - (z/s)^2 under
  softcap; dE[rows] += G @ C_tile and dC[tile] += G^T @ E_rows with fp32 `atomic_add`s into fp32
  buffers, cast to the input dtype at the end. dbias from the column sums of G.

Tiles on the GPU: 128 tokens x 128 words x 32 dims, 8 warps, in both kernels (32-wide D steps for the
gradient products). apple/ml-cross-entropy's defaults (forward 256/128/32 with 8 warps; backward
128/128/32 with 64-wide steps and 4 warps) spill registers heavily in these kernels. Under the Triton
interpreter (`TRITON_INTERPRET=1` set before this module is imported; CPU tensors) the tiles are small so
that tiny test shapes cover several tiles and their ragged edges. The kernels avoid `libdevice`
(tanh is written with `tl.sigmoid`) and never call `.to()` on scalar arguments, which the interpreter
cannot run; bf16 is for the GPU only (the interpreter gets bf16 dots wrong).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.cross_entropy.common import backend_function

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"  # read once: @triton.jit decides at import


@dataclass(frozen=True)
class Tiles:
    block_b: int
    block_v: int
    block_d: int
    num_warps: int = 4
    num_stages: int = 2
    block_d_grad: int = 0  # backward: D step of the dE / dC products


# GPU tiles: compiled ahead of time for sm_90 (triton 3.6 and 3.9), these keep register spills small
# (<= 336 bytes of stack per thread) and shared memory within an A100's 164 KiB (fp32 backward: 144 KiB
# at 2 stages; 4 stages would need 208 KiB).
GPU_FORWARD = Tiles(128, 128, 32, num_warps=8, num_stages=3)
GPU_BACKWARD = Tiles(128, 128, 32, num_warps=8, num_stages=4, block_d_grad=32)
GPU_BACKWARD_FP32 = Tiles(128, 128, 32, num_warps=8, num_stages=2, block_d_grad=32)
CPU_FORWARD = Tiles(16, 32, 16)
CPU_BACKWARD = Tiles(16, 32, 16, block_d_grad=16)
GROUP_B = 8


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _logit_tile(E, C, Bias, rows, row_ok, cols, col_ok, D, stride_e, stride_c, softcap,
                HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr,
                BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """z[rows, cols] in fp32: E[rows] @ C[cols]^T (+ bias) (soft-capped)."""
    acc = tl.zeros((BLOCK_B, BLOCK_V), dtype=tl.float32)
    offs_d = tl.arange(0, BLOCK_D)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + offs_d
        e = tl.load(E + rows[:, None] * stride_e + d[None, :], mask=row_ok[:, None] & (d[None, :] < D), other=0.0)
        c = tl.load(C + cols[None, :] * stride_c + d[:, None], mask=col_ok[None, :] & (d[:, None] < D), other=0.0)
        acc = tl.dot(e, c, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(Bias + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_SOFTCAP:
        acc = softcap * _tanh(acc / softcap)
    return acc


@triton.jit
def _lse_forward_kernel(E, Rows, C, Bias, Tgt, LsePart, TgtPart, LogitSum, n, V, D, tiles_per_split,
                        stride_e, stride_c, softcap,
                        HAS_ROWS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                        SUM_LOGITS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr,
                        BLOCK_D: tl.constexpr, DOT_PRECISION: tl.constexpr):
    pid_b = tl.program_id(0)
    split = tl.program_id(1)
    n_splits = tl.num_programs(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = offs_b < n
    if HAS_ROWS:
        rows = tl.load(Rows + offs_b, mask=row_ok, other=0).to(tl.int64)
    else:
        rows = offs_b.to(tl.int64)
    tgt = tl.load(Tgt + offs_b, mask=row_ok, other=-1)

    m = tl.full((BLOCK_B,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_B,), dtype=tl.float32)
    z_tgt = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for i in range(0, tiles_per_split):  # a split's first tile always exists; the last split may run short
        v = split * tiles_per_split + i
        if v * BLOCK_V < V:
            cols = v * BLOCK_V + tl.arange(0, BLOCK_V)
            col_ok = cols < V
            z = _logit_tile(E, C, Bias, rows, row_ok, cols.to(tl.int64), col_ok, D, stride_e, stride_c, softcap,
                            HAS_BIAS, HAS_SOFTCAP, BLOCK_B, BLOCK_V, BLOCK_D, DOT_PRECISION)
            z_tgt += tl.sum(tl.where(tgt[:, None] == cols[None, :], z, 0.0), axis=1)
            if SUM_LOGITS:
                tl.atomic_add(LogitSum + cols, tl.sum(tl.where(row_ok[:, None], z, 0.0), axis=0), mask=col_ok,
                              sem="relaxed")
            z = tl.where(col_ok[None, :], z, float("-inf"))
            m_new = tl.maximum(m, tl.max(z, axis=1))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new[:, None]), axis=1)
            m = m_new
    out = offs_b * n_splits + split
    tl.store(LsePart + out, m + tl.log(s), mask=row_ok)
    tl.store(TgtPart + out, z_tgt, mask=row_ok)


@triton.jit
def _backward_kernel(E, Rows, C, Bias, Tgt, Lse, GradNll, GradLse, Order, dE, dC, dBias, Skipped,
                     n, V, D, stride_e, stride_c, softcap, filter_eps,
                     HAS_ROWS: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
                     HAS_GRAD_LSE: tl.constexpr, HAS_ORDER: tl.constexpr, FILTER: tl.constexpr,
                     COUNT_SKIPPED: tl.constexpr, COMPUTE_DE: tl.constexpr, COMPUTE_DC: tl.constexpr,
                     COMPUTE_DBIAS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_V: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_D_GRAD: tl.constexpr, GROUP: tl.constexpr,
                     DOT_PRECISION: tl.constexpr):
    # grouped order: GROUP row blocks share each vocabulary tile while it is in cache
    pid = tl.program_id(0)
    n_b = tl.cdiv(n, BLOCK_B)
    n_v = tl.cdiv(V, BLOCK_V)
    per_group = GROUP * n_v
    first_b = (pid // per_group) * GROUP
    group_size = tl.minimum(n_b - first_b, GROUP)
    pid_b = first_b + (pid % per_group) % group_size
    pid_v = (pid % per_group) // group_size

    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = offs_b < n
    if HAS_ROWS:
        rows = tl.load(Rows + offs_b, mask=row_ok, other=0).to(tl.int64)
    else:
        rows = offs_b.to(tl.int64)
    pos = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    col_ok = pos < V
    if HAS_ORDER:
        cols = tl.load(Order + pos, mask=col_ok, other=0).to(tl.int64)
    else:
        cols = pos.to(tl.int64)

    z = _logit_tile(E, C, Bias, rows, row_ok, cols, col_ok, D, stride_e, stride_c, softcap,
                    HAS_BIAS, HAS_SOFTCAP, BLOCK_B, BLOCK_V, BLOCK_D, DOT_PRECISION)
    lse = tl.load(Lse + offs_b, mask=row_ok, other=float("inf"))
    tgt = tl.load(Tgt + offs_b, mask=row_ok, other=-1)
    ok = row_ok[:, None] & col_ok[None, :]
    p = tl.where(ok, tl.exp(z - lse[:, None]), 0.0)
    is_tgt = (tgt[:, None] == cols[None, :]) & ok
    keep = True
    if FILTER:
        keep = tl.max(tl.abs(p - tl.where(is_tgt, 1.0, 0.0))) >= filter_eps
        if COUNT_SKIPPED:
            tl.atomic_add(Skipped, tl.where(keep, 0, 1))
    if keep:
        g_nll = tl.load(GradNll + offs_b, mask=row_ok, other=0.0)
        if HAS_GRAD_LSE:
            g_all = g_nll + tl.load(GradLse + offs_b, mask=row_ok, other=0.0)
        else:
            g_all = g_nll
        g = p * g_all[:, None] - tl.where(is_tgt, g_nll[:, None], 0.0)
        if HAS_SOFTCAP:
            u = z / softcap
            g = g * (1.0 - u * u)
        if COMPUTE_DBIAS:
            tl.atomic_add(dBias + cols, tl.sum(g, axis=0), mask=col_ok, sem="relaxed")
        g = g.to(E.dtype.element_ty)
        offs_d = tl.arange(0, BLOCK_D_GRAD)
        for d0 in range(0, D, BLOCK_D_GRAD):
            d = d0 + offs_d
            d_ok = d < D
            if COMPUTE_DE:
                c = tl.load(C + cols[:, None] * stride_c + d[None, :], mask=col_ok[:, None] & d_ok[None, :], other=0.0)
                tl.atomic_add(dE + rows[:, None] * D + d[None, :], tl.dot(g, c, input_precision=DOT_PRECISION),
                              mask=row_ok[:, None] & d_ok[None, :], sem="relaxed")
            if COMPUTE_DC:
                e = tl.load(E + rows[:, None] * stride_e + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
                tl.atomic_add(dC + cols[:, None] * D + d[None, :], tl.dot(tl.trans(g), e, input_precision=DOT_PRECISION),
                              mask=col_ok[:, None] & d_ok[None, :], sem="relaxed")


# --------------------------------------------------------------------------------------------- host side
_tile_counts: list[dict] = []


@contextmanager
def count_skipped_tiles():
    """Count the backward's tiles and the ones gradient filtering skipped (costs an atomic per skip)."""
    counts = {"tiles": 0, "skipped": 0}
    _tile_counts.append(counts)
    try:
        yield counts
    finally:
        _tile_counts.remove(counts)


def _tiles(x: torch.Tensor) -> tuple[Tiles, Tiles]:
    if x.device.type != "cuda":
        return CPU_FORWARD, CPU_BACKWARD
    return GPU_FORWARD, GPU_BACKWARD_FP32 if x.dtype == torch.float32 else GPU_BACKWARD


def _dot_precision(dtype: torch.dtype) -> str:
    return "tf32" if dtype == torch.float32 and torch.get_float32_matmul_precision() == "high" else "ieee"


def _check_device(e: torch.Tensor) -> None:
    if e.device.type != "cuda" and not INTERPRETED:
        raise RuntimeError("cross_entropy/triton needs CUDA tensors (or TRITON_INTERPRET=1 set before "
                           "kernels.cross_entropy.triton is imported, to run the kernels on the CPU)")


def _n_splits(n_row_blocks: int, n_vocab_tiles: int, device: torch.device) -> int:
    """Vocabulary splits of the forward grid: enough programs to fill the GPU (4 per SM)."""
    if device.type == "cuda":
        want = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        want = 2
    return max(1, min(n_vocab_tiles, triton.cdiv(want, n_row_blocks)))


def _forward(e2d, rows, c, bias, tgt, softcap, sum_logits: bool):
    n, (V, D) = tgt.numel(), c.shape
    t, _ = _tiles(e2d)
    n_b, n_v = triton.cdiv(n, t.block_b), triton.cdiv(V, t.block_v)
    per_split = triton.cdiv(n_v, _n_splits(n_b, n_v, e2d.device))
    splits = triton.cdiv(n_v, per_split)  # no empty split
    f32 = {"dtype": torch.float32, "device": e2d.device}
    if n == 0:
        return torch.zeros(0, **f32), torch.zeros(0, **f32), None
    lse_part = torch.empty((n, splits), **f32)
    tgt_part = torch.empty((n, splits), **f32)
    logit_sum = torch.zeros(V, **f32) if sum_logits else lse_part
    _lse_forward_kernel[(n_b, splits)](
        e2d, tgt if rows is None else rows, c, tgt if bias is None else bias, tgt, lse_part, tgt_part, logit_sum,
        n, V, D, per_split, e2d.stride(0), c.stride(0), 1.0 if softcap is None else float(softcap),
        HAS_ROWS=rows is not None, HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap is not None,
        SUM_LOGITS=sum_logits, BLOCK_B=t.block_b, BLOCK_V=t.block_v, BLOCK_D=t.block_d,
        DOT_PRECISION=_dot_precision(e2d.dtype), num_warps=t.num_warps, num_stages=t.num_stages)
    lse = torch.logsumexp(lse_part, dim=1) if splits > 1 else lse_part.squeeze(1)
    z_tgt = tgt_part.sum(1)
    return lse, z_tgt, (logit_sum / max(n, 1) if sum_logits else None)


def _backward(e2d, rows, c, bias, tgt, lse, g_nll, g_lse, softcap, filter_eps, order, need_e, need_c, need_b):
    n, (V, D) = tgt.numel(), c.shape
    _, t = _tiles(e2d)
    f32 = {"dtype": torch.float32, "device": e2d.device}
    de = torch.zeros(e2d.shape, **f32) if need_e else None
    dc = torch.zeros((V, D), **f32) if need_c else None
    db = torch.zeros(V, **f32) if need_b else None
    counts = _tile_counts[-1] if _tile_counts else None
    skipped = torch.zeros(1, dtype=torch.int32, device=e2d.device)
    n_tiles = triton.cdiv(n, t.block_b) * triton.cdiv(V, t.block_v)
    if n_tiles and (need_e or need_c or need_b):
        _backward_kernel[(n_tiles,)](
            e2d, tgt if rows is None else rows, c, tgt if bias is None else bias, tgt, lse, g_nll,
            lse if g_lse is None else g_lse, tgt if order is None else order,
            lse if de is None else de, lse if dc is None else dc, lse if db is None else db, skipped,
            n, V, D, e2d.stride(0), c.stride(0), 1.0 if softcap is None else float(softcap),
            0.0 if filter_eps is None else float(filter_eps),
            HAS_ROWS=rows is not None, HAS_BIAS=bias is not None, HAS_SOFTCAP=softcap is not None,
            HAS_GRAD_LSE=g_lse is not None, HAS_ORDER=order is not None, FILTER=filter_eps is not None,
            COUNT_SKIPPED=counts is not None, COMPUTE_DE=need_e, COMPUTE_DC=need_c, COMPUTE_DBIAS=need_b,
            BLOCK_B=t.block_b, BLOCK_V=t.block_v, BLOCK_D=t.block_d, BLOCK_D_GRAD=t.block_d_grad, GROUP=GROUP_B,
            DOT_PRECISION=_dot_precision(e2d.dtype), num_warps=t.num_warps, num_stages=t.num_stages)
    if counts is not None:
        counts["tiles"] += n_tiles
        counts["skipped"] += int(skipped.item())
    return (de.to(e2d.dtype) if need_e else None, dc.to(c.dtype) if need_c else None,
            db.to(bias.dtype) if need_b else None)


class CutCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, e2d, c, bias, rows, tgt, softcap, filter_eps, sort_vocab):
        needs_grad = any(ctx.needs_input_grad[:3])
        lse, z_tgt, logit_avg = _forward(e2d, rows, c, bias, tgt, softcap,
                                         sum_logits=needs_grad and filter_eps is not None and sort_vocab)
        ctx.save_for_backward(e2d, c, bias, rows, tgt, lse, logit_avg)
        ctx.softcap, ctx.filter_eps = softcap, filter_eps
        ctx.set_materialize_grads(False)
        return lse - z_tgt, lse

    @staticmethod
    def backward(ctx, g_nll, g_lse):
        e2d, c, bias, rows, tgt, lse, logit_avg = ctx.saved_tensors
        order = None if logit_avg is None else torch.argsort(logit_avg).to(torch.int32)
        g_nll = torch.zeros_like(lse) if g_nll is None else g_nll.float().contiguous()
        g_lse = None if g_lse is None else g_lse.float().contiguous()
        de, dc, db = _backward(e2d, rows, c, bias, tgt, lse, g_nll, g_lse, ctx.softcap, ctx.filter_eps, order,
                               *ctx.needs_input_grad[:3])
        return de, dc, db, None, None, None, None, None


def cce_nll_and_lse(e2d, rows, c, bias, tgt, softcap, filter_eps, sort_vocab: bool = True):
    """Per-token nll and log-sum-exp (fp32, differentiable) of e2d[rows] (all rows if None) against c."""
    _check_device(e2d)
    if rows is not None:
        rows = rows.contiguous()
    return CutCrossEntropy.apply(e2d, c, bias, rows, tgt.contiguous(), softcap, filter_eps, sort_vocab)


linear_cross_entropy = backend_function("triton", cce_nll_and_lse)
