"""Domain mixing: temperature sampling, scalarization and Cooldown from
"Upsample or Upweight? Balanced Training on Heavily Imbalanced Datasets" (Li et al., arXiv:2410.04579),
and the mixture update of "Dynamic Gradient Alignment for Online Data Mixing" (Fan, Grangier, Ablin,
arXiv:2410.02498).

Temperature sampling / scalarization / Cooldown (domains k with sizes n_k, natural q_k = n_k / Σ n):

    p_k(τ) = q_k^{1/τ} / Σ_j q_j^{1/τ}          τ = 1: natural distribution; τ → ∞: uniform
    upsample:    draw domain k with probability p_k(τ), then an example of it uniformly
    upweight:    draw examples with q (i.e. uniformly), weight the loss of domain k by w_k = p_k(τ) / q_k
                 (same expected gradient as upsampling, more variance)
    Cooldown:    τ piecewise constant in the step: taus[0] before switch_steps[0], taus[1] from there, ...
                 (paper: start with a high τ, lower it late in training; switch points are a setting, e.g.
                 τ 5 → 1 at half of training)

DGA (every T_r steps; ℓ_i: loss of generic domain i, L_spe: loss of the small specific set):

    a_i     = ⟨∇ℓ_i(θ), ∇L_spe(θ)⟩                    (−η·a_i: one-step look-ahead change of L_spe per α_i)
    α̂       = softmax(log α + η_α · a)                exponentiated-gradient (mirror) step on the simplex
    α_new   = β · α + (1 − β) · α̂                      EMA stabilisation; β = 0 is the plain update

The EMA combination form and default β are unverified against the paper's text (the catalog notes this);
β = 0 gives exactly softmax(log α + η⟨g_i, g_spe⟩). `normalize` optionally divides every gradient by its
norm first (cosine alignment), off by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def natural_probs(sizes: Sequence[float]) -> np.ndarray:
    """q_k = n_k / Σ n."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if sizes.ndim != 1 or len(sizes) == 0 or (sizes <= 0).any():
        raise ValueError(f"domain sizes must be a non-empty list of positive numbers, got {sizes.tolist()}")
    return sizes / sizes.sum()


def temperature_probs(sizes: Sequence[float], tau: float) -> np.ndarray:
    """p_k(τ) ∝ q_k^{1/τ}, computed in log space (stable for large τ and tiny q)."""
    if not tau > 0:
        raise ValueError(f"temperature tau={tau} must be > 0")
    logits = np.log(natural_probs(sizes)) / tau
    logits -= logits.max()
    p = np.exp(logits)
    return p / p.sum()


def scalarization_weights(sizes: Sequence[float], tau: float) -> np.ndarray:
    """Upweighting: per-domain loss weights w_k = p_k(τ) / q_k for examples drawn with q."""
    return temperature_probs(sizes, tau) / natural_probs(sizes)


class CooldownSchedule:
    """τ(step): taus[i] for switch_steps[i-1] <= step < switch_steps[i] (piecewise constant)."""

    def __init__(self, taus: Sequence[float] = (5.0, 1.0), switch_steps: Sequence[int] = (0,)):
        taus, switch_steps = list(taus), list(switch_steps)
        if len(switch_steps) != len(taus) - 1:
            raise ValueError(f"cooldown: switch_steps needs len(taus) - 1 = {len(taus) - 1} entries, "
                             f"got {len(switch_steps)}")
        if any(not t > 0 for t in taus):
            raise ValueError(f"cooldown: every tau must be > 0, got {taus}")
        if sorted(switch_steps) != switch_steps:
            raise ValueError(f"cooldown: switch_steps must be increasing, got {switch_steps}")
        self.taus, self.switch_steps = taus, switch_steps

    def tau(self, step: int) -> float:
        return self.taus[int(np.searchsorted(self.switch_steps, step, side="right"))]


def dga_update(alpha: torch.Tensor, domain_grads: torch.Tensor, specific_grad: torch.Tensor,
               lr: float = 1.0, beta: float = 0.0, normalize: bool = False) -> torch.Tensor:
    """One DGA mixture update. alpha: (k,) on the simplex; domain_grads: (k, d) flattened ∇ℓ_i;
    specific_grad: (d,) flattened ∇L_spe. Returns the new (k,) mixture."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"dga: ema beta={beta} must be in [0, 1)")
    if domain_grads.shape != (alpha.shape[0], specific_grad.shape[0]):
        raise ValueError(f"dga: domain_grads must have shape (k={alpha.shape[0]}, d={specific_grad.shape[0]}), "
                         f"got {tuple(domain_grads.shape)}")
    g, g_spe = domain_grads, specific_grad
    if normalize:
        g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
        g_spe = g_spe / g_spe.norm().clamp_min(1e-12)
    alignment = g @ g_spe
    alpha_hat = torch.softmax(torch.log(alpha) + lr * alignment, dim=0)
    return beta * alpha + (1.0 - beta) * alpha_hat
