"""Upsample or Upweight? Balanced Training on Heavily Imbalanced Datasets (Li, Xu, Tan, Murray, Khashabi;
arXiv:2410.04579, NAACL 2025): Temperature Sampling, Scalarization and Cooldown on a multi-domain mixture.

Domains k with n_k training blocks, natural distribution q_k = n_k / Σ_j n_j, and

    p_k(τ) = q_k^{1/τ} / Σ_j q_j^{1/τ}                 τ = 1: q;  τ → ∞: uniform

    temperature_sampling (upsample):  each example's domain is drawn from p(τ), then a block of it uniformly;
                                      plain cross-entropy.
    scalarization (upweight):         examples are drawn from q; the loss of an example of domain k is
                                      weighted by w_k = p_k(τ) / q_k:
                                          L = (1/B) Σ_b w_{k(b)} ℓ_b       (ℓ_b: the mean token loss of example b)
                                      Normalised by the batch size B, not by Σ_b w: E_q[L] = Σ_k p_k(τ) E_k[ℓ],
                                      the objective temperature sampling estimates, so the two have the same
                                      expected (full) gradient, which is the paper's equivalence (its Sec. 3);
                                      only the variance differs (scalarization's is higher).
    cooldown:                         temperature sampling with τ piecewise constant in the optimizer step:
                                      taus[i] from switch_steps[i-1] on; the paper starts with a high τ (fast
                                      convergence) and lowers it later (no over-fitting of the small domains).

Domains with `sample: false` (target sets) keep probability 0 in all three. Defaults: τ = 5 (the usual
multilingual setting the paper compares against); Cooldown τ 5 → 1 at half of training (the catalog's smoke
setting; the paper's exact switch points are not taken from its text). The current τ and p (and w) per
domain go to the logger as mix/tau, mix/p/<domain> (mix/w/<domain>) at logging steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from methods.base import Method
from methods.data.mixing import CooldownSchedule, temperature_probs


def mixture_probs(sizes: Sequence[float], sampled: Sequence[bool], tau: float) -> np.ndarray:
    """p(τ) over the domains that are sampled and have data; 0 for the others."""
    sizes = np.asarray(sizes, dtype=np.float64)
    live = np.asarray(sampled, dtype=bool) & (sizes > 0)
    p = np.zeros(len(sizes))
    p[live] = temperature_probs(sizes[live], tau)
    return p


class TemperatureSampling(Method):
    """Upsampling: domains drawn from p(τ) (a constant τ)."""

    needs_task = frozenset({"domains"})  # domain-labelled batches (tasks/mixture.py)
    needs_model = frozenset({"causal-lm"})

    def __init__(self, name: str = "temperature_sampling", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 tau: float = 5.0):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        if not float(tau) > 0:
            raise ValueError(f"method.tau: the temperature must be > 0, got {tau}")
        self.tau_value = float(tau)
        self.domain_names: list[str] = []
        self.sizes = np.zeros(0)
        self.sampled: list[bool] = []

    def tau(self, step: int) -> float:
        return self.tau_value

    def probs(self, step: int) -> np.ndarray:
        """p(τ(step)) over all domains: what the sampler draws from."""
        return mixture_probs(self.sizes, self.sampled, self.tau(step))

    def prepare_data(self, data: Any) -> Any:
        self.domain_names, self.sizes, self.sampled = list(data.domains), np.asarray(data.sizes), list(data.sampled)
        data.set_sampling(self.probs)
        return data

    def log_mixture(self, module, extra: dict[str, np.ndarray] | None = None) -> None:
        if not module._logging_step():
            return
        step = int(module.global_step)
        module.log("mix/tau", float(self.tau(step)), on_step=True, on_epoch=False)
        rows = {"p": self.probs(step), **(extra or {})}
        for label, values in rows.items():
            for name, v in zip(self.domain_names, values):
                module.log(f"mix/{label}/{name}", float(v), on_step=True, on_epoch=False)

    def loss(self, module, batch: torch.Tensor) -> torch.Tensor:
        self.log_mixture(module)
        return module.lm_loss(batch)


class Scalarization(TemperatureSampling):
    """Upweighting: domains drawn from the natural q, each example's loss weighted by w_k = p_k(τ) / q_k."""

    def __init__(self, name: str = "scalarization", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 tau: float = 5.0):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio, tau)

    def natural(self) -> np.ndarray:
        return mixture_probs(self.sizes, self.sampled, 1.0)

    def weights(self, step: int) -> np.ndarray:
        """w_k = p_k(τ) / q_k per domain (0 for domains never drawn)."""
        q, p = self.natural(), self.probs(step)
        return np.divide(p, q, out=np.zeros_like(p), where=q > 0)

    def prepare_data(self, data: Any) -> Any:
        self.domain_names, self.sizes, self.sampled = list(data.domains), np.asarray(data.sizes), list(data.sampled)
        data.set_sampling(lambda step: self.natural())
        return data

    def example_weights(self, module, like: torch.Tensor) -> torch.Tensor:
        """w_{k(b)} for every example b of the batch (module.batch_domains), as `like`'s dtype and device."""
        if module.batch_domains is None:
            raise ValueError("method.name: scalarization needs domain-labelled batches (a task that provides domains: dataset=mixture-*)")
        w = torch.as_tensor(self.weights(int(module.global_step)), dtype=like.dtype, device=like.device)
        return w[module.batch_domains.to(like.device)]

    def loss(self, module, batch: torch.Tensor) -> torch.Tensor:
        self.log_mixture(module, {"w": self.weights(int(module.global_step))})
        per_token = module.lm_loss(batch, reduction="none")  # (B, T)
        per_example = per_token.float().mean(dim=1) if per_token.dtype in (torch.float16, torch.bfloat16) \
            else per_token.mean(dim=1)
        return (self.example_weights(module, per_example) * per_example).sum() / len(per_example)


