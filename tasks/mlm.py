"""Masked-language modelling on a text corpus: BERT's objective (Devlin et al. 2019), for encoder models
(models/bert.py, kind masked-lm).

    dataset=stdlib-docs-mlm model=bert-tiny      (any LM corpus source: source=hub | local, as tasks/lm_corpus.py)

The corpus, tokenizer and (B, T+1) blocks are the LM corpus's (tasks/lm_corpus.py); the tokenizer has one more
special token, `<mask>` (after EOS, id 1 for a trained tokenizer). The module encodes the first T = seq_len
tokens of each block. Each position is selected with probability `mask_prob` (at least one per sequence); of
the selected positions 80% (`mask_token_prob`) become `<mask>`, 10% (`random_token_prob`) a uniformly random
ordinary token (never EOS, `<mask>` or another special token) and the remaining 10% stay unchanged, so that
the encoder cannot tell from its input which positions are scored. The loss is the cross-entropy of the
original token at the selected positions only (labels -100 elsewhere), from the model's logits in fp32.

Masking happens in the module (MLMModule), not in the loader: the masks of a training micro-batch come from a
CPU generator seeded by (run seed, global micro-batch index, rank), so they are a pure function of the
micro-batch index, as the batches are (tasks/common.py ResumableBatchSampler). A run resumed from a checkpoint
draws exactly the masks the uninterrupted run drew, with any number of loader workers and on any device
(a CPU generator gives the same stream everywhere); dropout draws from the global RNG, which MethodModule
saves and restores. Validation masks are seeded by the val batch index alone, on a stream of their own: every
validation of every run (any seed) scores the same positions, so val/loss compares across steps and runs.

The run reports val/loss (mean cross-entropy over every selected val token), val/masked_accuracy (argmax =
original token there) and val/unigram_loss: the cross-entropy of the add-one-smoothed train unigram
distribution on those same tokens, what a model ignoring the context scores, the floor to beat (measured by
the module beside val/loss, so the two are paired token for token). No perplexities: a masked LM's exp(loss)
is not a perplexity of the text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from methods.module import MethodModule
from tasks.base import BuildContext
from tasks.lm_corpus import LMCorpus, TokenData

MASK = "<mask>"
TRAIN_STREAM, VAL_STREAM = "train", "val"  # the masks of training micro-batches and of validation batches
VAL_SEED = 0  # validation masks: the same for every run, whatever its seed


# ---------------------------------------------------------------------------------------------- masking
def mask_seed(seed: int, index: int, stream: str = TRAIN_STREAM) -> int:
    """The seed of the masks of batch `index` of `stream` (train: the global micro-batch index; val: the val
    batch index). Hashed into 32 bits: a CPU torch.Generator keeps only the low 32 bits of its seed, so an
    offset above them (or seed * k + index wrapping) would give two streams the same masks."""
    key = f"{stream}:{int(seed)}:{int(index)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "big")


def random_candidates(vocab_size: int, special_ids: tuple[int, ...]) -> torch.Tensor:
    """The ids a selected position may be replaced by at random: the vocabulary less its special tokens."""
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[[i for i in special_ids if 0 <= i < vocab_size]] = False
    return torch.arange(vocab_size)[keep]


def mask_tokens(tokens: torch.Tensor, generator: torch.Generator, mask_id: int, candidates: torch.Tensor,
                mask_prob: float = 0.15, mask_token_prob: float = 0.8,
                random_token_prob: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of (B, T) token ids: (inputs, labels), on the tokens' device.

    Each position is selected with probability `mask_prob`; a row with none gets its position of smallest
    draw (so every row scores at least one token). A selected position becomes `mask_id` with probability
    `mask_token_prob`, a token drawn uniformly from `candidates` with probability `random_token_prob`, else
    stays. labels: the original token at selected positions, -100 elsewhere. Every draw is made on the CPU
    from `generator`, the same number of draws whatever is selected: the masks are a function of the
    generator's seed and the shape alone."""
    shape = tokens.shape
    u = torch.rand(shape, generator=generator)
    action = torch.rand(shape, generator=generator)
    pick = torch.randint(len(candidates), shape, generator=generator)
    selected = u < mask_prob
    selected[torch.arange(shape[0]), u.argmin(dim=1)] = True
    to_mask = selected & (action < mask_token_prob)
    to_random = selected & (action >= mask_token_prob) & (action < mask_token_prob + random_token_prob)
    dev = tokens.device
    selected, to_mask, to_random = selected.to(dev), to_mask.to(dev), to_random.to(dev)
    inputs = tokens.masked_fill(to_mask, mask_id)
    inputs = torch.where(to_random, candidates[pick].to(dev, tokens.dtype), inputs)
    labels = tokens.masked_fill(~selected, -100)
    return inputs, labels


