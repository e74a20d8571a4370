"""Towards Robust Text Retrieval with Progressive Learning (PEG; Wu, Qin, Zhang, Xu, Gao, Li & Sun, arXiv:2311.11691).

PEG trains a bi-encoder with InfoNCE over a very large negative pool (80,000 in-batch negatives) plus 5 mined hard
negatives per query, and a *progressive learning* mechanism that re-weights the samples over training so that the
model's attention moves between easy and hard ones. Only the abstract was verified; the weighting function and
its schedule below are ours (the paper body and any official code were not available), and so is everything
marked "ours".

    loss_i = −log exp(q_i·p_i/τ) / (Σ_j exp(q_i·p_j/τ) + Σ_h exp(q_i·h_ih/τ) + Σ_n exp(q_i·b_n/τ))
             (B − 1 in-batch negatives gathered across ranks, H = 5 BM25 hard negatives of query i, N bank negatives)
    L = Σ_i w_i loss_i / Σ_i w_i

The progressive weights (ours): with training progress t = step / total steps in [0, 1] and the per-query losses
ℓ_i of the batch (detached: the weights are not differentiated),

    w_i = B · softmax_i(−α(t) · ℓ_i),    α(t) = alpha · (1 − 2t)        (schedule = easy_to_hard)

so at the start (α > 0) the easy queries (low loss) weigh more, at mid-training all weigh the same (plain
InfoNCE), and at the end (α < 0) the hard ones weigh more: a curriculum that first fits the clean, easy pairs and
then turns to the hard ones, the reading of "dynamically modulate its attention to the samples throughout the
entire training process" we chose; schedule = hard_to_easy reverses it (α(t) = −alpha·(1 − 2t)), constant_easy /
constant_hard keep α = ±alpha, uniform (or alpha = 0) is InfoNCE exactly. B·softmax keeps the mean weight 1, so the
loss stays on InfoNCE's scale.

The 80k pool becomes a memory bank (`bank_size`, default 4096: MoCo's queue of earlier passages, no gradient) beside
the in-batch negatives of the global batch (all-gathered under DDP); the 5 hard negatives are mined by BM25 from
the task's corpus in prepare_data (`hard_negatives`, `hard_skip`). Deviations: the bank instead of 80k in-batch
negatives (its vectors come from earlier steps' encoder: stale, as MoCo's are without a momentum encoder); BM25
hard negatives (the paper's miner is not stated in the abstract); the weighting is ours.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from methods.base import Method

SCHEDULES = ("easy_to_hard", "hard_to_easy", "constant_easy", "constant_hard", "uniform")


def alpha_at(schedule: str, alpha: float, progress: float) -> float:
    """α(t) of the schedule at training progress t in [0, 1] (module docstring)."""
    t = min(1.0, max(0.0, float(progress)))
    return {"easy_to_hard": alpha * (1 - 2 * t), "hard_to_easy": -alpha * (1 - 2 * t), "constant_easy": alpha,
            "constant_hard": -alpha, "uniform": 0.0}[schedule]


def progressive_weights(losses: torch.Tensor, schedule: str, alpha: float, progress: float) -> torch.Tensor:
    """w = B · softmax(−α(t) · ℓ) over the batch, detached (mean weight 1; α = 0: all ones)."""
    a = alpha_at(schedule, alpha, progress)
    ell = losses.detach().float()
    if a == 0.0:
        return torch.ones_like(ell)
    return ell.numel() * torch.softmax(-a * ell, dim=0)


class PEG(Method):
    """InfoNCE with a large negative pool, mined hard negatives and progressive sample re-weighting (module docstring)."""

    needs_task = frozenset({"retrieval"})

    def __init__(self, schedule: str = "easy_to_hard", alpha: float = 1.0, bank_size: int = 4096,
                 hard_negatives: int = 5, hard_skip: int = 0, **kwargs):
        super().__init__(**kwargs)
        if schedule not in SCHEDULES:
            raise ValueError(f"method.schedule: {schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        if float(alpha) < 0:
            raise ValueError(f"method.alpha: {alpha}; >= 0 (the schedule sets the sign)")
        for key, v in (("bank_size", bank_size), ("hard_negatives", hard_negatives), ("hard_skip", hard_skip)):
            if int(v) < 0:
                raise ValueError(f"method.{key}: {v}; a count >= 0")
        self.schedule, self.alpha = schedule, float(alpha)
        self.bank_size, self.hard_negatives, self.hard_skip = int(bank_size), int(hard_negatives), int(hard_skip)

    def prepare_data(self, data):
        """The task's data with PEG's hard negatives (BM25-mined) and memory bank."""
        if self.hard_negatives != data.hard_negatives:
            data = data.with_hard_negatives(self.hard_negatives, self.hard_skip)
        return replace(data, bank_size=self.bank_size)

    @staticmethod
    def progress(module) -> float:
        """Training progress t = optimizer steps done / trainer.max_steps (0 outside a trainer)."""
        try:
            total = int(module.trainer.max_steps or 0)
        except RuntimeError:  # not attached to a trainer
            return 0.0
        return module.global_step / total if total > 0 else 0.0

    def loss(self, module, batch) -> torch.Tensor:
        losses = module.contrastive_loss(batch, reduction="none")
        w = progressive_weights(losses, self.schedule, self.alpha, self.progress(module))
        return (w * losses).sum() / w.sum()
