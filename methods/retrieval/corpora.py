"""The retrieval sources, in BEIR's layout (Thakur et al. 2021): a corpus of passages, queries, and relevance
judgements (qrels) per split. Every source is deterministic: the same arguments give the same data (the stdlib
source: with the same Python).

- `stdlib_retrieval`  real text, generated pairs: this Python's standard-library docstrings. A docstring's summary
                      (its first paragraph) is a query whose relevant passage is the rest of the docstring; and
                      for a share of the passages a sentence cut out of the passage is a query for what remains of
                      it (the corpus holds the passage without that sentence). Passages that share a summary are
                      all relevant to it.
- `keyword_pairs`     generated smoke set: passages of Zipfian pseudo-words, each with `keywords` rare marker
                      words; a query is some of one passage's markers (BM25 solves it; an untrained encoder not).
- `load_beir`         a BEIR directory (corpus.jsonl, queries.jsonl, qrels/<split>.tsv), e.g. one downloaded from
                      the BEIR benchmark; or a BEIR dataset on the Hugging Face hub by name (hf://BeIR/scifact).

Splits are by passage, seeded: every query of a passage lands in that passage's split (train, dev or test), so no
test passage is ever a training positive; every passage stays in the corpus for every split (BEIR's setting).
stdlib_retrieval splits by summary, so that passages which share one (and its query) land in one split.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from methods.classification.corpora import cached_stdlib_docstrings, filler_words, text_hash, zipf_probs

log = logging.getLogger(__name__)
SPLITS = ("train", "dev", "test")


@dataclass
class RetrievalCorpus:
    """BEIR's layout in memory (see the module docstring)."""

    corpus_ids: list[str]
    corpus_texts: list[str]  # a passage's title and text joined by ". " where it has a title
    queries: dict[str, str]  # qid -> text
    qrels: dict[str, dict[str, dict[str, int]]]  # split -> {qid: {pid: relevance}}
    meta: dict = field(default_factory=dict)  # per-source extras ("query_kind": {qid: summary | sentence})

    def __post_init__(self):
        if len(self.corpus_ids) != len(self.corpus_texts):
            raise ValueError(f"{len(self.corpus_ids)} passage ids for {len(self.corpus_texts)} passages")
        if len(set(self.corpus_ids)) != len(self.corpus_ids):
            raise ValueError("passage ids are not unique")
        known = set(self.corpus_ids)
        for split, qrels in self.qrels.items():
            for qid, rels in qrels.items():
                if qid not in self.queries:
                    raise ValueError(f"qrels/{split}: query {qid!r} is not among the queries")
                missing = [p for p in rels if p not in known]
                if missing:
                    raise ValueError(f"qrels/{split}: query {qid!r} judges passage {missing[0]!r}, not in the corpus")

    def split_sizes(self) -> dict[str, int]:
        return {s: len(q) for s, q in self.qrels.items()}


def _split_of(key: str, seed: int, fractions: tuple[float, float, float]) -> str:
    """train | dev | test by a stable hash of (seed, key): exact in expectation, fixed per key."""
    u = text_hash(f"{seed}:{key}") / 2 ** 64
    return "train" if u < fractions[0] else "dev" if u < fractions[0] + fractions[1] else "test"


