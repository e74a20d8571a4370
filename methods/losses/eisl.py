"""Don't Take It Literally: An Edit-Invariant Sequence Loss for Text Generation
(Liu, Tang, Hu et al., NAACL 2022, arXiv:2106.15078).

Cross-entropy scores target token j only at output position j, so a target that is shuffled, repeated or
partly blanked punishes a model that says the right thing in a slightly different order. EISL matches every
target n-gram against every window of the output. With log-probabilities lp (B × T' × V) of the T' output
positions and the target y (B × T):

    C⁰_ij = max(lp_i(y_j), −20)                         output position i, target position j (floor at −20)
    Cⁿ_ij = (1/n) · Σ_{k<n} C⁰_{i+k, j+k}                 = conv2d(C⁰, n×n identity) / n
    g_·j  = gumbel_softmax(Cⁿ_·j, τ)                      a soft choice of the output window for n-gram j
    Lₙ    = −(1/B) · Σ_b mean_j Σ_i g_ij · Cⁿ_ij
    L_EISL = Σₙ wₙ · Lₙ

Facts taken from the official code (guangyliu/EISL: `EISL.py`, `fairseq/.../criterions/bleuloss.py`,
`EISL_trainer.py`): the −20 floor; pad targets zeroed; the identity-kernel conv2d divided by n; a gumbel
softmax with τ = 1 over the output axis, not detached; n-grams `1,2` with weights (0.8, 0.2) (any other
list: uniform); n ≤ 0 means T' + n (0: the whole output); n > T' is dropped (none left: n = T'). With
n = T = T' the single window is the whole sequence and L_EISL is the token-averaged cross-entropy (with
the floor). The criterion mixes `ce_factor·CE + ngram_factor·EISL`; the noisy-target experiments first
train with CE (teacher forcing), then fine-tune that model with EISL with tf_ratio = 0, i.e. the decoder
reads its own greedy output instead of the noisy target.

Here: CE alone (through the kernel registry) for the first `ce_fraction` of trainer.max_steps, then
`ce_weight·CE + eisl_weight·L_EISL` on the same logits, the decoder fed the target with probability
`teacher_forcing` per position and its own greedy output otherwise. The defaults (CE for 70% of the steps,
then EISL alone, teacher forcing as in EISL.py) are ours: the official scripts switch when the CE model has
converged, and at small scale EISL started from a model that has not yet learned the alignment, or fed its
own poor greedy output, does worse than CE (bench/eisl_repro.py). Two choices of ours for padded batches (no
effect at equal lengths): mean_j runs over each sequence's real n-grams (the official code averages over the
padded width), and `mask_padded_outputs` keeps output windows past the target's length out of the selection.
Runs on seq2seq tasks and encoder-decoders (it declares so: a decoder-only model or a corpus is refused before
any work); `loss` also takes causal-LM batches (B, T+1), where output i predicts token i+1 under teacher forcing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.base import Method
from methods.seq2seq import greedy_decode, is_seq2seq_batch, seq2seq_logits, shift_right, split_batch

LOGP_FLOOR = -20.0
SELECTIONS = ("gumbel", "max")


def resolve_ngrams(ngrams: list[int], output_len: int, weights: list[float] | None = None) -> tuple[list[int], list[float]]:
    """The n-gram orders for an output of `output_len` positions and their weights (official rules above)."""
    pairs, seen = [], set()
    for k, n in enumerate(ngrams):
        real = n if n > 0 else output_len + n
        if 0 < real <= output_len and real not in seen:
            seen.add(real)
            pairs.append((real, None if weights is None else float(weights[k])))
    if not pairs:
        return [output_len], [1.0]
    orders = [n for n, _ in pairs]
    if weights is not None:
        return orders, [w for _, w in pairs]
    if orders == [1, 2]:
        return orders, [0.8, 0.2]
    return orders, [1.0 / len(orders)] * len(orders)


def match_costs(log_probs: torch.Tensor, targets: torch.Tensor, target_mask: torch.Tensor | None = None) -> torch.Tensor:
    """C⁰ (B, T', T): C⁰[b, i, j] = max(log_probs[b, i, targets[b, j]], −20), 0 at padded targets."""
    B, out_len, _ = log_probs.shape
    index = targets[:, None, :].expand(B, out_len, targets.shape[1])
    c0 = log_probs.clamp_min(LOGP_FLOOR).gather(2, index)
    if target_mask is not None:
        c0 = c0 * target_mask[:, None, :].to(c0.dtype)
    return c0


def ngram_costs(c0: torch.Tensor, n: int) -> torch.Tensor:
    """Cⁿ (B, T'−n+1, T−n+1): the mean of C⁰ along each length-n diagonal (a conv2d with the n×n identity)."""
    eye = torch.eye(n, dtype=c0.dtype, device=c0.device)[None, None]
    return F.conv2d(c0[:, None], eye)[:, 0] / n


def _windows_valid(mask: torch.Tensor, n: int) -> torch.Tensor:
    """(B, L−n+1): True where all n positions of the window are real."""
    m = mask.to(torch.float32)[:, None]
    return F.conv1d(m, torch.ones(1, 1, n, device=mask.device))[:, 0] > n - 0.5


def eisl_loss(log_probs: torch.Tensor, targets: torch.Tensor, ngrams: list[int] = (1, 2),
              weights: list[float] | None = None, target_mask: torch.Tensor | None = None,
              output_mask: torch.Tensor | None = None, selection: str = "gumbel", tau: float = 1.0) -> torch.Tensor:
    """L_EISL of log_probs (B, T', V) against targets (B, T); masks: True at real positions.

    selection: "gumbel" (the paper's soft, stochastic choice of output window) or "max" (each target n-gram
    takes its best-matching output window, deterministic)."""
    if selection not in SELECTIONS:
        raise ValueError(f"selection: {selection!r} is not valid; choose one of: {', '.join(SELECTIONS)}")
    B, out_len, _ = log_probs.shape
    c0 = match_costs(log_probs, targets, target_mask)
    orders, order_weights = resolve_ngrams(list(ngrams), out_len, weights)
    total = log_probs.new_zeros(())
    for n, w in zip(orders, order_weights):
        if n > targets.shape[1]:
            continue
        cn = ngram_costs(c0, n)
        rows = _windows_valid(output_mask, n) if output_mask is not None else None
        cols = _windows_valid(target_mask, n) if target_mask is not None else None
        scores = cn if rows is None else cn.masked_fill(~rows[:, :, None], -1e9)
        if selection == "max":
            matched = scores.max(dim=1).values
        elif cn.shape[1] == 1:  # one output window: nothing to choose
            matched = cn[:, 0]
        else:
            g = F.gumbel_softmax(scores, tau=tau, dim=1)
            matched = (g * cn).sum(dim=1)
        if cols is None:
            per_seq = matched.mean(dim=1)
        else:
            per_seq = (matched * cols).sum(dim=1) / cols.sum(dim=1).clamp_min(1)
        total = total + w * per_seq.mean()
    return -total


class EISL(Method):
    """Edit-Invariant Sequence Loss, after a CE warm-up; AdamW as the baseline."""

    # the paper's setting, checked before any work: an encoder-decoder on source -> target pairs
    # (dataset=noisy-copy, model=t5-tiny)
    needs_task = frozenset({"seq2seq"})
    needs_model = frozenset({"seq2seq-lm"})

    def __init__(self, ngram: list[int] = (1, 2), ngram_weights: list[float] | None = None, tau: float = 1.0,
                 selection: str = "gumbel", ce_fraction: float = 0.7, ce_weight: float = 0.0,
                 eisl_weight: float = 1.0, teacher_forcing: float = 1.0, mask_padded_outputs: bool = True,
                 name: str = "eisl", **base):
        super().__init__(name=name, **base)
        self.ngram = [int(n) for n in ngram]
        if not self.ngram:
            raise ValueError("ngram: give at least one n-gram order (e.g. [1, 2]; 0 = the whole output)")
        if ngram_weights is not None and len(ngram_weights) != len(self.ngram):
            raise ValueError(f"ngram_weights: {len(ngram_weights)} weights for {len(self.ngram)} n-gram orders {self.ngram}")
        self.ngram_weights = None if ngram_weights is None else [float(w) for w in ngram_weights]
        if selection not in SELECTIONS:
            raise ValueError(f"selection: {selection!r} is not valid; choose one of: {', '.join(SELECTIONS)}")
        if tau <= 0:
            raise ValueError(f"tau: must be positive, got {tau}")
        if not 0.0 <= ce_fraction <= 1.0:
            raise ValueError(f"ce_fraction: must be in [0, 1], got {ce_fraction}")
        if not 0.0 <= teacher_forcing <= 1.0:
            raise ValueError(f"teacher_forcing: must be in [0, 1], got {teacher_forcing}")
        if ce_weight < 0 or eisl_weight < 0 or ce_weight + eisl_weight == 0:
            raise ValueError(f"ce_weight, eisl_weight: must be >= 0 and not both 0, got {ce_weight}, {eisl_weight}")
        self.tau, self.selection = float(tau), selection
        self.ce_fraction, self.ce_weight, self.eisl_weight = float(ce_fraction), float(ce_weight), float(eisl_weight)
        self.teacher_forcing, self.mask_padded_outputs = float(teacher_forcing), bool(mask_padded_outputs)

    def in_ce_phase(self, module) -> bool:
        trainer = getattr(module, "_trainer", None)
        if trainer is None:
            return False
        return trainer.global_step < self.ce_fraction * int(trainer.max_steps)

    def loss(self, module, batch: torch.Tensor) -> torch.Tensor:
        if self.in_ce_phase(module):
            return module.lm_loss(batch)
        model = module.model
        if is_seq2seq_batch(batch):
            sources, targets = split_batch(batch)
            target_mask = targets != model.config.pad_token_id
            if self.teacher_forcing >= 1.0:
                decoder_inputs = shift_right(model, targets)
            else:  # the decoder reads its own greedy output (argmax: no gradient either way)
                own = greedy_decode(model, sources, targets.shape[1], teacher=targets,
                                    teacher_ratio=self.teacher_forcing, stop_at_eos=False)
                decoder_inputs = shift_right(model, own)
            logits = seq2seq_logits(model, sources, decoder_inputs)
        else:
            inputs, targets = batch[:, :-1], batch[:, 1:]
            target_mask = None
            logits = model.get_output_embeddings()(module.hidden_states(inputs))
        log_probs = F.log_softmax(logits.float(), dim=-1)
        output_mask = target_mask if self.mask_padded_outputs else None
        ngram = eisl_loss(log_probs, targets, self.ngram, self.ngram_weights, target_mask, output_mask,
                          self.selection, self.tau)
        nll = -log_probs.gather(2, targets[..., None])[..., 0]
        ce = nll.mean() if target_mask is None else (nll * target_mask).sum() / target_mask.sum().clamp_min(1)
        if getattr(module, "_trainer", None) is not None and module._logging_step():
            module.log("train/eisl", ngram.detach(), on_step=True, on_epoch=False)
            module.log("train/ce", ce.detach(), on_step=True, on_epoch=False)
        return self.ce_weight * ce + self.eisl_weight * ngram
