"""Dictionary entries and their definition sentences, for DefSent+ (Liu, 2024, arXiv:2405.16153: "DefSent+:
Improving sentence embeddings of language models by projecting definition sentences into a quasi-isotropic or
isotropic vector space of unlimited dictionary entries").

    entry(e) = (1/m_e) sum_j pool(Enc([CLS] d_{e,j} [SEP]))      over the entry's m_e training definitions
    p(e | d) = softmax_e(score(pool(Enc(d)), entry(e)))           cross-entropy (methods/retrieval/defsent_plus.py)

    python -m runner method=defsent_plus dataset=dictionary model=bert-tiny               # stdlib objects
    python -m runner method=defsent_plus dataset=dictionary dataset.source=randomword model=minilm
    python -m runner method=defsent_plus dataset=dictionary dataset.source=wordnet model=minilm  # wordnet-base

Sources (the paper trains on real dictionaries: WordNet glosses among them; what it used exactly is unverified):
  stdlib      entries are the qualified names of this Python's standard-library objects (email.mime.text.MIMEText);
              their definitions are the prose sentences of their docstrings (paragraphs of code, doctests, field
              lists and headers skipped; nltk's untrained Punkt splits sentences; min_words..max_words words, >= 80%
              letters and spaces, capitalised, no " = "). Real text, no network, the same on every machine with the
              same Python; on CPython 3.11.7 with the defaults: 2508 entries with >= 2 sentences (8042 kept, at most 8
              each). Group: the source file; family: the top-level package.
  randomword  PyPI python-randomword: 1162 English words with one short definition each (mean 4.2 words): m = 1;
              1152 entries after the 5 definitions two words share are dropped.
  wordnet     WordNet 3.0's glosses, read from the database files data.{noun,verb,adj,adv} in `wordnet_dir` (Debian's
              wordnet-base installs them at /usr/share/wordnet). Entry: a word (lemma, lowercased, "_" -> " ":
              multi-word entries included); its definitions: the glosses (examples cut off, as nltk's
              Synset.definition) of the synsets it heads. A synset's gloss is shared by all its lemmas, which would
              make the target ambiguous; here it goes to the synset's first lemma only. Group: the lexicographer file
              (noun.animal, ...: its number); family: the part of speech. wordnet-base 1:3.0-37: 15432 words head
              >= 2 synsets (44070 glosses kept).
              The file format is wndb(5WN)'s, parsed here: nltk's WordNetCorpusReader cannot open wordnet-base as
              Debian ships it (measured on wordnet-base 1:3.0-37: it has no `lexnames` file, which the reader opens
              first; nltk 3.10 also refuses any root outside nltk.data.path).
Every source: a definition that belongs to more than one entry (randomword's "brave", stdlib's "Return self.") is
dropped everywhere (its target would be ambiguous); an entry keeps its first `max_definitions` definitions and is
dropped below `min_definitions`; `max_entries` keeps a seeded random subset of the entries (in their order).

The split is exact and seeded (`seed`), per entry, by a stable hash (corpora.text_hash of seed, entry, position,
text), so it does not depend on the other entries or on the order of the input:
  m_e >= 2  one definition is held out (the one of smallest hash): the evaluation query "heldout"; the entry vector is
            built from the other m_e - 1 only (never from the held-out one).
  m_e = 1   (randomword) nothing can be held out without emptying the entry: the definition trains and builds the
            entry vector, and the evaluation query "perturbed" is a copy of it with word dropout (each word dropped
            with probability `word_dropout`, at least one kept and, from two words on, at least one dropped; seeded
            by the hash; a one-word definition is its own query). That measures whether a noisy
            copy still projects onto its own entry among all the others: robustness, not paraphrase generalisation;
            with m = 1 the entry matrix is the training definitions' own embeddings. Report it as such.
Validation (val/loss, val/top1) and eval/heldout_* (eval/perturbed_*) rank these queries against the whole entry
matrix.

STS-like pairs (the paper evaluates on STS benchmarks, which need a download; these are ours): `sts_pairs` pairs of
each grade, drawn with `seed`: grade 2, two definitions of one entry (the held-out one and a training one; m = 1:
the definition and its perturbed copy); grade 1, definitions of two entries of the same group (stdlib: the same
source file; wordnet: the same lexicographer file); grade 0, definitions of entries of different families (stdlib:
different top-level packages; wordnet: different parts of speech; randomword: any two entries). eval/sts_spearman is
Spearman's rho between the cosine of the two pooled embeddings and the grade.

Batches (make_loaders): dicts input_ids and attention_mask (B, L) right-padded with the tokenizer's pad id, labels
(B,) the entry index of each definition, index (B,) its row among the training definitions; training through
tasks.batches.ResumableBatchSampler (exact resume), validation over the evaluation queries in order. The tokenizer
(`tokenizer.kind`) as tasks/text_cls.py: `auto` takes a pretrained model's own (model.init_from an HF directory,
e.g. model=minilm's WordPiece, or hf://name), otherwise trains an uncased WordPiece on the training definitions
([PAD]=0 [UNK] [CLS] [SEP] [MASK]; every text is [CLS] ... [SEP]), cached by content; `hf` loads `tokenizer.name`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from methods.classification import corpora
from tasks.base import BuildContext, Task, TaskData
from tasks.common import check_encoder_tokenizer, content_hash, encoder_tokenizer
from tasks.errors import ConfigError

log = logging.getLogger(__name__)

SOURCES = ("stdlib", "randomword", "wordnet")
POOLING = ("cls", "mean")  # methods.retrieval.encoder.POOLING (not imported here: it imports torch)
WORDNET_DIR = "/usr/share/wordnet"  # Debian's wordnet-base
WORDNET_POS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}  # data.<file> -> part of speech
_CACHE_VERSION = "dictionary-v1"  # bump when a source's entries change


# ---------------------------------------------------------------------------------------------- sources
@dataclass
class Entries:
    """A dictionary: entry names, each with its definitions (in source order), a group and a family (for the
    STS-like grades; "" where the source has none)."""

    names: list[str]
    definitions: list[list[str]]
    groups: list[str]
    families: list[str]

    def __post_init__(self):
        if not len(self.names) == len(self.definitions) == len(self.groups) == len(self.families):
            raise ValueError("Entries: names, definitions, groups and families differ in length")


_CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.|\$ |[-=~*^]{3,}|:\w+|\|)")
_HEADER = re.compile(r"^\s*\w[\w ]*:\s*$")  # "Args:", "Returns:", "Example:"


def _prose_paragraphs(text: str) -> list[str]:
    """The paragraphs of a docstring that read as prose: none of its lines a doctest, a shell prompt, an underline,
    a field (":param x:") or a table row, its first line not indented (a code block) nor a header ("Args:")."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = [line for line in para.splitlines() if line.strip()]
        if not lines or lines[0].startswith((" ", "\t")) or _HEADER.match(lines[0]):
            continue
        if any(_CODE_LINE.match(line) for line in lines):
            continue
        out.append(" ".join(" ".join(lines).split()))
    return out


