"""Prepacking: A Simple Method for Fast Prefilling and Increased Throughput in Large Language Models
(Zhao, Israel, Van den Broeck, Grover; arXiv:2404.09529; code: siyan-zhao/prepacking).

Padded batching prefills B prompts as a (B, max_len) batch, so a batch of skewed lengths spends most of
its compute on pad tokens. Prepacking removes the padding:

  1. drop each prompt's last token x_i[-1]; it is fed later as the first decode step;
  2. bin-pack the prefix lengths n_i = len_i - 1 into bins of capacity C = max_i n_i (the paper uses the
     greedy `binpacking.to_constant_volume`; here first-fit-decreasing: <= 11/9 OPT + 6/9 bins, Dósa 2007);
  3. concatenate each bin's prefixes into one row; position ids restart at 0 for every prompt;
  4. attention mask = block-diagonal causal: token q of prompt i attends to token k iff both belong to
     prompt i and k <= q (a 4-D mask given to the model's SDPA/eager attention);
  5. one forward over the (rows, <= C) batch fills a KV cache per row; each prompt's K/V slice is cut out
     and left-padded into an ordinary (B, max_i n_i) batch cache (transformers `DynamicCache`);
  6. generation continues as with padded batching: feed x_i[-1] at position n_i, then greedy decoding.

Every prompt then sees exactly the keys/values, positions and context it would see alone, so the next-token
logits equal padded batching's (up to float rounding) while the prefill runs on sum(n_i) <= rows * C tokens
instead of B * max_len. Defaults from the paper: bins as long as the longest prompt, greedy packing (its
code packs full lengths into the longest full length; here the bins hold what is actually prefilled, the
prefixes). Generation goes through `methods.inference.evaluation.greedy_generate`,
the path every inference method shares. FlexAttention is not used: on the CPU it runs unfused (it
materialises the scores, like SDPA with a mask); SDPA takes the 4-D boolean mask on CPU and GPU alike.
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn

from methods.base import Method
from methods.inference.evaluation import greedy_generate, model_device

PACKERS = ("ffd", "binpacking")


# ---------------------------------------------------------------------------------------------- bin packing
def first_fit_decreasing(sizes: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of `sizes` grouped into bins of total size <= capacity: items in decreasing size (ties by
    index), each into the first bin with room, else a new bin."""
    if any(s > capacity for s in sizes):
        raise ValueError(f"capacity {capacity} is smaller than the largest item {max(sizes)}")
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        for b, room in enumerate(free):
            if sizes[i] <= room:
                bins[b].append(i)
                free[b] -= sizes[i]
                break
        else:
            bins.append([i])
            free.append(capacity - sizes[i])
    return bins


def pack_bins(sizes: Sequence[int], capacity: int, packer: str = "ffd") -> list[list[int]]:
    """Bins of item indices. packer: `ffd` (ours) or `binpacking` (the paper's package, if installed)."""
    if packer == "ffd":
        return first_fit_decreasing(sizes, capacity)
    if packer == "binpacking":
        import binpacking

        return [sorted(b) for b in binpacking.to_constant_volume(dict(enumerate(sizes)), capacity)]
    raise ValueError(f"packer: unknown '{packer}'; choose one of: {', '.join(PACKERS)}")


# ---------------------------------------------------------------------------------------------- packing
@dataclass
class PackedPrompts:
    """The prompts' prefixes (all tokens but the last) packed into rows."""

    input_ids: torch.Tensor     # (rows, row_len) token ids; pads after the last prompt of a row
    position_ids: torch.Tensor  # (rows, row_len) 0..n_i-1 for each prompt; pads 0
    segment_ids: torch.Tensor   # (rows, row_len) index of the prompt each token belongs to; pads -1
    bins: list[list[int]]       # prompt indices of each row, in row order
    row: list[int]              # prompt i sits in row[i] ...
    start: list[int]            # ... at columns start[i] : start[i] + length[i]
    length: list[int]           # n_i = len(prompt i) - 1
    last_tokens: torch.Tensor   # (B,) each prompt's held-out last token

    @property
    def num_tokens(self) -> int:
        return sum(self.length)


