"""Unlearning objectives as pure functions of per-sequence NLLs and logits.

NPO — "Negative Preference Optimization: From Catastrophic Collapse to Effective Unlearning"
(Zhang, Lin, Bai, Mei; arXiv:2404.05868), eq. (3) and its variants; defaults from the authors' code
(`licong-lin/negative-preference-optimization`, config/forget.yaml):

    L_NPO(θ) = (2/β)·E_forget[ log(1 + (π_θ(y|x) / π_ref(y|x))^β) ]
             = −(2/β)·E_forget[ log σ(β·(NLL_θ − NLL_ref)) ]          NLL = −log π(y|x), summed over answer tokens
    ∇L_NPO  = −E[ W_θ·∇NLL_θ ],  W_θ = 2·π_θ^β / (π_θ^β + π_ref^β) ∈ (0, 2)   (W = 1 at θ = ref)

β = 0.1; npo_rt ("npo_grad_diff" in the code) adds the retain CE, npo_kl adds KL(π_ref ‖ π_θ) on the retain
set, each with coefficient 1.0.

GA and grad_diff follow the TOFU/NPO code convention: loss_GA = −NLL_forget (minimising it ascends the forget
NLL), loss_grad_diff = −NLL_forget + NLL_retain. In those codes NLL is the Hugging Face `outputs.loss`, the
mean over the answer tokens of the batch; the NPO paper's analysis uses the sequence-summed NLL. The
functions below take whatever NLL tensor the caller passes (one entry per sequence) and average it over the
batch, so both conventions are available: `sequence_nll(..., reduction="sum")` gives the paper's,
`reduction="mean"` a per-sequence token mean. With summed NLLs, L_GA = E[log π_θ] and at θ = ref
∇L_NPO = ∇L_GA exactly (the NPO paper, sec. 3). The retain CE of grad_diff and npo_rt is the codes'
`outputs.loss`: `token_mean_nll`, Σ NLL over every answer token of the batch / their number (a 0-d tensor,
which the functions below pass through unchanged), not the mean of per-sequence means (which weights a
short answer's tokens more).

ULD — "Reversing the Forget-Retain Objectives: An Efficient LLM Unlearning Framework from Logit Difference"
(Ji et al.; arXiv:2406.08607), sec. 3 and the authors' code (`UCSB-NLP-Chang/ULD`, contrastllm.py,
forget_losses.py):

    unlearned logits  z = z_target − α·m ⊙ z_assistant,   m = relative-top mask of the target (1 = kept)
    m_v = 1  ⇔  log p_target(v) ≥ min(max_u log p_target(u) + log ρ,  the ⌊ρ·V⌋-th largest log p_target)

so the filter keeps every token within a factor ρ of the most likely one and never fewer than ⌊ρ·V⌋
tokens; elsewhere the assistant's logits are set to 0. Greedy generation (the code's `greedy_search`,
gen_util.py) also sets the tokens outside the set to −1e3 before its argmax (`uld_generation_logits`): only a
token the target finds plausible is generated; the probabilities (every NLL-based metric) use z as it is.
The code writes z = z_target + w·z_assistant with w = −1 by default (α = 1; w = −0.8 at evaluation), ρ = 0.1
by default (1e-2 at evaluation). The assistant is trained on the reversed objectives: L = CE(forget) + 5.0·KL(uniform ‖ p_assistant) on the retain set,
averaged over every position (the code's `kl_div(..., reduction="batchmean")` over flattened positions).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

NPO_BETA = 0.1  # NPO paper / code default
NPO_RETAIN_WEIGHT = 1.0  # NPO code: coefficient of the retain CE (npo_rt) or retain KL (npo_kl)
ULD_ALPHA = 1.0  # ULD code: weight -1 on the assistant's logits (-0.8 at evaluation)
ULD_RELATIVE_TOP = 0.1  # ULD code default ρ (1e-2 at evaluation)
ULD_RETAIN_WEIGHT = 5.0  # ULD config: weight of the retain uniform-KL term
ULD_FILTER_VALUE = -1e3  # ULD code (gen_util.py greedy_search): the score of tokens outside the set when generating


def sequence_nll(logits: torch.Tensor, input_ids: torch.Tensor, answer_mask: torch.Tensor,
                 reduction: str = "sum") -> torch.Tensor:
    """Per-sequence NLL of the answer tokens.

    logits (B, T, V): logits[:, t] predicts input_ids[:, t+1]. answer_mask (B, T) is 1 on the answer tokens
    of input_ids (a token at position 0 cannot be scored). Returns (B,): the sum over the answer tokens
    ("sum") or their mean ("mean", TOFU's length-normalised loss).
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction={reduction!r}: choose 'sum' or 'mean'")
    token_nll = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), input_ids[:, 1:], reduction="none")
    mask = answer_mask[:, 1:].to(token_nll.dtype)
    total = (token_nll * mask).sum(dim=1)
    return total if reduction == "sum" else total / mask.sum(dim=1).clamp_min(1)


