"""What the cross-entropy backends share: the argument checks and, for the fused backends (reference,
triton), the pipeline around their core (autocast, token selection, reduction).

The backend modules import this module only, never the package: the package's `linear_cross_entropy`
dispatches to them, so importing it back would make a cycle.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

BACKENDS = ("naive", "reference", "triton")
REDUCTIONS = ("mean", "sum", "none")

# (e2d, rows or None for all, c, bias, targets of those rows, softcap, filter_eps) -> (nll, lse), fp32
NllAndLse = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def check_arguments(e, c, targets, bias, softcap, reduction, shift) -> int:
    """Raise on arguments no backend accepts; the shift as an int."""
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


def backend_function(backend: str, nll_and_lse: NllAndLse) -> Callable:
    """`linear_cross_entropy` computed by a fused backend's core (what the backend module exports to the
    registry): checks, autocast, the tokens that count, then `nll_and_lse` on them, then the reduction."""

    def fn(e: torch.Tensor, c: torch.Tensor, targets: torch.Tensor, *, bias: torch.Tensor | None = None,
           ignore_index: int = -100, softcap: float | None = None, reduction: str = "mean",
           shift: bool | int = 0, return_lse: bool = False, filter_eps: float | str | None = "auto"):
        shift = check_arguments(e, c, targets, bias, softcap, reduction, shift)
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
            nll, lse = nll_and_lse(e2d, rows, c, bias, tgt, softcap, eps)
        if reduction == "mean":
            loss = nll.mean()
        elif reduction == "sum":
            loss = nll.sum()
        else:
            loss = _scatter(nll, keep, out_shape)
        return (loss, _scatter(lse, keep, out_shape)) if return_lse else loss

    fn.__name__ = fn.__qualname__ = f"linear_cross_entropy[{backend}]"
    return fn


# ------------------------------------------------------------------------------------------------ helpers
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
