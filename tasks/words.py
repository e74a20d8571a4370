"""Next-word prediction over words: the embedded stdlib-docs corpus split at word boundaries, in three units, and
one next-word exact-match evaluator for all of them (Thawani et al., EMNLP Findings 2023: eTok, methods/
architectures/word_pooled_tok.py).

    dataset=stdlib-words         unit word-pooled: (B, n + 1, canvas_size) character canvases, one per word (model=etok)
    dataset=stdlib-words-chars   unit chars: (B, T + 1) character-id blocks of the same text (model=llama-*)
    dataset=stdlib-words-bpe     unit bpe: (B, T + 1) byte-level BPE blocks of the same text (model=llama-*)

Words. Each document's text is split into words by the regular expression \\w+|[^\\w\\s] (runs of letters, digits
and underscores; every other non-space character is a word of its own, as the official code splits punctuation
off), a word longer than `canvas_size` characters into pieces of canvas_size; the units are characters (Unicode
code points, not bytes). Characters of the validation split not seen in training are replaced by U+FFFD, in the
text every unit reads. Every unit reads the same text: a document is its words joined by single spaces, and
documents follow one another separated by EOS (chars: the EOS id; bpe: <|endoftext|>; word-pooled: a word of the
single EOS character). The character ids: 0 PAD (the canvas filler, "end of word" in eTok), 1 EOS, 2 space, 3
U+FFFD, then the training split's characters in code-point order.

Batches are a pure function of the global micro-batch index (tasks/batches.py ResumableBatchSampler): non-
overlapping blocks of the stream, consecutive blocks sharing one boundary unit, as tasks/lm_corpus.py.

The evaluator (`NextWordEval`, the task's `evaluate`: eval/next_word_acc, ...): `eval.words` positions (d, i),
i >= 1, drawn with `eval.seed` from the validation documents (the same positions for every unit); the context is
the preceding min(i, eval.context_words) words of the document (preceded by EOS where it reaches the document's
start, as in training), the target the word w_i. A model predicts the whole next word greedily and is right only
if every character matches and the word ends there:
  word-pooled  the context's canvases -> ETokLM.next_word (first character never PAD; the word ends at the first PAD
               or fills the canvas)
  chars        "<context> " -> greedy characters, the first never a space or EOS, until a space or EOS (at most
               canvas_size + 1 steps: a word's characters and its end)
  bpe          "<context>" -> greedy tokens, the first one that starts with a space, then until a token that starts
               with a space or EOS (at most canvas_size + 2 steps); the word is the decoded text less that space
Every model is thus told that the previous word has ended. Words are bucketed by their count in the training
words: rare (count <= eval.rare_max, unseen included), unseen (0), frequent (>= eval.frequent_min).
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from omegaconf import OmegaConf

from tasks.base import BuildContext, Task, TaskData
from tasks.common import cached_stdlib_documents, content_hash, load_tokenizer, split_documents, tokenize
from tasks.errors import ConfigError, choices_hint

if TYPE_CHECKING:  # torch is imported where tensors are made: validating a config builds the task without it
    import torch

log = logging.getLogger(__name__)

WORD = re.compile(r"\w+|[^\w\s]")
PAD, EOS, SPACE, UNK = 0, 1, 2, 3
UNK_CHAR = "\ufffd"
EVAL_DEFAULTS = {"words": 2000, "context_words": 24, "rare_max": 9, "frequent_min": 100, "batch_size": 128, "seed": 0}
BPE_DEFAULTS = {"vocab_size": 1024, "min_frequency": 2}


def split_words(text: str, canvas_size: int) -> list[str]:
    """The words of `text` (module docstring), each at most canvas_size characters."""
    out = []
    for w in WORD.findall(text):
        out += [w[i:i + canvas_size] for i in range(0, len(w), canvas_size)]
    return out


class CharTokenizer:
    """Character ids: 0 PAD, 1 EOS, 2 space, 3 U+FFFD (any character it does not know), then `chars`."""

    pad_token_id, eos_token_id, space_id, unk_id = PAD, EOS, SPACE, UNK

    def __init__(self, chars: list[str]):
        self.chars = ["<pad>", "<eos>", " ", UNK_CHAR] + [c for c in chars if c not in (" ", UNK_CHAR)]
        self.index = {c: i for i, c in enumerate(self.chars) if i >= SPACE}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(c, UNK) for c in text]

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids if int(i) > EOS)

    def save_pretrained(self, directory: str) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "chars.json").write_text(json.dumps(self.chars))


# ---------------------------------------------------------------------------------------------- the evaluator
@dataclass
class Case:
    """One next-word question: the preceding words of a validation document and the word after them."""

    context: list[str]
    at_start: bool  # the context reaches the document's start (EOS precedes it)
    target: str
    train_count: int


def draw_cases(docs: list[list[str]], counts: Counter, n: int, context_words: int, seed: int) -> list[Case]:
    """`n` positions (d, i), i >= 1, uniformly without replacement over the documents' words (all if fewer)."""
    where = [(d, i) for d, words in enumerate(docs) for i in range(1, len(words))]
    pick = np.random.default_rng(seed).permutation(len(where))[:n]
    out = []
    for k in sorted(pick.tolist()):
        d, i = where[k]
        lo = max(0, i - context_words)
        out.append(Case(docs[d][lo:i], lo == 0, docs[d][i], int(counts.get(docs[d][i], 0))))
    return out


