"""The Z-loss: a shift and scale invariant classification loss belonging to the Spherical Family
(de Brébisson & Vincent, arXiv:1604.08859).

For the output scores o = W h + β ∈ R^V of a hidden state h ∈ R^d (W: V×d, bias β optional) and the target c:

    μ = (1/V) Σ_k o_k,    σ² = (1/V) Σ_k o_k² − μ²,    z_c = (o_c − μ) / σ
    L(o, c) = (1/a) · softplus(a · (b − z_c))                                          (the Z-loss)

a > 0 sets the sharpness (large a: a hinge at z_c = b; small a: nearly linear in −z_c), b the offset the
normalised target score has to reach. L is invariant to o -> s·o + t for every s > 0 (log-softmax is
invariant to the shift only), and the output is a score, not a probability: evaluate top-k accuracy.

Spherical family: L depends on o only through (Σ_k o_k, Σ_k o_k², o_c), which follow from d- and d×d-sized
statistics of W, so the V scores are never formed:

    Σ_k o_k  = h·w̄ + Σ_k β_k                       w̄ = Wᵀ1
    Σ_k o_k² = hᵀQh + 2 h·(Wᵀβ) + β·β              Q = WᵀW   (d×d)
    o_c      = w_c·h + β_c

(`z_loss_from_statistics` is the loss as a function of those three numbers.) Then V·σ² = hᵀQh − (h·w̄)²/V
(+ bias terms) = hᵀQ̃h with Q̃ = Q − w̄w̄ᵀ/V = W̃ᵀW̃, W̃ = W − 1w̄ᵀ/V: `z_loss` forms Q̃ from the row-centred
W̃ (the same d×d statistic, without the cancellation of E[o²] − μ² in fp32 once the scores share a large
mean, which nothing in a shift-invariant loss prevents).

Cost: Q̃ once per batch, O(V·d²), then O(d²) per token: O(V·d² + N·d²) for N tokens instead of the
O(N·V·d) of the scores, and no N×V tensor in forward or backward. The paper goes further and keeps Q (and
W = VU, factored) up to date under each SGD step with Sherman–Morrison updates, O(d²) per example
independent of V; that bookkeeping is exact only for plain SGD on W, so with the runner's AdamW W gets its
dense gradient by autograd through Q̃ and w_c (also O(V·d²) per batch).

Defaults: a = 0.1, b = 10. The paper selects (a, b) by a search per task (trading top-1 against top-k) and
has no official code; these values are ours, not checked against the paper's tables (tune them with
method.a / method.b). The shared optimisation settings are the AdamW baseline's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import Method

OBJECTIVES = ("z_loss", "cross_entropy")
VAR_FLOOR = 1e-30  # σ² floor: a constant score vector has no z-score


def z_loss_from_statistics(score_sum: torch.Tensor, square_sum: torch.Tensor, target_score: torch.Tensor,
                           vocab: int, a: float, b: float) -> torch.Tensor:
    """The spherical form: the Z-loss as a function of (Σ_k o_k, Σ_k o_k², o_c) alone."""
    mean = score_sum / vocab
    var = (square_sum / vocab - mean.square()).clamp_min(VAR_FLOOR)
    return F.softplus(a * (b - (target_score - mean) / var.sqrt())) / a


def z_loss_from_scores(scores: torch.Tensor, targets: torch.Tensor, a: float, b: float) -> torch.Tensor:
    """Per-token Z-loss from the scores (..., V) themselves: the naive form (reference, tests)."""
    target_score = scores.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return z_loss_from_statistics(scores.sum(-1), scores.square().sum(-1), target_score, scores.shape[-1], a, b)


def z_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, a: float, b: float,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    """Per-token Z-loss (targets.shape) of the scores hidden @ weight.T (+ bias), without forming them.

    hidden (..., d), weight (V, d), targets (...) in [0, V). Computed in fp32 (fp64 stays fp64), autocast off.
    """
    dtype = torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)
    with torch.autocast(hidden.device.type, enabled=False):
        h = hidden.reshape(-1, hidden.shape[-1]).to(dtype)
        w = weight.to(dtype)
        tgt = targets.reshape(-1)
        V = w.shape[0]
        w_mean = w.mean(0)                                  # w̄ / V
        w_centred = w - w_mean                              # rows w_k − w̄/V
        q_centred = w_centred.T @ w_centred                 # Q̃ = Q − w̄w̄ᵀ/V   (d×d)
        sq = ((h @ q_centred) * h).sum(-1)                  # hᵀQ̃h = V·σ² (no bias)
        centred_target = (h * w_centred[tgt]).sum(-1)       # o_c − μ (no bias)
        if bias is not None:
            beta = bias.to(dtype)
            beta_centred = beta - beta.mean()
            sq = sq + 2 * (h @ (w_centred.T @ beta_centred)) + beta_centred.square().sum()
            centred_target = centred_target + beta_centred[tgt]
        var = (sq / V).clamp_min(VAR_FLOOR)
        z_target = centred_target / var.sqrt()
        loss = F.softplus(a * (b - z_target)) / a
    return loss.reshape(targets.shape)


@torch.no_grad()
def next_token_topk(model: nn.Module, blocks: torch.Tensor, ks: tuple[int, ...], batch_size: int = 8) -> dict[str, float]:
    """Top-k next-token accuracy of `model`'s output scores on (n, T+1) token blocks: {"top1": ..., ...}."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    hits = torch.zeros(len(ks), dtype=torch.float64)
    count = 0
    try:
        for start in range(0, len(blocks), batch_size):
            batch = blocks[start:start + batch_size].to(device)
            scores = model(input_ids=batch[:, :-1]).logits.float()
            ranked = scores.topk(max(ks), dim=-1).indices                     # (B, T, k_max)
            correct = ranked == batch[:, 1:, None]
            for i, k in enumerate(ks):
                hits[i] += correct[..., :k].any(-1).sum().item()
            count += batch[:, 1:].numel()
    finally:
        model.train(was_training)
    return {f"top{k}": float(hits[i] / max(count, 1)) for i, k in enumerate(ks)}


