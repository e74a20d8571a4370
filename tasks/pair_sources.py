"""Where the pairs data kind (tasks/seq2seq.py, `Pairs`) gets its source -> target pairs: seeded generators and
local files. `dataset.source` names one (a key of SOURCES, or the dotted path of a class of your own with the same
protocol) and `dataset.generator` holds its arguments.

A source is a class whose constructor takes its `dataset.generator` keys (cheap, no I/O: it checks them and raises
ValueError("dataset.generator.<key>: ...")) and whose `generate(cache_dir)` returns a `PairCorpus`: source and
target texts (words separated by single spaces for the generated ones), training targets possibly noisy, validation
targets the references. Sources shipped here:

    cipher-mt   sentences of the embedded corpus (stdlib docstrings), lowercased words, into a seeded cipher
                language: every word type -> its own pseudo-word (a bijection, drawn once), then local reordering
                (a word of the seeded "modifier" class swaps with the word after it, as adjective-noun pairs between
                English and French): a translation task with real word statistics (Zipf, collocations, lengths)
    reverse     random sequences of a small symbol vocabulary, target reversed (GNMT's smoke task)
    noisy-copy  EISL's noisy-target translation (methods/losses/noisy_copy.py), clean validation references
    file        a local TSV (source<TAB>target per line) or JSONL ({"source": ..., "target": ...}) file; an exact
                seeded split by a hash of each pair
    hf          a hub translation dataset by name (WMT'14 for GNMT's recipe): clusters only
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class PairCorpus:
    """Source and target texts; `vocabulary` (optional) fixes a word-level tokenizer's ids (specials first)."""

    train_source: list[str]
    train_target: list[str]
    val_source: list[str]
    val_target: list[str]
    vocabulary: list[str] | None = None
    notes: dict = field(default_factory=dict)  # what the run logs of the corpus (sizes, the cipher's classes, ...)


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(stream)])))


def _positive(**sizes: int) -> None:
    for k, v in sizes.items():
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"dataset.generator.{k}: must be a positive integer, got {v!r}")


def _lengths(min_words: int, max_words: int) -> None:
    if not 1 <= min_words <= max_words:
        raise ValueError(f"dataset.generator.min_words/max_words: need 1 <= min_words <= max_words, got {min_words}, {max_words}")


