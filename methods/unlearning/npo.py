"""Negative Preference Optimization: From Catastrophic Collapse to Effective Unlearning
(Zhang, Lin, Bai, Mei; arXiv:2404.05868), with the baselines it compares against.

Objectives (NLL = −log π(answer | question), summed over the answer tokens; methods/unlearning/losses.py):
    ga         L = −E_forget[NLL_θ]                                      gradient ascent
    grad_diff  L = −E_forget[NLL_θ] + λ·CE_retain                         gradient difference
    npo        L = −(2/β)·E_forget[log σ(β·(NLL_θ − NLL_ref))]            eq. (3)
    npo_rt     L = npo + λ·CE_retain                                      NPO + retain CE (code: npo_grad_diff)
    npo_kl     L = npo + λ·KL(π_ref ‖ π_θ) on the retain rows' real tokens NPO + retain KL (code: npo_KL)
CE_retain = Σ_batch NLL_θ(retain answer) / Σ_batch |a|: the NLL per answer token over the whole retain batch, the
code's `outputs.loss` (`losses.token_mean_nll`; not the mean of per-sequence means, which weights the tokens of
short answers more).
π_ref is the model before unlearning (a frozen copy, UnlearningModule.reference). At θ = ref ∇L_npo = ∇L_ga
(sec. 3): NPO is GA reweighted per sequence by W = 2π_θ^β/(π_θ^β + π_ref^β), which vanishes as the forget
answers become unlikely, so NPO slows down where GA runs away ("catastrophic collapse").

From the paper/code (licong-lin/negative-preference-optimization, config/forget.yaml): β = 0.1, retain
coefficient λ = 1.0, AdamW with betas (0.9, 0.999) (Hugging Face defaults) and weight decay 0.01, the forget
NLL summed per sequence (NPO's analysis) and the retain CE as the Hugging Face token-mean loss (the code's
`outputs.loss`). Deviation: npo_kl's KL(π_ref ‖ π_θ) is averaged over the positions that predict a real token of
the retain rows (question and answer, up to the answer's EOS); the code's `kl_div(..., reduction="batchmean")`
over the flattened (B·T, V) logits averages over every position of the padded batch, padding included, so the
weight of the real tokens would depend on how much padding the batch has. Here GA and grad_diff also use the
summed forget NLL (the code's GA uses the token mean), so that GA and NPO take the same first step and their
curves compare at one learning rate. Tuned for this CPU
scale (the paper fine-tunes Llama-2-7B at lr 1e-5 for 10 epochs, one warm-up epoch): lr 1e-4, 10 warm-up
steps, constant after warm-up (min_lr_ratio 1.0). β2 = 0.999 matters: with β2 = 0.95 (and clipping at 1),
Adam's short second-moment memory rescaled the shrinking NPO gradient back up and NPO ran as fast as GA in a
30-author probe. experiment=unlearn also turns gradient clipping off (the summed-NLL gradients have norms of
10-500 here; clipping them to 1 flattens NPO's weights too).
"""

from __future__ import annotations

import torch

from methods.base import Method
from methods.unlearning import losses
from methods.unlearning.module import UnlearningModule, real_token_mask

OBJECTIVES = ("ga", "grad_diff", "npo", "npo_rt", "npo_kl")


class Unlearning(Method):
    """GA, gradient difference and the NPO family on forget/retain pair batches (runner/qa.py)."""

    module_class = UnlearningModule
    needs_task = frozenset({"forget-retain"})  # forget/retain pair batches (tasks/qa.py)
    needs_model = frozenset({"causal-lm"})
    supports_fsdp = False  # the frozen reference is a second whole copy of the model

    def __init__(self, name: str = "npo", objective: str = "npo", beta: float = losses.NPO_BETA,
                 retain_weight: float = losses.NPO_RETAIN_WEIGHT, lr: float = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01,
                 warmup_steps: int = 10, min_lr_ratio: float = 1.0):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        if objective not in OBJECTIVES:
            raise ValueError(f"method.objective: {objective!r} is not valid; choose one of {', '.join(OBJECTIVES)}")
        if beta <= 0:
            raise ValueError(f"method.beta: {beta} must be > 0 (NPO divides by it)")
        if retain_weight < 0:
            raise ValueError(f"method.retain_weight: {retain_weight} must be >= 0")
        self.objective, self.beta, self.retain_weight = objective, float(beta), float(retain_weight)

    @property
    def needs_trained_model(self) -> bool:
        return True

    @property
    def needs_reference(self) -> bool:
        return self.objective.startswith("npo")

    def unlearning_loss(self, module: UnlearningModule, forget_ids: torch.Tensor, forget_mask: torch.Tensor,
                        retain_ids: torch.Tensor, retain_mask: torch.Tensor) -> torch.Tensor:
        forget_nll = module.answer_nll(module.logits(forget_ids), forget_ids, forget_mask, reduction="sum")
        if self.objective == "ga":
            return losses.ga_loss(forget_nll)
        if self.objective == "grad_diff":
            retain_ce = losses.token_mean_nll(module.logits(retain_ids), retain_ids, retain_mask)
            return losses.grad_diff_loss(forget_nll, retain_ce, self.retain_weight)
        reference_nll = module.answer_nll(module.reference_logits(forget_ids), forget_ids, forget_mask, reduction="sum")
        if self.objective == "npo":
            return losses.npo_loss(forget_nll, reference_nll, self.beta)
        if self.objective == "npo_rt":
            retain_ce = losses.token_mean_nll(module.logits(retain_ids), retain_ids, retain_mask)
            return losses.npo_rt_loss(forget_nll, reference_nll, retain_ce, self.beta, self.retain_weight)
        # npo_kl: KL(π_ref ‖ π_θ) at every position that predicts a real (non-padding) token; the code's
        # batchmean also counts the padding positions (a deviation, see the module docstring)
        predicts_real = real_token_mask(retain_mask)[:, 1:]
        return losses.npo_kl_loss(forget_nll, reference_nll, module.logits(retain_ids)[:, :-1],
                                  module.reference_logits(retain_ids)[:, :-1], predicts_real,
                                  self.beta, self.retain_weight)