def _is_sentence(s: str, min_words: int, max_words: int) -> bool:
    words = s.split()
    letters = sum(c.isalpha() or c == " " for c in s)
    return (min_words <= len(words) <= max_words and letters >= 0.8 * len(s) and s[0].isupper()
            and " = " not in s)  # code run into prose ("mick = Turtle()")


def stdlib_entries(min_words: int = 4, max_words: int = 40, cache_dir: str | Path | None = None) -> Entries:
    """Standard-library objects (qualified names) and the prose sentences of their docstrings (module docstring)."""
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    punkt = PunktSentenceTokenizer()  # untrained: the Punkt rules without a learned abbreviation list (no download)
    records = corpora.cached_stdlib_docstrings(cache_dir=cache_dir)
    by_name: dict[str, list[str]] = {}
    where: dict[str, tuple[str, str]] = {}
    for r in records:
        sentences = [s for para in _prose_paragraphs(r["text"]) for s in punkt.tokenize(para)
                     if _is_sentence(s, min_words, max_words)]
        by_name.setdefault(r["object"], []).extend(sentences)
        where.setdefault(r["object"], (r["path"], r["package"]))
    names = list(by_name)
    return Entries(names, [by_name[n] for n in names], [where[n][0] for n in names], [where[n][1] for n in names])


