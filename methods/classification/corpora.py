"""The labelled text sources of the text-classification task, and its exact stratified split.

Every source returns a `LabelledTexts`: texts, labels (int64 class ids, or float32 scores for regression), the
class names, the task type, the score range (regression) and per-example extras in `meta` (arrays in the order
of the texts). All of them are deterministic: the same arguments give the same data on every machine (the
stdlib source: with the same Python), and randomness comes only from `np.random.default_rng(seed)`.

- `stdlib_packages`  real labels: docstrings of this Python's standard library, labelled by the top-level
                     package or module they come from (`email`, `asyncio`, `tkinter`, ...).
- `keyword_cls`      generated: keywords among Zipfian filler words; `variant="position"` labels a text by which
                     keyword comes first (a bag of words is at chance), `variant="bag"` by which keyword occurs.
- `synthetic_essays` generated regression (automated essay scoring): the integer score is a noisy increasing
                     function of the counts of "quality" words and of the length.
- `aigt_pairs`       AI-generated-text detection: human continuations of prose openings against machine
                     continuations of the same openings at the same lengths (label 1 = machine).
- `stratified_split` the train/val split: per class, a fixed fraction by a stable hash of the text.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import sys
import sysconfig
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

TASK_TYPES = ("classification", "regression")


@dataclass
class LabelledTexts:
    """Texts with their labels.

    texts        list[str]
    labels       (N,) int64 class ids into `label_names` (classification) or float32 scores (regression)
    label_names  the class names ([] for regression)
    task_type    "classification" | "regression"
    score_range  (lo, hi): the integer scores of a regression source (for QWK); None for classification
    meta         per-example extras: name -> array of length N, in the order of `texts`
    """

    texts: list[str]
    labels: np.ndarray
    label_names: list[str]
    task_type: str
    score_range: tuple[int, int] | None = None
    meta: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        if self.task_type not in TASK_TYPES:
            raise ValueError(f"task_type: {self.task_type!r}; choose one of: {', '.join(TASK_TYPES)}")
        self.labels = np.asarray(self.labels, dtype=np.int64 if self.task_type == "classification" else np.float32)
        if self.labels.shape != (len(self.texts),):
            raise ValueError(f"labels: shape {self.labels.shape} for {len(self.texts)} texts")
        for name, values in self.meta.items():
            if len(values) != len(self.texts):
                raise ValueError(f"meta[{name!r}]: {len(values)} values for {len(self.texts)} texts")

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names) if self.task_type == "classification" else 1

    def subset(self, idx: Sequence[int] | np.ndarray) -> LabelledTexts:
        """The examples at `idx` (in that order), meta included."""
        idx = np.asarray(idx, dtype=np.int64)
        return LabelledTexts([self.texts[i] for i in idx], self.labels[idx], list(self.label_names), self.task_type,
                             self.score_range, {k: np.asarray(v)[idx] for k, v in self.meta.items()})


def _strings(values) -> np.ndarray:
    """A 1-D object array of Python strings (fixed-width unicode arrays would pad every row to the longest)."""
    values = list(values)
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _round_half_up(x) -> np.ndarray:
    """Round to the nearest integer, halves up (2.5 -> 3), robust to float error (0.35 * 10 -> 4)."""
    return np.floor(np.round(np.asarray(x, dtype=np.float64), 9) + 0.5).astype(np.int64)


def text_hash(text: str) -> int:
    """A stable 64-bit hash of a text (blake2b of its UTF-8 bytes): the same in every process and on every
    machine, unlike Python's salted `hash`."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


