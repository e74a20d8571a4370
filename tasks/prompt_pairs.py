"""Prompted classification as pairs (dataset=trigger-cls): the pairs data kind (tasks/seq2seq.py) whose sources
take a prompt in front and whose targets are one verbalizer token each, for black-box prompt search
(methods/inference/claps.py; sources in methods/inference/claps_data.py). It provides "prompt-classification"
beside the pairs' own capabilities.

With model.init_from an HF model (hf://google/flan-t5-base, or a local HF directory with a tokenizer) the pairs
are tokenised with that model's own tokenizer (its ids are what its embeddings were trained on; T5's pad 0,
EOS 1); otherwise with dataset.tokenizer as for any pairs task.
"""

from __future__ import annotations

from pathlib import Path

from tasks.base import BuildContext
from tasks.errors import ConfigError
from tasks.seq2seq import Pairs, Seq2SeqData


def pretrained_tokenizer_source(model_source: str | None) -> str | None:
    """The tokenizer name or directory of model.init_from, where it is an HF model; else None."""
    source = str(model_source or "")
    if source.startswith("hf://"):
        return source.removeprefix("hf://")
    path = Path(source).expanduser()
    if source and path.is_dir() and any((path / f).exists() for f in ("tokenizer.json", "spiece.model")):
        return str(path)
    return None


class PromptPairs(Pairs):
    """Pairs for prompt search: one-token targets (the verbalizers), sources a prompt goes in front of."""

    provides = frozenset({"seq2seq", "pairs", "prompt-classification"})

    def build(self, ctx: BuildContext) -> Seq2SeqData:
        name = pretrained_tokenizer_source(ctx.model_source)
        if name is None:
            return super().build(ctx)
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(name)
        if tok.pad_token_id != 0 or tok.eos_token_id != 1:
            raise ConfigError(f"model.init_from: {name}'s tokenizer has pad {tok.pad_token_id} and EOS "
                              f"{tok.eos_token_id}; the pairs need T5's pad 0 and EOS 1")
        corpus = self.generator.generate(ctx.cache_dir)

        def ids(texts: list[str]) -> list[list[int]]:
            rows = tok(texts, add_special_tokens=False)["input_ids"]
            return [[*r[:ctx.seq_len - 1], tok.eos_token_id] for r in rows]

        train = list(zip(ids(corpus.train_source), ids(corpus.train_target)))
        val = list(zip(ids(corpus.val_source), ids(corpus.val_target)))
        return Seq2SeqData(train, val, list(corpus.val_target), tok, len(tok), ctx.seq_len, len(train), len(val),
                           f"{self.source}-{name}", tokenizer_kind="bpe", decoding=dict(self.decoding),
                           sources=list(corpus.val_source))