def token_mean_nll(logits: torch.Tensor, input_ids: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """0-d: the NLL of every answer token of the batch, summed, over their number: Hugging Face's `outputs.loss`
    with the labels −100 outside the answers (what the TOFU/NPO codes' retain terms are)."""
    total = sequence_nll(logits, input_ids, answer_mask, reduction="sum").sum()
    return total / answer_mask[:, 1:].sum().clamp_min(1).to(total.dtype)


def ga_loss(forget_nll: torch.Tensor) -> torch.Tensor:
    """Gradient ascent: minimise −NLL on the forget set."""
    return -forget_nll.mean()


def grad_diff_loss(forget_nll: torch.Tensor, retain_nll: torch.Tensor, retain_weight: float = 1.0) -> torch.Tensor:
    """Gradient difference: ascend the forget NLL, descend the retain NLL (per sequence, or the 0-d
    `token_mean_nll` as the code's `outputs.loss`)."""
    return -forget_nll.mean() + retain_weight * retain_nll.mean()


def npo_loss(forget_nll: torch.Tensor, reference_nll: torch.Tensor, beta: float = NPO_BETA) -> torch.Tensor:
    """NPO: (2/β)·E[log(1 + (π_θ/π_ref)^β)] = −(2/β)·E[log σ(β·(NLL_θ − NLL_ref))], NLLs summed per sequence."""
    if beta <= 0:
        raise ValueError(f"beta={beta}: NPO needs beta > 0")
    return -F.logsigmoid(beta * (forget_nll - reference_nll)).mean() * 2 / beta


def npo_rt_loss(forget_nll, reference_nll, retain_nll, beta: float = NPO_BETA,
                retain_weight: float = NPO_RETAIN_WEIGHT) -> torch.Tensor:
    """NPO + retain CE (the code's npo_grad_diff; its retain CE is `token_mean_nll`)."""
    return npo_loss(forget_nll, reference_nll, beta) + retain_weight * retain_nll.mean()


def kl_to_reference(logits: torch.Tensor, reference_logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(π_ref ‖ π_θ) per position, averaged over the positions where mask is 1 (all positions by default,
    which is TOFU/NPO's `kl_div(log_softmax(θ), log_softmax(ref), batchmean, log_target=True)` exactly)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    logq = F.log_softmax(reference_logits.float(), dim=-1)
    kl = (logq.exp() * (logq - logp)).sum(-1)
    if mask is None:
        return kl.mean()
    mask = mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


def npo_kl_loss(forget_nll, reference_nll, retain_logits, retain_reference_logits, retain_mask=None,
                beta: float = NPO_BETA, retain_weight: float = NPO_RETAIN_WEIGHT) -> torch.Tensor:
    """NPO + KL to the reference on the retain set."""
    return (npo_loss(forget_nll, reference_nll, beta)
            + retain_weight * kl_to_reference(retain_logits, retain_reference_logits, retain_mask))


def relative_top_mask(target_logits: torch.Tensor, relative_top: float = ULD_RELATIVE_TOP) -> torch.Tensor:
    """ULD/DoLa's relative-top filter: True where the token is kept (see the module docstring)."""
    if not 0 < relative_top <= 1:
        raise ValueError(f"relative_top={relative_top}: choose 0 < relative_top <= 1")
    logp = F.log_softmax(target_logits.float(), dim=-1)
    vocab = logp.shape[-1]
    min_keep = max(1, int(relative_top * vocab))  # the code's int(ρ·V); 1 where ρ·V < 1
    kth_largest = logp.topk(min_keep, dim=-1).values[..., -1]
    threshold = torch.minimum(logp.max(dim=-1).values + math.log(relative_top), kth_largest)
    return logp >= threshold.unsqueeze(-1)


def uld_logits(target_logits: torch.Tensor, assistant_logits: torch.Tensor, alpha: float = ULD_ALPHA,
               relative_top: float | None = ULD_RELATIVE_TOP, keep: torch.Tensor | None = None) -> torch.Tensor:
    """The unlearned model's logits: z_target − α·z_assistant, the assistant zeroed outside the
    relative-top set of the target (no filter when relative_top is None). `keep`: that set, if already
    computed (`relative_top_mask(target_logits, relative_top)`)."""
    if relative_top is not None:
        keep = relative_top_mask(target_logits, relative_top) if keep is None else keep
        assistant_logits = assistant_logits * keep
    return target_logits - alpha * assistant_logits


def uld_generation_logits(logits: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """What ULD's greedy decoder takes the argmax of: the combined logits with every token outside the target's
    relative-top set `keep` at −1e3 (`keep` None: no filter, the logits as they are). The code then multiplies
    these scores by the mask before its argmax, which turns −1e3 into 0; that picks the same token whenever the
    best kept score is positive, and otherwise a token outside the set, against the code's own comment ("only
    sample from the top-logit within the mask region"): here the −1e3 stays."""
    return logits if keep is None else logits.masked_fill(~keep, ULD_FILTER_VALUE)


def kl_uniform_to_model(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(uniform ‖ softmax(logits)) per position = −log V − mean_v log p_v, averaged over positions."""
    logp = F.log_softmax(logits.float(), dim=-1)
    kl = -math.log(logp.shape[-1]) - logp.mean(-1)
    if mask is None:
        return kl.mean()
    mask = mask.to(kl.dtype)
    return (kl * mask).sum() / mask.sum().clamp_min(1)


def uld_assistant_loss(forget_nll: torch.Tensor, retain_logits: torch.Tensor, retain_mask=None,
                       retain_weight: float = ULD_RETAIN_WEIGHT) -> torch.Tensor:
    """ULD's reversed objectives for the assistant: learn the forget set (CE), forget the retain set (its
    distribution pushed to uniform)."""
    return forget_nll.mean() + retain_weight * kl_uniform_to_model(retain_logits, retain_mask)
