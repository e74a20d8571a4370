"""GEAR: An Efficient KV Cache Compression Recipe for Near-Lossless Generative Inference of LLM
(Kang et al., arXiv:2403.05527), with KIVI: A Tuning-Free Asymmetric 2bit Quantization for KV Cache
(Liu et al., arXiv:2402.02750) as its baseline; both as a `transformers` Cache (a `DynamicCache`
subclass), so any causal LM generates with them unchanged.

KIVI stores keys quantized per channel (each channel's groups of G consecutive tokens share a zero and a
step) and values per token (each token's groups of G consecutive channels of one head, as KIVI's code
quantizes every head on its own), b bits, with the most recent tokens kept in full precision: keys wait in
the window until R of them can be quantized together, values leave it one at a time, so the R newest
values stay exact.

The quantizer (kernels/kv_quant) computes the codes in fp32 from the zero and step as stored (rounded
to `store_dtype`), code = clamp(floor((x - zero) / step + 1/2), 0, 2^b - 1): ties round up. KIVI's code
(quant/new_pack.py) does the same steps in the cache's dtype, fp16, each of x - min and the division
rounded to fp16, and rounds with torch's round: ties to even. The codes differ only for entries within
an fp16 rounding of a point halfway between two levels.

GEAR (its version on KIVI's quantizer) compresses each chunk X (B x H x n x d: n tokens) as
X~ = D^ + S + L. `construction` says how; the default, "gear", follows the official code
(GenerationBench/GEARLM/Simulated/compress_function.py, `gearslkivi_channelQ_new` / `gearslkivi_tokenQ_new`):

    rows   keys: one row per channel (n entries: the channel over the chunk's tokens), groups of G tokens;
           values: one row per token with the H heads side by side (H d entries), groups of G consecutive
           channels across the heads (a group spans heads where d < G)
    S      in every row, the k largest and the k smallest entries, kept (fp16 values + int32 positions), with
           k = int(int(s B H n d) / B / n / 2) = int(s H d / 2) for keys and values alike (the official
           count: s of a token's H d entries; a key row has n entries, so keys keep 2k/n of their entries,
           6.25% at s = 2%, H d = 256, n = 64, against s for values); k <= half a row
    D^     Quant_b of the rows with the outlier positions filled with their row's mean (taken over the
           whole row, outliers included); D^ + S: the kept outlier values written back over it
    L      Q P^T, rank r approximation of the error R = X - (D^ + S) (0 at the outliers, up to their
           storage rounding) of each head in token layout (n x d, keys and values alike), by power
           iteration: P0 Gaussian (d x r), `power_iters` rounds Q = R P, P = R^T Q with QR
           orthonormalisation in the last, so L = Q Q^T R is a projection of R and ||R - L|| <= ||R|| (its
           span grows with r: the first r columns of one draw)
    X~     (D^ + S) + L everywhere, the outliers included (L is added on top of the restored outliers)

`construction=per_head` (this project's first reading of the paper, kept as an option): each head's chunk
is one n x d matrix (keys in channel layout d x n, values in token layout with groups within the head);
S = its ceil(s/2 n d) largest and ceil(s/2 n d) smallest entries, filled with the mean of the other
entries of their quantization group (so they widen no group's range); L approximates the error in the
quantization layout; X~ = D^ + L with the outliers then written over it, so X~ = X there exactly.

Where "gear" still departs from the official code: its quantizer (`..._cluster`) divides the range into
`quantize_bit ** 2 - 1` steps, which is 2^b - 1 only at b = 2 and 4 (b = 8 would get 63 steps, b = 1
none); here always 2^b - 1. It computes zero and step in fp32 and rounds ties to even; here as above
(`store_dtype` zero and step). Its keys leave the n mod G tokens past the last whole group unquantized,
and its values need G to divide H d; here a shorter last group is quantized with its own zero and step
(the same where G divides n_b and H d, as in the defaults). Its power iteration starts from an unseeded
uniform draw; here a seeded Gaussian.

Streaming: new tokens wait in a full-precision buffer of n_b tokens; whenever it is full the
whole buffer is compressed as one chunk (rank `stream_rank`); the prefill compresses floor(T / n_b) n_b
tokens at once (rank `rank`). s = 0 and r = 0 is exactly the plain quantizer.

Memory (bits per cached K/V element) counts what is stored: packed codes (32 bits a word), scales and
zeros, low-rank factors, outlier values and positions, and the full-precision window, each at its
storage width (`store_dtype`, fp16 as in both papers). Tokens attend in full precision in the forward
that computes them (as in KIVI's prefill); everything older is read back from the compressed store.

Defaults: KIVI 2 bits, G = 32, R = 128 (paper); GEAR 2 bits, G = 64, r = 4 at prefill and 2 per streamed
chunk, s = 2%, 3 power iterations, n_b = 64 (the official run templates for Llama-3-8B, `--quantize_bit 2
--group_size 64 --prefillrank 4 --rank 2 --left 0.02 --loop 3 --streaming_gap 64`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

import kernels
from kernels.kv_quant import BITS, KVQuantizer, QuantizedTensor
from methods.base import Method

log = logging.getLogger(__name__)
STORE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
VALUE_WINDOWS = ("sliding", "chunk")
CONSTRUCTIONS = ("gear", "per_head")  # gear: the official GEAR code's rows across heads; per_head: each head alone
AXES = ("channel", "token")  # keys: groups along tokens, per channel; values: groups along channels, per token


@dataclass(frozen=True)
class KVCompression:
    """How a KV cache is compressed. The defaults are plain KIVI (every head quantized on its own); GEAR
    (`Gear`) takes construction="gear"."""

    bits: int = 2
    group_size: int = 32
    buffer: int = 128  # KIVI's residual length R / GEAR's streaming buffer n_b (tokens kept in full precision)
    value_window: str = "sliding"  # sliding: values leave the window one at a time (KIVI); chunk: with the keys
    rank: int = 0  # low-rank error rank of the prefill chunk
    stream_rank: int = 0  # ... of every chunk compressed while generating
    outlier_ratio: float = 0.0  # s: fraction of each chunk's entries kept exact (half largest, half smallest)
    power_iters: int = 3
    store_dtype: torch.dtype = torch.float16  # everything kept in floating point
    seed: int = 0  # power-iteration start
    construction: str = "per_head"  # gear | per_head: how chunks are laid out into rows (module docstring)

    def __post_init__(self):
        problems = []
        if self.bits not in BITS:
            problems.append(f"bits: must be one of {', '.join(map(str, BITS))}, got {self.bits}")
        for key in ("group_size", "buffer", "power_iters"):
            if getattr(self, key) < 1:
                problems.append(f"{key}: must be >= 1, got {getattr(self, key)}")
        if self.rank < 0 or self.stream_rank < 0:
            problems.append(f"rank, stream_rank: must be >= 0, got {self.rank}, {self.stream_rank}")
        if not 0.0 <= self.outlier_ratio < 1.0:
            problems.append(f"outlier_ratio: must be in [0, 1), got {self.outlier_ratio}")
        if self.value_window not in VALUE_WINDOWS:
            problems.append(f"value_window: must be one of {', '.join(VALUE_WINDOWS)}, got {self.value_window!r}")
        elif self.value_window == "sliding" and (self.rank or self.stream_rank or self.outlier_ratio):
            problems.append("value_window: sliding quantizes values one token at a time: it takes rank=0, "
                            "stream_rank=0, outlier_ratio=0 (use value_window=chunk for GEAR)")
        if self.construction not in CONSTRUCTIONS:
            problems.append(f"construction: must be one of {', '.join(CONSTRUCTIONS)}, got {self.construction!r}")
        if self.store_dtype not in STORE_DTYPES.values():
            problems.append(f"store_dtype: must be one of {', '.join(STORE_DTYPES)}, got {self.store_dtype}")
        if problems:
            raise ValueError("kv cache: " + "; ".join(problems))


def n_outliers(numel: int, ratio: float) -> int:
    """construction=per_head: outliers kept on each side (largest, smallest) of a matrix of `numel` entries."""
    return min(math.ceil(ratio * numel / 2), numel // 2) if ratio > 0 else 0


def gear_outliers_per_row(shape: torch.Size, ratio: float, row_length: int) -> int:
    """construction=gear: outliers kept on each side of every row of a (B, H, n, d) chunk, the official
    count int(int(s B H n d) / B / n / 2) (at most half a row)."""
    if ratio <= 0:
        return 0
    batch, _, tokens, _ = shape
    return min(int(int(math.prod(shape) * ratio) / batch / tokens / 2), row_length // 2)


# ------------------------------------------------------------------------------------------------ one chunk
@dataclass
class CompressedChunk:
    """One compressed K or V chunk (B, H, n, d), held in its quantization layout (rows, cols), groups along
    cols: (B, H, d, n) for keys (axis "channel"); (B, H, n, d) for values ("token"), or (B, n, H d) where
    `heads` is set (construction=gear: a token's heads side by side)."""

    axis: str
    quantized: QuantizedTensor  # (B, H, rows, cols) or (B, n, H d)
    quantizer: KVQuantizer = field(repr=False)
    factors: tuple[torch.Tensor, torch.Tensor] | None = None  # Q, P: L = Q P^T (per_head: (.., rows, r), (.., cols, r); gear: (B, H, n, r), (B, H, d, r))
    outlier_index: torch.Tensor | None = None  # (..., m) int32 positions in the flattened rows x cols of the layout
    outlier_value: torch.Tensor | None = None  # (..., m)
    construction: str = "per_head"
    heads: int | None = None  # values of construction=gear: the quantization layout is (B, n, H d)

    @property
    def tokens(self) -> int:
        q = self.quantized
        return q.length if self.axis == "channel" else q.codes.shape[-2]

    def _natural(self, x: torch.Tensor) -> torch.Tensor:
        """The quantization layout back to (B, H, n, d)."""
        if self.axis == "channel":
            return x.transpose(-1, -2)
        if self.heads is not None:
            return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)
        return x

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """X~ (B, H, n, d): gear: D^ with S's entries put back, plus L; per_head: D^ + L, then S's entries."""
        x = self.quantizer.dequantize(self.quantized, torch.float32)
        lowrank = None if self.factors is None else self.factors[0].float() @ self.factors[1].float().transpose(-1, -2)
        if lowrank is not None and self.construction == "per_head":
            x = x + lowrank
        if self.outlier_index is not None:
            shape = x.shape
            x = x.flatten(-2).scatter(-1, self.outlier_index.long(), self.outlier_value.float()).reshape(shape)
        x = self._natural(x)
        if lowrank is not None and self.construction == "gear":
            x = x + lowrank
        return x.to(dtype)

    def stored_bits(self) -> int:
        bits = self.quantized.stored_bits()
        for t in (*(self.factors or ()), self.outlier_index, self.outlier_value):
            if t is not None:
                bits += t.numel() * t.element_size() * 8
        return bits

    def append_tokens(self, other: CompressedChunk) -> CompressedChunk:
        """Plain token-layout chunks concatenate along tokens (their groups never cross tokens)."""
        if self.axis != "token" or other.axis != "token" or self.factors or other.factors \
                or self.outlier_index is not None or other.outlier_index is not None or self.heads != other.heads:
            raise ValueError("only plain per-token chunks concatenate")
        a, b = self.quantized, other.quantized
        return replace(self, quantized=replace(a, codes=torch.cat([a.codes, b.codes], -2),
                                               scale=torch.cat([a.scale, b.scale], -2),
                                               zero=torch.cat([a.zero, b.zero], -2)))