def word_correct(predicted: str | None, target: str) -> bool:
    """Exact match of a whole word: every character, and the word ends there (None: it did not end)."""
    return predicted is not None and predicted == target


def scores(cases: list[Case], predicted: list[str | None], rare_max: int, frequent_min: int) -> dict[str, float]:
    """next_word_acc overall and per training-frequency bucket, with the bucket sizes."""
    right = np.array([word_correct(p, c.target) for p, c in zip(predicted, cases)], dtype=float)
    count = np.array([c.train_count for c in cases])
    out: dict[str, float] = {"next_word_acc": float(right.mean()) if len(right) else float("nan"),
                             "next_word_n": float(len(right))}
    for name, sel in (("rare", count <= rare_max), ("unseen", count == 0), ("frequent", count >= frequent_min)):
        out[f"next_word_acc_{name}"] = float(right[sel].mean()) if sel.any() else float("nan")
        out[f"next_word_n_{name}"] = float(sel.sum())
    return out


def canvases(words: list[list[str]], tok: CharTokenizer, canvas_size: int) -> np.ndarray:
    """(rows, max words, canvas_size) character ids, right-padded with PAD words."""
    out = np.zeros((len(words), max(len(w) for w in words), canvas_size), dtype=np.int64)
    for r, row in enumerate(words):
        for j, w in enumerate(row):
            ids = [EOS] if w is None else tok.encode(w)
            out[r, j, :len(ids)] = ids
    return out


def predict_word_pooled(model, cases: list[Case], tok: CharTokenizer, canvas_size: int, seq_len: int,
                        batch_size: int) -> list[str]:
    """eTok's greedy next word per case (ETokLM.next_word), from at most the last seq_len words of its context."""
    import torch

    device = next(model.parameters()).device
    out = []
    for s in range(0, len(cases), batch_size):
        chunk = cases[s:s + batch_size]
        rows = [(([None] if c.at_start else []) + c.context)[-seq_len:] for c in chunk]  # None: the EOS word
        ids = torch.from_numpy(canvases(rows, tok, canvas_size)).to(device)
        pred = model.next_word(ids, torch.tensor([len(r) for r in rows], device=device)).tolist()
        out += [tok.decode(p[:p.index(PAD)] if PAD in p else p) for p in pred]
    return out


