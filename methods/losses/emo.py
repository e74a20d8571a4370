"""EMO: Earth Mover Distance Optimization for Auto-Regressive Language Modeling
(Ren, Wu & Zhu, arXiv:2310.04691).

Transport cost between tokens: c(v_i, v_j) = 1 − e_iᵀe_j, with e_i the rows of a frozen copy of trained
output embeddings, each L2-normalised, taken when the run starts. The official code always copies a
pre-trained lm_head (it fine-tunes pre-trained LMs), never a random one: with random rows in d dimensions
e_iᵀe_y ≈ 0 for i ≠ y (± 1/√d), so DEMD ≈ 1 − Q_θ(y|ctx) and carries no similarity at all. So
`cost_embedding` = auto (the default) copies the starting model's own head where the run starts from one
(model.init_from set: `base`, a run, HF weights; emo.yaml hands it in as `model_init_from`) and, where it
trains from scratch (model.init_from null), the head of the
runner's cached base model (`Method.trained_model`: the baseline trained `base_steps` steps on the run's
model and task, trained once first if not cached); `base` always the latter, `model` always the former
(from scratch: the random initialisation, the behaviour before auto). For the one-hot target y, the earth
mover's distance between the model's Q_θ(·|ctx) and the data is bounded above by the differentiable DEMD:

    DEMD = Σ_i Q_θ(v_i|ctx) · c(v_i, y) = 1 − (Σ_i Q_θ(v_i|ctx) e_i)ᵀ e_y  ∈ [0, 2]

and the per-token loss combines it with cross-entropy as the official code does (language_modeling/gpt2.py,
mode "emo"; sg = stop-gradient):

    ℓ = ½ · (CE + sg[CE / (DEMD + 1e-10)] · DEMD)         mean over the tokens

so ℓ equals CE in value, while its gradient is half CE's and half DEMD's rescaled to CE's size. With the
logits z, ∂DEMD/∂z_k = Q_k · (c(v_k, y) − DEMD): probability on a token costlier than the current expected
cost is pushed down in proportion to the excess, on a cheaper one pulled up; CE's gradient (Q_k − 1[k=y])
treats every wrong token alike. (The official target side (onehot + 1e-15) / ‖·‖₁ is e_y up to 1e-15.)

Memory: Σ_i Q_i e_iᵀe_y is accumulated over vocabulary chunks with an online softmax (running max, sum and
weighted sum); backward recomputes each chunk from the saved log-sum-exp. It holds N×chunk buffers, never
N×V, besides what the cross-entropy kernel itself needs (hardware.kernels.cross_entropy).

Defaults from the paper's code: the frozen, trained cost embedding, the ½ mix above, the 1e-10 guard. Evaluation
(MAUVE in the paper) is replaced by distinct-n and repetition of sampled continuations of validation
prompts (unbiased sampling, the official `decoding_mode=unbiased`), beside the same measures of the real
continuations, and the mean DEMD on validation tokens.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from kernels.cross_entropy.reference import vocab_chunk
from methods.base import Method

OBJECTIVES = ("emo", "cross_entropy")
COST_SOURCES = ("auto", "base", "model")  # where the cost embedding is copied from (module docstring)
DECODINGS = ("sample", "greedy")
log = logging.getLogger(__name__)
COST_BUFFER = "emo_cost_embedding"  # the frozen, row-normalised copy of the output embeddings (not saved)
GUARD = 1e-10  # the official code's guard on CE / DEMD


# ------------------------------------------------------------------------------------------------ DEMD
class ChunkedExpectedCost(torch.autograd.Function):
    """DEMD_n = 1 − Σ_k softmax(x_n Wᵀ + β)_k · (e_k · e_{y_n}), chunked over the vocabulary."""

    @staticmethod
    def forward(ctx, x, w, bias, tgt, cost_emb, chunk):
        n, V = x.shape[0], w.shape[0]
        e_target = cost_emb[tgt]                                        # (n, d_c)
        run_max = torch.full((n,), float("-inf"), dtype=x.dtype, device=x.device)
        run_sum = torch.zeros(n, dtype=x.dtype, device=x.device)         # Σ exp(z − max)
        run_sim = torch.zeros(n, dtype=x.dtype, device=x.device)         # Σ exp(z − max) · e_k·e_y
        for start in range(0, V, chunk):
            stop = min(start + chunk, V)
            z = _logits(x, w, bias, start, stop)
            new_max = torch.maximum(run_max, z.amax(1))
            rescale = torch.exp(run_max - new_max)
            p = torch.exp(z - new_max[:, None])
            sim = e_target @ cost_emb[start:stop].T
            run_sum = run_sum * rescale + p.sum(1)
            run_sim = run_sim * rescale + (p * sim).sum(1)
            run_max = new_max
        lse = run_max + run_sum.log()
        expected_sim = run_sim / run_sum
        ctx.save_for_backward(x, w, bias, tgt, cost_emb, lse, expected_sim)
        ctx.chunk = chunk
        return 1.0 - expected_sim

    @staticmethod
    def backward(ctx, grad):
        x, w, bias, tgt, cost_emb, lse, expected_sim = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        V = w.shape[0]
        e_target = cost_emb[tgt]
        dx = torch.zeros_like(x) if need_x else None
        dw = torch.empty_like(w) if need_w else None
        db = torch.empty(V, dtype=x.dtype, device=x.device) if need_b else None
        for start in range(0, V, ctx.chunk):
            stop = min(start + ctx.chunk, V)
            p = torch.exp(_logits(x, w, bias, start, stop) - lse[:, None])
            sim = e_target @ cost_emb[start:stop].T
            # ∂DEMD/∂z_k = p_k (s̄ − s_k) = p_k (c_k − DEMD)
            g = p.mul_(expected_sim[:, None] - sim).mul_(grad[:, None])
            if need_x:
                dx.addmm_(g, w[start:stop])
            if need_w:
                torch.mm(g.T, x, out=dw[start:stop])
            if need_b:
                db[start:stop] = g.sum(0)
        return dx, dw, db, None, None, None


def _logits(x, w, bias, start, stop):
    z = x @ w[start:stop].T
    return z + bias[start:stop] if bias is not None else z


def expected_cost(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, cost_emb: torch.Tensor,
                  bias: torch.Tensor | None = None, chunk_size: int | None = None) -> torch.Tensor:
    """Per-token DEMD (targets.shape) of softmax(hidden @ weight.T + bias) against unit-row `cost_emb` (V, d_c).

    Differentiable in hidden, weight and bias (the cost embedding is frozen); fp32 (fp64 stays fp64)."""
    dtype = torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)
    x = hidden.reshape(-1, hidden.shape[-1])
    V = weight.shape[0]
    chunk = int(chunk_size) if chunk_size else vocab_chunk(x.shape[0], V)
    with torch.autocast(hidden.device.type, enabled=False):
        demd = ChunkedExpectedCost.apply(x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype),
                                         targets.reshape(-1), cost_emb.detach().to(dtype), min(chunk, V))
    return demd.reshape(targets.shape)


def expected_cost_from_logits(logits: torch.Tensor, targets: torch.Tensor, cost_emb: torch.Tensor) -> torch.Tensor:
    """DEMD from the logits themselves (forms N×V probabilities): the official code's computation (reference)."""
    q_repr = torch.softmax(logits, -1) @ cost_emb                         # (..., d_c)
    return 1.0 - (q_repr * cost_emb[targets]).sum(-1)


