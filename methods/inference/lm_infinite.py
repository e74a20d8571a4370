"""LM-Infinite: Simple On-the-Fly Length Generalization for Large Language Models
(Han et al., arXiv:2308.16137; published as "LM-Infinite: Zero-Shot Extreme Length Generalization for
Large Language Models", NAACL 2024).

A RoPE model trained on sequences of L tokens reads longer ones, without any parameter update, through a
Λ-shaped attention mask (sec. 4, Fig. 3): every query attends to the n_local most recent tokens with
ordinary relative positions, and to the first n_global tokens of the sequence with the distance capped.
For query i and key j ≤ i (0-based; R(p) the RoPE rotation by position p; q, k before rotation; D the
head dimension):

    local   0 ≤ i − j < n_local:                s_ij = (R(i)·q_i)ᵀ (R(j)·k_j) / √D     (plain RoPE)
    global  j < n_global  and  i − j ≥ n_local:  s_ij = (R(d)·q_i)ᵀ k_j / √D          (stationary key,
                                                 query rotated by the fixed distance d = n_local)
    otherwise masked;   a_i = softmax_j(s_ij),  o_i = Σ_j a_ij · v_j

so each query has at most n_global + n_local non-zero attention weights, and a sequence of at most
n_local tokens is attended exactly as before. The official code (Glaciohound/LM-Infinite,
`models/llama.py`) rotates the query by min(limit_distance, kv_len − 1) with limit_distance = n_local;
whenever the global branch is active kv_len − 1 ≥ n_local, so d = n_local.

Two implementations of the same function: `lambda_attention_masked` builds the (n, n) score matrix and
masks it (the reference); `lambda_attention_blockwise` cuts the queries into blocks of n_local; block
[s, s + n_local) reads only keys [s − n_local + 1, s + n_local) plus the n_global global keys, so time
and memory are O(n · (n_global + n_local)) (the official `lambda_attention.py` pairs each block with the
previous one the same way).

The model is patched, not re-implemented: `patch_model` registers `lm_infinite_attention` with
transformers' `AttentionInterface` (and the boolean SDPA mask builder with `AttentionMaskInterface`) and
switches the model to it; the Llama attention module computes q, k, v, applies RoPE and fills the KV
cache as usual, then calls this function. As the keys arrive rotated, the global branch un-rotates the
n_global global keys (R(−j)·k'_j) and turns each query from its position p_i to d (R(d − p_i)·q'_i),
angles in fp64. Positions are the cache slots: key j is the j-th token of the sequence (no left padding).

Defaults from the paper: n_local = the pre-training length (4096 for Llama-2, 2048 for LLaMA/GPT-J/MPT;
here `model.config.max_position_embeddings`, which the runner sets to `model.seq_len`); n_global = 10 in
the code's `convert_llama_model` (the paper's range: 10–100), scaled to min(10, n_local // 16) for the
tiny models here (4 at L = 64, as in the catalog's small-scale check). The optional log-distance
"triangle_offset" penalty of the code is off by default there and not implemented.

`LongContext` is the unpatched baseline with the same evaluation (perplexity at multiples of the training
length, passkey accuracy by length); `LMInfinite` is it plus the patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from methods.base import Method

NAME = "lm_infinite"
IMPLEMENTATIONS = ("blockwise", "masked")
ROPE_TYPES = ("default", "linear", "llama3")  # rotations fully described by inv_freq (no attention scaling)


@dataclass(frozen=True)
class LambdaShape:
    """The Λ mask's two branches, and the model's RoPE frequencies (to un-rotate and re-rotate)."""

    n_global: int
    n_local: int
    inv_freq: torch.Tensor
    implementation: str = "blockwise"


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """RoPE rotation of x (B, H, N, D) by `positions`: (N,) for every row, or (B, N) per row (transformers'
    convention: dimension k pairs with k + D/2). Negative positions rotate back."""
    angles = positions.to(x.device, torch.float64)[..., None] * inv_freq.to(x.device, torch.float64)
    emb = torch.cat((angles, angles), dim=-1)
    if emb.ndim == 3:  # (B, N, D) -> (B, 1, N, D): the same rotation for every head
        emb = emb[:, None]
    return x * emb.cos().to(x.dtype) + rotate_half(x) * emb.sin().to(x.dtype)


def branch_masks(query_index: torch.Tensor, key_index: torch.Tensor, n_global: int, n_local: int):
    """(local, global) boolean (Q, K) masks of the Λ shape for queries and keys at these sequence indices."""
    distance = query_index[:, None] - key_index[None, :]
    local = (distance >= 0) & (distance < n_local)
    global_ = (key_index[None, :] < n_global) & (distance >= n_local)
    return local, global_


def _softmax_matmul(scores: torch.Tensor, allowed: torch.Tensor, padding_mask: torch.Tensor | None,
                    value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked softmax in fp32 (masked entries get exactly zero weight), then the weighted sum of values."""
    scores = scores.float()
    if padding_mask is not None:
        if padding_mask.dtype == torch.bool:
            allowed = allowed & padding_mask
        else:  # an additive mask
            scores = scores + padding_mask.float()
    scores = scores.masked_fill(~allowed, torch.finfo(torch.float32).min)
    weights = torch.softmax(scores, dim=-1).to(value.dtype)
    return weights @ value, weights


