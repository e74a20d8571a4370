"""Cut Your Losses in Large-Vocabulary Language Models (Wijmans et al., 2024): the linear cross-entropy
without the (tokens x vocabulary) logit matrix.

For hidden states e_i (D), the classifier C (V x D), an optional bias b and target y_i:

    z_ij = e_i . c_j + b_j              (optionally soft-capped: z <- s * tanh(z / s))
    loss_i = LSE_j(z_ij) - z_{i,y_i}

Backends (all take the same arguments and agree to fp32 rounding):

- `naive`: z = e @ C^T, then `F.cross_entropy`; materialises N x V (the baseline).
- `reference`: plain torch, chunked over the vocabulary with an online log-sum-exp; a custom backward
  recomputes each logit chunk. Holds N x chunk, never N x V. Runs anywhere; what `hardware=cpu` uses.
- `triton`: the CCE kernels. The forward keeps logit tiles on chip and writes only the log-sum-exp and
  the target logit per token; the backward recomputes the tiles, skips those whose every
  |softmax - onehot| < filter_eps (gradient filtering) and visits the vocabulary sorted by average logit.
  fp32 accumulation. Needs CUDA, or `TRITON_INTERPRET=1` on the CPU (tests only).

Arguments follow apple/ml-cross-entropy's `linear_cross_entropy`:

- `shift=k` pairs e[..., t, :] with targets[..., t + k] (k=1: causal LM on unshifted labels, no copy);
- `ignore_index` targets contribute nothing; "mean" averages over the tokens that count;
- `reduction="none"` returns targets.shape with the last axis shortened by `shift`, 0 at ignored tokens;
- `return_lse=True` also returns the per-token log-sum-exp (same shape, 0 at ignored tokens; it is
  differentiable, e.g. for a z-loss);
- `filter_eps`: "auto" = finfo(dtype).eps / 32, a float, or None / 0 for no filtering; used by `triton`
  only (the other backends are exact).

The loss is float32 whatever the input dtype. Under autocast, e, c and bias are cast to the autocast dtype
first (as a matmul would be).
"""

from __future__ import annotations

import torch

BACKENDS = ("naive", "reference", "triton")
REDUCTIONS = ("mean", "sum", "none")


def linear_cross_entropy(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor, *,
                         bias: torch.Tensor | None = None, ignore_index: int = -100,
                         softcap: float | None = None, reduction: str = "mean", shift: bool | int = 0,
                         return_lse: bool = False, filter_eps: float | str | None = "auto",
                         backend: str = "reference") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """e (..., D) hidden states, c (V, D) classifier, targets (...) -> the cross-entropy of e @ c.T (+ bias)."""
    shift = _check(e, c, targets, bias, softcap, reduction, shift, backend)
    if backend == "naive":
        from .naive import naive_cross_entropy

        return naive_cross_entropy(e, c, targets, bias=bias, ignore_index=ignore_index, softcap=softcap,
                                   reduction=reduction, shift=shift, return_lse=return_lse)

    e, c, bias = _autocast_inputs(e, c, bias)
    e2d = e.reshape(-1, e.shape[-1])
    if not e2d.is_contiguous():
        e2d = e2d.contiguous()
    out_shape, keep, rows, tgt = _select_tokens(targets, ignore_index, shift)
    if tgt.device.type == "cpu" and tgt.numel() and (int(tgt.min()) < 0 or int(tgt.max()) >= c.shape[0]):
        raise IndexError(f"linear_cross_entropy: targets must lie in [0, {c.shape[0]}) or equal "
                         f"ignore_index={ignore_index}")
    eps = _filter_eps(filter_eps, e.dtype)
    with torch.autocast(e.device.type, enabled=False):
        if backend == "reference":
            from .reference import chunked_nll_and_lse

            nll, lse = chunked_nll_and_lse(e2d if rows is None else e2d[rows], c, bias, tgt, softcap)
        else:
            from .triton import cce_nll_and_lse

            nll, lse = cce_nll_and_lse(e2d, rows, c, bias, tgt, softcap, eps)

    if reduction == "mean":
        loss = nll.mean()
    elif reduction == "sum":
        loss = nll.sum()
    else:
        loss = _scatter(nll, keep, out_shape)
    return (loss, _scatter(lse, keep, out_shape)) if return_lse else loss