def group_mean_fill(x: torch.Tensor, mask: torch.Tensor, group_size: int) -> torch.Tensor:
    """x with its masked entries replaced by the mean of the unmasked entries of their quantization group
    (groups of `group_size` along the last axis), so they stretch no group's range."""
    n = x.shape[-1]
    pad = -n % group_size
    keep = (~mask).float()
    xs = nn.functional.pad(x * keep, (0, pad)).unflatten(-1, (-1, group_size))
    ks = nn.functional.pad(keep, (0, pad)).unflatten(-1, (-1, group_size))
    mean = (xs.sum(-1) / ks.sum(-1).clamp_min(1)).repeat_interleave(group_size, -1)[..., :n]
    return torch.where(mask, mean, x)


def power_iteration(err: torch.Tensor, rank: int, iters: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, P) with Q orthonormal (..., m, r) and P = err^T Q (..., n, r): L = Q P^T ~ err, by subspace
    iteration from a seeded Gaussian start whose first r columns do not depend on r."""
    *lead, m, n = err.shape
    gen = torch.Generator().manual_seed(seed)
    p = torch.randn(rank, *lead, n, generator=gen).movedim(0, -1).to(err.device)  # (..., n, r)
    q = p
    for i in range(iters):
        last = i == iters - 1
        if last:
            p = torch.linalg.qr(p).Q
        q = err @ p
        if last:
            q = torch.linalg.qr(q).Q
        p = err.transpose(-1, -2) @ q
    return q, p


def compress(x: torch.Tensor, axis: str, spec: KVCompression, rank: int, quantizer: KVQuantizer) -> CompressedChunk:
    """GEAR's X~ = D^ + S + L of one chunk x (B, H, n, d), built as `spec.construction` says; rank 0 and
    outlier_ratio 0 give the plain quantizer's D^ alone (per_head: KIVI's)."""
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    if spec.construction == "gear":
        return _compress_gear(x, axis, spec, rank, quantizer)
    return _compress_per_head(x, axis, spec, rank, quantizer)


def _compress_gear(x: torch.Tensor, axis: str, spec: KVCompression, rank: int, quantizer: KVQuantizer
                   ) -> CompressedChunk:
    """The official construction: rows per key channel / per token across heads, k outliers a side per row
    filled with the row's mean, L of the error per head (n x d) added on top of everything."""
    B, H, n, d = x.shape
    xf = x.float()
    if axis == "channel":
        w, heads = xf.transpose(-1, -2), None  # (B, H, d, n): a row per channel (heads apart or not: the same)
    else:
        w, heads = xf.transpose(1, 2).reshape(B, n, H * d), H  # (B, n, H d): a row per token, heads side by side
    rows, cols = w.shape[-2:]
    k = gear_outliers_per_row(x.shape, spec.outlier_ratio, cols)
    index = value = None
    w_q = w
    if k:
        at = torch.cat([w.topk(k, -1).indices, w.topk(k, -1, largest=False).indices], -1)  # (..., rows, 2k)
        value = w.gather(-1, at).flatten(-2).to(spec.store_dtype)
        w_q = w.scatter(-1, at, w.mean(-1, keepdim=True).expand_as(at))  # the row mean, outliers included
        index = (at + torch.arange(rows, device=w.device)[:, None] * cols).flatten(-2).to(torch.int32)
    quantized = quantizer(w_q, spec.bits, spec.group_size, scale_dtype=spec.store_dtype)
    chunk = CompressedChunk(axis, quantized, quantizer, None, index, value, "gear", heads)
    r = min(rank, n, d)
    if r:
        err = xf - chunk.dequantize(torch.float32)  # D^ with the outliers put back: ~0 there
        q, p = power_iteration(err, r, spec.power_iters, spec.seed)  # per head, token layout (n x d)
        chunk.factors = (q.to(spec.store_dtype), p.to(spec.store_dtype))
    return chunk