def _global_keys(key: torch.Tensor, shape: LambdaShape) -> torch.Tensor:
    """The first n_global keys, un-rotated to position 0 (the stationary keys)."""
    g = min(shape.n_global, key.shape[-2])
    return rotate(key[..., :g, :], -torch.arange(g, device=key.device), shape.inv_freq)


def _distance_capped_queries(query: torch.Tensor, query_positions: torch.Tensor, shape: LambdaShape) -> torch.Tensor:
    """Queries turned from their positions p_i to the fixed position d = n_local."""
    return rotate(query, shape.n_local - query_positions, shape.inv_freq)


def lambda_attention_masked(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, shape: LambdaShape,
                            query_positions: torch.Tensor, scaling: float,
                            padding_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: the full (Q, K) score matrix, masked to the Λ shape. query (B, H, Q, D) and key, value
    (B, H, K, D), RoPE already applied at their positions; the queries are the last Q of the K tokens.
    Returns the output (B, H, Q, D) and the attention weights (B, H, Q, K)."""
    Q, K = query.shape[-2], key.shape[-2]
    device = query.device
    local, global_ = branch_masks(torch.arange(K - Q, K, device=device), torch.arange(K, device=device),
                                  shape.n_global, shape.n_local)
    scores = (query @ key.transpose(-1, -2)) * scaling
    k_global = _global_keys(key, shape)
    g = k_global.shape[-2]
    global_scores = (_distance_capped_queries(query, query_positions, shape) @ k_global.transpose(-1, -2)) * scaling
    scores = torch.cat((torch.where(global_[:, :g], global_scores, scores[..., :g]), scores[..., g:]), dim=-1)
    return _softmax_matmul(scores, local | global_, padding_mask, value)


def lambda_attention_blockwise(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, shape: LambdaShape,
                               query_positions: torch.Tensor, scaling: float, padding_mask: torch.Tensor | None = None,
                               block_size: int | None = None) -> tuple[torch.Tensor, None]:
    """The same function in O(Q · (n_global + n_local)): query blocks of `block_size` (default n_local) read
    the global keys and the keys of their own local band only. Returns the output (B, H, Q, D)."""
    Q, K = query.shape[-2], key.shape[-2]
    device = query.device
    block = block_size or shape.n_local
    k_global = _global_keys(key, shape)
    g = k_global.shape[-2]
    global_index = torch.arange(g, device=device)
    q_global = _distance_capped_queries(query, query_positions, shape)
    outputs = []
    for start in range(0, Q, block):
        end = min(start + block, Q)
        first, last = K - Q + start, K - Q + end  # sequence indices of the block's queries: [first, last)
        lo = max(0, first - shape.n_local + 1)
        q_index = torch.arange(first, last, device=device)
        local, _ = branch_masks(q_index, torch.arange(lo, last, device=device), shape.n_global, shape.n_local)
        _, global_ = branch_masks(q_index, global_index, shape.n_global, shape.n_local)
        local_scores = query[..., start:end, :] @ key[..., lo:last, :].transpose(-1, -2)
        global_scores = q_global[..., start:end, :] @ k_global.transpose(-1, -2)
        scores = torch.cat((global_scores, local_scores), dim=-1) * scaling
        mask = None
        if padding_mask is not None:
            mask = torch.cat((padding_mask[..., start:end, :g], padding_mask[..., start:end, lo:last]), dim=-1)
        values = torch.cat((value[..., :g, :], value[..., lo:last, :]), dim=-2)
        out, _ = _softmax_matmul(scores, torch.cat((global_, local), dim=-1), mask, values)
        outputs.append(out)
    return torch.cat(outputs, dim=-2), None


def lm_infinite_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, scaling: float, dropout: float = 0.0, **kwargs):
    """A transformers attention function (AttentionInterface): Λ-shaped attention with the settings that
    `patch_model` put on the attention module. Evaluation only: attention dropout is not applied."""
    from transformers.models.llama.modeling_llama import repeat_kv

    shape: LambdaShape = module.lm_infinite
    key = repeat_kv(key, module.num_key_value_groups)
    value = repeat_kv(value, module.num_key_value_groups)
    Q, K = query.shape[-2], key.shape[-2]
    positions = kwargs.get("position_ids")
    if positions is None:
        positions = torch.arange(K - Q, K, device=query.device)[None]
    attend = lambda_attention_blockwise if shape.implementation == "blockwise" else lambda_attention_masked
    out, weights = attend(query, key, value, shape, positions, scaling, attention_mask)
    return out.transpose(1, 2).contiguous(), weights


def register() -> None:
    """Make `lm_infinite` a transformers attention implementation (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, lm_infinite_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)  # None for plain causal, else boolean (B, 1, Q, K)


def patch_model(model: nn.Module, n_global: int, n_local: int, implementation: str = "blockwise") -> nn.Module:
    """Switch a transformers RoPE causal LM (Llama and its kin) to Λ-shaped attention, in place."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"lm_infinite implementation: {implementation!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    if n_global < 0 or n_local < 1:
        raise ValueError(f"lm_infinite: need n_global >= 0 and n_local >= 1, got n_global={n_global}, n_local={n_local}")
    decoder = model.get_decoder()
    rotary = getattr(decoder, "rotary_emb", None)
    rope_type = getattr(rotary, "rope_type", None)
    if rotary is None or rope_type not in ROPE_TYPES or getattr(rotary, "attention_scaling", 1.0) != 1.0:
        raise ValueError(f"lm_infinite: needs a RoPE model whose rotation is given by inv_freq (rope_type one of "
                         f"{', '.join(ROPE_TYPES)}); got {type(model).__name__} with rope_type={rope_type}")
    register()
    shape = LambdaShape(int(n_global), int(n_local), rotary.inv_freq.detach().float().cpu().clone(), implementation)
    for layer in decoder.layers:
        layer.self_attn.lm_infinite = shape
    model.set_attn_implementation(NAME)
    return model


# -- methods -------------------------------------------------------------------------------------
def default_n_global(n_local: int) -> int:
    return min(10, max(1, n_local // 16))


class LongContext(Method):
    """Long-context evaluation of the unchanged model (the baseline LM-Infinite is compared with): perplexity
    on windows of the validation tokens at multiples of the training length, and passkey accuracy by length."""

    needs_task = frozenset({"tokens"})
    needs_model = frozenset({"causal-lm"})

    def __init__(self, name: str = "long_context", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 ppl_multiples: list[int] = (1, 4, 8, 16), ppl_sequences: int = 4, chunk_size: int | None = None,
                 passkey_multiples: list[int] = (1, 4, 8, 16), passkey_samples: int = 20, passkey_digits: int = 5,
                 passkey_filler: str = "sentence", eval_batch_size: int = 4, seed: int = 0):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        from methods.inference.passkey import FILLERS

        self.ppl_multiples = [int(m) for m in ppl_multiples]
        self.passkey_multiples = [int(m) for m in passkey_multiples]
        problems = []
        if any(m < 1 for m in self.ppl_multiples + self.passkey_multiples):
            problems.append("ppl_multiples and passkey_multiples must be positive integers")
        if passkey_filler not in FILLERS:
            problems.append(f"passkey_filler {passkey_filler!r} is not one of {', '.join(FILLERS)}")
        if min(ppl_sequences, passkey_samples, passkey_digits, eval_batch_size) < 1:
            problems.append("ppl_sequences, passkey_samples, passkey_digits and eval_batch_size must be >= 1")
        if chunk_size is not None and chunk_size < 1:
            problems.append(f"chunk_size must be >= 1 or null, got {chunk_size}")
        if problems:
            raise ValueError(f"{name}: " + "; ".join(problems))
        self.ppl_sequences = int(ppl_sequences)
        self.chunk_size = chunk_size
        self.passkey_samples = int(passkey_samples)
        self.passkey_digits = int(passkey_digits)
        self.passkey_filler = passkey_filler
        self.eval_batch_size = int(eval_batch_size)
        self.seed = int(seed)

    @property
    def trains(self) -> bool:
        return False

    def evaluate(self, model: nn.Module, data) -> dict[str, float]:
        from methods.inference.evaluation import long_context_perplexity, passkey_accuracy
        from methods.inference.passkey import passkey_samples

        L = int(data.seq_len)
        out: dict[str, float] = {}
        model.eval()
        for m in self.ppl_multiples:
            out[f"ppl_{m}x"] = long_context_perplexity(model, data.val, m * L, self.ppl_sequences,
                                                       self.eval_batch_size, self.chunk_size)
        for m in self.passkey_multiples:
            samples = passkey_samples(data.tokenizer, m * L, self.passkey_samples, seed=self.seed + m,
                                      digits=self.passkey_digits, filler=self.passkey_filler, filler_tokens=data.val)
            out[f"passkey_{m}x"] = passkey_accuracy(model, samples, data.tokenizer, self.eval_batch_size)
        return out


class LMInfinite(LongContext):
    """LM-Infinite: the same evaluation with Λ-shaped attention patched into the model (no training)."""

    def __init__(self, name: str = "lm_infinite", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 ppl_multiples: list[int] = (1, 4, 8, 16), ppl_sequences: int = 4, chunk_size: int | None = None,
                 passkey_multiples: list[int] = (1, 4, 8, 16), passkey_samples: int = 20, passkey_digits: int = 5,
                 passkey_filler: str = "sentence", eval_batch_size: int = 4, seed: int = 0,
                 n_global: int | None = None, n_local: int | None = None, implementation: str = "blockwise"):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio, ppl_multiples, ppl_sequences,
                         chunk_size, passkey_multiples, passkey_samples, passkey_digits, passkey_filler,
                         eval_batch_size, seed)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"lm_infinite.implementation: {implementation!r} is not one of {', '.join(IMPLEMENTATIONS)}")
        if (n_global is not None and n_global < 0) or (n_local is not None and n_local < 1):
            raise ValueError(f"lm_infinite: need n_global >= 0 and n_local >= 1, got {n_global}, {n_local}")
        self.n_global, self.n_local, self.implementation = n_global, n_local, implementation

    def prepare_model(self, model: nn.Module) -> nn.Module:
        n_local = self.n_local or int(model.config.max_position_embeddings)
        n_global = default_n_global(n_local) if self.n_global is None else self.n_global
        return patch_model(model, n_global, n_local, self.implementation)
