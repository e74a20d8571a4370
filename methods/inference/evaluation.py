"""What inference methods share: greedy generation with a KV cache, long-context perplexity, passkey accuracy.

Everything runs a transformers causal LM as it is (a patched attention, a custom `Cache` subclass or a
different batching plugs in from outside):

- `greedy_generate(model, input_ids, max_new_tokens, attention_mask=None, cache=None)`: batched greedy
  decoding. Prompts of different lengths are left-padded with `attention_mask` marking the real tokens;
  positions restart at each prompt's first real token. With a cache (default: a fresh `DynamicCache`;
  any `transformers.Cache` subclass may be passed, e.g. a quantized one) the prompt is prefilled once
  and every step feeds one token; with `use_cache=False` every step re-reads the whole sequence (the
  reference the cached path must equal). A model whose output also has `generation_logits` (ULD's
  logit difference, methods/unlearning/uld.py: −1e3 outside the target's relative-top set, as the ULD code's
  decoder) is decoded on the argmax of those; `logits` stay what `return_logits` returns.
- `token_nll(model, ids, chunk_size=None)`: the next-token negative log-likelihood of every position of
  (B, T) token ids, the whole sequence in one forward or `chunk_size` tokens at a time with the KV cache
  carried between chunks (the same numbers in causal attention, with bounded logits memory).
- `long_context_perplexity(model, tokens, length, ...)`: perplexity over `n_sequences` consecutive windows
  of `length` tokens of a token stream (e.g. the validation tokens), every token of each window scored
  with the full window as context.
- `passkey_accuracy(model, samples, tokenizer)`: exact-match accuracy of greedy answers on passkey samples
  (methods/inference/passkey.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of left-padded rows: 0 at each row's first real token (pads get 0 too)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


@torch.no_grad()
def greedy_generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
                    attention_mask: torch.Tensor | None = None, cache=None, use_cache: bool = True,
                    eos_token_id: int | None = None, return_logits: bool = False):
    """Greedy continuation of (B, T) prompts: (B, max_new_tokens) new token ids, and with `return_logits`
    also their (B, max_new_tokens, V) next-token logits (fp32). Rows that emitted `eos_token_id` keep
    emitting it. `cache`: a `transformers.Cache` to fill (default: a new DynamicCache). Where the model's output
    has `generation_logits`, each token is their argmax (ULD: restricted to the target's relative-top set)."""
    from transformers import DynamicCache

    device = model_device(model)
    ids = input_ids.to(device)
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask.to(device).long()
    if use_cache and cache is None:
        cache = DynamicCache(config=model.config)
    finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=device)
    new_tokens, new_logits = [], []
    step_ids, step_mask = ids, mask
    for _ in range(max_new_tokens):
        if use_cache:
            position_ids = _positions(step_mask)[:, -step_ids.shape[1]:]
            out = model(input_ids=step_ids, attention_mask=step_mask, position_ids=position_ids, cache=cache,
                        use_cache=True, logits_to_keep=1)
        else:
            out = model(input_ids=step_ids, attention_mask=step_mask, position_ids=_positions(step_mask),
                        use_cache=False, logits_to_keep=1)
        logits = out.logits[:, -1].float()
        scores = getattr(out, "generation_logits", None)  # what to take the argmax of, where it is not the logits
        token = (logits if scores is None else scores[:, -1]).argmax(-1)
        if eos_token_id is not None:
            token = torch.where(finished, torch.full_like(token, eos_token_id), token)
            finished |= token == eos_token_id
        new_tokens.append(token)
        if return_logits:
            new_logits.append(logits)
        step_mask = torch.cat([step_mask, torch.ones_like(step_mask[:, :1])], dim=1)
        if use_cache:
            step_ids = token[:, None]
        else:
            step_ids = torch.cat([step_ids, token[:, None]], dim=1)
    tokens = torch.stack(new_tokens, dim=1) if new_tokens else ids.new_zeros(ids.shape[0], 0)
    if return_logits:
        return tokens, (torch.stack(new_logits, dim=1) if new_logits else torch.zeros(ids.shape[0], 0, 0))
    return tokens


@torch.no_grad()
def token_nll(model: nn.Module, ids: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """(B, T-1) fp32 negative log-likelihoods of ids[:, 1:] given their prefixes. `chunk_size`: prefill that
    many tokens per forward, keeping the KV cache between chunks (None: the whole sequence at once)."""
    from transformers import DynamicCache

    ids = ids.to(model_device(model))
    T = ids.shape[1]
    chunk = T if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    cache = DynamicCache(config=model.config) if chunk < T else None
    out = []
    for start in range(0, T - 1, chunk):
        end = min(start + chunk, T - 1)  # the last token is only a target
        position_ids = torch.arange(start, end, device=ids.device)[None].expand(ids.shape[0], -1)
        logits = model(input_ids=ids[:, start:end], position_ids=position_ids, cache=cache,
                       use_cache=cache is not None).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        out.append(-logp.gather(-1, ids[:, start + 1:end + 1, None]).squeeze(-1))
    return torch.cat(out, dim=1)


def windows(tokens: np.ndarray | torch.Tensor, length: int, n_sequences: int) -> torch.Tensor:
    """(n, length) consecutive non-overlapping windows from the start of a 1-D token stream."""
    tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    n = min(int(n_sequences), len(tokens) // length)
    if n < 1:
        raise ValueError(f"a sequence of {length} tokens is longer than the {len(tokens)} tokens to evaluate on")
    return tokens[: n * length].view(n, length)


@torch.no_grad()
def long_context_perplexity(model: nn.Module, tokens: np.ndarray | torch.Tensor, length: int, n_sequences: int = 4,
                            batch_size: int = 4, chunk_size: int | None = None) -> float:
    """exp(mean NLL) of every next token in up to `n_sequences` windows of `length` consecutive tokens."""
    seqs = windows(tokens, length, n_sequences)
    total, count = 0.0, 0
    for i in range(0, len(seqs), batch_size):
        nll = token_nll(model, seqs[i:i + batch_size], chunk_size)
        total += float(nll.double().sum())
        count += nll.numel()
    return math.exp(total / count)


_FIRST_NUMBER = re.compile(r"\d+")


def passkey_correct(generated_text: str, answer: str) -> bool:
    """The first run of digits in the generated text is exactly the passkey."""
    found = _FIRST_NUMBER.search(generated_text)
    return found is not None and found.group() == answer


@torch.no_grad()
def passkey_accuracy(model: nn.Module, samples: Sequence, tokenizer, batch_size: int = 8) -> float:
    """Fraction of samples (methods.inference.passkey.PasskeySample) whose greedy answer is the passkey.
    Samples of one batch must have prompts of equal length (the generator's are, per length)."""
    correct = 0
    for i in range(0, len(samples), batch_size):
        batch = samples[i:i + batch_size]
        prompts = torch.stack([s.input_ids for s in batch])
        new = greedy_generate(model, prompts, max(s.answer_tokens for s in batch) + 1)
        for s, ids in zip(batch, new.tolist()):
            correct += passkey_correct(tokenizer.decode(ids), s.answer)
    return correct / max(len(samples), 1)