# ---------------------------------------------------------------------------------------------- module
class MLMModule(MethodModule):
    """MethodModule for masked-LM batches: the method's loss (`lm_loss`, the baseline's) is the masked-token
    cross-entropy of the micro-batch's masks. Validation sums it over every selected token, counts the correct
    argmax predictions and sums the unigram distribution's cross-entropy on the same tokens (val/loss,
    val/masked_accuracy, val/unigram_loss). Counts tokens_seen as the encoded tokens (B*T per rank), as
    MethodModule does."""

    reports_perplexity = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.data, MaskedTokenData):
            raise TypeError(f"MLMModule needs tasks.mlm.MaskedTokenData as data, got {type(self.data).__name__}")
        self.mask_seed_now: int | None = None  # the seed of the current step's masks (set by each step)
        self._unigram_logp = torch.from_numpy(self.data.unigram_logp()).float()  # (vocab,), not a parameter
        self._val_correct = torch.zeros((), dtype=torch.float64)
        self._val_unigram = torch.zeros((), dtype=torch.float64)

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "_trainer", None)  # None outside a Trainer (unit tests)
        return (int(trainer.global_rank), int(trainer.world_size)) if trainer is not None else (0, 1)

    def masked_batch(self, batch: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) of the first T tokens of (B, T+1) blocks, masked by the generator of `seed`."""
        return self.data.mask(batch[:, :-1], torch.Generator().manual_seed(seed))

    def masked_logits(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fp32 logits at the selected positions (N, V), their original tokens (N,))."""
        out = self.model(input_ids=inputs)
        logits = getattr(out, "logits", out)
        selected = labels != -100
        return logits[selected].float(), labels[selected]

    def lm_loss(self, batch: torch.Tensor, reduction: str = "mean", seed: int | None = None) -> torch.Tensor:
        """Masked-token cross-entropy of (B, T+1) blocks with the current step's masks (or `seed`'s): the mean
        or sum over the selected positions, or "none": (B, T), 0 off them."""
        if seed is None:
            seed = self.mask_seed_now if self.mask_seed_now is not None else mask_seed(VAL_SEED, 0, VAL_STREAM)
        inputs, labels = self.masked_batch(batch, seed)
        if reduction == "none":
            out = self.model(input_ids=inputs)
            logits = getattr(out, "logits", out).float()
            return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view_as(labels)
        logits, targets = self.masked_logits(inputs, labels)
        return F.cross_entropy(logits, targets, reduction=reduction)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        rank, world = self._rank_world()
        # this micro-batch's global index is the count before MethodModule.training_step adds it (restored on
        # resume); each rank masks its own share with its own stream
        self.mask_seed_now = mask_seed(self.seed, self.micro_batches_seen * world + rank)
        return super().training_step(batch, batch_idx)

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._val_correct = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_unigram = torch.zeros((), dtype=torch.float64, device=self.device)
        self._unigram_logp = self._unigram_logp.to(self.device)

    def validation_step(self, batch, batch_idx: int) -> None:
        batch, _ = self.split_domains(batch)
        rank, world = self._rank_world()
        # the run's seed is not in the key: every run scores the same val positions (comparable val/loss)
        inputs, labels = self.masked_batch(batch, mask_seed(VAL_SEED, batch_idx * world + rank, VAL_STREAM))
        logits, targets = self.masked_logits(inputs, labels)
        self._val_sum += F.cross_entropy(logits, targets, reduction="sum").double()
        self._val_count += targets.numel()
        self._val_correct += (logits.argmax(dim=-1) == targets).sum().double()
        self._val_unigram -= self._unigram_logp[targets].double().sum()  # the unigram floor, on the same tokens

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()  # val/loss = sum / count over ranks
        reduce = self.trainer.strategy.reduce
        count = reduce(self._val_count, reduce_op="sum").clamp_min(1)
        self.log("val/masked_accuracy", (reduce(self._val_correct, reduce_op="sum") / count).float(), sync_dist=False)
        self.log("val/unigram_loss", (reduce(self._val_unigram, reduce_op="sum") / count).float(), sync_dist=False)


