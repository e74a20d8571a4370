"""Order Matters: Sequence to sequence for sets (Oriol Vinyals, Samy Bengio & Manjunath Kudlur, ICLR 2016).

The architecture is `model=rpw` (models/rpw.py; the Ptr-Net baseline `model=ptr-lstm`):

    Read     m_i = f(x_i)
    Process  q_t = LSTM(q*_{t-1}),  e_i,t = <m_i, q_t>,  a_i,t = softmax_i e_i,t,  r_t = Σ_i a_i,t m_i,  q*_t = [q_t; r_t]
    Write    a pointer-network LSTM decoder started from q*_P, p(y_t = i | y_<t, X) ∝ exp(v^T tanh(W_1 m_i + W_2 d_t))

trained on the pointer cross-entropy -Σ_t log p(y_t | y_<t, X) of the data (tasks/sets.py, dataset=sort-sets).
This method is the paper's training rule for outputs whose order is free (its section on output sets):

    θ* = argmax_θ Σ_X max_π log p(π(Y) | X; θ)

approximated as the paper describes it: first train on uniformly sampled orderings π of each example's output, then
on the ordering the current model finds most probable. `order` picks one of

    given    the targets in the order the data gives them (sorting: ascending; target=set: ascending index) = the
             plain pointer cross-entropy (the same loss as method=adamw, with this method's optimizer settings)
    uniform  a fresh uniformly random ordering of each example's targets at every step, throughout
    search   uniform for the first `warmup_fraction` of trainer.max_steps, then per example the max over candidate
             orderings of log p(π(Y) | X; θ) under the current θ (no gradient through the choice), and the
             cross-entropy of that ordering. Candidates: `candidates` uniformly sampled orderings (0: all K! of
             them, the exact max_π, for small K) plus, with `greedy_candidate`, the ordering greedy decoding picks
             when the pointer is restricted to the target elements.

Random orderings are drawn from a generator seeded by (run seed, micro-batch index): a pure function of the step,
so a resumed run draws the same orderings.

Choices and deviations (also in configs/method/read_process_write.yaml):
- The schedule of the search is ours: the paper says it first samples orderings uniformly and later picks or
  samples the most likely one, without a fraction; `warmup_fraction` (default 0.2) is the switch point, by
  optimizer step. We pick the arg-max (no sampling from p(π)); ties go to the first candidate.
- The candidate set (sampled orderings + restricted greedy decoding) is ours; the paper's inference over π is
  not given as an algorithm. `candidates: 0` enumerates all K! orderings (exact; K ≤ 7 is allowed).
- Optimizer: the runner's AdamW with warmup and cosine decay (the paper trains with SGD/Adam, settings not given
  for sorting); lr 1e-3, no weight decay (ours). Gradient clipping is the runner's trainer.grad_clip (1.0).
- `order: search` on target=sorted is allowed but fights the metric (sorting has one right order).

`evaluate` (target=set) reports which ordering the trained model prefers: eval/chosen_order/ascending_value etc.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from methods.base import Method

if TYPE_CHECKING:
    import torch

ORDERS = ("given", "uniform", "search")
MAX_EXHAUSTIVE = 7  # candidates: 0 enumerates K! orderings; 7! = 5040 forward passes per example at most


def uniform_orderings(targets: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """(B, count, K): `count` uniformly random orderings of each row of `targets` (B, K), drawn from `generator`."""
    import torch

    b, k = targets.shape
    perms = torch.rand(b, count, k, generator=generator).argsort(dim=-1).to(targets.device)
    return targets.unsqueeze(1).expand(b, count, k).gather(2, perms)


def all_orderings(targets: torch.Tensor) -> torch.Tensor:
    """(B, K!, K): every ordering of each row of `targets`, in the lexicographic order of the permutations."""
    import itertools

    import torch

    b, k = targets.shape
    perms = torch.tensor(list(itertools.permutations(range(k))), dtype=torch.long, device=targets.device)
    return targets.unsqueeze(1).expand(b, len(perms), k).gather(2, perms.unsqueeze(0).expand(b, -1, -1))


def ordering_log_probs(model, x: torch.Tensor, candidates: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """(B, C) log p(candidate | X) under `model` of the candidate orderings (B, C, K), in chunks of examples."""
    import torch

    b, c, k = candidates.shape
    xs = x.unsqueeze(1).expand(b, c, *x.shape[1:]).reshape(b * c, *x.shape[1:])
    ys = candidates.reshape(b * c, k)
    out = [model.log_prob(xs[i:i + chunk], ys[i:i + chunk]) for i in range(0, b * c, chunk)]
    return torch.cat(out).view(b, c)


def best_ordering(model, x: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the most probable candidate per example (B, K), the log-probabilities of all (B, C)): no gradient."""
    import torch

    with torch.no_grad():
        scores = ordering_log_probs(model, x, candidates)
    best = scores.argmax(dim=1)  # the first of equal maxima
    return candidates[torch.arange(len(best), device=best.device), best], scores