def pack_prompts(prompts: Sequence[torch.Tensor], capacity: int | None = None, packer: str = "ffd",
                 pad_id: int = 0) -> PackedPrompts:
    """Pack the prefixes of 1-D token tensors (each >= 2 tokens) into rows of at most `capacity` tokens
    (default: the longest prefix, as in the paper)."""
    lengths = [len(p) - 1 for p in prompts]
    if not prompts or min(lengths) < 1:
        raise ValueError("prepacking needs at least one prompt, each of at least 2 tokens")
    capacity = max(lengths) if capacity is None else int(capacity)
    bins = pack_bins(lengths, capacity, packer)
    row_len = max(sum(lengths[i] for i in b) for b in bins)
    ids = torch.full((len(bins), row_len), pad_id, dtype=torch.long)
    pos = torch.zeros_like(ids)
    seg = torch.full_like(ids, -1)
    row, start = [0] * len(prompts), [0] * len(prompts)
    for r, b in enumerate(bins):
        col = 0
        for i in b:
            n = lengths[i]
            ids[r, col:col + n] = prompts[i][:-1]
            pos[r, col:col + n] = torch.arange(n)
            seg[r, col:col + n] = i
            row[i], start[i] = r, col
            col += n
    last = torch.stack([p[-1] for p in prompts]).long()
    return PackedPrompts(ids, pos, seg, bins, row, start, lengths, last)


