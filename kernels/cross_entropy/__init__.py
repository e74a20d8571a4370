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

from kernels.cross_entropy.common import BACKENDS, REDUCTIONS, backend_function, check_arguments

__all__ = ["BACKENDS", "REDUCTIONS", "backend_function", "check_arguments", "linear_cross_entropy"]


def linear_cross_entropy(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor, *,
                         bias: torch.Tensor | None = None, ignore_index: int = -100,
                         softcap: float | None = None, reduction: str = "mean", shift: bool | int = 0,
                         return_lse: bool = False, filter_eps: float | str | None = "auto",
                         backend: str = "reference") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """e (..., D) hidden states, c (V, D) classifier, targets (...) -> the cross-entropy of e @ c.T (+ bias)."""
    if backend == "naive":
        from kernels.cross_entropy.naive import linear_cross_entropy as fn
    elif backend == "reference":
        from kernels.cross_entropy.reference import linear_cross_entropy as fn
    elif backend == "triton":
        from kernels.cross_entropy.triton import linear_cross_entropy as fn
    else:
        raise KeyError(f"linear_cross_entropy: unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    return fn(e, c, targets, bias=bias, ignore_index=ignore_index, softcap=softcap, reduction=reduction,
              shift=shift, return_lse=return_lse, filter_eps=filter_eps)