class ZLoss(Method):
    """Train the LM with the spherical Z-loss on the output scores; evaluate top-k next-token accuracy."""

    needs_task = frozenset()
    needs_model = frozenset({"causal-lm"})

    def __init__(self, name: str = "z_loss", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 a: float = 0.1, b: float = 10.0, objective: str = "z_loss", eval_tokens: int = 8192,
                 eval_topk: list[int] = (1, 5)):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        self.a, self.b = float(a), float(b)
        self.objective = objective
        self.eval_tokens = int(eval_tokens)
        self.eval_topk = tuple(int(k) for k in eval_topk)
        problems = []
        if not self.a > 0:
            problems.append(f"a must be > 0, got {a}")
        if objective not in OBJECTIVES:
            problems.append(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
        if self.eval_tokens < 1:
            problems.append(f"eval_tokens must be >= 1, got {eval_tokens}")
        if not self.eval_topk or min(self.eval_topk) < 1:
            problems.append(f"eval_topk must be a non-empty list of integers >= 1, got {list(eval_topk)}")
        if problems:
            raise ValueError("z_loss: " + "; ".join(problems))

    def loss(self, module, batch: torch.Tensor) -> torch.Tensor:
        if self.objective == "cross_entropy":  # the baseline, trained and evaluated the same way
            return module.lm_loss(batch)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        head = module.model.get_output_embeddings()
        return z_loss(module.hidden_states(inputs), head.weight, targets, self.a, self.b,
                      bias=getattr(head, "bias", None)).mean()

    def evaluate(self, model: nn.Module, data) -> dict[str, float]:
        blocks = data.blocks("val")
        n_blocks = max(1, -(-self.eval_tokens // (blocks.shape[1] - 1)))
        out = next_token_topk(model, blocks[:n_blocks], self.eval_topk)
        out["topk_tokens"] = float(min(n_blocks, len(blocks)) * (blocks.shape[1] - 1))
        return out