# ---------------------------------------------------------------------------------------------- cipher-mt
_WORD = re.compile(r"[a-z]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def corpus_sentences(docs: list[str], min_words: int, max_words: int) -> list[list[str]]:
    """The distinct sentences of `docs` as lowercased alphabetic words, those of min_words..max_words words, in
    first-seen order. A sentence ends at . ! ? followed by whitespace, or at a blank line; a word is a maximal run of
    ASCII letters (so "don't" is two words and "utf8" is "utf")."""
    seen, out = set(), []
    for doc in docs:
        for sentence in _SENTENCE_END.split(doc):
            words = _WORD.findall(sentence.lower())
            if min_words <= len(words) <= max_words:
                key = " ".join(words)
                if key not in seen:
                    seen.add(key)
                    out.append(words)
    return out


class CipherMT:
    """cipher-mt: real sentences into a seeded cipher language (see the module docstring).

    The cipher of the word types (those of every sentence used), drawn once from `seed`: each type gets a distinct
    pseudo-word of consonant-vowel syllables, as many syllables as the type has ceil(letters / 3) (so lengths
    correlate as between related languages, and subword units recur); a `modifier_share` of the types (a seeded draw)
    are modifiers. Target of a sentence: left to right, a modifier followed by a non-modifier is emitted after it
    (the pair swaps, and the scan continues after the pair); every word becomes its cipher word. Validation pairs
    are held-out sentences of the same distribution, never in training."""

    def __init__(self, train_size: int = 20000, val_size: int = 500, min_words: int = 4, max_words: int = 16,
                 modifier_share: float = 0.2, min_chars: int = 200, seed: int = 0):
        _positive(train_size=train_size, val_size=val_size, min_words=min_words, max_words=max_words)
        _lengths(min_words, max_words)
        if not 0.0 <= modifier_share <= 1.0:
            raise ValueError(f"dataset.generator.modifier_share: a share in [0, 1], got {modifier_share}")
        self.train_size, self.val_size, self.min_words, self.max_words = train_size, val_size, min_words, max_words
        self.modifier_share, self.min_chars, self.seed = float(modifier_share), int(min_chars), int(seed)

    @property
    def max_target_words(self) -> int:
        return self.max_words

    def cipher(self, types: list[str]) -> tuple[dict[str, str], set[str]]:
        """(type -> cipher word, the modifier types) for the sorted word types `types`: a bijection."""
        rng = _rng(self.seed, 0)
        used: set[str] = set()
        out: dict[str, str] = {}
        for w in types:
            syllables = max(1, -(-len(w) // 3))
            while True:  # draw until unused; at 14 x 5 syllables each, collisions are rare past two syllables
                word = "".join(_CONSONANTS[rng.integers(len(_CONSONANTS))] + _VOWELS[rng.integers(len(_VOWELS))]
                               for _ in range(syllables))
                if word not in used:
                    break
                syllables += int(rng.random() < 0.2)  # a crowded length spills into the next
            used.add(word)
            out[w] = word
        flags = _rng(self.seed, 1).random(len(types)) < self.modifier_share
        return out, {w for w, f in zip(types, flags) if f}

    @staticmethod
    def translate(words: list[str], cipher: dict[str, str], modifiers: set[str]) -> list[str]:
        out, i = [], 0
        while i < len(words):
            if i + 1 < len(words) and words[i] in modifiers and words[i + 1] not in modifiers:
                out += [cipher[words[i + 1]], cipher[words[i]]]
                i += 2
            else:
                out.append(cipher[words[i]])
                i += 1
        return out

    def generate(self, cache_dir: Path | None = None) -> PairCorpus:
        from tasks.common import cached_stdlib_documents, stdlib_documents

        docs = cached_stdlib_documents(cache_dir, self.min_chars) if cache_dir else stdlib_documents(self.min_chars)
        sentences = corpus_sentences(docs, self.min_words, self.max_words)
        need = self.train_size + self.val_size
        if len(sentences) < need:
            raise ValueError(f"dataset.generator.train_size/val_size: the embedded corpus has {len(sentences)} "
                             f"sentences of {self.min_words}-{self.max_words} words, fewer than {need} asked; "
                             "lower train_size or widen min_words/max_words")
        order = _rng(self.seed, 2).permutation(len(sentences))[:need]
        chosen = [sentences[i] for i in order]
        cipher, modifiers = self.cipher(sorted({w for s in chosen for w in s}))
        src = [" ".join(s) for s in chosen]
        tgt = [" ".join(self.translate(s, cipher, modifiers)) for s in chosen]
        n = self.train_size
        return PairCorpus(src[:n], tgt[:n], src[n:], tgt[n:],
                          notes={"word_types": len(cipher), "modifier_types": len(modifiers), "sentences": len(sentences)})


# ---------------------------------------------------------------------------------------------- reverse
class Reverse:
    """reverse: sequences of uniform length in [min_words, max_words] over `words` symbols w0 .. w{V-1} (uniform),
    target = the sequence reversed. Train and validation draw from separate seeded streams."""

    def __init__(self, words: int = 50, min_words: int = 5, max_words: int = 15, train_size: int = 20000,
                 val_size: int = 500, seed: int = 0):
        _positive(words=words, min_words=min_words, max_words=max_words, train_size=train_size, val_size=val_size)
        _lengths(min_words, max_words)
        self.words, self.min_words, self.max_words = words, min_words, max_words
        self.train_size, self.val_size, self.seed = train_size, val_size, int(seed)

    @property
    def max_target_words(self) -> int:
        return self.max_words

    def sequences(self, n: int, rng: np.random.Generator) -> list[list[str]]:
        lengths = rng.integers(self.min_words, self.max_words + 1, size=n)
        return [[f"w{i}" for i in rng.integers(self.words, size=int(k))] for k in lengths]

    def generate(self, cache_dir: Path | None = None) -> PairCorpus:
        from methods.losses.noisy_copy import SPECIALS

        train = self.sequences(self.train_size, _rng(self.seed, 0))
        val = self.sequences(self.val_size, _rng(self.seed, 1))
        return PairCorpus([" ".join(s) for s in train], [" ".join(reversed(s)) for s in train],
                          [" ".join(s) for s in val], [" ".join(reversed(s)) for s in val],
                          vocabulary=[*SPECIALS[:3], *(f"w{i}" for i in range(self.words))])


# ---------------------------------------------------------------------------------------------- noisy-copy
class NoisyCopySource:
    """noisy-copy (methods/losses/noisy_copy.py): its generator's keys, its vocabulary and ids unchanged."""

    def __init__(self, **generator):
        import inspect

        from methods.losses.noisy_copy import NoisyCopy

        try:
            self.task = NoisyCopy(**generator)
        except TypeError as e:
            valid = list(inspect.signature(NoisyCopy).parameters)
            raise ValueError(f"dataset.generator: {str(e).split('got ')[-1]}; choose keys from: {', '.join(valid)}") from e

    @property
    def max_target_words(self) -> int:
        return max(self.task.max_words, self.task.max_target_words)

    def generate(self, cache_dir: Path | None = None) -> PairCorpus:
        c = self.task.generate()
        t = self.task
        return PairCorpus([" ".join(s) for s in c.train_source], [" ".join(s) for s in c.train_target],
                          [" ".join(s) for s in c.val_source], [" ".join(s) for s in c.val_target],
                          vocabulary=c.vocabulary,
                          notes={"words": len(c.vocabulary), "mapping": t.mapping, "shuffle": t.shuffle,
                                 "repetition": t.repetition, "blank": t.blank})


# ---------------------------------------------------------------------------------------------- file
class PairFile:
    """file: a local TSV (source<TAB>target, one pair a line, no header) or JSONL file ({"source": ..., "target":
    ...} a line; `source_key`/`target_key` rename them), chosen by the file's suffix (.tsv/.txt, .jsonl/.json).
    A pair goes to validation when the hash of (seed, source, target) falls below val_fraction: an exact, seeded,
    order-independent split. `max_pairs` keeps the first that many lines."""

    def __init__(self, path: str | None = None, val_fraction: float = 0.05, source_key: str = "source",
                 target_key: str = "target", max_pairs: int | None = None, seed: int = 0):
        if not path:
            raise ValueError("dataset.generator.path: the local TSV or JSONL file of pairs (dataset.source=file)")
        if Path(path).suffix.lower() not in (".tsv", ".txt", ".jsonl", ".json"):
            raise ValueError(f"dataset.generator.path: {path!r} must end in .tsv, .txt, .jsonl or .json")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"dataset.generator.val_fraction: must be in (0, 1), got {val_fraction}")
        if max_pairs is not None:
            _positive(max_pairs=max_pairs)
        self.path, self.val_fraction, self.seed = str(path), float(val_fraction), int(seed)
        self.source_key, self.target_key, self.max_pairs = source_key, target_key, max_pairs

    max_target_words = None  # unknown before reading: the task truncates to model.seq_len

    def read(self) -> list[tuple[str, str]]:
        path = Path(self.path).expanduser()
        if not path.is_file():
            raise ValueError(f"dataset.generator.path: no file at {path}")
        pairs = []
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if self.max_pairs is not None and len(pairs) >= self.max_pairs:
                    break
                line = line.rstrip("\n")
                if not line.strip():
                    continue
                if path.suffix.lower() in (".jsonl", ".json"):
                    try:
                        row = json.loads(line)
                        pairs.append((str(row[self.source_key]), str(row[self.target_key])))
                    except (json.JSONDecodeError, KeyError, TypeError) as e:
                        raise ValueError(f"dataset.generator.path: line {n} of {path} is not a JSON object with "
                                         f"{self.source_key!r} and {self.target_key!r} ({e})") from e
                else:
                    cols = line.split("\t")
                    if len(cols) != 2:
                        raise ValueError(f"dataset.generator.path: line {n} of {path} has {len(cols)} tab-separated "
                                         "columns; expected source<TAB>target")
                    pairs.append((cols[0], cols[1]))
        if not pairs:
            raise ValueError(f"dataset.generator.path: {path} holds no pairs")
        return pairs

    def is_val(self, src: str, tgt: str) -> bool:
        h = hashlib.sha256(f"{self.seed}\0{src}\0{tgt}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64 < self.val_fraction

    def generate(self, cache_dir: Path | None = None) -> PairCorpus:
        pairs = self.read()
        train = [p for p in pairs if not self.is_val(*p)]
        val = [p for p in pairs if self.is_val(*p)]
        if not train or not val:
            raise ValueError(f"dataset.generator.val_fraction: {self.val_fraction} of {len(pairs)} pairs leaves an "
                             "empty split")
        return PairCorpus([s for s, _ in train], [t for _, t in train], [s for s, _ in val], [t for _, t in val],
                          notes={"file": self.path})


# ---------------------------------------------------------------------------------------------- hub
class HubPairs:
    """hf: a translation dataset of the Hugging Face hub by name, for clusters (e.g. name=wmt14 config=de-en
    source_lang=en target_lang=de): rows {"translation": {lang: text}}; `train_split`/`val_split` name its splits,
    `max_train` caps the training pairs. Needs a network (or the datasets cache) when the run builds its data."""

    def __init__(self, name: str | None = None, config: str | None = None, source_lang: str = "en",
                 target_lang: str = "de", train_split: str = "train", val_split: str = "validation",
                 max_train: int | None = None, max_val: int | None = None):
        if not name:
            raise ValueError("dataset.generator.name: the hub dataset (e.g. wmt14) for dataset.source=hf")
        for k, v in (("max_train", max_train), ("max_val", max_val)):
            if v is not None:
                _positive(**{k: v})
        self.name, self.config, self.source_lang, self.target_lang = name, config, source_lang, target_lang
        self.train_split, self.val_split, self.max_train, self.max_val = train_split, val_split, max_train, max_val

    max_target_words = None

    def split(self, split: str, cap: int | None) -> tuple[list[str], list[str]]:
        import datasets

        rows = datasets.load_dataset(self.name, self.config, split=split if cap is None else f"{split}[:{cap}]")
        pairs = [r["translation"] for r in rows]
        return [p[self.source_lang] for p in pairs], [p[self.target_lang] for p in pairs]

    def generate(self, cache_dir: Path | None = None) -> PairCorpus:
        ts, tt = self.split(self.train_split, self.max_train)
        vs, vt = self.split(self.val_split, self.max_val)
        return PairCorpus(ts, tt, vs, vt, notes={"hub": f"{self.name}/{self.config}"})


SOURCES: dict[str, type] = {"cipher-mt": CipherMT, "reverse": Reverse, "noisy-copy": NoisyCopySource, "file": PairFile,
                            "hf": HubPairs}


def source_class(name: str) -> type:
    """The class of `dataset.source`: a key of SOURCES or a dotted path (`mypkg.pairs.MyPairs`)."""
    if name in SOURCES:
        return SOURCES[name]
    if "." in name:
        import importlib

        module, _, attr = name.rpartition(".")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"dataset.source: cannot import {name!r} ({e})") from e
    raise ValueError(f"dataset.source: {name!r} is not a pairs source; choose one of: {', '.join(SOURCES)}, "
                     "or the dotted path of a class of your own")