# ------------------------------------------------------------------------------------------ the exact split
def stratified_split(labels, val_fraction: float, key_texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The exact stratified train/val split: (train_idx, val_idx), each sorted int64.

    Per class c (for float/regression labels: per integer score, rounded half up), the n_c examples are ordered
    by `text_hash` of their key text (ties, i.e. identical texts, by the text and then the input position) and
    the first round(val_fraction * n_c) (rounded half up) go to val, the rest to train. So every class is split
    exactly in proportion (an overall 60/40 split is exact up to one example per class), the two sides are
    disjoint and cover everything, and the split does not depend on the order of the input: permuting the
    examples permutes the indices and selects the same texts. Which examples go to val depends only on the key
    texts of their own class. `key_texts` are usually the texts themselves; examples that must stay together
    (e.g. the human and machine sides of one aigt opening, one per class) can share a key text instead.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(key_texts):
        raise ValueError(f"stratified_split: {labels.shape} labels for {len(key_texts)} key texts")
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction: {val_fraction} is not in [0, 1]")
    strata = _round_half_up(labels) if np.issubdtype(labels.dtype, np.floating) else labels.astype(np.int64)
    hashes = [text_hash(t) for t in key_texts]
    val: list[int] = []
    for c in np.unique(strata):
        members = np.flatnonzero(strata == c).tolist()
        members.sort(key=lambda i: (hashes[i], key_texts[i], i))
        val += members[:int(_round_half_up(val_fraction * len(members)))]
    val_idx = np.sort(np.asarray(val, dtype=np.int64))
    train_mask = np.ones(len(labels), dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask).astype(np.int64), val_idx


# ------------------------------------------------------------------------------------------ stdlib packages
STDLIB_SKIP_DIRS = frozenset({"test", "idlelib", "lib2to3", "site-packages", "turtledemo", "ensurepip",
                              "__pycache__"})
_STDLIB_CACHE_VERSION = "stdlib-packages-v1"  # bump when the walk or its records change


def _skipped(part: str) -> bool:
    return part in STDLIB_SKIP_DIRS or "tests" in part


def _docstrings(tree: ast.Module, module: str):
    """(kind, qualified name, docstring) of the module and of every class and function in it (nested ones
    included), in source order: the module first, then each definition before its body."""
    yield "module", module, ast.get_docstring(tree)

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}.{child.name}"
                yield ("class" if isinstance(child, ast.ClassDef) else "function"), name, ast.get_docstring(child)
            yield from visit(child, name)

    yield from visit(tree, module)