def emo_combine(ce: torch.Tensor, demd: torch.Tensor) -> torch.Tensor:
    """½ (CE + sg[CE / (DEMD + 1e-10)] · DEMD), per token: the value of CE, the gradient of both."""
    return 0.5 * (ce + (ce / (demd + GUARD)).detach() * demd)


def cost_embedding(weight: torch.Tensor) -> torch.Tensor:
    """A frozen copy of the output embeddings with unit rows."""
    return F.normalize(weight.detach().float(), dim=1).clone()


# ------------------------------------------------------------------------------------- sample diversity
def distinct_n(seqs: list[list[int]], n: int) -> float:
    """Distinct n-grams / all n-grams over the continuations (Li et al. 2016)."""
    grams = [tuple(s[i:i + n]) for s in seqs for i in range(len(s) - n + 1)]
    return len(set(grams)) / max(len(grams), 1)


def repetition_n(seqs: list[list[int]], n: int) -> float:
    """Mean over continuations of 1 − unique n-grams / n-grams (seq-rep-n, Welleck et al. 2020)."""
    reps = []
    for s in seqs:
        grams = [tuple(s[i:i + n]) for i in range(len(s) - n + 1)]
        if grams:
            reps.append(1.0 - len(set(grams)) / len(grams))
    return sum(reps) / max(len(reps), 1)