def _compress_per_head(x: torch.Tensor, axis: str, spec: KVCompression, rank: int, quantizer: KVQuantizer
                       ) -> CompressedChunk:
    """Each head's n x d chunk alone: its extremes, group-mean filled, kept exact over D^ + L."""
    w = (x.transpose(-1, -2) if axis == "channel" else x).float()  # groups along the last axis
    rows, cols = w.shape[-2:]
    k = n_outliers(rows * cols, spec.outlier_ratio)
    index = value = None
    mask = None
    if k:
        flat = w.flatten(-2)
        index = torch.cat([flat.topk(k, -1).indices, flat.topk(k, -1, largest=False).indices], -1)
        value = flat.gather(-1, index).to(spec.store_dtype)
        mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(-1, index, True).reshape(w.shape)
        w_q = group_mean_fill(w, mask, spec.group_size)
    else:
        w_q = w
    quantized = quantizer(w_q, spec.bits, spec.group_size, scale_dtype=spec.store_dtype)
    factors = None
    r = min(rank, rows, cols)
    if r:
        err = w - quantizer.dequantize(quantized, torch.float32)
        if mask is not None:
            err = err.masked_fill(mask, 0.0)
        q, p = power_iteration(err, r, spec.power_iters, spec.seed)
        factors = (q.to(spec.store_dtype), p.to(spec.store_dtype))
    return CompressedChunk(axis, quantized, quantizer, factors,
                           None if index is None else index.to(torch.int32), value)