def block_diagonal_causal_mask(segment_ids: torch.Tensor, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """(rows, 1, T, T) mask: query q sees key k iff same segment and k <= q. Pads (segment -1) see the
    earlier pads of their row, so no row is empty. bool: True = attend; a float dtype: additive 0 / -inf."""
    T = segment_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    allowed = (segment_ids[:, :, None] == segment_ids[:, None, :]) & causal
    allowed = allowed[:, None]
    if dtype == torch.bool:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def _attention_mask_for(model: nn.Module, segment_ids: torch.Tensor) -> torch.Tensor:
    impl = getattr(model.config, "_attn_implementation", "sdpa")
    if impl == "sdpa":
        return block_diagonal_causal_mask(segment_ids, torch.bool)
    if impl == "eager":
        return block_diagonal_causal_mask(segment_ids, next(model.parameters()).dtype)
    raise ValueError(f"attn_implementation: prepacking passes a 4-D mask; use 'sdpa' or 'eager', not '{impl}'")


@torch.no_grad()
def prefill_packed(model: nn.Module, packed: PackedPrompts):
    """One forward over the packed rows; returns the rows' KV cache (a DynamicCache of (rows, H, row_len, D))."""
    from transformers import DynamicCache

    device = model_device(model)
    seg = packed.segment_ids.to(device)
    cache = DynamicCache(config=model.config)
    model(input_ids=packed.input_ids.to(device), position_ids=packed.position_ids.to(device),
          attention_mask=_attention_mask_for(model, seg), cache=cache, use_cache=True, logits_to_keep=1)
    return cache


def unpack_cache(row_cache, packed: PackedPrompts, config=None):
    """Cut each prompt's K/V out of the row cache and left-pad them into a batch cache (`config`: the
    model's, for its cache layout).

    Returns (DynamicCache with (B, H, L, D) per layer, L = max_i n_i; (B, L) attention mask, 1 on real
    tokens). Prompt i's keys/values sit in the last n_i slots; pad slots hold zeros."""
    from transformers import DynamicCache

    first = row_cache.layers[0].keys
    device, T = first.device, first.shape[2]
    lengths = torch.tensor(packed.length, device=device)
    L = int(lengths.max())
    slot = torch.arange(L, device=device)[None, :]                       # (1, L)
    pad = L - lengths[:, None]                                            # (B, 1) left pads per prompt
    valid = slot >= pad                                                   # (B, L)
    base = torch.tensor(packed.row, device=device) * T + torch.tensor(packed.start, device=device)
    flat_index = (base[:, None] + (slot - pad).clamp_min(0)).reshape(-1)  # (B * L,) into rows * T
    B = len(packed.length)

    def gather(x: torch.Tensor) -> torch.Tensor:  # (rows, H, T, D) -> (B, H, L, D)
        rows, H, _, D = x.shape
        flat = x.transpose(1, 2).reshape(rows * T, H, D)
        out = flat.index_select(0, flat_index).view(B, L, H, D).transpose(1, 2)
        return out.masked_fill(~valid[:, None, :, None], 0).contiguous()

    batch = DynamicCache(config=config)
    for layer_idx, layer in enumerate(row_cache.layers):
        batch.update(gather(layer.keys), gather(layer.values), layer_idx)
    return batch, valid.long()


@torch.no_grad()
def prepacked_generate(model: nn.Module, prompts: Sequence[torch.Tensor], max_new_tokens: int,
                       capacity: int | None = None, packer: str = "ffd", return_logits: bool = False):
    """Greedy continuation of each prompt: prepacked prefill, unpack, then the shared greedy decoder
    (its first step feeds every prompt's held-out last token). Returns (B, max_new_tokens) token ids
    (and their (B, max_new_tokens, V) logits with `return_logits`)."""
    packed = pack_prompts(prompts, capacity, packer)
    cache, mask = unpack_cache(prefill_packed(model, packed), packed, model.config)
    last = packed.last_tokens.to(mask.device)[:, None]
    mask = torch.cat([mask, torch.ones_like(last)], dim=1)
    return greedy_generate(model, last, max_new_tokens, attention_mask=mask, cache=cache, return_logits=return_logits)


def left_pad(prompts: Sequence[torch.Tensor], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, max_len) left-padded token ids and their attention mask: the padded-batching baseline's batch."""
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = p
        mask[i, T - len(p):] = 1
    return ids, mask


@torch.no_grad()
def padded_generate(model: nn.Module, prompts: Sequence[torch.Tensor], max_new_tokens: int,
                    return_logits: bool = False):
    """The baseline: left-pad all prompts to the longest, prefill the full batch, greedy decoding."""
    ids, mask = left_pad(prompts)
    return greedy_generate(model, ids, max_new_tokens, attention_mask=mask, return_logits=return_logits)


def padded_slots(prompts: Sequence[torch.Tensor]) -> int:
    """Token slots the padded prefill computes: B * max_len."""
    return len(prompts) * max(len(p) for p in prompts)


def packed_slots(packed: PackedPrompts) -> int:
    """Token slots the packed prefill computes (rows * row_len) plus the B tokens of the first decode step."""
    return packed.input_ids.numel() + len(packed.length)


# ---------------------------------------------------------------------------------------------- prompts
def skewed_lengths(n: int, min_len: int, max_len: int, skew: float, generator: torch.Generator) -> list[int]:
    """n lengths in [min_len, max_len], most of them short: min + (max - min) * u**skew, u ~ U(0, 1);
    the first is max_len, so the padded batch is as long as the longest prompt allowed."""
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    lengths = (min_len + (max_len - min_len) * u.pow(skew)).round().long().tolist()
    lengths[0] = max_len
    return lengths


def sample_prompts(tokens: np.ndarray | torch.Tensor, lengths: Sequence[int], generator: torch.Generator) -> list[torch.Tensor]:
    """Prompts of the given lengths cut from random places of a 1-D token stream."""
    tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    if len(tokens) <= max(lengths):
        raise ValueError(f"max_len: {max(lengths)} is not shorter than the {len(tokens)} tokens to sample from")
    starts = torch.randint(0, len(tokens) - max(lengths), (len(lengths),), generator=generator).tolist()
    return [tokens[s:s + n].clone() for s, n in zip(starts, lengths)]


def median_times(sides: dict[str, Callable[[], object]], repeats: int, sync: bool = False) -> dict[str, float]:
    """Median wall time of each side's call after one warm-up each; the order alternates between
    repeats, so drift in the machine's load hits every side alike. `sync`: CUDA-synchronise around calls."""
    barrier = torch.cuda.synchronize if sync else (lambda: None)
    for fn in sides.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(repeats):
        for name in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            barrier()
            t0 = time.perf_counter()
            sides[name]()
            barrier()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


# ---------------------------------------------------------------------------------------------- method
class Prepacking(Method):
    """Post-training: prefill a batch of skewed-length validation prompts both ways and compare."""

    needs_task = frozenset({"tokens"})
    needs_model = frozenset({"causal-lm"})

    def __init__(self, name: str = "prepacking", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 num_prompts: int = 32, min_len: int = 4, max_len: int | None = None, skew: float = 3.0,
                 max_new_tokens: int = 8, capacity: int | None = None, packer: str = "ffd", repeats: int = 3,
                 seed: int = 0):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        if packer not in PACKERS:
            raise ValueError(f"method.packer: unknown '{packer}'; choose one of: {', '.join(PACKERS)}")
        if packer == "binpacking" and importlib.util.find_spec("binpacking") is None:
            raise ValueError("method.packer: 'binpacking' is not installed (pip install binpacking); choose 'ffd'")
        if min_len < 2:
            raise ValueError(f"method.min_len: {min_len}; a prompt needs at least 2 tokens (a prefix and a last token)")
        if max_len is not None and max_len < min_len:
            raise ValueError(f"method.max_len: {max_len} is below method.min_len {min_len}")
        for key, value in (("num_prompts", num_prompts), ("max_new_tokens", max_new_tokens), ("repeats", repeats)):
            if int(value) < 1:
                raise ValueError(f"method.{key}: {value}; must be >= 1")
        if not skew > 0:
            raise ValueError(f"method.skew: {skew}; must be > 0 (1: uniform lengths, larger: more short prompts)")
        self.num_prompts, self.min_len, self.max_len = int(num_prompts), int(min_len), max_len
        self.skew, self.max_new_tokens, self.capacity = float(skew), int(max_new_tokens), capacity
        self.packer, self.repeats, self.seed = packer, int(repeats), int(seed)

    @property
    def trains(self) -> bool:
        return False

    def prompts(self, tokens, model: nn.Module) -> list[torch.Tensor]:
        max_len = self.max_len or int(model.config.max_position_embeddings)
        g = torch.Generator().manual_seed(self.seed)
        lengths = skewed_lengths(self.num_prompts, self.min_len, max_len, self.skew, g)
        return sample_prompts(tokens, lengths, g)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data) -> dict[str, float]:
        was_training = model.training
        model.eval()
        prompts = self.prompts(data.val, model)

        sides = {"packed": partial(prepacked_generate, model, prompts, 1, self.capacity, self.packer),
                 "padded": partial(padded_generate, model, prompts, 1)}
        times = median_times(sides, self.repeats, sync=model_device(model).type == "cuda")

        new_packed, logits_packed = prepacked_generate(model, prompts, self.max_new_tokens, self.capacity,
                                                       self.packer, return_logits=True)
        new_padded, logits_padded = padded_generate(model, prompts, self.max_new_tokens, return_logits=True)
        packed = pack_prompts(prompts, self.capacity, self.packer)
        pad_slots, pack_slots = padded_slots(prompts), packed_slots(packed)
        real = sum(len(p) for p in prompts)  # both sides compute these tokens
        model.train(was_training)
        return {
            "prefill_time_ratio": times["packed"] / times["padded"],
            "prefill_time_padded_s": times["padded"],
            "prefill_time_packed_s": times["packed"],
            "prefill_slots_ratio": pack_slots / pad_slots,
            "padding_fraction_padded": (pad_slots - real) / pad_slots,
            "padding_fraction_packed": (pack_slots - real) / pack_slots,
            "padding_waste_ratio": (pack_slots - real) / (pad_slots - real) if pad_slots > real else math.nan,
            "rows": float(len(packed.bins)),
            "prompts": float(len(prompts)),
            "first_logits_max_abs_diff": float((logits_packed[:, 0] - logits_padded[:, 0]).abs().max()),
            "generations_match": float(torch.equal(new_packed, new_padded)),
        }
