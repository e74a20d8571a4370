"""Dynamic Gradient Alignment for Online Data Mixing (Fan, Grangier, Ablin, arXiv:2410.02498).

Generic domains D_1..D_k (the sampled domains of a multi-domain task: tasks/mixture.py), a small specific set
D_spe (`specific_domain`, a `sample: false` domain: never drawn for training, its val split gives the
specific-set loss val/loss/<specific>). Training draws each example's domain from the mixture α ∈ Δ_k.
Every T_r = `update_every` optimizer steps (at steps 0, T_r, 2T_r, ..., before that step's update, on the
current model, no optimizer step):

    g_i   = ∇ℓ_i(θ)      the gradient of the LM loss on one batch of generic domain i, i = 1..k
    g_spe = ∇L_spe(θ)    the gradient on one batch of the specific set (its train split)
    a_i   = ⟨g_i, g_spe⟩                      (−η·a_i: one-step look-ahead change of L_spe per unit of α_i)
    α̂     = softmax(log α + η_α · a)          exponentiated-gradient (mirror-descent) step on the simplex
    α     ← β · α + (1 − β) · α̂               EMA stabilisation (β = 0: the plain update)

(`methods.data.mixing.dga_update`). The gradients are the full flattened gradients of every trainable
parameter; the dot products are accumulated parameter by parameter in float64, so at most two gradients
are alive at a time (`normalize: true` divides by their norms: cosine alignment instead of dot products).

Defaults (no official code was found; the catalog's settings, unverified against the paper's tables):
T_r = 10, η_α = 1.0, β = 0.9, α_0 uniform. `init: importance` starts from the importance-sampling
baseline's mixture (`importance_weights`: each specific document assigned to its most likely domain under
hashed n-gram models, the analogue of the paper's nearest-cluster assignment); with `alpha_lr: 0` no update
is made and the run is that static baseline (`init: uniform`: uniform mixing). The scalable "distribution
reweighting" variant (α over basis distributions of embedding clusters) is not implemented: domains here are
few. α is logged as dga/alpha/<domain> at every logger step (trainer.log_every_n_steps).

Resume: α, the α history and every gradient batch are pure functions of (seed, update index) and the saved
history, so a resumed run draws the same batches and computes the same α as an uninterrupted one. The
loader draws a batch a step before it is trained on (Lightning prefetches one batch), so the mixture a
batch of step s is drawn with is the one of the last update at a step ≤ s − `lag` (lag 2): the draws then
never depend on when the loader happened to run.
"""

from __future__ import annotations

import bisect
import logging

import numpy as np
import torch

from methods.base import Method
from methods.data.mixing import dga_update
from methods.data.zip_fit import held_out_domain
from methods.module import MethodModule

log = logging.getLogger(__name__)
INITS = ("uniform", "natural", "importance")


def importance_weights(domain_docs: list[list[str]], specific_docs: list[str], num_buckets: int = 10_000) -> np.ndarray:
    """The importance-sampling baseline's mixture: each specific document goes to the domain whose hashed
    unigram+bigram model (add-one smoothed, as in the DSIR-style selector) gives it the highest likelihood;
    α_k = (documents assigned to k + 1) / (n + K) (Laplace smoothing: no domain gets exactly 0)."""
    from methods.data.zip_fit import hashed_ngram_counts

    log_p = []
    for docs in domain_docs:
        counts = sum((hashed_ngram_counts(x, num_buckets) for x in docs), np.zeros(num_buckets))
        log_p.append(np.log(counts + 1.0) - np.log(counts.sum() + num_buckets))
    features = np.stack([hashed_ngram_counts(y, num_buckets) for y in specific_docs])
    nearest = np.argmax(features @ np.stack(log_p).T, axis=1)
    assigned = np.bincount(nearest, minlength=len(domain_docs)).astype(np.float64)
    return (assigned + 1.0) / (assigned.sum() + len(domain_docs))