# ------------------------------------------------------------------------------------------------ the cache
class CompressedKVLayer(DynamicLayer):
    """One layer's compressed KV cache. `keys` / `values` (DynamicLayer's) hold the full-precision window;
    `key_chunks` / `value_chunks` the compressed past, oldest first."""

    is_croppable = False

    def __init__(self, spec: KVCompression, quantizer: KVQuantizer):
        super().__init__()
        self.spec, self.quantizer = spec, quantizer
        self.key_chunks: list[CompressedChunk] = []
        self.value_chunks: list[CompressedChunk] = []
        self.cumulative_length = 0
        # what the compressed chunks dequantize to, kept so that a step does not re-read every chunk (on a
        # GPU a fused kernel would read the packed codes inside attention; the accounting counts the chunks)
        self._old_keys: torch.Tensor | None = None
        self._old_values: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self.keys = key_states.new_zeros((*key_states.shape[:-2], 0, key_states.shape[-1]), dtype=self.spec.store_dtype)
        self.values = value_states.new_zeros((*value_states.shape[:-2], 0, value_states.shape[-1]),
                                             dtype=self.spec.store_dtype)
        self._old_keys = key_states.new_zeros(self.keys.shape)
        self._old_values = value_states.new_zeros(self.values.shape)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        dtype = key_states.dtype
        keys = torch.cat([self._old_keys.to(dtype), self.keys.to(dtype), key_states], -2)
        values = torch.cat([self._old_values.to(dtype), self.values.to(dtype), value_states], -2)
        self.cumulative_length += key_states.shape[-2]
        self.keys = torch.cat([self.keys, key_states.to(self.spec.store_dtype)], -2)
        self.values = torch.cat([self.values, value_states.to(self.spec.store_dtype)], -2)
        self._flush()
        return keys, values

    def _flush(self) -> None:
        spec = self.spec
        full = self.keys.shape[-2] // spec.buffer * spec.buffer
        rank = spec.rank if not self.key_chunks else spec.stream_rank
        if full:
            self._push("keys", compress(self.keys[..., :full, :], "channel", spec, rank, self.quantizer))
            self.keys = self.keys[..., full:, :]
            if spec.value_window == "chunk":
                self._push("values", compress(self.values[..., :full, :], "token", spec, rank, self.quantizer))
                self.values = self.values[..., full:, :]
        if spec.value_window == "sliding" and self.values.shape[-2] > spec.buffer:
            leaving = self.values.shape[-2] - spec.buffer
            chunk = compress(self.values[..., :leaving, :], "token", spec, 0, self.quantizer)
            self.values = self.values[..., leaving:, :]
            self._push("values", chunk, merge=True)

    def _push(self, which: str, chunk: CompressedChunk, merge: bool = False) -> None:
        chunks = self.key_chunks if which == "keys" else self.value_chunks
        if merge and chunks:
            chunks[-1] = chunks[-1].append_tokens(chunk)
        else:
            chunks.append(chunk)
        old = "_old_keys" if which == "keys" else "_old_values"
        setattr(self, old, torch.cat([getattr(self, old), chunk.dequantize(getattr(self, old).dtype)], -2))

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def reset(self) -> None:
        super().reset()
        self.key_chunks, self.value_chunks = [], []
        self._old_keys = self._old_values = None
        self.cumulative_length = 0

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("a compressed KV cache cannot be cropped")

    def _no_batch_edits(self, *args, **kwargs) -> None:
        raise NotImplementedError("a compressed KV cache does not support beam search or batch edits")

    reorder_cache = batch_repeat_interleave = batch_select_indices = _no_batch_edits

    def stored_bits(self) -> int:
        chunks = sum(c.stored_bits() for c in (*self.key_chunks, *self.value_chunks))
        window = 0 if not self.is_initialized else (self.keys.numel() + self.values.numel()) * self.keys.element_size() * 8
        return chunks + window

    def elements(self) -> int:
        """K and V elements this layer represents (B * H * T * d, twice)."""
        if not self.is_initialized:
            return 0
        return 2 * self.cumulative_length * self.keys[..., :1, :].numel()

    def compressed_tokens(self) -> int:
        return sum(c.tokens for c in self.key_chunks)