def backend_function(backend: str):
    """`linear_cross_entropy` with the backend fixed (what each backend module exports to the registry)."""

    def fn(e, c, targets, **options):
        return linear_cross_entropy(e, c, targets, backend=backend, **options)

    fn.__name__ = fn.__qualname__ = f"linear_cross_entropy[{backend}]"
    return fn


# ------------------------------------------------------------------------------------------------ helpers
def _check(e, c, targets, bias, softcap, reduction, shift, backend) -> int:
    if backend not in BACKENDS:
        raise KeyError(f"linear_cross_entropy: unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"linear_cross_entropy: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if c.ndim != 2 or e.shape[-1] != c.shape[1]:
        raise ValueError(f"linear_cross_entropy: e (..., D) and c (V, D) disagree: {tuple(e.shape)} vs {tuple(c.shape)}")
    if targets.ndim < 1 or e.shape[:-1] != targets.shape:
        raise ValueError(f"linear_cross_entropy: targets {tuple(targets.shape)} must match e's leading dims "
                         f"{tuple(e.shape[:-1])}")
    if bias is not None and tuple(bias.shape) != (c.shape[0],):
        raise ValueError(f"linear_cross_entropy: bias must have shape ({c.shape[0]},), got {tuple(bias.shape)}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"linear_cross_entropy: softcap must be positive or None, got {softcap}")
    shift = int(shift)
    if not 0 <= shift < targets.shape[-1]:
        raise ValueError(f"linear_cross_entropy: shift must lie in [0, {targets.shape[-1]}), got {shift}")
    return shift


def _autocast_inputs(e, c, bias):
    dev = e.device.type
    if torch.is_autocast_enabled(dev):
        dtype = torch.get_autocast_dtype(dev)
    else:
        dtype = torch.promote_types(e.dtype, c.dtype)
    e, c = e.to(dtype), c.to(dtype)
    if bias is not None:
        bias = bias.to(dtype)
    return e, c if c.is_contiguous() else c.contiguous(), bias


def _select_tokens(targets: torch.Tensor, ignore_index: int, shift: int):
    """The tokens that count: (output shape, their positions in it or None for all, their rows in the
    flattened e or None for all, their targets)."""
    T = targets.shape[-1]
    out_shape = (*targets.shape[:-1], T - shift)
    if shift:
        lead = targets.numel() // T
        all_rows = (torch.arange(lead, device=targets.device)[:, None] * T
                    + torch.arange(T - shift, device=targets.device)[None, :]).reshape(-1)
        all_tgt = targets.reshape(lead, T)[:, shift:].reshape(-1)
    else:
        all_rows, all_tgt = None, targets.reshape(-1)
    valid = all_tgt != ignore_index
    if bool(valid.all()):
        return out_shape, None, all_rows, all_tgt
    keep = valid.nonzero().squeeze(1)
    rows = keep if all_rows is None else all_rows[keep]
    return out_shape, keep, rows, all_tgt[keep]


def _scatter(values: torch.Tensor, keep: torch.Tensor | None, shape) -> torch.Tensor:
    if keep is None:
        return values.reshape(shape)
    full = values.new_zeros(torch.Size(shape).numel())
    return full.index_put((keep,), values).reshape(shape)


def _filter_eps(filter_eps, dtype: torch.dtype) -> float | None:
    if filter_eps is None:
        return None
    if filter_eps == "auto":
        return torch.finfo(dtype).eps / 32
    if isinstance(filter_eps, str):
        raise ValueError(f"linear_cross_entropy: filter_eps must be 'auto', a number or None, got {filter_eps!r}")
    return float(filter_eps) if filter_eps > 0 else None

