"""InfoNCE over in-batch, hard and memory-bank negatives (van den Oord et al. 2018; DPR, Karpukhin et al. 2020;
the memory bank of Wu et al. 2018 / MoCo's queue, He et al. 2020), and the all-gather that makes the in-batch
negatives those of the global batch under DDP.

For query i with positive p_i, its hard negatives h_i1..h_iH and the bank's vectors b_1..b_N:

    s_ij = q_i·p_j / τ  (j over the B' in-batch passages: p_i and B'−1 negatives)
    t_ih = q_i·h_ih / τ,   u_in = q_i·b_n / τ
    loss_i = −log  exp(s_ii) / (Σ_j exp(s_ij) + Σ_h exp(t_ih) + Σ_n exp(u_in))

mean over queries (or Σ w_i loss_i / Σ w_i with per-query weights: PEG's re-weighting). The bank holds detached
passage vectors of earlier steps (no gradient reaches them) with their corpus rows: a bank copy of query i's own
positive, and an in-batch passage that is also query i's positive, are masked out of its negatives.

Under DDP, `gather` concatenates every rank's vectors (this rank's first, so that local query i's positive stays
at row i) with torch.distributed.nn's all_gather, whose backward returns to each rank the gradient of every rank's
loss with respect to its own vectors. With DDP's gradient averaging, W ranks of B/W queries each then compute the
gradient of the single-process loss over the global batch of B (tests/methods/test_retrieval_losses.py, 2 gloo ranks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

REDUCTIONS = ("mean", "sum", "none")


def world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's x along dim 0, this rank's first, with gradient; x itself when there is one process."""
    if world_size() == 1:
        return x
    import torch.distributed as dist
    import torch.distributed.nn.functional as dist_fn

    parts = list(dist_fn.all_gather(x.contiguous()))
    rank = dist.get_rank()
    return torch.cat([x, *parts[:rank], *parts[rank + 1:]], 0)


def contrastive_logits(q: torch.Tensor, p: torch.Tensor, hard: torch.Tensor | None = None,
                       bank: torch.Tensor | None = None, temperature: float = 0.05,
                       p_rows: torch.Tensor | None = None, bank_rows: torch.Tensor | None = None) -> torch.Tensor:
    """(B, B' + H + N) logits [q·pᵀ | q_i·hard_iᵀ | q·bankᵀ] / τ (see the module docstring). `p_rows` (B',): the
    passages' corpus rows; an in-batch passage that is the same passage as query i's positive is masked out of
    query i's negatives (two queries of one passage in a batch are not each other's negatives), and so is a bank
    vector of that passage (`bank_rows` (N,): an earlier step's copy of query i's own positive)."""
    if p.shape[0] < q.shape[0]:
        raise ValueError(f"info_nce: {q.shape[0]} queries but {p.shape[0]} passages; query i's positive is passage i")
    in_batch = q @ p.T
    if p_rows is not None:
        same = p_rows[: q.shape[0], None] == p_rows[None, :]
        same[torch.arange(q.shape[0]), torch.arange(q.shape[0])] = False
        in_batch = in_batch.masked_fill(same, float("-inf"))
    parts = [in_batch]
    if hard is not None and hard.numel():
        if hard.ndim != 3 or hard.shape[0] != q.shape[0]:
            raise ValueError(f"info_nce: hard negatives must be (B, H, D) for B = {q.shape[0]}, got {tuple(hard.shape)}")
        parts.append(torch.einsum("bd,bhd->bh", q, hard))
    if bank is not None and bank.numel():
        from_bank = q @ bank.detach().T
        if p_rows is not None and bank_rows is not None:
            from_bank = from_bank.masked_fill(p_rows[: q.shape[0], None] == bank_rows[None, :], float("-inf"))
        parts.append(from_bank)
    return torch.cat(parts, 1).float() / float(temperature)


def info_nce(q: torch.Tensor, p: torch.Tensor, hard: torch.Tensor | None = None, bank: torch.Tensor | None = None,
             temperature: float = 0.05, weights: torch.Tensor | None = None, reduction: str = "mean",
             p_rows: torch.Tensor | None = None, bank_rows: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE (module docstring): mean (weighted when `weights` (B,) are given), sum, or (B,) per-query losses."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: {reduction!r}; choose one of: {', '.join(REDUCTIONS)}")
    logits = contrastive_logits(q, p, hard, bank, temperature, p_rows, bank_rows)
    losses = F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device), reduction="none")
    if reduction == "none":
        return losses
    if weights is not None:
        w = weights.to(losses.dtype)
        return (w * losses).sum() if reduction == "sum" else (w * losses).sum() / w.sum().clamp_min(1e-12)
    return losses.sum() if reduction == "sum" else losses.mean()


class MemoryBank(nn.Module):
    """A FIFO of `size` detached vectors (buffers, so that checkpoints hold it and a resumed run sees the same
    negatives). `push` puts the newest batch first (the oldest rows fall out); `negatives()` returns those filled so far."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        if int(size) < 0:
            raise ValueError(f"bank_size: {size}; a number of vectors >= 0")
        self.size = int(size)
        self.register_buffer("vectors", torch.zeros(self.size, int(dim)))
        self.register_buffer("rows", torch.full((self.size,), -1, dtype=torch.long))  # corpus rows (-1: unknown)
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    def negatives(self) -> torch.Tensor:
        """A copy (the loss keeps it for its backward while `push` overwrites the buffer)."""
        return self.vectors[:int(self.filled)].clone()

    def negative_rows(self) -> torch.Tensor:
        """The corpus rows of negatives() (-1 where unknown): a query's own positive is masked out of its bank."""
        return self.rows[:int(self.filled)].clone()

    @torch.no_grad()
    def push(self, x: torch.Tensor, rows: torch.Tensor | None = None) -> None:
        if self.size == 0:
            return
        x = x.detach().to(self.vectors.dtype)[: self.size]  # the newest batch first, in its own order
        r = torch.full((x.shape[0],), -1, dtype=torch.long) if rows is None else rows.detach().long()[: self.size]
        n = x.shape[0]
        self.vectors.copy_(torch.cat([x, self.vectors[: self.size - n]]))
        self.rows.copy_(torch.cat([r.to(self.rows.device), self.rows[: self.size - n]]))
        self.filled.fill_(min(self.size, int(self.filled) + n))