class ReadProcessWrite(Method):
    """The paper's training rule over output orderings (`order`); the model is model=rpw or model=ptr-lstm."""

    needs_task = frozenset({"sets"})
    needs_model = frozenset({"pointer"})

    def __init__(self, name: str = "read_process_write", lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, warmup_steps: int = 100, min_lr_ratio: float = 0.1,
                 order: str = "given", warmup_fraction: float = 0.2, candidates: int = 8,
                 greedy_candidate: bool = True):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        problems = []
        if order not in ORDERS:
            problems.append(f"method.order: must be one of {', '.join(ORDERS)}, got {order!r}")
        if not (isinstance(warmup_fraction, (int, float)) and 0 <= warmup_fraction <= 1):
            problems.append(f"method.warmup_fraction: must be in [0, 1], got {warmup_fraction!r}")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 0:
            problems.append(f"method.candidates: must be an integer >= 0 (0: all K! orderings), got {candidates!r}")
        if not isinstance(greedy_candidate, bool):
            problems.append(f"method.greedy_candidate: must be true or false, got {greedy_candidate!r}")
        if problems:
            raise ValueError("; ".join(problems))
        self.order, self.warmup_fraction = order, float(warmup_fraction)
        self.candidates, self.greedy_candidate = int(candidates), bool(greedy_candidate)

    # -- the orderings ---------------------------------------------------------------------
    def generator(self, module: Any) -> torch.Generator:
        """A generator seeded by (run seed, micro-batch index): the same draws after a resume."""
        import torch

        return torch.Generator().manual_seed(int(module.seed) * 1_000_003 + int(module.micro_batches_seen))

    def searching(self, module: Any) -> bool:
        """Whether this step picks the most probable ordering (after the uniform warm-up of order=search)."""
        trainer = getattr(module, "_trainer", None) and module.trainer
        step, total = (trainer.global_step, trainer.max_steps) if trainer else (0, 1)
        return self.order == "search" and step >= math.ceil(self.warmup_fraction * max(1, total))

    def search_candidates(self, model, x: torch.Tensor, targets: torch.Tensor, generator: torch.Generator):
        """(B, C, K) the candidate orderings of the search (see the module docstring)."""
        import torch

        from methods.sets.pointer import restricted_greedy

        k = targets.shape[1]
        if self.candidates == 0:
            if k > MAX_EXHAUSTIVE:
                raise ValueError(f"method.candidates: 0 enumerates {math.factorial(k)} orderings of K = {k} pointers; "
                                 f"use it for K <= {MAX_EXHAUSTIVE} or give a number of sampled orderings")
            return all_orderings(targets)
        parts = [uniform_orderings(targets, self.candidates, generator)]
        if self.greedy_candidate:
            parts.append(restricted_greedy(model, x, targets).unsqueeze(1))
        return torch.cat(parts, dim=1)

    def training_targets(self, module: Any, batch: dict) -> torch.Tensor:
        """The ordering of each example's targets this step trains on (B, K)."""
        x, y = batch["x"], batch["y"]
        if self.order == "given":
            return y
        generator = self.generator(module)
        if not self.searching(module):
            return uniform_orderings(y, 1, generator)[:, 0]
        was_training = module.model.training
        module.model.eval()  # the choice is a function of θ alone (no dropout in the pointer models anyway)
        best, _ = best_ordering(module.model, x, self.search_candidates(module.model, x, y, generator))
        module.model.train(was_training)
        return best

    def loss(self, module: Any, batch: dict) -> torch.Tensor:
        return module.pointer_loss(batch["x"], self.training_targets(module, batch))

    def evaluate(self, model, data: Any) -> dict[str, float]:
        """For target=set: which ordering of the output the trained model prefers (methods/sets/pointer.py
        order_statistics: ascending/descending value, ascending index, its loss per step); nothing for sorting."""
        if getattr(data, "target", None) != "set":
            return {}
        from methods.sets.pointer import order_statistics

        return order_statistics(model, data.val_x, data.val_y)
