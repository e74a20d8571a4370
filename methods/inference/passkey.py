"""Passkey retrieval: the standard long-context probe (Mohtashami & Jaggi, "Landmark Attention",
arXiv:2305.16300; used by LM-Infinite, arXiv:2308.16137, sec. 5).

A random numeric passkey is hidden at a random depth of irrelevant filler text; the prompt ends with the
question, and the model must continue with the passkey:

    <filler ...> The pass key is 71432. Remember it. 71432 is the pass key. <filler ...>
    What is the pass key? The pass key is

Filler is the classic repeated sentence group ("The grass is green. ...", `filler="sentence"`: whole
groups after a fragment of one that fits the length; the needle sits between two groups) or a random
stretch of the validation tokens (`filler="val"`). Prompts are built in token ids, so each has exactly
`length` tokens. Everything is drawn from `numpy.random.default_rng(seed)`: the same seed gives the same
samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key? The pass key is"
FILLERS = ("sentence", "val")


@dataclass(frozen=True)
class PasskeySample:
    input_ids: torch.Tensor  # (length,) the prompt
    answer: str              # the passkey's digits
    answer_tokens: int       # tokens of " <passkey>" after the prompt (what the model must generate)
    depth: float             # where the needle starts, as a fraction of the filler (0: first, 1: last)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def passkey_samples(tokenizer, length: int, n: int, seed: int = 0, digits: int = 5, filler: str = "sentence",
                    filler_tokens: np.ndarray | None = None) -> list[PasskeySample]:
    """`n` passkey prompts of exactly `length` tokens. `filler="val"` cuts the filler from `filler_tokens`
    (a 1-D token stream: the validation tokens) at a random offset."""
    if filler not in FILLERS:
        raise ValueError(f"passkey filler: {filler!r} is not one of {', '.join(FILLERS)}")
    if filler == "val" and (filler_tokens is None or len(filler_tokens) < length):
        raise ValueError(f"passkey filler=val needs a token stream of at least {length} tokens")
    if digits < 1:
        raise ValueError(f"passkey digits must be >= 1, got {digits}")
    rng = np.random.default_rng(seed)
    question = _ids(tokenizer, QUESTION)
    group = _ids(tokenizer, FILLER)
    out = []
    for _ in range(n):
        key = str(int(rng.integers(10 ** (digits - 1), 10**digits)))
        needle = _ids(tokenizer, NEEDLE.format(key=key))
        n_fill = length - len(needle) - len(question)
        if n_fill < 0:
            raise ValueError(f"passkey length {length} is shorter than the needle and question "
                             f"({len(needle) + len(question)} tokens)")
        if filler == "sentence":  # whole groups before the question; the first one cut to fit the length
            fill = (group * (n_fill // len(group) + 1))[len(group) - n_fill % len(group):]
            boundaries = list(range(n_fill % len(group), n_fill + 1, len(group)))
            cut = boundaries[int(rng.integers(0, len(boundaries)))]  # the needle goes between two groups
        else:
            start = int(rng.integers(0, len(filler_tokens) - n_fill + 1))
            fill = [int(t) for t in filler_tokens[start:start + n_fill]]
            cut = int(rng.integers(0, n_fill + 1))
        ids = fill[:cut] + needle + fill[cut:] + question
        out.append(PasskeySample(torch.tensor(ids, dtype=torch.long), key, len(_ids(tokenizer, " " + key)),
                                 cut / max(n_fill, 1)))
    return out
