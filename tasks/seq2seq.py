"""Sequence-to-sequence tasks for encoder-decoders (models/t5.py): the generated noisy-copy task
(dataset=noisy-copy), (B, 2, L) batches that resume exactly, the LightningModule, and BLEU against the clean
references (sacrebleu).

A batch is one tensor: batch[:, 0] sources, batch[:, 1] targets ending in EOS, right-padded with pad (id 0)
to the longest of either in the batch (methods/seq2seq.py). Training targets are the task's noisy ones;
validation loss and BLEU use the clean references.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from methods.losses.noisy_copy import EOS, PAD, UNK, NoisyCopy
from methods.module import MethodModule
from methods.seq2seq import greedy_decode, split_batch
from tasks.base import BuildContext, Task, TaskData
from tasks.batches import ResumableBatchSampler
from tasks.errors import ConfigError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- data
def word_tokenizer(vocabulary: list[str]):
    """One token per word (whitespace split), as a transformers tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocabulary)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK)


@dataclass
class Seq2SeqData(TaskData):
    """What the run hands to methods on the seq2seq path: (source ids, target ids) pairs, each ending in
    EOS; train targets noisy, val targets clean; `references` are the clean val targets as text."""

    train: list[tuple[list[int], list[int]]]
    val: list[tuple[list[int], list[int]]]
    references: list[str]
    tokenizer: Any
    vocab_size: int
    seq_len: int
    train_docs: int
    val_docs: int
    cache_key: str

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
        words = []
        for i in ids:
            if i == self.tokenizer.eos_token_id:
                break
            if i != self.tokenizer.pad_token_id:
                words.append(self.tokenizer.convert_ids_to_tokens(int(i)))
        return " ".join(words)

    def translate(self, model, sources: list[list[int]], batch_size: int = 128) -> list[str]:
        """Greedy translations of `sources` (lists of ids ending in EOS)."""
        device = next(model.parameters()).device
        out = []
        was_training = model.training
        model.eval()
        for i in range(0, len(sources), batch_size):
            chunk = sources[i:i + batch_size]
            batch = torch.zeros(len(chunk), max(map(len, chunk)), dtype=torch.long)
            for k, s in enumerate(chunk):
                batch[k, :len(s)] = torch.tensor(s)
            tokens = greedy_decode(model, batch.to(device), self.seq_len)
            out += [self.decode(row) for row in tokens.tolist()]
        model.train(was_training)
        return out

    def evaluate(self, model) -> dict[str, float]:
        """Clean-reference corpus BLEU (sacrebleu, word tokens as they are) of greedy translations of the
        validation sources, the exact-match rate and the hypothesis/reference length ratio."""
        from sacrebleu.metrics import BLEU

        hyps = self.translate(model, [src for src, _ in self.val])
        score = BLEU(tokenize="none").corpus_score(hyps, [self.references])
        exact = float(np.mean([h == r for h, r in zip(hyps, self.references)]))
        return {"bleu": score.score, "exact_match": exact, "len_ratio": score.sys_len / max(score.ref_len, 1)}

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


class NoisyCopyTask(Task):
    """Noisy-target translation (methods/losses/noisy_copy.py): clean validation references, BLEU."""

    provides = frozenset({"seq2seq"})
    model_kinds = ("seq2seq-lm",)

    def __init__(self, generator: dict | None = None):
        self.params = dict(generator or {})
        try:
            self.generator = NoisyCopy(**self.params)
        except TypeError as e:
            import inspect

            valid = list(inspect.signature(NoisyCopy).parameters)
            raise ValueError(f"dataset.generator: {str(e).split('got ')[-1]}; choose keys from: {', '.join(valid)}") from e
        except ValueError as e:
            raise ValueError(f"dataset.generator: {e}") from e

    def build(self, ctx: BuildContext) -> Seq2SeqData:
        return build_seq2seq_data(self.generator, self.params, ctx.seq_len)


def build_seq2seq_data(task: NoisyCopy, params: dict, seq_len: int) -> Seq2SeqData:
    longest = max(task.max_words, task.max_target_words) + 1  # + EOS
    if longest > seq_len:
        raise ConfigError(f"model.seq_len: {seq_len} is shorter than the longest noisy-copy sequence ({longest} tokens "
                          "with EOS); raise model.seq_len or lower dataset.generator.max_words")
    corpus = task.generate()
    tokenizer = word_tokenizer(corpus.vocabulary)
    index = tokenizer.get_vocab()
    eos = index[EOS]

    def ids(words: list[str]) -> list[int]:
        return [index[w] for w in words] + [eos]

    train = [(ids(s), ids(t)) for s, t in zip(corpus.train_source, corpus.train_target)]
    val = [(ids(s), ids(t)) for s, t in zip(corpus.val_source, corpus.val_target)]
    key = hashlib.sha256(json.dumps({"noisy-copy": params}, sort_keys=True).encode()).hexdigest()[:16]
    log.info("noisy-copy: %d train / %d val sentences, %d words (%s, noise: shuffle %d, repetition %.2f, blank %.2f)",
             len(train), len(val), len(corpus.vocabulary), task.mapping, task.shuffle, task.repetition, task.blank)
    return Seq2SeqData(train, val, [" ".join(t) for t in corpus.val_target], tokenizer, len(tokenizer), seq_len,
                       len(train), len(val), key)


# ---------------------------------------------------------------------------------------------- module
class Seq2SeqModule(MethodModule):
    """MethodModule on (B, 2, L) batches: cross-entropy of the teacher-forced decoder through the kernel
    registry (`lm_loss`, the baseline's loss), validation loss per real target token."""

    def lm_loss(self, batch: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        from methods.seq2seq import decoder_hidden, shift_right

        sources, targets = split_batch(batch)
        hidden = decoder_hidden(self.model, sources, shift_right(self.model, targets))
        labels = targets.masked_fill(targets == self.model.config.pad_token_id, -100)
        weight = self.model.get_output_embeddings().weight
        return self.kernel("cross_entropy")(hidden, weight, labels, reduction=reduction)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._val_sum += self.lm_loss(batch, reduction="sum").double()
        self._val_count += (batch[:, 1] != self.model.config.pad_token_id).sum().double()


Seq2SeqData.module_class = Seq2SeqModule
