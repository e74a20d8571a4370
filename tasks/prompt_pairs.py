"""Prompted classification as pairs (dataset=trigger-cls): the pairs data kind (tasks/seq2seq.py) whose sources
take a prompt in front and whose targets are one verbalizer token each, for black-box prompt search
(methods/inference/claps.py; sources in methods/inference/claps_data.py). It provides "prompt-classification"
beside the pairs' own capabilities.

Tokenised as every pairs task (with model.init_from an HF model, by that model's own tokenizer).
"""

from __future__ import annotations

from tasks.seq2seq import Pairs


class PromptPairs(Pairs):
    """Pairs for prompt search: one-token targets (the verbalizers), sources a prompt goes in front of."""

    provides = frozenset({"seq2seq", "pairs", "prompt-classification"})