class CompressedKVCache(DynamicCache):
    """A DynamicCache whose layers are `CompressedKVLayer`s (KIVI or GEAR, per `spec`)."""

    def __init__(self, spec: KVCompression, quantizer: KVQuantizer | None = None):
        super().__init__()
        self.spec = spec
        self.layer_class_to_replicate = partial(CompressedKVLayer, spec, quantizer or kernels.get("kv_quant"))

    def stored_bits(self) -> int:
        return sum(layer.stored_bits() for layer in self.layers)

    def bits_per_element(self) -> float:
        elements = sum(layer.elements() for layer in self.layers)
        return self.stored_bits() / max(elements, 1)

    def compressed_fraction(self) -> float:
        """Fraction of the cached tokens (keys) held compressed."""
        total = sum(layer.cumulative_length for layer in self.layers)
        return sum(layer.compressed_tokens() for layer in self.layers) / max(total, 1)


# ------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def forced_logits(model: nn.Module, prompts: torch.Tensor, continuation: torch.Tensor, cache) -> torch.Tensor:
    """(B, steps, V) fp32 next-token logits after the prompt and after each continuation token but the
    last, read through `cache` (teacher forcing: the compressed run sees the reference's tokens)."""
    out = model(input_ids=prompts, cache=cache, use_cache=True, logits_to_keep=1)
    logits = [out.logits[:, -1].float()]
    for t in range(continuation.shape[1] - 1):
        out = model(input_ids=continuation[:, t:t + 1], cache=cache, use_cache=True)
        logits.append(out.logits[:, -1].float())
    return torch.stack(logits, 1)