@torch.no_grad()
def continue_prompts(model: nn.Module, prompts: torch.Tensor, new_tokens: int, greedy: bool,
                     generator: torch.Generator) -> torch.Tensor:
    """(B, new_tokens) continuations of (B, P) prompts: greedy, or sampled from the full softmax (seeded)."""
    device = next(model.parameters()).device
    ids = prompts.to(device)
    for _ in range(new_tokens):
        logits = model(input_ids=ids).logits[:, -1].float()
        if greedy:
            nxt = logits.argmax(-1)
        else:
            nxt = torch.multinomial(torch.softmax(logits, -1).cpu(), 1, generator=generator).squeeze(1).to(device)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return ids[:, prompts.shape[1]:].cpu()


# ------------------------------------------------------------------------------------------------ method
class EMO(Method):
    """Train with ½ (CE + sg[CE/DEMD]·DEMD) against a frozen cost embedding; evaluate sample diversity."""

    needs_task = frozenset()
    needs_model = frozenset({"causal-lm"})

    def __init__(self, name: str = "emo", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 objective: str = "emo", chunk_size: int | None = None, eval_tokens: int = 8192,
                 eval_prompts: int = 16, prompt_tokens: int = 16, new_tokens: int = 48, decoding: str = "sample",
                 eval_seed: int = 0, cost_embedding: str = "auto", model_init_from: str | None = None):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        self.objective, self.decoding = objective, decoding
        self.cost_embedding = cost_embedding
        self.model_init_from = None if model_init_from in (None, "") else str(model_init_from)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.eval_tokens, self.eval_prompts = int(eval_tokens), int(eval_prompts)
        self.prompt_tokens, self.new_tokens, self.eval_seed = int(prompt_tokens), int(new_tokens), int(eval_seed)
        problems = []
        if objective not in OBJECTIVES:
            problems.append(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
        if decoding not in DECODINGS:
            problems.append(f"decoding {decoding!r} is not one of {', '.join(DECODINGS)}")
        if cost_embedding not in COST_SOURCES:
            problems.append(f"cost_embedding {cost_embedding!r} is not one of {', '.join(COST_SOURCES)}")
        if self.chunk_size is not None and self.chunk_size < 1:
            problems.append(f"chunk_size must be >= 1 or null, got {chunk_size}")
        for key in ("eval_tokens", "eval_prompts", "prompt_tokens", "new_tokens"):
            if getattr(self, key) < 1:
                problems.append(f"{key} must be >= 1, got {getattr(self, key)}")
        if problems:
            raise ValueError("emo: " + "; ".join(problems))

    @property
    def cost_source(self) -> str:
        """'base' (the runner's cached base model's head) or 'model' (the starting model's own head)."""
        if self.cost_embedding != "auto":
            return self.cost_embedding
        return "base" if self.model_init_from is None else "model"

    def prepare_model(self, model: nn.Module) -> nn.Module:
        head = model.get_output_embeddings().weight
        source = head
        if self.cost_source == "base":
            if self.trained_model is None:
                raise RuntimeError("emo: the cost embedding is the cached base model's head (cost_embedding="
                                   f"{self.cost_embedding}, training from scratch), and no runner provides that model "
                                   "here; give cost_embedding=model to use this model's own head")
            source = self.trained_model("base").get_output_embeddings().weight
            if source.shape != head.shape:
                raise ValueError(f"emo: the base model's head is {tuple(source.shape)}, this model's "
                                 f"{tuple(head.shape)}; give cost_embedding=model")
            log.info("emo: cost embedding from the cached base model's head (the run starts from scratch)")
        model.register_buffer(COST_BUFFER, cost_embedding(source).to(head.device), persistent=False)
        return model

    def loss(self, module, batch: torch.Tensor) -> torch.Tensor:
        if self.objective == "cross_entropy":  # the baseline (official mode "mle"), evaluated the same way
            return module.lm_loss(batch)
        cost = getattr(module.model, COST_BUFFER, None)
        if cost is None:
            raise RuntimeError("emo: the model has no cost embedding; the runner calls EMO.prepare_model first")
        inputs, targets = batch[:, :-1], batch[:, 1:]
        hidden = module.hidden_states(inputs)
        head = module.model.get_output_embeddings()
        bias = getattr(head, "bias", None)
        ce = module.kernel("cross_entropy")(hidden, head.weight, targets, reduction="none",
                                            **({"bias": bias} if bias is not None else {}))
        demd = expected_cost(hidden, head.weight, targets, cost, bias=bias, chunk_size=self.chunk_size)
        return emo_combine(ce, demd).mean()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data) -> dict[str, float]:
        blocks = data.blocks("val")
        if self.prompt_tokens >= blocks.shape[1]:
            raise ValueError(f"emo: prompt_tokens ({self.prompt_tokens}) must be shorter than model.seq_len + 1 "
                             f"({blocks.shape[1]})")
        was_training = model.training
        model.eval()
        try:
            out = self._sample_diversity(model, blocks)
            cost = getattr(model, COST_BUFFER, None)
            if cost is not None:
                out["demd"] = self._mean_demd(model, blocks, cost)
        finally:
            model.train(was_training)
        return out

    def _sample_diversity(self, model: nn.Module, blocks: torch.Tensor) -> dict[str, float]:
        generator = torch.Generator().manual_seed(self.eval_seed)
        pick = torch.randperm(len(blocks), generator=generator)[: self.eval_prompts]
        new = min(self.new_tokens, blocks.shape[1] - self.prompt_tokens)  # stay within the model's positions
        prompts, real = blocks[pick, : self.prompt_tokens], blocks[pick, self.prompt_tokens: self.prompt_tokens + new]
        samples = continue_prompts(model, prompts, new, self.decoding == "greedy", generator)
        out = {}
        for tag, seqs in (("", samples.tolist()), ("ref_", real.tolist())):
            for n in (1, 2, 3):
                out[f"{tag}distinct_{n}"] = distinct_n(seqs, n)
            out[f"{tag}rep_4"] = repetition_n(seqs, 4)
        return out

    def _mean_demd(self, model: nn.Module, blocks: torch.Tensor, cost: torch.Tensor, batch_size: int = 8) -> float:
        n_blocks = max(1, -(-self.eval_tokens // (blocks.shape[1] - 1)))
        decoder, head = model.get_decoder(), model.get_output_embeddings()
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for start in range(0, min(n_blocks, len(blocks)), batch_size):
            batch = blocks[start: min(start + batch_size, n_blocks)].to(device)
            hidden = decoder(input_ids=batch[:, :-1]).last_hidden_state
            demd = expected_cost(hidden, head.weight, batch[:, 1:], cost, bias=getattr(head, "bias", None),
                                 chunk_size=self.chunk_size)
            total += float(demd.double().sum())
            count += demd.numel()
        return total / max(count, 1)