def randomword_entries() -> Entries:
    """python-randomword's words and their one definition each, alphabetical (as the package lists them)."""
    try:
        from randomword import data
    except ImportError as e:
        others = ", ".join(s for s in SOURCES if s != "randomword")
        raise ConfigError("dataset.source: randomword needs the PyPI package python-randomword (pip install "
                          f"python-randomword); or choose one of: {others}") from e
    words = [(str(d["word"]).strip(), " ".join(str(d["definition"]).split())) for d in data]
    return Entries([w for w, _ in words], [[d] for _, d in words], [""] * len(words), [""] * len(words))


def wordnet_entries(root: str | Path) -> Entries:
    """WordNet's words and the glosses of the synsets each heads, from the wndb(5WN) files data.{noun,verb,adj,adv}
    under `root`. A data line: offset lex_filenum ss_type w_cnt(hex) [word lex_id]*w_cnt p_cnt ... | gloss; the
    definition is the gloss without its quoted examples (the parts of "; "-separated gloss that start with a quote),
    as nltk's Synset.definition() reads it."""
    root = Path(root).expanduser()
    missing = [f"data.{p}" for p in WORDNET_POS if not (root / f"data.{p}").is_file()]
    if missing:
        others = ", ".join(s for s in SOURCES if s != "wordnet")
        raise ConfigError(f"dataset.wordnet_dir: {root} has no WordNet database ({', '.join(missing)} missing; "
                          f"Debian: apt-get install wordnet-base); or choose one of: {others}")
    by_name: dict[str, list[str]] = {}
    where: dict[str, tuple[str, str]] = {}
    for file, pos in WORDNET_POS.items():
        with open(root / f"data.{file}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:  # the license header
                    continue
                head, gloss = line.split("|", 1)
                fields = head.split()
                if len(fields) < 6:
                    continue
                lexfile = int(fields[1])
                word = re.sub(r"\(\w+\)$", "", fields[4])  # adjective markers: beautiful(a)
                name = word.replace("_", " ").lower()
                definition = "; ".join(p.strip() for p in gloss.strip().split("; ") if not p.strip().startswith('"'))
                definition = " ".join(definition.split())
                if not definition:
                    continue
                by_name.setdefault(name, []).append(definition)
                where.setdefault(name, (f"{lexfile:02d}", pos))
    names = list(by_name)
    return Entries(names, [by_name[n] for n in names], [where[n][0] for n in names], [where[n][1] for n in names])


def clean_entries(entries: Entries, min_definitions: int, max_definitions: int | None) -> Entries:
    """Drop every definition that belongs to more than one entry (an ambiguous target), repeats within an entry, and
    then the entries left with fewer than `min_definitions`; keep the first `max_definitions` of each."""
    owners: dict[str, set[int]] = {}
    for i, defs in enumerate(entries.definitions):
        for d in defs:
            owners.setdefault(d, set()).add(i)
    keep = []
    for i, defs in enumerate(entries.definitions):
        mine = list(dict.fromkeys(d for d in defs if len(owners[d]) == 1))
        if max_definitions is not None:
            mine = mine[:max_definitions]
        if len(mine) >= min_definitions:
            keep.append((i, mine))
    return Entries([entries.names[i] for i, _ in keep], [d for _, d in keep], [entries.groups[i] for i, _ in keep],
                   [entries.families[i] for i, _ in keep])


# ---------------------------------------------------------------------------------------------- the split
def _hash(*parts: Any) -> int:
    return corpora.text_hash("\0".join(str(p) for p in parts))


def heldout_index(name: str, definitions: list[str], seed: int) -> int:
    """The definition an entry with >= 2 definitions holds out: the one of smallest hash (seed, entry, j, text)."""
    return min(range(len(definitions)), key=lambda j: (_hash(seed, name, j, definitions[j]), j))


def word_dropout(text: str, p: float, seed: int, name: str) -> str:
    """`text` with each word dropped with probability p, seeded by (seed, entry); at least one word is kept and, in a
    text of two words or more, at least one dropped (one chosen uniformly), so the copy differs from the text."""
    words = text.split()
    rng = np.random.default_rng(_hash("dropout", seed, name))
    keep = rng.random(len(words)) >= p
    if not keep.any():
        keep[int(rng.integers(len(words)))] = True
    elif keep.all() and len(words) >= 2:
        keep[int(rng.integers(len(words)))] = False
    return " ".join(w for w, k in zip(words, keep) if k)


@dataclass
class Split:
    """Training definitions (text, entry) and one evaluation query per entry (text, entry, kind)."""

    train_texts: list[str]
    train_labels: np.ndarray
    eval_texts: list[str]
    eval_labels: np.ndarray
    eval_kinds: np.ndarray  # "heldout" (m >= 2) | "perturbed" (m = 1)


def split_entries(entries: Entries, seed: int, dropout: float) -> Split:
    train_texts, train_labels, eval_texts, eval_labels, kinds = [], [], [], [], []
    for e, (name, defs) in enumerate(zip(entries.names, entries.definitions)):
        if len(defs) >= 2:
            h = heldout_index(name, defs, seed)
            rest = [d for j, d in enumerate(defs) if j != h]
            query, kind = defs[h], "heldout"
        else:
            rest, query, kind = list(defs), word_dropout(defs[0], dropout, seed, name), "perturbed"
        train_texts += rest
        train_labels += [e] * len(rest)
        eval_texts.append(query)
        eval_labels.append(e)
        kinds.append(kind)
    return Split(train_texts, np.asarray(train_labels, dtype=np.int64), eval_texts,
                 np.asarray(eval_labels, dtype=np.int64), np.asarray(kinds, dtype=object))


def sts_pairs(entries: Entries, split: Split, n: int, seed: int) -> tuple[list[str], list[str], np.ndarray]:
    """Graded pairs (text a, text b, grade): 2 same entry, 1 same group, 0 different family (see the docstring)."""
    rng = np.random.default_rng(_hash("sts", seed))
    train_of: dict[int, list[int]] = {}
    for row, e in enumerate(split.train_labels.tolist()):
        train_of.setdefault(e, []).append(row)
    a, b, grades = [], [], []
    num = len(entries.names)
    # grade 2: the evaluation query of an entry and one of its training definitions
    for e in rng.permutation(num)[:n].tolist():
        a.append(split.eval_texts[e])
        b.append(split.train_texts[train_of[e][int(rng.integers(len(train_of[e])))]])
        grades.append(2)
    # grade 1: two entries of one group (a group of >= 2 entries)
    members: dict[str, list[int]] = {}
    for e, g in enumerate(entries.groups):
        if g:
            members.setdefault(g, []).append(e)
    groups = [m for m in members.values() if len(m) >= 2]
    sizes = np.asarray([len(m) for m in groups], dtype=np.float64)
    for _ in range(n if groups else 0):
        m = groups[int(rng.choice(len(groups), p=sizes / sizes.sum()))]
        i, j = rng.choice(len(m), size=2, replace=False).tolist()
        a.append(_any_definition(m[i], split, train_of, rng))
        b.append(_any_definition(m[j], split, train_of, rng))
        grades.append(1)
    # grade 0: two entries of different families (any two entries where the source has none)
    families = entries.families
    made, tries = 0, 0
    while made < n and tries < 50 * n and num >= 2:
        tries += 1
        i, j = rng.choice(num, size=2, replace=False).tolist()
        if families[i] and families[i] == families[j]:
            continue
        a.append(_any_definition(i, split, train_of, rng))
        b.append(_any_definition(j, split, train_of, rng))
        grades.append(0)
        made += 1
    return a, b, np.asarray(grades, dtype=np.int64)


def _any_definition(e: int, split: Split, train_of: dict[int, list[int]], rng: np.random.Generator) -> str:
    rows = train_of[e]
    return split.train_texts[rows[int(rng.integers(len(rows)))]]


# ---------------------------------------------------------------------------------------------- data
@dataclass
class DictionaryData(TaskData):
    """Entries, their training definitions and evaluation queries, encoded (see the module docstring)."""

    source: str
    entry_names: list[str]
    entry_groups: list[str]
    train_texts: list[str]
    train_labels: np.ndarray
    eval_texts: list[str]
    eval_labels: np.ndarray
    eval_kinds: np.ndarray
    sts_a: list[str]
    sts_b: list[str]
    sts_grades: np.ndarray
    tokenizer: Any
    vocab_size: int
    seq_len: int
    pooling: str = "cls"
    train_ids: list[list[int]] = field(default_factory=list)
    eval_ids: list[list[int]] = field(default_factory=list)
    sts_a_ids: list[list[int]] = field(default_factory=list)
    sts_b_ids: list[list[int]] = field(default_factory=list)

    @property
    def module_class(self):  # imported when a run builds its module (Lightning and torch), not to validate a config
        from methods.retrieval.defsent_plus import DefSentModule

        return DefSentModule

    def __post_init__(self):
        for name, texts in (("train_ids", self.train_texts), ("eval_ids", self.eval_texts), ("sts_a_ids", self.sts_a),
                            ("sts_b_ids", self.sts_b)):
            if not getattr(self, name):
                setattr(self, name, self.encode(texts))

    @property
    def num_entries(self) -> int:
        return len(self.entry_names)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids with the tokenizer's special tokens ([CLS] ... [SEP]), truncated to seq_len."""
        if not texts:
            return []
        return self.tokenizer(list(texts), truncation=True, max_length=self.seq_len)["input_ids"]

    # -- the task protocol -------------------------------------------------------------------
    def make_loaders(self, batch_size: int, total_micro_batches: int, seed: int, start=lambda: 0, rank: int = 0,
                     world: int = 1, val_batches: int | None = None, num_workers: int = 0):
        """Training batches are a pure function of the global micro-batch index (ResumableBatchSampler);
        validation is the evaluation queries in order (capped at `val_batches` batches per rank)."""
        from tasks.batches import labelled_loaders

        return labelled_loaders((self.train_ids, self.train_labels), (self.eval_ids, self.eval_labels), self.pad_id,
                                batch_size, total_micro_batches, seed, start, rank, world, val_batches, num_workers)

    def counts(self) -> dict[str, int]:
        kinds = self.eval_kinds.tolist()
        return {"entries": self.num_entries, "train_definitions": len(self.train_texts),
                "heldout_definitions": kinds.count("heldout"), "perturbed_definitions": kinds.count("perturbed"),
                "sts_pairs": len(self.sts_grades)}

    def baselines(self, val_dl) -> dict[str, float]:
        """Chance top-1 of a query among all entries: the floor to beat."""
        return {"val/chance_top1": 1.0 / max(1, self.num_entries)}

    def evaluate(self, model) -> dict[str, float]:
        """Held-out (or perturbed) definition -> entry top-1/top-10 over the whole entry matrix rebuilt from the final
        encoder, the entry matrix's isotropy and mean pairwise cosine, and the STS-like Spearman
        (methods.retrieval.defsent_plus.evaluate_dictionary)."""
        from methods.retrieval.defsent_plus import evaluate_dictionary

        return evaluate_dictionary(model, self)


# ---------------------------------------------------------------------------------------------- the task
class Dictionary(Task):
    """Dictionary entries and definition sentences for an encoder (see the module docstring)."""

    provides = frozenset({"definitions"})
    model_kinds = ("encoder", "masked-lm")
    eval_only_args = frozenset({"sts_pairs"})

    def __init__(self, source: str = "stdlib", min_definitions: int = 2, max_definitions: int | None = 8,
                 max_entries: int | None = None, min_words: int = 4, max_words: int = 40, word_dropout: float = 0.3,
                 sts_pairs: int = 300, seed: int = 0, wordnet_dir: str | None = None, pooling: str = "mean",
                 tokenizer: dict | None = None):
        if source not in SOURCES:
            raise ValueError(f"dataset.source: {source!r}; choose one of: {', '.join(SOURCES)}")
        self.source = source
        problems = [f"dataset.{k}: {v}; {want}" for k, v, want, ok in (
            ("min_definitions", min_definitions, "at least 1", int(min_definitions) >= 1),
            ("max_definitions", max_definitions, "null or >= min_definitions",
             max_definitions is None or int(max_definitions) >= int(min_definitions)),
            ("max_entries", max_entries, "null (all) or at least 2", max_entries is None or int(max_entries) >= 2),
            ("min_words", min_words, "at least 1", int(min_words) >= 1),
            ("max_words", max_words, ">= min_words", int(max_words) >= int(min_words)),
            ("word_dropout", word_dropout, "in [0, 1)", 0 <= float(word_dropout) < 1),
            ("sts_pairs", sts_pairs, ">= 0", int(sts_pairs) >= 0)) if not ok]
        if source == "randomword" and int(min_definitions) > 1:
            problems.append(f"dataset.min_definitions: {min_definitions}; randomword has one definition per word (1)")
        if pooling not in POOLING:
            problems.append(f"dataset.pooling: {pooling!r}; choose one of: {', '.join(POOLING)}")
        try:
            self.tokenizer = check_encoder_tokenizer(tokenizer)
        except ValueError as e:
            problems.append(str(e))
        if problems:
            raise ValueError("; ".join(problems))
        self.min_definitions = int(min_definitions)
        self.max_definitions = None if max_definitions is None else int(max_definitions)
        self.max_entries = None if max_entries is None else int(max_entries)
        self.min_words, self.max_words = int(min_words), int(max_words)
        self.word_dropout, self.sts_pairs, self.seed = float(word_dropout), int(sts_pairs), int(seed)
        self.wordnet_dir, self.pooling = wordnet_dir, pooling

    def ignored_args(self) -> dict[str, str]:
        out = {}
        if self.wordnet_dir is not None and self.source != "wordnet":
            out["wordnet_dir"] = "only source=wordnet reads a WordNet directory"
        if self.source != "stdlib" and (self.min_words, self.max_words) != (4, 40):
            out["min_words"] = "only source=stdlib cuts docstrings into sentences (min_words, max_words)"
        return out

    # -- building ------------------------------------------------------------------------------
    def entries(self, cache_dir: str | Path | None = None) -> Entries:
        """The source's entries, cleaned (clean_entries) and subsampled (max_entries); stdlib's cached as JSON under
        cache_dir (sentence splitting takes about a second)."""
        if self.source == "randomword":
            raw = randomword_entries()
        elif self.source == "wordnet":
            raw = wordnet_entries(self.wordnet_dir or WORDNET_DIR)
        else:
            raw = self._stdlib(cache_dir)
        entries = clean_entries(raw, self.min_definitions, self.max_definitions)
        if self.max_entries is not None and len(entries.names) > self.max_entries:
            keep = np.sort(np.random.default_rng(_hash("entries", self.seed)).choice(
                len(entries.names), size=self.max_entries, replace=False)).tolist()
            entries = Entries([entries.names[i] for i in keep], [entries.definitions[i] for i in keep],
                              [entries.groups[i] for i in keep], [entries.families[i] for i in keep])
        if len(entries.names) < 2:
            raise ConfigError(f"dataset.source: {self.source} has {len(entries.names)} entries with >= "
                              f"{self.min_definitions} definitions; lower dataset.min_definitions")
        return entries

    def _stdlib(self, cache_dir) -> Entries:
        if cache_dir is None:
            return stdlib_entries(self.min_words, self.max_words)
        key = content_hash(_CACHE_VERSION, sys.version, self.min_words, self.max_words)
        path = Path(cache_dir) / "dictionary" / f"stdlib-{key}.json"
        if path.exists():
            return Entries(**json.loads(path.read_text()))
        entries = stdlib_entries(self.min_words, self.max_words, cache_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(entries.__dict__))
        os.replace(tmp, path)
        return entries

    def build(self, ctx: BuildContext) -> DictionaryData:
        entries = self.entries(ctx.cache_dir)
        split = split_entries(entries, self.seed, self.word_dropout)
        a, b, grades = sts_pairs(entries, split, self.sts_pairs, self.seed)
        tok = encoder_tokenizer(self.tokenizer, ctx.model_source, split.train_texts, ctx.cache_dir)
        data = DictionaryData(self.source, entries.names, entries.groups, split.train_texts, split.train_labels,
                              split.eval_texts, split.eval_labels, split.eval_kinds, a, b, grades, tok, len(tok),
                              int(ctx.seq_len), pooling=self.pooling)
        log.info("%s: %d entries, %d training definitions, %d evaluation queries, %d STS pairs; tokenizer %d tokens",
                 self.source, data.num_entries, len(split.train_texts), len(split.eval_texts), len(grades), len(tok))
        return data