def seeded_prompts(tokens, n: int, length: int, seed: int) -> torch.Tensor:
    """(n, length) windows of a 1-D token stream (array or tensor) at seeded random offsets."""
    if len(tokens) <= length:
        raise ValueError(f"prompt_len {length} is not shorter than the {len(tokens)} validation tokens")
    starts = torch.randint(0, len(tokens) - length, (n,), generator=torch.Generator().manual_seed(seed))
    return torch.stack([torch.as_tensor(np.array(tokens[s:s + length])) for s in starts.tolist()]).long()


@torch.no_grad()
def compare_with_full_cache(model: nn.Module, prompts: torch.Tensor, new_tokens: int, spec: KVCompression,
                            quantizer: KVQuantizer) -> dict[str, float]:
    """Next-token KL(full || compressed) along the full-precision cache's greedy continuation (the
    positions that read compressed entries: every step after the first), greedy token agreement, and the
    compressed cache's bits per element (as it stands after the compressed greedy run)."""
    from methods.inference.evaluation import greedy_generate

    prompts = prompts.to(next(model.parameters()).device)
    ref_tokens = greedy_generate(model, prompts, new_tokens)
    ref_logits = forced_logits(model, prompts, ref_tokens, DynamicCache())
    logits = forced_logits(model, prompts, ref_tokens, CompressedKVCache(spec, quantizer))
    ref_logp, logp = ref_logits.double().log_softmax(-1), logits.double().log_softmax(-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)[:, 1:]
    cache = CompressedKVCache(spec, quantizer)
    tokens = greedy_generate(model, prompts, new_tokens, cache=cache)
    bpe = cache.bits_per_element()
    return {"kl": float(kl.mean()) if kl.numel() else 0.0,
            "token_match": float((tokens == ref_tokens).float().mean()),
            "bits_per_element": bpe,
            "compression_ratio": 16.0 / bpe,
            "compressed_fraction": cache.compressed_fraction()}