class DGAModule(MethodModule):
    """The generic module plus DGA's mixture update every `update_every` steps and α logging."""

    def training_step(self, batch, batch_idx: int):
        m: DGA = self.method
        step = int(self.trainer.global_step)
        first_micro = self.micro_batches_seen % max(1, int(self.trainer.accumulate_grad_batches)) == 0
        if m.alpha_lr > 0 and first_micro and step % m.update_every == 0 and m.last_update_step() < step:
            tokens = batch[0] if isinstance(batch, (tuple, list)) else batch
            self.update_mixture(step, m.grad_batch_size or tokens.shape[0])
        loss = super().training_step(batch, batch_idx)
        if self._logging_step():
            for name, a in zip(m.generic, m.alpha.tolist()):
                self.log(f"dga/alpha/{name}", a, on_step=True, on_epoch=False)
        return loss

    def domain_gradients(self, batches: list[torch.Tensor], specific: torch.Tensor):
        """Yields (g_i, g_spe) per generic batch as lists of per-parameter gradients (g_spe computed once)."""
        params = [p for p in self.model.parameters() if p.requires_grad]

        def grads(tokens: torch.Tensor) -> list[torch.Tensor]:
            loss = self.lm_loss(tokens.to(self.device))
            out = torch.autograd.grad(loss, params, allow_unused=True)
            return [torch.zeros_like(p) if g is None else g for g, p in zip(out, params)]

        g_spe = grads(specific)
        for tokens in batches:
            yield grads(tokens), g_spe

    def alignments(self, batches: list[torch.Tensor], specific: torch.Tensor) -> torch.Tensor:
        """a_i = ⟨g_i, g_spe⟩ (or the cosine with method.normalize), float64 (k,)."""
        out = []
        for g, g_spe in self.domain_gradients(batches, specific):
            dot = sum(torch.sum(a.double() * b.double()) for a, b in zip(g, g_spe))
            if self.method.normalize:
                norm_g = torch.sqrt(sum(torch.sum(a.double() ** 2) for a in g))
                norm_spe = torch.sqrt(sum(torch.sum(b.double() ** 2) for b in g_spe))
                dot = dot / (norm_g * norm_spe).clamp_min(1e-12)
            out.append(dot)
        return torch.stack(out).cpu()

    def update_mixture(self, step: int, batch_size: int) -> torch.Tensor:
        m: DGA = self.method
        n = len(m.history)
        batches = [m.grad_batch(d, n, batch_size) for d in m.generic]
        a = self.alignments(batches, m.grad_batch(m.specific, n, batch_size))
        # dga_update uses the gradients only through G @ g_spe: the (k, 1) matrix of dot products and g_spe = [1]
        alpha = dga_update(m.alpha, a[:, None], torch.ones(1, dtype=torch.float64), m.alpha_lr, m.ema)
        m.record(step, alpha)
        return a

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["dga"] = self.method.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if "dga" in checkpoint:
            self.method.load_state_dict(checkpoint["dga"])