def stdlib_docstrings(root: str | Path | None = None, include: Collection[str] | None = None) -> list[dict]:
    """Every docstring of the Python sources under `root` (default: this Python's standard library), read with
    `ast` (nothing is imported), in a fixed order: the files sorted by their path components, then source order
    in each file.

    Skipped: directories named test, idlelib, lib2to3, site-packages, turtledemo, ensurepip, __pycache__ or
    containing "tests" (tkinter/test, unittest/test, distutils/tests, ...), `__main__.py` files, and files that
    do not parse. `include` restricts the walk to those top-level names (package directories or modules).
    Each record: {"package": the top-level name ("email" for email/mime/text.py, "turtle" for turtle.py),
    "text": the cleaned docstring (`ast.get_docstring`, stripped), "path": the file relative to `root`,
    "kind": module | class | function, "object": its qualified name (email.mime.text.MIMEText)}.
    """
    root = Path(sysconfig.get_paths()["stdlib"] if root is None else root)
    files = []
    for here, dirs, names in os.walk(root):
        rel_dir = Path(here).relative_to(root)
        dirs[:] = [d for d in dirs if not _skipped(d) and (include is None or rel_dir.parts or d in include)]
        for f in names:
            package = (rel_dir.parts[0] if rel_dir.parts else f).removesuffix(".py")
            if f.endswith(".py") and f != "__main__.py" and (include is None or package in include):
                files.append(rel_dir / f)
    records = []
    for rel in sorted(files, key=lambda p: p.parts):  # a package's files (alpha/...) before alpha.py, beta.py
        try:
            tree = ast.parse((root / rel).read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        parts = rel.with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for kind, name, doc in _docstrings(tree, module):
            if doc and doc.strip():
                records.append({"package": rel.parts[0].removesuffix(".py"), "text": doc.strip(),
                                "path": rel.as_posix(), "kind": kind, "object": name})
    return records


def cached_stdlib_docstrings(root=None, include=None, cache_dir=None) -> list[dict]:
    """stdlib_docstrings, read back from `cache_dir` after the first walk (seconds of parsing): JSON keyed by the
    Python version and the tree; no cache_dir: walked every time."""
    if cache_dir is None:
        return stdlib_docstrings(root, include)
    root = str(Path(sysconfig.get_paths()["stdlib"] if root is None else root).resolve())
    key = hashlib.sha256(json.dumps([_STDLIB_CACHE_VERSION, sys.version, root,
                                     sorted(include) if include is not None else None]).encode()).hexdigest()[:16]
    path = Path(cache_dir) / "documents" / f"stdlib-packages-{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    records = stdlib_docstrings(root, include)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(records))
    os.replace(tmp, path)
    return records


def stdlib_packages(min_per_class: int = 150, max_per_class: int | None = None, min_chars: int = 80, seed: int = 0,
                    *, root: str | Path | None = None, include: Collection[str] | None = None,
                    cache_dir: str | Path | None = None) -> LabelledTexts:
    """Real classification data: docstrings of this Python's standard library, labelled by the top-level package
    or module they belong to.

    The docstrings are those of `stdlib_docstrings` (modules, classes and functions, read with `ast`; test
    packages, idlelib, lib2to3, site-packages and `__main__.py` skipped). Kept: docstrings of at least
    `min_chars` characters; a text that occurs more than once is kept once, and dropped altogether if it
    occurs under two different packages (it could carry either label). The classes are the top-level names
    with at least `min_per_class` such docstrings, named as in the stdlib (`_pydecimal` is the pure-Python
    `decimal`); label ids follow the sorted names. `max_per_class`, if given, caps each class at that many
    docstrings, a seeded random subset (the only use of `seed`). Texts keep the walk order (sorted paths, then
    source order). On CPython 3.11.7 with min_per_class=150: min_chars=80 gives 5 classes, 1152 docstrings
    (asyncio 196, distutils 239, email 188, importlib 150, tkinter 379); min_chars=40 gives 10; min_chars=20
    gives 11, 3202 docstrings (_pydecimal 214, asyncio 337, distutils 326, email 297, importlib 297, logging
    238, multiprocessing 201, tkinter 728, turtle 173, unittest 168, xml 223). Other Python versions differ.

    meta: "paths" (source file relative to the stdlib), "objects" (qualified name), "kinds" (module | class |
    function). `root`/`include` read another tree or only some top-level names (tests); `cache_dir` caches the
    walk (seconds of parsing) as JSON keyed by the Python version and the tree.
    """
    records = cached_stdlib_docstrings(root, include, cache_dir)
    records = [r for r in records if len(r["text"]) >= min_chars]
    packages_of: dict[str, set[str]] = {}
    for r in records:
        packages_of.setdefault(r["text"], set()).add(r["package"])
    seen: set[str] = set()
    unique = []
    for r in records:
        if len(packages_of[r["text"]]) == 1 and r["text"] not in seen:
            seen.add(r["text"])
            unique.append(r)
    counts = Counter(r["package"] for r in unique)
    names = sorted(p for p, c in counts.items() if c >= min_per_class)
    if len(names) < 2:
        raise ValueError(f"stdlib_packages: {len(names)} top-level names have >= {min_per_class} docstrings of "
                         f">= {min_chars} characters (largest: {counts.most_common(5)}); lower min_per_class or min_chars")
    kept = [r for r in unique if r["package"] in names]
    if max_per_class is not None:
        rng = np.random.default_rng(seed)
        keep = set()
        for name in names:
            members = [i for i, r in enumerate(kept) if r["package"] == name]
            if len(members) > max_per_class:
                members = rng.choice(members, size=max_per_class, replace=False).tolist()
            keep.update(members)
        kept = [r for i, r in enumerate(kept) if i in keep]
    ids = {name: i for i, name in enumerate(names)}
    return LabelledTexts(
        texts=[r["text"] for r in kept], labels=np.asarray([ids[r["package"]] for r in kept], dtype=np.int64),
        label_names=names, task_type="classification",
        meta={"paths": _strings(r["path"] for r in kept), "objects": _strings(r["object"] for r in kept),
              "kinds": _strings(r["kind"] for r in kept)})


# ------------------------------------------------------------------------------------------ generated words
KEYWORDS = ("red", "blue", "green", "gold", "black", "white", "silver", "purple", "orange", "brown", "pink", "grey")
_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
_SYLLABLES = [c + v for c in _CONSONANTS for v in _VOWELS]  # 70 consonant-vowel syllables


def filler_words(vocab: int) -> list[str]:
    """`vocab` distinct pseudo-words of two consonant-vowel syllables ("bada", "kemi", ...), at most 4900; word i is
    fixed by i alone. None is an English keyword of `KEYWORDS` (those all break the consonant-vowel pattern)."""
    s = len(_SYLLABLES)
    if not 1 <= vocab <= s * s:
        raise ValueError(f"vocab: {vocab}; choose 1 to {s * s}")
    # (i mod 70, (i div 70 + 3i) mod 70) is a bijection of 0..4899 onto syllable pairs
    return [_SYLLABLES[i % s] + _SYLLABLES[(i // s + 3 * i) % s] for i in range(vocab)]


def zipf_probs(vocab: int, exponent: float = 1.0) -> np.ndarray:
    """p(rank r) proportional to 1 / (r + 1)^exponent, r = 0..vocab-1 (word 0 the most frequent)."""
    p = 1.0 / np.arange(1, vocab + 1, dtype=np.float64) ** exponent
    return p / p.sum()


def keyword_cls(n: int = 4000, num_classes: int = 4, vocab: int = 200, min_len: int = 12, max_len: int = 40,
                seed: int = 0, variant: str = "position") -> LabelledTexts:
    """Generated keyword classification, where (variant="position") only word order tells the classes apart.

    Each text has a length L uniform in [min_len, max_len] words; its non-keyword words are i.i.d. Zipfian
    (exponent 1) draws from `vocab` pseudo-words (`filler_words`). The keywords are the first `num_classes`
    of `KEYWORDS` (k_0 = "red", k_1 = "blue", ...). Labels are balanced: exactly n // C or n // C + 1 per class
    (a seeded permutation of i mod C).

    variant="position": every text contains each of the C keywords exactly once, at C distinct positions
      drawn uniformly among the L; the label is the index of the keyword that comes FIRST (label_names
      "red-first", "blue-first", ...). The keyword placed first is k_label and the other C - 1 follow in a
      uniformly random order. So every text has the same keyword multiset, and the fillers, the length and the
      set of keyword positions are drawn independently of the label: the bag of words of a text is exactly as
      likely under every label (swapping the first keyword with any other gives a text with the same word
      multiset, the same probability and another label). A bag-of-words model (mean of embeddings, TF-IDF)
      is at chance, 1/C; a model that sees order can reach 100%. With C = 2 this is "red before blue".
    variant="bag": every text contains exactly one keyword, k_label, at a uniform position (label_names "red",
      "blue", ...): solvable from the bag of words alone.

    meta: "lengths" (words), "keyword_positions" ((N, C) int64: column c = the word position of k_c, for
    "position"; (N,) the position of the one keyword, for "bag").
    """
    if variant not in ("position", "bag"):
        raise ValueError(f"variant: {variant!r}; choose one of: position, bag")
    if not 2 <= num_classes <= len(KEYWORDS):
        raise ValueError(f"num_classes: {num_classes}; choose 2 to {len(KEYWORDS)}")
    need = num_classes if variant == "position" else 1
    if not need <= min_len <= max_len:
        raise ValueError(f"min_len, max_len: {min_len}, {max_len}; need {need} <= min_len <= max_len")
    words = filler_words(vocab)
    keywords = list(KEYWORDS[:num_classes])
    assert not set(words) & set(keywords)
    probs = zipf_probs(vocab)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    lengths = rng.integers(min_len, max_len + 1, size=n)
    fill = rng.choice(vocab, size=int(lengths.sum()), p=probs)
    starts = np.concatenate([[0], np.cumsum(lengths)]).tolist()
    texts, positions = [], []
    for i, (label, length) in enumerate(zip(labels.tolist(), lengths.tolist())):
        row = [words[j] for j in fill[starts[i]:starts[i + 1]].tolist()]
        if variant == "position":
            slots = np.sort(rng.choice(length, size=num_classes, replace=False))
            others = [c for c in range(num_classes) if c != label]
            order = [label] + [others[j] for j in rng.permutation(len(others))]
            where = np.empty(num_classes, dtype=np.int64)
            for slot, c in zip(slots.tolist(), order):
                row[slot] = keywords[c]
                where[c] = slot
            positions.append(where)
        else:
            slot = int(rng.integers(length))
            row[slot] = keywords[label]
            positions.append(slot)
        texts.append(" ".join(row))
    names = [f"{k}-first" for k in keywords] if variant == "position" else keywords
    return LabelledTexts(texts, labels, names, "classification",
                         meta={"lengths": lengths.astype(np.int64), "keyword_positions": np.asarray(positions, dtype=np.int64)})


# ------------------------------------------------------------------------------------------ essays (AES)
QUALITY_WORDS = ("therefore", "moreover", "however", "evidence", "consequently", "furthermore", "analysis",
                 "specifically")
ESSAY_LENGTH = (30, 250)  # words: the clip range of an essay's length
QUALITY_MAX = 12  # q ~ Binomial(QUALITY_MAX, t)
QUALITY_SATURATION = 10  # quality words beyond this many add nothing to the score
_DETS = ("the", "a", "this", "every", "our", "their")
_ADJS = ("small", "large", "old", "new", "quiet", "busy", "local", "simple", "early", "modern", "public", "green",
         "long", "bright", "common")
_NOUNS = ("city", "school", "river", "student", "teacher", "garden", "market", "library", "family", "village",
          "computer", "museum", "train", "park", "country", "friend", "summer", "book", "road", "team")
_VERBS = ("visits", "likes", "builds", "needs", "helps", "changes", "finds", "watches", "follows", "opens",
          "shows", "keeps")
_PREPS = ("near", "after", "before", "with", "behind", "across")


def _filler_sentences(rng: np.random.Generator, count: int) -> list[list[str]]:
    """`count` sentences of 5 to 9 lowercase words each: det [adj] noun verb det [adj] noun [prep det noun], each
    optional part present with probability 0.5, 0.5 and 0.4."""
    def pick(pool):
        return [pool[j] for j in rng.integers(len(pool), size=count).tolist()]

    d1, a1, n1, v, d2, a2, n2, p, d3, n3 = (pick(pool) for pool in (_DETS, _ADJS, _NOUNS, _VERBS, _DETS, _ADJS,
                                                                     _NOUNS, _PREPS, _DETS, _NOUNS))
    has_a1, has_a2, has_p = (rng.random(count) < 0.5).tolist(), (rng.random(count) < 0.5).tolist(), (rng.random(count) < 0.4).tolist()
    out = []
    for j in range(count):
        words = [d1[j]] + ([a1[j]] if has_a1[j] else []) + [n1[j], v[j], d2[j]] + ([a2[j]] if has_a2[j] else []) + [n2[j]]
        out.append(words + ([p[j], d3[j], n3[j]] if has_p[j] else []))
    return out


def essay_score(quality_count, length, score_range: tuple[int, int] = (1, 6)) -> np.ndarray:
    """The noise-free score s* = lo + (hi - lo) * (0.6 * min(q / 10, 1) + 0.4 * clip((L - 30) / 220, 0, 1)) of an
    essay with q quality words and L words (float64; increasing in both, lo at q = 0 and L <= 30, hi at q >= 10
    and L >= 250)."""
    lo, hi = score_range
    q = np.minimum(np.asarray(quality_count, dtype=np.float64) / QUALITY_SATURATION, 1.0)
    length_part = np.clip((np.asarray(length, dtype=np.float64) - ESSAY_LENGTH[0]) / (ESSAY_LENGTH[1] - ESSAY_LENGTH[0]), 0, 1)
    return lo + (hi - lo) * (0.6 * q + 0.4 * length_part)


def synthetic_essays(n: int = 2000, score_range: tuple[int, int] = (1, 6), seed: int = 0,
                     noise: float = 0.5) -> LabelledTexts:
    """Generated regression data for automated essay scoring: essays of filler sentences whose integer score is a
    noisy increasing function of their number of "quality" words and of their length.

    Per essay: a latent quality t ~ U(0, 1); length L = clip(round(40 + 200 t + N(0, 20^2)), 30, 250) words;
    q ~ Binomial(12, t) quality words, each one of `QUALITY_WORDS` uniformly ("therefore", "moreover", ...).
    The essay is L words: L - q words of filler sentences ("The quiet student visits a river.", from fixed word
    pools that share no word with QUALITY_WORDS; the last sentence is cut to fit) with the q quality words
    inserted at uniform positions; sentences start with a capital and end with "."; `text.split()` has exactly
    L words. The score depends on the text only through q and L (t is not a feature):
        label = clip(round_half_up(essay_score(q, L) + noise * eps), lo, hi),   eps ~ N(0, 1),
    with essay_score = lo + (hi - lo) * (0.6 * min(q / 10, 1) + 0.4 * clip((L - 30) / 220, 0, 1)).
    labels are float32 integers in score_range.

    meta: "lengths" (L), "quality_counts" (q), "keyword_counts" ((N, 8): the count of each QUALITY_WORDS entry),
    "expected_scores" (essay_score(q, L), before noise and rounding).
    """
    lo, hi = (int(score_range[0]), int(score_range[1]))
    if lo >= hi:
        raise ValueError(f"score_range: {score_range}; need lo < hi")
    rng = np.random.default_rng(seed)
    t = rng.random(n)
    lengths = np.clip(_round_half_up(40 + 200 * t + rng.normal(0, 20, n)), *ESSAY_LENGTH)
    quality = np.minimum(rng.binomial(QUALITY_MAX, t), lengths)
    texts, keyword_counts = [], np.zeros((n, len(QUALITY_WORDS)), dtype=np.int64)
    per_essay = ((lengths - quality) // 5 + 1).tolist()  # sentences of >= 5 words: >= length - q filler words
    sentences = _filler_sentences(rng, sum(per_essay))
    first = np.concatenate([[0], np.cumsum(per_essay)]).tolist()
    for i, (length, q) in enumerate(zip(lengths.tolist(), quality.tolist())):
        words, ends = [], []
        for sentence in sentences[first[i]:first[i + 1]]:
            words += sentence
            ends += [False] * (len(sentence) - 1) + [True]
        words, ends = words[:length - q], ends[:length - q]
        chosen = rng.integers(len(QUALITY_WORDS), size=q)
        np.add.at(keyword_counts[i], chosen, 1)
        slots = set(rng.choice(length, size=q, replace=False).tolist())
        row, filler, k = [], iter(zip(words, ends)), iter(chosen.tolist())
        for pos in range(length):
            row.append((QUALITY_WORDS[next(k)], False) if pos in slots else next(filler))
        out, start = [], True
        for j, (word, end) in enumerate(row):
            word = word.capitalize() if start else word
            end = end or j == length - 1
            out.append(word + "." if end else word)
            start = end
        texts.append(" ".join(out))
    expected = essay_score(quality, lengths, (lo, hi))
    labels = np.clip(_round_half_up(expected + noise * rng.standard_normal(n)), lo, hi).astype(np.float32)
    return LabelledTexts(texts, labels, [], "regression", (lo, hi),
                         meta={"lengths": lengths.astype(np.int64), "quality_counts": quality.astype(np.int64),
                               "keyword_counts": keyword_counts, "expected_scores": expected})


# ------------------------------------------------------------------------------------------ AI-generated text
AIGT_LABELS = ["human", "machine"]


def aigt_pairs(human_texts: Sequence[str], generate: Callable[[list[str], list[int]], list[str]],
               prompt_tokens: int = 16, short_max_tokens: int = 54, seed: int = 0, *, length: str = "long",
               short_min_tokens: int = 10, max_tokens: int = 200, min_tokens: int = 8,
               n: int | None = None) -> LabelledTexts:
    """AI-generated-text detection data: for each human document, its own continuation (label 0, "human") and a
    machine continuation of the same opening (label 1, "machine"), cut to the same length.

    "Tokens" here are whitespace words. Each document is normalised to single spaces (`" ".join(text.split())`,
    so layout cannot give the label away) and cut into an opening (its first `prompt_tokens` words) and the
    human continuation (the rest). Documents with fewer than prompt_tokens + m words are skipped (m =
    short_min_tokens for length="short", min_tokens for "long"); `n`, if given, keeps a seeded random n of the
    rest (in their input order). Per kept document a target length is fixed:
      length="long":  min(human continuation, max_tokens) words;
      length="short": a uniform draw in [short_min_tokens, short_max_tokens] (the MPU paper's short texts, < 55
                      tokens by default), at most the human continuation.
      length="mixed": each pair short or long with probability 1/2 (both scales in one set, as MPU trains).
    `generate(openings, lengths)` is called once with all openings and target lengths (in words) and returns
    one continuation per opening: the text that follows the opening, without it (e.g. the base LM sampled
    from the opening; it may run shorter). Both sides are then cut to the same final length, min(target,
    the machine continuation's words); pairs shorter than m words are dropped. Neither text contains the
    opening. So the two classes have exactly the same lengths, pair by pair: length alone carries no label.

    Examples come in pairs, human first: texts [h_0, m_0, h_1, m_1, ...]. meta: "lengths" (words of each text),
    "pair_ids" (the index of the human document in `human_texts`), "openings" (the shared opening; pass
    meta["openings"] as `key_texts` to `stratified_split` to keep both sides of an opening on the same side).
    """
    if length not in ("long", "short", "mixed"):
        raise ValueError(f"length: {length!r}; choose one of: long, short, mixed")
    if not 1 <= short_min_tokens <= short_max_tokens:
        raise ValueError(f"short_min_tokens, short_max_tokens: {short_min_tokens}, {short_max_tokens}")
    if min_tokens < 1 or max_tokens < min_tokens:
        raise ValueError(f"min_tokens, max_tokens: {min_tokens}, {max_tokens}")
    rng = np.random.default_rng(seed)
    least = short_min_tokens if length == "short" else min_tokens
    docs = [(i, t.split()) for i, t in enumerate(human_texts)]
    docs = [(i, w) for i, w in docs if len(w) >= prompt_tokens + least]
    if n is not None and n < len(docs):
        docs = [docs[j] for j in np.sort(rng.choice(len(docs), size=n, replace=False))]
    if not docs:
        raise ValueError(f"aigt_pairs: no document has {prompt_tokens} + {least} words")
    openings = [" ".join(w[:prompt_tokens]) for _, w in docs]
    human = [w[prompt_tokens:] for _, w in docs]
    short = [int(rng.integers(short_min_tokens, short_max_tokens + 1)) for _ in human]
    if length == "mixed":  # each pair short or long with probability 1/2 (MPU trains on both scales)
        is_short = rng.random(len(human)) < 0.5
    else:
        is_short = np.full(len(human), length == "short")
    targets = [min(s, len(h)) if sh else min(len(h), max_tokens) for s, h, sh in zip(short, human, is_short)]
    machine = list(generate(list(openings), list(targets)))
    if len(machine) != len(openings):
        raise ValueError(f"aigt_pairs: generate returned {len(machine)} continuations for {len(openings)} openings")
    texts, labels, lengths, pair_ids, shared = [], [], [], [], []
    dropped = 0
    for (doc, _), opening, h, m, target in zip(docs, openings, human, machine, targets):
        m = m.split()
        k = min(target, len(m))
        if k < least:
            dropped += 1
            continue
        texts += [" ".join(h[:k]), " ".join(m[:k])]
        labels += [0, 1]
        lengths += [k, k]
        pair_ids += [doc, doc]
        shared += [opening, opening]
    if dropped:
        log.info("aigt_pairs: dropped %d of %d pairs whose machine side had fewer than %d words", dropped, len(docs), least)
    if not texts:
        raise ValueError(f"aigt_pairs: every machine continuation had fewer than {least} words")
    return LabelledTexts(texts, np.asarray(labels, dtype=np.int64), list(AIGT_LABELS), "classification",
                         meta={"lengths": np.asarray(lengths, dtype=np.int64),
                               "pair_ids": np.asarray(pair_ids, dtype=np.int64), "openings": _strings(shared)})