class Cooldown(TemperatureSampling):
    """Temperature sampling with τ lowered on a schedule: taus[i] from switch_steps[i-1] on. A switch given as a
    float ≤ 1 is a fraction of trainer.max_steps (known once the data is bound to the run); an int is a step."""

    def __init__(self, name: str = "cooldown", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 taus: list[float] = (5.0, 1.0), switch_steps: list[float] = (0.5,)):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio, tau=float(list(taus)[0]))
        self.taus, self.switches = [float(t) for t in taus], list(switch_steps)
        problems = []
        if len(self.switches) != len(self.taus) - 1:
            problems.append(f"method.switch_steps: needs len(method.taus) - 1 = {len(self.taus) - 1} entries, "
                            f"got {len(self.switches)}")
        if any(not t > 0 for t in self.taus):
            problems.append(f"method.taus: every temperature must be > 0, got {self.taus}")
        if any(isinstance(s, bool) or not isinstance(s, (int, float)) or s < 0 for s in self.switches):
            problems.append(f"method.switch_steps: steps (ints) or fractions of trainer.max_steps (floats ≤ 1), "
                            f"got {self.switches}")
        if problems:
            raise ValueError("; ".join(problems))
        self.schedule: CooldownSchedule | None = None
        if not any(self._is_fraction(s) for s in self.switches):
            self.schedule = CooldownSchedule(self.taus, [int(s) for s in self.switches])

    @staticmethod
    def _is_fraction(s: float) -> bool:
        return isinstance(s, float) and s <= 1.0

    def resolve(self, max_steps: int | None) -> CooldownSchedule:
        """The schedule in optimizer steps (fractions of max_steps rounded to the nearest step)."""
        if any(self._is_fraction(s) for s in self.switches) and not max_steps:
            raise ValueError("method.switch_steps: fractions of training need trainer.max_steps; give steps instead")
        steps = [int(round(s * max_steps)) if self._is_fraction(s) else int(s) for s in self.switches]
        return CooldownSchedule(self.taus, steps)

    def prepare_data(self, data: Any) -> Any:
        self.schedule = self.resolve(getattr(data, "max_steps", None))
        return super().prepare_data(data)

    def tau(self, step: int) -> float:
        if self.schedule is None:
            raise RuntimeError("cooldown: the schedule has fractions of training; call prepare_data first")
        return self.schedule.tau(step)
