"""Linear cross-entropy the plain way: logits = e @ c.T, then `F.cross_entropy`.

The baseline every other backend is measured against. It materialises the (tokens x vocabulary) logits,
their fp32 copy and, in backward, their gradient. It shares no code with the other backends (its own
shift, ignore and reduction handling), so the parity tests check those too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.cross_entropy.common import check_arguments


def naive_cross_entropy(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor, *, bias: torch.Tensor | None,
                        ignore_index: int, softcap: float | None, reduction: str, shift: int, return_lse: bool):
    if shift:
        e, targets = e[..., :-shift, :], targets[..., shift:]
    logits = (e @ c.T).float()
    if bias is not None:
        logits = logits + bias.float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    flat, flat_targets = logits.reshape(-1, c.shape[0]), targets.reshape(-1)
    loss = F.cross_entropy(flat, flat_targets, ignore_index=ignore_index, reduction=reduction)
    if reduction == "none":
        loss = loss.reshape(targets.shape)
    if not return_lse:
        return loss
    lse = torch.logsumexp(flat, dim=-1).masked_fill(flat_targets == ignore_index, 0.0)
    return loss, lse.reshape(targets.shape)


def linear_cross_entropy(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor, *,
                         bias: torch.Tensor | None = None, ignore_index: int = -100,
                         softcap: float | None = None, reduction: str = "mean", shift: bool | int = 0,
                         return_lse: bool = False, filter_eps: float | str | None = "auto"):
    """`kernels.cross_entropy.linear_cross_entropy` the naive way (exact: filter_eps is unused)."""
    shift = check_arguments(e, c, targets, bias, softcap, reduction, shift)
    return naive_cross_entropy(e, c, targets, bias=bias, ignore_index=ignore_index, softcap=softcap,
                               reduction=reduction, shift=shift, return_lse=return_lse)


linear_cross_entropy.__name__ = linear_cross_entropy.__qualname__ = "linear_cross_entropy[naive]"