# ------------------------------------------------------------------------------------------------ methods
class KVCacheMethod(Method):
    """A post-training KV-cache compression: no training; `evaluate` compares the compressed cache with the
    full-precision one on `n_prompts` seeded validation windows of `prompt_len` tokens (null: the model's
    context minus `new_tokens`), `new_tokens` greedy steps each."""

    needs_task = frozenset({"tokens"})
    needs_model = frozenset({"causal-lm"})

    def __init__(self, spec: KVCompression, name: str, lr: float, betas, eps: float, weight_decay: float,
                 warmup_steps: int, min_lr_ratio: float, backend: str | None, n_prompts: int, prompt_len: int | None,
                 new_tokens: int, seed: int):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        problems = []
        if backend is not None and backend not in kernels.known_backends("kv_quant"):
            problems.append(f"method.backend: {backend!r} is not one of {', '.join(kernels.known_backends('kv_quant'))}")
        if n_prompts < 1 or new_tokens < 2:
            problems.append(f"method.n_prompts, method.new_tokens: must be >= 1 and >= 2, got {n_prompts}, {new_tokens}")
        if prompt_len is not None and prompt_len < 1:
            problems.append(f"method.prompt_len: must be >= 1 or null, got {prompt_len}")
        if problems:
            raise ValueError("; ".join(problems))
        self.spec, self.backend = spec, backend
        self.n_prompts, self.prompt_len, self.new_tokens, self.seed = n_prompts, prompt_len, new_tokens, seed

    @property
    def trains(self) -> bool:
        return False

    def quantizer(self) -> KVQuantizer:
        return self.kernel("kv_quant", self.backend)  # null: the hardware config's kernels.kv_quant

    def evaluate(self, model: nn.Module, data) -> dict[str, float]:
        length = self.prompt_len or max(1, model.config.max_position_embeddings - self.new_tokens)
        prompts = seeded_prompts(data.val, self.n_prompts, length, self.seed)
        if length + self.new_tokens - 1 < self.spec.buffer:  # the last token is generated, never cached
            log.warning("%s: %d prompt + %d new tokens fit in the %d-token full-precision window: nothing is "
                        "compressed (set %s.prompt_len or a smaller buffer)", self.name, length, self.new_tokens,
                        self.spec.buffer, self.name)
        model.eval()
        return compare_with_full_cache(model, prompts, self.new_tokens, self.spec, self.quantizer())


def _store_dtype(name: str, value: str) -> torch.dtype:
    if value not in STORE_DTYPES:
        raise ValueError(f"method.store_dtype: {value!r} is not one of {', '.join(STORE_DTYPES)}")
    return STORE_DTYPES[value]


def _spec(name: str, **kw) -> KVCompression:
    try:
        return KVCompression(**kw)
    except ValueError as e:
        raise ValueError("; ".join(f"method.{p}" for p in str(e).removeprefix("kv cache: ").split("; "))) from None


class Kivi(KVCacheMethod):
    """KIVI: keys per channel, values per token (groups within a head), b bits in groups of G, R newest
    tokens in full precision."""

    def __init__(self, name: str = "kivi", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 bits: int = 2, group_size: int = 32, residual_length: int = 128, store_dtype: str = "float16",
                 backend: str | None = None, n_prompts: int = 4, prompt_len: int | None = None,
                 new_tokens: int = 32, seed: int = 0):
        spec = _spec(name, bits=bits, group_size=group_size, buffer=residual_length, value_window="sliding",
                     construction="per_head", store_dtype=_store_dtype(name, store_dtype), seed=seed)
        super().__init__(spec, name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio, backend, n_prompts,
                         prompt_len, new_tokens, seed)


class Gear(KVCacheMethod):
    """GEAR: KIVI-style quantization + low-rank error + sparse outliers, streamed in chunks of n_b tokens;
    `construction`: gear (the official code's, the default) or per_head (see the module docstring)."""

    def __init__(self, name: str = "gear", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 bits: int = 2, group_size: int = 64, buffer: int = 64, rank: int = 4, stream_rank: int = 2,
                 outlier_ratio: float = 0.02, power_iters: int = 3, construction: str = "gear",
                 store_dtype: str = "float16", backend: str | None = None, n_prompts: int = 4,
                 prompt_len: int | None = None, new_tokens: int = 32, seed: int = 0):
        spec = _spec(name, bits=bits, group_size=group_size, buffer=buffer, value_window="chunk", rank=rank,
                     stream_rank=stream_rank, outlier_ratio=float(outlier_ratio), power_iters=power_iters,
                     construction=construction, store_dtype=_store_dtype(name, store_dtype), seed=seed)
        super().__init__(spec, name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio, backend, n_prompts,
                         prompt_len, new_tokens, seed)