# ---------------------------------------------------------------------------------------------- data
@dataclass
class MaskedTokenData(TokenData):
    """The LM corpus's TokenData (with `<mask>` in its tokenizer) and how to mask it."""

    mask_id: int = 1
    mask_prob: float = 0.15
    mask_token_prob: float = 0.8
    random_token_prob: float = 0.1
    special_ids: tuple[int, ...] = ()  # never drawn as random replacements (EOS, <mask>, the tokenizer's others)

    def __post_init__(self):
        self._candidates = random_candidates(self.vocab_size, (*self.special_ids, self.mask_id))

    def mask(self, tokens: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, labels) of (B, T) tokens (tasks.mlm.mask_tokens with this task's probabilities)."""
        return mask_tokens(tokens, generator, self.mask_id, self._candidates, self.mask_prob, self.mask_token_prob,
                           self.random_token_prob)

    def unigram_logp(self) -> np.ndarray:
        """Log-probabilities (vocab,) of the add-one-smoothed unigram distribution of the train split."""
        counts = np.bincount(np.asarray(self.train, dtype=np.int64), minlength=self.vocab_size).astype(np.float64) + 1.0
        return np.log(counts / counts.sum())

    def baselines(self, val_dl) -> dict[str, float]:
        """None here: the unigram floor of a masked LM is val/unigram_loss, which MLMModule measures on exactly
        the tokens validation scores (the LM corpus's val/unigram_ppl is a next-token number)."""
        return {}


MaskedTokenData.module_class = MLMModule


# ---------------------------------------------------------------------------------------------- task
class MaskedLM(LMCorpus):
    """Masked-token prediction (BERT's objective) on a text corpus: the LM corpus's arguments, and the masking
    probabilities."""

    provides = frozenset({"tokens", "documents", "masked-tokens"})
    model_kinds = ("masked-lm",)

    def __init__(self, source: str = "stdlib-docs", path: str | None = None, subset: str | None = None,
                 split: str = "train", text_field: str = "text", streaming: bool = False,
                 max_documents: int | None = None, val_fraction: float = 0.05, tokenizer: dict | None = None,
                 mask_prob: float = 0.15, mask_token_prob: float = 0.8, random_token_prob: float = 0.1):
        problems: list[str] = []
        try:
            super().__init__(source, path, subset, split, text_field, streaming, max_documents, val_fraction, tokenizer)
        except ValueError as e:
            problems += str(e).split("; ")
        if not 0.0 < float(mask_prob) <= 1.0:
            problems.append(f"dataset.mask_prob: must be in (0, 1], got {mask_prob}")
        for key, p in (("mask_token_prob", mask_token_prob), ("random_token_prob", random_token_prob)):
            if not 0.0 <= float(p) <= 1.0:
                problems.append(f"dataset.{key}: must be in [0, 1], got {p}")
        if 0.0 <= float(mask_token_prob) <= 1.0 and 0.0 <= float(random_token_prob) <= 1.0 \
                and float(mask_token_prob) + float(random_token_prob) > 1.0 + 1e-9:
            problems.append(f"dataset.random_token_prob: mask_token_prob + random_token_prob must be at most 1, got "
                            f"{mask_token_prob} + {random_token_prob} (the rest of the selected tokens stay unchanged)")
        if problems:
            raise ValueError("; ".join(problems))
        self.mask_prob, self.mask_token_prob = float(mask_prob), float(mask_token_prob)
        self.random_token_prob = float(random_token_prob)

    def build(self, ctx: BuildContext) -> MaskedTokenData:
        data = super().build(ctx, special_tokens=(MASK,))
        tok = data.tokenizer
        if tok.mask_token_id is None:
            # a trained tokenizer has <mask> in its vocabulary already (after EOS): this names it the mask token,
            # so that the saved tokenizer says so. A hub tokenizer without a mask token gets it appended; the
            # token streams do not change (tasks/common.py tokenize splits special tokens in the text).
            tok.add_special_tokens({"mask_token": MASK})
        special = tuple(sorted({*tok.all_special_ids, tok.eos_token_id} - {None}))
        base = {f.name: getattr(data, f.name) for f in fields(TokenData)}
        return MaskedTokenData(**{**base, "vocab_size": len(tok)}, mask_id=int(tok.mask_token_id),
                               mask_prob=self.mask_prob, mask_token_prob=self.mask_token_prob,
                               random_token_prob=self.random_token_prob, special_ids=special)
