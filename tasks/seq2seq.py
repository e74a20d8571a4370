"""The pairs data kind: source -> target pairs for encoder-decoders (T5: models/t5.py; GNMT: models/gnmt.py), from a
generator or a local file (tasks/pair_sources.py: cipher-mt, reverse, noisy-copy, file, hf, or a class of your own),
a word-level or BPE tokenizer shared by source and target and trained locally, (B, 2, L) batches that resume
exactly, the LightningModule, and BLEU and chrF (sacrebleu) of greedy or beam-search translations.

A batch is one tensor: batch[:, 0] sources, batch[:, 1] targets ending in EOS, right-padded with pad (id 0)
to the longest of either in the batch (methods/seq2seq.py). Training targets are the source's (noisy ones for
noisy-copy); validation loss, BLEU and chrF use the validation references. Ids 0, 1, 2 are <pad> (also T5's
decoder start), </s> and <unk> in every tokenizer.

    dataset.tokenizer.kind  word  one token per whitespace-separated word (the source's vocabulary where it fixes
                                  one, else every word of the training pairs seen >= min_frequency times)
                            bpe   a shared source/target BPE of vocab_size pieces with word starts marked "▁"
                                  (GNMT's shared wordpiece vocabulary; GNMT's WPM picks pieces by likelihood,
                                  BPE by merge frequency)
    dataset.decoding        beam_size 1 and no penalties: greedy; else beam search scored by GNMT's
                            log P / lp + cp (methods/seq2seq.py BeamScorer); evaluation only (not in the cache key
                            of the runner's trained models)
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from methods.losses.noisy_copy import EOS, PAD, UNK
from methods.module import MethodModule
from methods.seq2seq import decode, split_batch
from tasks.base import BuildContext, Task, TaskData
from tasks.batches import ResumableBatchSampler
from tasks.errors import ConfigError
from tasks.pair_sources import PairCorpus, source_class

log = logging.getLogger(__name__)
SPECIALS = (PAD, EOS, UNK)  # ids 0, 1, 2: T5's pad = decoder start (0) and EOS (1)
TOKENIZER_KINDS = ("word", "bpe")
DECODING_KEYS = ("beam_size", "length_penalty", "coverage_penalty")


# ---------------------------------------------------------------------------------------------- data
def word_tokenizer(vocabulary: list[str]):
    """One token per word (whitespace split), as a transformers tokenizer; `vocabulary` starts with SPECIALS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocabulary)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)


def word_vocabulary(texts: list[str], min_frequency: int = 1) -> list[str]:
    """SPECIALS, then the words of `texts` seen >= min_frequency times, most frequent first (ties by the word)."""
    from collections import Counter

    counts = Counter(w for t in texts for w in t.split())
    return [*SPECIALS, *sorted((w for w, c in counts.items() if c >= min_frequency and w not in SPECIALS),
                                key=lambda w: (-counts[w], w))]