def _check_fractions(fractions) -> tuple[float, float, float]:
    f = tuple(float(x) for x in fractions)
    if len(f) != 3 or any(x < 0 for x in f) or abs(sum(f) - 1) > 1e-9:
        raise ValueError(f"split: {list(fractions)}; three fractions (train, dev, test) >= 0 that sum to 1")
    return f


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`*(\"'])")


def sentences(text: str) -> list[str]:
    """A passage's sentences: split after . ! ? followed by whitespace and a capital, quote or markup."""
    return [s for s in _SENTENCE_END.split(text) if s.strip()]


def _clean(text: str) -> str:
    return " ".join(text.split())


def stdlib_retrieval(min_passage_chars: int = 150, max_passage_chars: int = 2000, min_query_chars: int = 15,
                     max_query_chars: int = 200, sentence_share: float = 0.5, max_passages: int | None = None,
                     split: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0, *,
                     root: str | Path | None = None, include: Collection[str] | None = None,
                     cache_dir: str | Path | None = None) -> RetrievalCorpus:
    """Retrieval pairs from this Python's standard-library docstrings (modules, classes, functions; read with ast).

    A docstring with a first paragraph (the summary: `min_query_chars`..`max_query_chars` characters) followed by
    at least `min_passage_chars` characters gives one passage (the rest, whitespace collapsed, cut at
    `max_passage_chars`) and one `summary` query (qid "t:<pid>"; a summary shared by several passages is one
    query judging all of them). For a seeded share `sentence_share` of the passages with at least 3 sentences,
    one sentence of 30-300 characters (not the first, occurring once) is cut out: it is a `sentence` query (qid "s:<pid>") and
    the corpus holds the passage without it. Passage ids are the objects' qualified names (numbered when a name
    repeats); a passage text that repeats is kept once. `max_passages`: a seeded subset (by hash, not walk order).
    On CPython 3.11.7 with the defaults: 1699 passages, 1659 summary and 488 sentence queries (train/dev/test:
    1530/212/405 queries)."""
    fractions = _check_fractions(split)
    if not 0 <= sentence_share <= 1:
        raise ValueError(f"dataset.generator.sentence_share: {sentence_share}; a fraction in [0, 1]")
    records = cached_stdlib_docstrings(root, include, cache_dir)
    seen_text: set[str] = set()
    seen_id: dict[str, int] = {}
    passages: list[tuple[str, str, str]] = []  # (pid, summary, passage)
    for r in records:
        head, sep, rest = r["text"].partition("\n\n")
        summary, passage = _clean(head), _clean(rest)
        if not sep or not min_query_chars <= len(summary) <= max_query_chars or len(passage) < min_passage_chars:
            continue
        passage = passage[:max_passage_chars]
        if passage in seen_text:
            continue
        seen_text.add(passage)
        n = seen_id.get(r["object"], 0)
        seen_id[r["object"]] = n + 1
        passages.append((r["object"] if n == 0 else f"{r['object']}#{n}", summary, passage))
    if max_passages is not None:
        if int(max_passages) < 2:
            raise ValueError(f"dataset.generator.max_passages: {max_passages}; at least 2 (or null: all)")
        passages = sorted(passages, key=lambda x: text_hash(f"subset:{seed}:{x[0]}"))[:int(max_passages)]
        passages.sort(key=lambda x: x[0])
    if len(passages) < 2:
        raise ValueError(f"stdlib_retrieval: {len(passages)} docstrings qualify; lower min_passage_chars or min_query_chars")
    rng = np.random.default_rng(seed)
    ids, texts = [], []
    queries: dict[str, str] = {}
    kind: dict[str, str] = {}
    qrels: dict[str, dict[str, dict[str, int]]] = {s: {} for s in SPLITS}
    summary_qid: dict[str, str] = {}
    for pid, summary, passage in passages:
        where = _split_of(summary, seed, fractions)  # passages that share a summary share a split
        sents = sentences(passage)
        text = passage
        if len(sents) >= 3 and rng.random() < sentence_share:
            # a sentence that occurs once in its passage (cutting it out leaves no copy behind)
            options = [i for i in range(1, len(sents)) if 30 <= len(sents[i]) <= 300 and passage.count(sents[i]) == 1]
            if options:
                cut = options[int(rng.integers(len(options)))]
                qid = f"s:{pid}"
                queries[qid], kind[qid] = sents[cut], "sentence"
                qrels[where][qid] = {pid: 1}
                text = " ".join(s for i, s in enumerate(sents) if i != cut)
        ids.append(pid)
        texts.append(text)
        # one query per distinct summary
        qid = summary_qid.setdefault(summary, f"t:{pid}")
        if qid == f"t:{pid}":
            queries[qid], kind[qid] = summary, "summary"
            qrels[where][qid] = {pid: 1}
        else:
            for rels in qrels.values():
                if qid in rels:
                    rels[qid][pid] = 1
    return RetrievalCorpus(ids, texts, queries, qrels, meta={"query_kind": kind})


def keyword_pairs(n_passages: int = 400, vocab: int = 300, markers: int = 600, keywords: int = 3,
                  query_keywords: int = 2, min_len: int = 20, max_len: int = 40,
                  split: tuple[float, float, float] = (0.7, 0.1, 0.2), seed: int = 0) -> RetrievalCorpus:
    """A generated smoke set: passage j has a length uniform in [min_len, max_len] words, Zipfian filler from `vocab`
    pseudo-words and `keywords` distinct marker words (pseudo-words of their own, drawn from `markers`) at random
    positions; its one query ("q:<pid>") is `query_keywords` of them in random order. Markers repeat across
    passages (n_passages·keywords draws from `markers`), so a query can partly match other passages."""
    fractions = _check_fractions(split)
    if not 1 <= query_keywords <= keywords:
        raise ValueError(f"dataset.generator.query_keywords: {query_keywords}; 1 to keywords ({keywords})")
    if keywords > markers:
        raise ValueError(f"dataset.generator.keywords: {keywords}; at most markers ({markers})")
    words = filler_words(vocab + markers)
    filler, marks = words[:vocab], words[vocab:]
    rng = np.random.default_rng(seed)
    p = zipf_probs(vocab)
    ids, texts, queries = [], [], {}
    qrels: dict[str, dict[str, dict[str, int]]] = {s: {} for s in SPLITS}
    width = len(str(n_passages - 1))
    for j in range(int(n_passages)):
        pid = f"p{j:0{width}d}"
        length = int(rng.integers(min_len, max_len + 1))
        text = [filler[i] for i in rng.choice(vocab, size=length, p=p)]
        chosen = [marks[i] for i in rng.choice(markers, size=keywords, replace=False)]
        for w, pos in zip(chosen, rng.choice(length + 1, size=keywords, replace=False)):
            text.insert(int(pos), w)
        qid = f"q:{pid}"
        queries[qid] = " ".join(rng.permutation(chosen)[:query_keywords])
        qrels[_split_of(pid, seed, fractions)][qid] = {pid: 1}
        ids.append(pid)
        texts.append(" ".join(text))
    return RetrievalCorpus(ids, texts, queries, qrels)


# ------------------------------------------------------------------------------------------------- BEIR files
def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _join(title: str, text: str) -> str:
    title, text = (title or "").strip(), (text or "").strip()
    return f"{title}. {text}" if title and text else title or text


def load_beir(path: str | Path, splits: Collection[str] = SPLITS, max_passages: int | None = None) -> RetrievalCorpus:
    """A BEIR dataset: a local directory with corpus.jsonl ({"_id", "title", "text"}), queries.jsonl ({"_id",
    "text"}) and qrels/<split>.tsv (query-id, corpus-id, score; a header line), or `hf://<org>/<name>` on the Hugging
    Face hub (its `corpus` and `queries` configs and the `<name>-qrels` dataset, BEIR's upload layout). Splits that
    have no qrels file are empty (most BEIR sets have only test). `max_passages` keeps every judged passage and
    fills up with the first others (a quick look at a big corpus; its numbers are not BEIR's)."""
    name = str(path)
    if name.startswith("hf://"):
        corpus, queries, qrels = _beir_hub(name.removeprefix("hf://"), splits)
    else:
        root = Path(name).expanduser()
        for f in ("corpus.jsonl", "queries.jsonl"):
            if not (root / f).is_file():
                raise ValueError(f"dataset.path: {root} has no {f}; a BEIR directory holds corpus.jsonl, queries.jsonl "
                                 "and qrels/<split>.tsv")
        corpus = [(str(d["_id"]), _join(d.get("title", ""), d.get("text", ""))) for d in _read_jsonl(root / "corpus.jsonl")]
        queries = {str(d["_id"]): str(d["text"]) for d in _read_jsonl(root / "queries.jsonl")}
        qrels = {}
        for s in splits:
            f = root / "qrels" / f"{s}.tsv"
            qrels[s] = _read_qrels(f) if f.is_file() else {}
    judged = {p for rels in qrels.values() for q in rels.values() for p in q}
    if max_passages is not None and len(corpus) > max_passages:
        kept = [c for c in corpus if c[0] in judged]
        kept += [c for c in corpus if c[0] not in judged][:max(0, int(max_passages) - len(kept))]
        corpus = kept
    known = {c[0] for c in corpus}
    qrels = {s: {q: {p: r for p, r in rels.items() if p in known} for q, rels in split_rels.items() if q in queries}
             for s, split_rels in qrels.items()}
    return RetrievalCorpus([c[0] for c in corpus], [c[1] for c in corpus], queries, qrels)


def _read_qrels(path: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as f:
        for i, row in enumerate(csv.reader(f, delimiter="\t")):
            if not row or (i == 0 and not row[-1].lstrip("-").isdigit()):
                continue  # the header
            if len(row) == 4:  # TREC's qid 0 docid rel
                row = [row[0], row[2], row[3]]
            out.setdefault(str(row[0]), {})[str(row[1])] = int(row[2])
    return out


def _beir_hub(name: str, splits) -> tuple[list[tuple[str, str]], dict[str, str], dict]:
    """BEIR's hub layout: <org>/<name> with configs corpus and queries, and <org>/<name>-qrels with one split per
    qrels file (needs the network or the local datasets cache)."""
    from datasets import load_dataset

    corpus = load_dataset(name, "corpus", split="corpus")
    queries = load_dataset(name, "queries", split="queries")
    out_q = {str(r["_id"]): str(r["text"]) for r in queries}
    out_c = [(str(r["_id"]), _join(r.get("title", ""), r.get("text", ""))) for r in corpus]
    qrels = {}
    for s in splits:
        try:
            rows = load_dataset(f"{name}-qrels", split=s)
        except ValueError:  # no such split in this dataset
            qrels[s] = {}
            continue
        rels: dict[str, dict[str, int]] = {}
        for r in rows:
            rels.setdefault(str(r["query-id"]), {})[str(r["corpus-id"])] = int(r["score"])
        qrels[s] = rels
    return out_c, out_q, qrels