def greedy_continue(model, contexts: list[list[int]], steps: int, first_ok: torch.Tensor, stop: torch.Tensor,
                    pad_id: int, batch_size: int) -> list[list[int] | None]:
    """Greedy continuations of `contexts` by a Hugging Face causal LM (left-padded, attention mask, position ids,
    KV cache): the generated ids before the first stop id (the first step is restricted to `first_ok` and never
    stops), or None where no stop id came within `steps`."""
    import torch

    device = next(model.parameters()).device
    first_ok, stop = first_ok.to(device), stop.to(device)
    results: list[list[int] | None] = []
    with torch.no_grad():
        for s in range(0, len(contexts), batch_size):
            chunk = contexts[s:s + batch_size]
            width = max(map(len, chunk))
            ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, c in enumerate(chunk):
                ids[r, width - len(c):] = torch.tensor(c)
                mask[r, width - len(c):] = 1
            ids, mask = ids.to(device), mask.to(device)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)
            gen = [[] for _ in chunk]
            done = torch.zeros(len(chunk), dtype=torch.bool, device=device)
            ended = torch.zeros(len(chunk), dtype=torch.bool, device=device)
            past = None
            for step in range(steps):
                out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logits = out.logits[:, -1].float()
                if step == 0:
                    logits[:, ~first_ok] = -torch.inf
                nxt = logits.argmax(-1)
                stops = stop[nxt] & ~done if step > 0 else torch.zeros_like(done)
                ended |= stops
                done |= stops
                for r in (~done).nonzero().flatten().tolist():
                    gen[r].append(int(nxt[r]))
                if bool(done.all()):
                    break
                ids = nxt[:, None]
                pos = pos[:, -1:] + 1
                mask = torch.cat([mask, mask.new_ones(len(chunk), 1)], dim=1)
            results += [g if e else None for g, e in zip(gen, ended.tolist())]
    return results


