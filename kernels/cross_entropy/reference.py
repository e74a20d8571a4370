"""Linear cross-entropy in plain torch, chunked over the vocabulary: never holds the N x V logits.

Forward, for each vocabulary chunk J (N x |J| logits, fp32):

    lse <- logaddexp(lse, LSE_{j in J} z_ij)        (online log-sum-exp, starting at -inf)
    z_target <- z_{i,y_i} when y_i falls in J

and nll = lse - z_target. Only lse (N floats) is kept for backward, which recomputes each chunk:

    G = softmax - onehot = exp(z - lse) * (g_nll + g_lse) - onehot * g_nll   (times 1 - (z/s)^2 under softcap)
    dE += G @ C_J,   dC_J = G^T @ E,   dbias_J = sum_i G

so the largest temporaries are one or two N x chunk fp32 buffers, reused for every chunk. The chunk is
at most V/16 wide (so the buffers stay under 1/20 of the naive backend's three N x V ones) and N x chunk
at most 16M elements (64 MiB), a multiple of 256 between 256 and 8192: wide enough that the chunked
matrix products run about as fast as whole ones. Exact: no gradient filtering. Runs on any device;
`hardware=cpu` uses it.
"""

from __future__ import annotations

import torch

from kernels.cross_entropy.common import backend_function

CHUNK_ELEMENTS = 1 << 24  # at most N x chunk
VOCAB_FRACTION = 16  # chunk <= V / 16
MIN_CHUNK, MAX_CHUNK = 256, 8192


def vocab_chunk(n_tokens: int, vocab: int) -> int:
    """Vocabulary chunk width for n_tokens rows (see the module docstring)."""
    width = min(CHUNK_ELEMENTS // max(n_tokens, 1), vocab // VOCAB_FRACTION) // MIN_CHUNK * MIN_CHUNK
    return min(max(width, MIN_CHUNK), MAX_CHUNK, vocab)


def _logits(x, c, bias, softcap, start, stop, buf) -> torch.Tensor:
    """fp32 logits of the vocabulary slice [start, stop), bias added and soft-capped, written into buf
    (one N x chunk buffer reused for every chunk)."""
    z = buf[:, : stop - start]
    if x.dtype == torch.float32:
        torch.mm(x, c[start:stop].T, out=z)
    else:
        z.copy_(x @ c[start:stop].T)
    if bias is not None:
        z += bias[start:stop].float()
    if softcap is not None:
        z.div_(softcap).tanh_().mul_(softcap)
    return z


def _at_target(tgt, start, stop):
    """(targets inside [start, stop), their column in the chunk, clamped so gather stays in range)."""
    inside = (tgt >= start) & (tgt < stop)
    return inside, (tgt - start).clamp(0, stop - start - 1).unsqueeze(1)


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, c, bias, tgt, softcap):
        n, V = x.shape[0], c.shape[0]
        lse = torch.full((n,), float("-inf"), dtype=torch.float32, device=x.device)
        z_target = torch.zeros(n, dtype=torch.float32, device=x.device)
        chunk = vocab_chunk(n, V)
        buf = torch.empty(n, chunk, dtype=torch.float32, device=x.device)
        for start in range(0, V, chunk):
            stop = min(start + chunk, V)
            z = _logits(x, c, bias, softcap, start, stop, buf)
            inside, col = _at_target(tgt, start, stop)
            z_target += torch.where(inside, z.gather(1, col).squeeze(1), 0.0)
            m = z.amax(dim=1)  # this chunk's log-sum-exp, in place
            lse = torch.logaddexp(lse, z.sub_(m[:, None]).exp_().sum(dim=1).log_().add_(m))
        del buf
        ctx.save_for_backward(x, c, bias, tgt, lse)
        ctx.softcap = softcap
        ctx.set_materialize_grads(False)
        return lse - z_target, lse

    @staticmethod
    def backward(ctx, g_nll, g_lse):
        x, c, bias, tgt, lse = ctx.saved_tensors
        softcap = ctx.softcap
        need_x, need_c, need_b = ctx.needs_input_grad[:3]
        n, D = x.shape
        V = c.shape[0]
        zeros = torch.zeros(n, dtype=torch.float32, device=x.device)
        g_nll = zeros if g_nll is None else g_nll.float()
        g_all = g_nll if g_lse is None else g_nll + g_lse.float()  # multiplies the softmax
        dx = torch.zeros(n, D, dtype=torch.float32, device=x.device) if need_x else None
        dc = torch.empty_like(c) if need_c else None
        db = torch.empty(V, dtype=torch.float32, device=x.device) if need_b else None
        chunk = vocab_chunk(n, V)
        buf = torch.empty(n, chunk, dtype=torch.float32, device=x.device)
        buf2 = torch.empty_like(buf) if softcap is not None else None
        for start in range(0, V, chunk):
            stop = min(start + chunk, V)
            z = _logits(x, c, bias, softcap, start, stop, buf)
            if softcap is None:
                g = z.sub_(lse[:, None])
            else:
                g = torch.sub(z, lse[:, None], out=buf2[:, : stop - start])
            g.exp_().mul_(g_all[:, None])
            inside, col = _at_target(tgt, start, stop)
            g.scatter_add_(1, col, torch.where(inside, -g_nll, 0.0).unsqueeze(1))
            if softcap is not None:  # d(s tanh(u/s))/du = 1 - (z/s)^2
                g.mul_(z.div_(softcap).square_().neg_().add_(1.0))
            if need_b:
                db[start:stop] = g.sum(0)
            g = g.to(x.dtype)
            if need_x:
                if dx.dtype == x.dtype:
                    dx.addmm_(g, c[start:stop])
                else:
                    dx += (g @ c[start:stop]).float()
            if need_c:
                torch.mm(g.T, x, out=dc[start:stop])
        del buf, buf2
        return (dx.to(x.dtype) if need_x else None, dc, db.to(bias.dtype) if need_b else None, None, None)


def chunked_nll_and_lse(x, c, bias, tgt, softcap):
    """Per-token nll and log-sum-exp (fp32, both differentiable) of the rows x (n, D) against c (V, D)."""
    return ChunkedLinearCrossEntropy.apply(x, c, bias, tgt, softcap)


def _rows_nll_and_lse(e2d, rows, c, bias, tgt, softcap, filter_eps):
    """The core `backend_function` calls: the rows that count, chunked (exact: filter_eps is unused)."""
    return chunked_nll_and_lse(e2d if rows is None else e2d[rows], c, bias, tgt, softcap)


linear_cross_entropy = backend_function("reference", _rows_nll_and_lse)