class DGA(Method):
    """DGA: the domain mixture follows the alignment of per-domain gradients with the specific-set gradient."""

    needs_task = frozenset({"domains"})
    needs_model = frozenset({"causal-lm"})
    module_class = DGAModule
    # the alignments need whole gradients: FSDP's flat shards would give each rank a partial dot product
    supports_fsdp = False

    def __init__(self, name: str = "dga", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 specific_domain: str | None = None, update_every: int = 10, alpha_lr: float = 1.0,
                 ema: float = 0.9, init: str = "uniform", normalize: bool = False,
                 grad_batch_size: int | None = None, lag: int = 2, seed: int | None = None):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        problems = []
        if init not in INITS:
            problems.append(f"method.init: {init!r} is not valid; choose one of: {', '.join(INITS)}")
        if int(update_every) < 1:
            problems.append(f"method.update_every: must be >= 1, got {update_every}")
        if not 0.0 <= float(ema) < 1.0:
            problems.append(f"method.ema: must be in [0, 1), got {ema}")
        if not float(alpha_lr) >= 0.0:
            problems.append(f"method.alpha_lr: must be >= 0, got {alpha_lr}")
        if grad_batch_size is not None and int(grad_batch_size) < 1:
            problems.append(f"method.grad_batch_size: must be >= 1 or null (the training batch size), got {grad_batch_size}")
        if int(lag) < 0:
            problems.append(f"method.lag: must be >= 0, got {lag}")
        if problems:
            raise ValueError("; ".join(problems))
        self.specific_domain, self.update_every = specific_domain, int(update_every)
        self.alpha_lr, self.ema, self.init, self.normalize = float(alpha_lr), float(ema), init, bool(normalize)
        self.grad_batch_size = None if grad_batch_size is None else int(grad_batch_size)
        self.lag, self.seed = int(lag), seed
        self.generic: list[str] = []
        self.specific = ""
        self.alpha0 = torch.ones(0, dtype=torch.float64)
        self.alpha = self.alpha0
        self.history: list[tuple[int, torch.Tensor]] = []  # (step of the update, α after it)
        self._blocks: dict[str, torch.Tensor] = {}

    # -- data --------------------------------------------------------------------------------
    def prepare_data(self, data):
        self.data = data
        self.specific = held_out_domain(data, self.specific_domain, "specific_domain")
        self.generic = [d for d, s in zip(data.domains, data.sampled) if s and d != self.specific]
        if not self.generic:
            raise ValueError("method.specific_domain: dataset.domains has no sampled (generic) domain besides it")
        if self.init == "natural":
            q = np.asarray(data.natural_probs(), dtype=np.float64)
            q = np.array([q[data.domains.index(d)] for d in self.generic])
            self.alpha0 = torch.from_numpy(q / q.sum())
        elif self.init == "importance":
            self.alpha0 = torch.from_numpy(importance_weights([data.documents(d, "train") for d in self.generic],
                                                              data.documents(self.specific, "train")))
        else:
            self.alpha0 = torch.full((len(self.generic),), 1.0 / len(self.generic), dtype=torch.float64)
        self.alpha, self.history = self.alpha0.clone(), []
        self._index = [data.domains.index(d) for d in self.generic]
        self._n_domains = len(data.domains)
        self._seed = int(torch.initial_seed() if self.seed is None else self.seed)
        data.set_sampling(self.probs)
        log.info("dga: generic domains %s, specific set %r, α0 %s, update every %d steps", self.generic,
                 self.specific, np.round(self.alpha0.numpy(), 4).tolist(), self.update_every)
        return data

    def probs(self, step: int) -> np.ndarray:
        """Domain probabilities for a batch of optimizer step `step`: α of the last update at a step ≤ step − lag."""
        steps = [s for s, _ in self.history]
        i = bisect.bisect_right(steps, int(step) - self.lag)
        alpha = self.history[i - 1][1] if i > 0 else self.alpha0
        p = np.zeros(self._n_domains)
        p[self._index] = alpha.numpy()
        return p

    def grad_batch(self, domain: str, update: int, batch_size: int) -> torch.Tensor:
        """A batch of `domain`'s train blocks for update number `update`, seeded by (seed, update, domain)."""
        if domain not in self._blocks:
            self._blocks[domain] = self.data.domain_blocks(domain, "train")
        blocks = self._blocks[domain]
        which = 1 + (self.generic.index(domain) if domain in self.generic else len(self.generic))
        g = torch.Generator().manual_seed((self._seed * 1_000_003 + update) * 1009 + which)
        return blocks[torch.randint(0, len(blocks), (batch_size,), generator=g)]

    # -- state -------------------------------------------------------------------------------
    def last_update_step(self) -> int:
        return self.history[-1][0] if self.history else -1

    def record(self, step: int, alpha: torch.Tensor) -> None:
        self.alpha = alpha.detach().to(torch.float64).cpu()
        self.history.append((int(step), self.alpha))

    def state_dict(self) -> dict:
        return {"generic": list(self.generic), "alpha0": self.alpha0.clone(),
                "steps": [s for s, _ in self.history],
                "history": torch.stack([a for _, a in self.history]) if self.history else torch.zeros(0)}

    def load_state_dict(self, state: dict) -> None:
        if list(state["generic"]) != self.generic:
            raise ValueError(f"dga: the checkpoint's generic domains {state['generic']} are not {self.generic}")
        self.alpha0 = state["alpha0"].to(torch.float64)
        self.history = [(int(s), a.to(torch.float64)) for s, a in zip(state["steps"], state["history"])]
        self.alpha = self.history[-1][1] if self.history else self.alpha0.clone()

    def evaluate(self, model, data) -> dict[str, float]:
        """The final mixture (eval/dga/alpha/<domain>) and the number of updates."""
        out = {f"dga/alpha/{d}": float(a) for d, a in zip(self.generic, self.alpha.tolist())}
        out["dga/updates"] = float(len(self.history))
        return out