def bpe_tokenizer(texts: list[str], vocab_size: int, min_frequency: int = 2):
    """A BPE of `vocab_size` pieces over `texts` (SentencePiece-style: each word's first piece starts with "▁", so
    decoding is lossless up to whitespace), SPECIALS as ids 0..2; tokenizers' BpeTrainer: the same pieces and ids
    in every process."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    alphabet = sorted({c for t in texts for c in t if not c.isspace()})
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=list(SPECIALS),
                                  initial_alphabet=["▁", *alphabet], show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)


@dataclass
class Seq2SeqData(TaskData):
    """What the run hands to methods on the seq2seq path: (source ids, target ids) pairs, each ending in
    EOS; `references` are the val targets as text (clean where the training targets are noisy)."""

    train: list[tuple[list[int], list[int]]]
    val: list[tuple[list[int], list[int]]]
    references: list[str]
    tokenizer: Any
    vocab_size: int
    seq_len: int
    train_docs: int
    val_docs: int
    cache_key: str
    tokenizer_kind: str = "word"
    decoding: dict = field(default_factory=dict)  # beam_size, length_penalty, coverage_penalty (DECODING_KEYS)
    sources: list[str] = field(default_factory=list)  # the val sources as text

    def unigram_ppl(self, targets: torch.Tensor | np.ndarray | None = None) -> float:
        """Perplexity of the add-one-smoothed unigram distribution of the training targets on `targets`
        (default: every val target token): the floor the decoder has to beat."""
        counts = np.ones(self.vocab_size)
        for _, tgt in self.train:
            np.add.at(counts, tgt, 1)
        logp = np.log(counts / counts.sum())
        t = np.concatenate([tgt for _, tgt in self.val]) if targets is None else np.asarray(targets, dtype=np.int64)
        return float(np.exp(-logp[t.reshape(-1)].mean()))

    def decode(self, ids: list[int]) -> str:
        """The text of token ids, up to the first EOS, padding dropped (word level: the words joined by spaces)."""
        kept = []
        for i in ids:
            if i == self.tokenizer.eos_token_id:
                break
            if i != self.tokenizer.pad_token_id:
                kept.append(int(i))
        if self.tokenizer_kind == "word":
            return " ".join(self.tokenizer.convert_ids_to_tokens(kept))
        return self.tokenizer.decode(kept).strip()

    def translate(self, model, sources: list[list[int]], batch_size: int = 128, **decoding) -> list[str]:
        """Translations of `sources` (lists of ids ending in EOS): greedy, or beam search when `decoding` (default:
        the task's dataset.decoding) asks for it."""
        decoding = {**self.decoding, **decoding}
        if decoding.get("beam_size", 1) > 1:
            batch_size = max(1, batch_size // int(decoding["beam_size"]))
        device = next(model.parameters()).device
        out = []
        was_training = model.training
        model.eval()
        for i in range(0, len(sources), batch_size):
            chunk = sources[i:i + batch_size]
            batch = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)
            for k, s in enumerate(chunk):
                batch[k, :len(s)] = torch.tensor(s)
            tokens = decode(model, batch.to(device), self.seq_len, **decoding)
            out += [self.decode(row) for row in tokens.tolist()]
        model.train(was_training)
        return out

    def score(self, hypotheses: list[str], references: list[str] | None = None) -> dict[str, float]:
        """Corpus BLEU and chrF (sacrebleu) of `hypotheses` against `references` (default: the validation
        references), the exact-match rate and the hypothesis/reference length ratio. BLEU tokenises as sacrebleu's
        default (13a) except for word-level tokenizers, whose words are scored as they are ("none")."""
        from sacrebleu.metrics import BLEU, CHRF

        refs = self.references if references is None else references
        bleu = BLEU(tokenize="none" if self.tokenizer_kind == "word" else "13a").corpus_score(hypotheses, [refs])
        chrf = CHRF().corpus_score(hypotheses, [refs])
        exact = float(np.mean([h == r for h, r in zip(hypotheses, refs)]))
        return {"bleu": bleu.score, "chrf": chrf.score, "exact_match": exact,
                "len_ratio": bleu.sys_len / max(bleu.ref_len, 1)}

    def evaluate(self, model) -> dict[str, float]:
        """BLEU, chrF, exact match and length ratio of the validation translations (dataset.decoding)."""
        return self.score(self.translate(model, [src for src, _ in self.val]))

    # -- the task protocol -------------------------------------------------------------------
    def make_loaders(self, batch_size: int, total_micro_batches: int, seed: int, start=lambda: 0, rank: int = 0,
                     world: int = 1, val_batches: int | None = None, num_workers: int = 0):
        """Batches are a pure function of the global micro-batch index (tasks.common.ResumableBatchSampler)."""
        val = self.val if val_batches is None else self.val[: val_batches * batch_size * world]
        sampler = ResumableBatchSampler(len(self.train), batch_size, total_micro_batches, seed, start, rank, world)
        train_dl = torch.utils.data.DataLoader(PairDataset(self.train), batch_sampler=sampler, collate_fn=collate,
                                               num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
        val_dl = torch.utils.data.DataLoader(PairDataset(val[rank::world]), batch_size=batch_size, shuffle=False,
                                             collate_fn=collate, generator=torch.Generator().manual_seed(seed))
        return train_dl, val_dl

    @staticmethod
    def eval_targets(val_dl) -> torch.Tensor:
        """The target tokens validation scores (EOS included, no padding)."""
        return torch.tensor([i for _, tgt in val_dl.dataset.pairs for i in tgt])

    def counts(self) -> dict[str, int]:
        return {"train_pairs": len(self.train), "val_pairs": len(self.val),
                "train_target_tokens": sum(len(t) for _, t in self.train)}

    def baselines(self, val_dl) -> dict[str, float]:
        return {"val/unigram_ppl": self.unigram_ppl(self.eval_targets(val_dl))}


# ---------------------------------------------------------------------------------------------- batches
class PairDataset(torch.utils.data.Dataset):
    def __init__(self, pairs: list[tuple[list[int], list[int]]]):
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return self.pairs[i]


def collate(pairs: list[tuple[list[int], list[int]]], pad: int = 0) -> torch.Tensor:
    """(B, 2, L): sources and targets right-padded to the longest of either."""
    width = max(max(len(s), len(t)) for s, t in pairs)
    out = torch.full((len(pairs), 2, width), pad, dtype=torch.long)
    for b, (s, t) in enumerate(pairs):
        out[b, 0, :len(s)] = torch.tensor(s)
        out[b, 1, :len(t)] = torch.tensor(t)
    return out


class Pairs(Task):
    """Source -> target pairs (tasks/pair_sources.py) for encoder-decoders: BLEU and chrF of greedy or beam-search
    translations against the validation references.

    source     cipher-mt | reverse | noisy-copy | file | hf, or the dotted path of a class of your own
    generator  the source's own arguments (dataset.generator.*)
    tokenizer  kind (word | bpe), vocab_size (bpe), min_frequency
    decoding   beam_size, length_penalty (GNMT's alpha), coverage_penalty (beta): evaluation only
    """

    provides = frozenset({"seq2seq", "pairs"})
    model_kinds = ("seq2seq-lm",)
    eval_only_args = frozenset({"decoding"})

    def __init__(self, source: str = "cipher-mt", generator: dict | None = None, tokenizer: dict | None = None,
                 decoding: dict | None = None):
        self.source, self.params = str(source), dict(generator or {})
        cls = source_class(self.source)
        try:
            self.generator = cls(**self.params)
        except TypeError as e:
            import inspect

            valid = [k for k in inspect.signature(cls).parameters if k not in ("self", "generator")]
            raise ValueError(f"dataset.generator: {str(e).split('got ')[-1]}; choose keys from: {', '.join(valid)}") from e
        tok = {"kind": "word", "vocab_size": 4000, "min_frequency": 1, **(tokenizer or {})}
        unknown = sorted(set(tok) - {"kind", "vocab_size", "min_frequency"})
        if unknown:
            raise ValueError(f"dataset.tokenizer: unknown key {unknown[0]!r}; choose keys from: kind, vocab_size, min_frequency")
        if tok["kind"] not in TOKENIZER_KINDS:
            raise ValueError(f"dataset.tokenizer.kind: {tok['kind']!r} is not valid; choose one of: {', '.join(TOKENIZER_KINDS)}")
        for k in ("vocab_size", "min_frequency"):
            if not (isinstance(tok[k], int) and tok[k] >= 1):
                raise ValueError(f"dataset.tokenizer.{k}: must be a positive integer, got {tok[k]!r}")
        if tok["kind"] == "bpe" and tok["vocab_size"] <= len(SPECIALS):
            raise ValueError(f"dataset.tokenizer.vocab_size: must exceed the {len(SPECIALS)} special tokens, got {tok['vocab_size']}")
        self.tokenizer = tok
        dec = {"beam_size": 1, "length_penalty": 0.0, "coverage_penalty": 0.0, **(decoding or {})}
        unknown = sorted(set(dec) - set(DECODING_KEYS))
        if unknown:
            raise ValueError(f"dataset.decoding: unknown key {unknown[0]!r}; choose keys from: {', '.join(DECODING_KEYS)}")
        if not (isinstance(dec["beam_size"], int) and dec["beam_size"] >= 1):
            raise ValueError(f"dataset.decoding.beam_size: must be a positive integer, got {dec['beam_size']!r}")
        for k in ("length_penalty", "coverage_penalty"):
            if not dec[k] >= 0:
                raise ValueError(f"dataset.decoding.{k}: must be >= 0, got {dec[k]!r}")
        self.decoding = {"beam_size": int(dec["beam_size"]), "length_penalty": float(dec["length_penalty"]),
                         "coverage_penalty": float(dec["coverage_penalty"])}

    def build(self, ctx: BuildContext) -> Seq2SeqData:
        if pretrained_tokenizer_source(ctx.model_source) is not None:
            return self.build_with_pretrained_tokenizer(ctx, pretrained_tokenizer_source(ctx.model_source))
        longest = getattr(self.generator, "max_target_words", None)
        if self.tokenizer["kind"] == "word" and longest is not None and longest + 1 > ctx.seq_len:
            raise ConfigError(f"model.seq_len: {ctx.seq_len} is shorter than the longest {self.source} sequence "
                              f"({longest + 1} tokens with EOS); raise model.seq_len or shorten dataset.generator's sentences")
        corpus = self.generator.generate(ctx.cache_dir)
        key = hashlib.sha256(json.dumps({"pairs": [self.source, self.params, self.tokenizer]}, sort_keys=True,
                                        default=str).encode()).hexdigest()[:16]
        return build_pairs_data(corpus, self.tokenizer, self.decoding, ctx.seq_len, key, self.source,
                                truncate=longest is None)

    def build_with_pretrained_tokenizer(self, ctx: BuildContext, name: str) -> Seq2SeqData:
        """The pairs tokenised by the tokenizer of model.init_from (an HF model: its ids are what its embeddings were
        trained on), sequences cut to model.seq_len; it must have T5's pad 0 and EOS 1."""
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


def pretrained_tokenizer_source(model_source: str | None) -> str | None:
    """The tokenizer name or directory of model.init_from, where it is an HF model; else None."""
    source = str(model_source or "")
    if source.startswith("hf://"):
        return source.removeprefix("hf://")
    path = Path(source).expanduser()
    if source and path.is_dir() and any((path / f).exists() for f in ("tokenizer.json", "spiece.model")):
        return str(path)
    return None


def build_pairs_data(corpus: PairCorpus, tokenizer: dict, decoding: dict, seq_len: int, key: str, name: str,
                     truncate: bool = False) -> Seq2SeqData:
    """Tokenise `corpus` with a tokenizer trained on its training pairs (both sides). A pair longer than seq_len
    tokens (EOS included) on either side is an error for a generated source (its lengths are known) and truncated,
    with a count logged, for a file or hub source."""
    if tokenizer["kind"] == "word":
        vocab = corpus.vocabulary or word_vocabulary(corpus.train_source + corpus.train_target, tokenizer["min_frequency"])
        tok = word_tokenizer(vocab)
    else:
        tok = bpe_tokenizer(corpus.train_source + corpus.train_target, tokenizer["vocab_size"], tokenizer["min_frequency"])
    eos = tok.eos_token_id
    cut = [0]

    def ids(texts: list[str]) -> list[list[int]]:
        out = []
        for row in tok(texts, add_special_tokens=False)["input_ids"]:
            if len(row) + 1 > seq_len:
                if not truncate:
                    raise ConfigError(f"model.seq_len: {seq_len} is shorter than a {name} sequence of {len(row) + 1} "
                                      "tokens with EOS; raise model.seq_len or shorten dataset.generator's sentences")
                row, cut[0] = row[:seq_len - 1], cut[0] + 1
            out.append([*row, eos])
        return out

    train = list(zip(ids(corpus.train_source), ids(corpus.train_target)))
    val = list(zip(ids(corpus.val_source), ids(corpus.val_target)))
    if cut[0]:
        log.info("%s: %d sequences truncated to model.seq_len=%d tokens", name, cut[0], seq_len)
    log.info("%s: %d train / %d val pairs, %s tokenizer of %d tokens%s", name, len(train), len(val), tokenizer["kind"],
             len(tok), "".join(f", {k} {v}" for k, v in corpus.notes.items()))
    return Seq2SeqData(train, val, list(corpus.val_target), tok, len(tok), seq_len, len(train), len(val), key,
                       tokenizer_kind=tokenizer["kind"], decoding=dict(decoding), sources=list(corpus.val_source))


# ---------------------------------------------------------------------------------------------- module
class Seq2SeqModule(MethodModule):
    """MethodModule on (B, 2, L) batches: cross-entropy of the teacher-forced decoder through the kernel
    registry (`lm_loss`, the baseline's loss), validation loss per real target token."""

    def lm_loss(self, batch: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        from methods.seq2seq import decoder_hidden, shift_right

        sources, targets = split_batch(batch)
        hidden = decoder_hidden(self.model, sources, shift_right(self.model, targets))
        labels = targets.masked_fill(targets == self.model.config.pad_token_id, -100)
        if callable(getattr(self.model, "seq2seq_logits", None)):  # logits of its own (GNMT's clipped ones)
            logits = self.model.seq2seq_logits(hidden).float()
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100,
                                                     reduction=reduction)
        weight = self.model.get_output_embeddings().weight
        return self.kernel("cross_entropy")(hidden, weight, labels, reduction=reduction)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._val_sum += self.lm_loss(batch, reduction="sum").double()
        self._val_count += (batch[:, 1] != self.model.config.pad_token_id).sum().double()


Seq2SeqData.module_class = Seq2SeqModule