class NextWordEval:
    """The one next-word exact-match evaluator of the three units (module docstring)."""

    def __init__(self, unit: str, tokenizer: Any, canvas_size: int, seq_len: int, batch_size: int = 128):
        self.unit, self.tok, self.canvas_size, self.seq_len, self.batch_size = unit, tokenizer, canvas_size, seq_len, batch_size

    # -- a causal LM's side: its context ids, which tokens may start a word, which end it, the word of its ids
    def context_ids(self, case: Case) -> list[int]:
        text = " ".join(case.context)
        if self.unit == "chars":
            ids = ([EOS] if case.at_start else []) + self.tok.encode(text) + [SPACE]
        else:
            eos = self.tok.eos_token_id
            ids = ([eos] if case.at_start else []) + self.tok(text, add_special_tokens=False)["input_ids"]
        return ids[-max(1, self.seq_len - self.steps()):]

    def steps(self) -> int:
        return self.canvas_size + (1 if self.unit == "chars" else 2)

    def token_sets(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(may start the word, ends it): boolean masks over the vocabulary."""
        import torch

        V = len(self.tok)
        if self.unit == "chars":
            stop = torch.zeros(V, dtype=torch.bool)
            stop[[SPACE, EOS]] = True
            first = ~stop
            first[PAD] = False
            return first, stop
        pieces = self.tok.convert_ids_to_tokens(list(range(V)))
        spaced = torch.tensor([p is not None and p.startswith("\u0120") for p in pieces])  # byte-level "Ġ": a space
        stop = spaced.clone()
        stop[self.tok.eos_token_id] = True
        return spaced, stop

    def word_of(self, ids: list[int] | None) -> str | None:
        if ids is None:
            return None
        if self.unit == "chars":
            return self.tok.decode(ids)
        text = self.tok.decode(ids)
        return text[1:] if text.startswith(" ") else text

    def predict(self, model, cases: list[Case]) -> list[str | None]:
        was_training = model.training
        model.eval()
        try:
            if self.unit == "word-pooled":
                return predict_word_pooled(model, cases, self.tok, self.canvas_size, self.seq_len, self.batch_size)
            first, stop = self.token_sets()
            pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
            gen = greedy_continue(model, [self.context_ids(c) for c in cases], self.steps(), first, stop, int(pad),
                                  self.batch_size)
            return [self.word_of(g) for g in gen]
        finally:
            model.train(was_training)


# ---------------------------------------------------------------------------------------------- data
@dataclass
class WordData(TaskData):
    """The word-split corpus in one unit: train/val streams, the tokenizer, the words and their training counts,
    and the evaluator's cases. What methods get as `data`."""

    unit: str
    train: np.ndarray  # word-pooled: (words, canvas_size) ids; chars/bpe: (tokens,) ids
    val: np.ndarray
    tokenizer: Any
    vocab_size: int
    seq_len: int
    canvas_size: int
    train_words: int
    train_chars: int
    val_docs_words: list[list[str]]
    word_counts: Counter
    eval_spec: dict
    cache_key: str
    cases: list[Case] = field(default_factory=list)

    @property
    def module_class(self):  # imported when a run builds its module (Lightning), not to validate a config
        if self.unit != "word-pooled":
            return None  # methods.module.MethodModule: next-token blocks
        from methods.architectures.word_pooled_tok import WordPooledModule

        return WordPooledModule

    def __post_init__(self):
        if not self.cases:
            e = self.eval_spec
            self.cases = draw_cases(self.val_docs_words, self.word_counts, int(e["words"]), int(e["context_words"]),
                                    int(e["seed"]))

    def blocks(self, split: str) -> torch.Tensor:
        """Non-overlapping (n, seq_len + 1[, canvas_size]) blocks; consecutive blocks share one boundary unit."""
        import torch

        stream = self.train if split == "train" else self.val
        if len(stream) <= self.seq_len:
            raise ConfigError(f"model.seq_len: {self.seq_len} is longer than the {split} split ({len(stream)} units)")
        n = (len(stream) - 1) // self.seq_len
        idx = np.arange(n)[:, None] * self.seq_len + np.arange(self.seq_len + 1)[None, :]
        return torch.from_numpy(np.asarray(stream)[idx].astype(np.int64))

    def evaluator(self) -> NextWordEval:
        return NextWordEval(self.unit, self.tokenizer, self.canvas_size, self.seq_len, int(self.eval_spec["batch_size"]))

    def next_word_scores(self, model, cases: list[Case] | None = None) -> dict[str, float]:
        cases = self.cases if cases is None else cases
        e = self.eval_spec
        return scores(cases, self.evaluator().predict(model, cases), int(e["rare_max"]), int(e["frequent_min"]))

    # -- the task protocol -------------------------------------------------------------------
    def make_loaders(self, batch_size: int, total_micro_batches: int, seed: int, start: Callable[[], int] = lambda: 0,
                     rank: int = 0, world: int = 1, val_batches: int | None = None, num_workers: int = 0):
        from tasks.batches import block_loaders

        return block_loaders(self.blocks("train"), self.blocks("val"), batch_size, total_micro_batches, seed, start,
                             rank, world, val_batches, num_workers)

    def counts(self) -> dict[str, int]:
        return {"train_words": self.train_words, "train_chars": self.train_chars,
                "train_units": len(self.train), "val_units": len(self.val), "eval_words": len(self.cases)}

    def evaluate(self, model) -> dict[str, float]:
        out = self.next_word_scores(model)
        out["chars_per_word"] = self.train_chars / max(1, self.train_words)  # eTok's compression factor
        return out


# ---------------------------------------------------------------------------------------------- the task
class WordCorpus(Task):
    """The embedded corpus split into words, as eTok's word canvases (subclasses: characters, BPE tokens)."""

    unit: ClassVar[str] = "word-pooled"
    provides = frozenset({"words"})
    model_kinds = ("word-pooled-lm",)
    eval_only_args = frozenset({"eval"})

    def __init__(self, canvas_size: int = 12, val_fraction: float = 0.05, bpe: dict | None = None,
                 eval: dict | None = None):
        problems = []
        if not (isinstance(canvas_size, int) and canvas_size > 0):
            problems.append(f"dataset.canvas_size: must be a positive integer, got {canvas_size!r}")
        if not 0.0 < float(val_fraction) < 1.0:
            problems.append(f"dataset.val_fraction: must be in (0, 1), got {val_fraction}")
        self.bpe = {**BPE_DEFAULTS, **(bpe or {})}
        for k in self.bpe:
            if k not in BPE_DEFAULTS:
                problems.append(f"dataset.bpe.{k}: unknown key; {choices_hint(k, list(BPE_DEFAULTS))}")
        if not (isinstance(self.bpe["vocab_size"], int) and self.bpe["vocab_size"] >= 257):
            problems.append(f"dataset.bpe.vocab_size: a byte-level BPE has at least 257 tokens, got {self.bpe['vocab_size']!r}")
        self.eval = {**EVAL_DEFAULTS, **(eval or {})}
        for k, v in self.eval.items():
            if k not in EVAL_DEFAULTS:
                problems.append(f"dataset.eval.{k}: unknown key; {choices_hint(k, list(EVAL_DEFAULTS))}")
            elif not isinstance(v, int) or v < (0 if k in ("seed", "rare_max") else 1):
                problems.append(f"dataset.eval.{k}: must be an integer >= {0 if k in ('seed', 'rare_max') else 1}, got {v!r}")
        if problems:
            raise ValueError("; ".join(problems))
        self.canvas_size, self.val_fraction = canvas_size, float(val_fraction)

    def vocab_size_hint(self) -> int | None:
        return int(self.bpe["vocab_size"]) if self.unit == "bpe" else None

    def ignored_args(self) -> dict[str, str]:
        if self.unit != "bpe" and self.bpe != BPE_DEFAULTS:
            return {"bpe": f"unit {self.unit}: it trains no BPE"}
        return {}

    def words(self, cache: Path) -> tuple[list[list[str]], list[list[str]], CharTokenizer]:
        """(train documents' words, val documents' words, the character tokenizer of the train split), the val
        characters unseen in training replaced by U+FFFD."""
        train_docs, val_docs = split_documents(cached_stdlib_documents(cache), self.val_fraction)
        train = [split_words(d, self.canvas_size) for d in train_docs]
        chars = sorted({ch for doc in train for w in doc for ch in w})
        tok = CharTokenizer(chars)
        known = set(tok.index)
        val = [[w if all(ch in known for ch in w) else "".join(ch if ch in known else UNK_CHAR for ch in w)
                for w in split_words(d, self.canvas_size)] for d in val_docs]
        return [d for d in train if d], [d for d in val if d], tok

    def build(self, ctx: BuildContext) -> WordData:
        cache = Path(ctx.cache_dir).expanduser()
        train_words, val_words, chars = self.words(cache)
        counts = Counter(w for doc in train_words for w in doc)
        n_words = sum(map(len, train_words))
        n_chars = sum(len(w) + 1 for doc in train_words for w in doc)  # each word and the space (or EOS) after it
        tokenizer, vocab = chars, len(chars)
        if self.unit == "word-pooled":
            train, val = (self.canvas_stream(d, chars) for d in (train_words, val_words))
        elif self.unit == "chars":
            train, val = (self.char_stream(d, chars) for d in (train_words, val_words))
        else:
            texts = [" ".join(d) for d in train_words]
            spec = OmegaConf.create({"kind": "train", "name": None, **self.bpe})
            tokenizer = load_tokenizer(spec, texts, cache)
            vocab = len(tokenizer)
            train, val = tokenize(tokenizer, texts), tokenize(tokenizer, [" ".join(d) for d in val_words])
        key = content_hash("words-v1", self.unit, self.canvas_size, self.val_fraction, self.bpe if self.unit == "bpe" else None)
        log.info("words (%s): %d train words (%.2f chars/word incl. the space), %d train units, vocabulary %d",
                 self.unit, n_words, n_chars / max(1, n_words), len(train), vocab)
        return WordData(self.unit, train, val, tokenizer, vocab, ctx.seq_len, self.canvas_size, n_words, n_chars,
                        val_words, counts, dict(self.eval), key)

    def canvas_stream(self, docs: list[list[str]], tok: CharTokenizer) -> np.ndarray:
        """(words, canvas_size) ids: every document's words, then an EOS word."""
        rows = [w for doc in docs for w in [*doc, None]]
        return canvases([rows], tok, self.canvas_size)[0].astype(np.int16)

    @staticmethod
    def char_stream(docs: list[list[str]], tok: CharTokenizer) -> np.ndarray:
        return np.asarray([i for doc in docs for i in tok.encode(" ".join(doc)) + [EOS]], dtype=np.int16)


class WordCorpusChars(WordCorpus):
    """The same words as character-id blocks, for a character-level causal LM (the char baseline)."""

    unit: ClassVar[str] = "chars"
    model_kinds = ("causal-lm",)


class WordCorpusBPE(WordCorpus):
    """The same words as byte-level BPE blocks (trained on the training words' text), for a subword causal LM."""

    unit: ClassVar[str] = "bpe"
    model_kinds = ("causal-lm",)
