"""Documents for neural topic models (DocNADE, ctx-DocNADE): labelled documents in two aligned views.

    python -m runner method=ctx_docnade model=ctx-docnade dataset=stdlib-topics
    python -m runner method=ctx_docnade model=docnade dataset=stdlib-topics           # plain DocNADE
    python -m runner ... dataset=stdlib-topics dataset.source=local dataset.path=/data/20ng.jsonl   # your own

Sources: `stdlib-packages` (the text-classification source: this Python's standard-library docstrings labelled by
top-level package, methods/classification/corpora.py, reused as is) or `local`: a .jsonl / .csv / .tsv file with a
text and a label column (`text_field`, `label_field`; labels are strings, ids follow their sorted names).

Per document (lower-cased, split into tokens by the regex \\w+ as the textTOvec code's RegexpTokenizer, cut to
model.seq_len tokens):
  lm_ids     the full token sequence t_1 .. t_L (stop words included) as ids of the token vocabulary;
  bow_ids    the bag-of-words view v_1 .. v_D: the tokens that are topic words (vocabulary K), in document order;
  align      for each BoW position i, the LM position of v_i's preceding context: pos(v_i) - 1, the last token
             before v_i (-1 when v_i is the first token): the LM state there has read every token before v_i and
             none from v_i on (the model reads the LSTM's output at align[i] for p(v_i | v_<i)).
The token vocabulary holds the K topic words first (ids 0 .. K-1, so bow_ids[i] = lm_ids[pos(v_i)]), then the
other tokens of the training split seen >= `lm_vocab.min_count` times (most frequent first, at most
`lm_vocab.max_size` ids in all), then <unk>. K: the training split's tokens that are not scikit-learn English
stop words, contain a letter and are >= 2 characters, in >= `bow_vocab.min_df` training documents and in at most a
`bow_vocab.max_df` fraction of them, the `bow_vocab.max_size` most frequent (ties by the word). Documents without a
topic word are dropped (as the code drops empty documents), counted in the log.

Split: exact and stratified (corpora.stratified_split: per class, by a hash of each text), `val_fraction` of every
class to validation; `max_examples` a stratified subsample first. Vocabularies come from the training split only.
Training batches are a pure function of the global micro-batch index (tasks/batches.ResumableBatchSampler): exact
resume. A batch is a dict of right-padded tensors: bow_ids, bow_mask (B, D), lm_ids, lm_mask (B, L), align (B, D)
(padding -1), labels (B,), index (B,) (the document's row in its split).

Choices against the textTOvec code (its preprocess_data.py and model/data.py): there the DocNADE view is the bag in
vocabulary order with log-compressed counts (floor(0.5 + log(1 + n))) shuffled per batch, and the LM context of
v_i is the sum of the LSTM outputs at every occurrence of v_{i-1}, which may come after v_i in the text; here the
view is the document order with raw counts, so the LM context is exactly the text before v_i. The code builds
its vocabularies on train + validation; here on the training split.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from methods.classification import corpora
from tasks.base import BuildContext, Task, TaskData
from tasks.errors import ConfigError

log = logging.getLogger(__name__)

SOURCES = ("stdlib-packages", "local")
BOW_VOCAB = {"max_size": 2000, "min_df": 3, "max_df": 1.0}
LM_VOCAB = {"max_size": 10000, "min_count": 2}
TOKEN = re.compile(r"\w+")
UNK = "<unk>"


def tokens(text: str) -> list[str]:
    """Lower-cased \\w+ tokens (the textTOvec code's RegexpTokenizer(r'\\w+') on lower-cased text)."""
    return TOKEN.findall(text.lower())


def topic_word_ok(word: str, stop_words) -> bool:
    """A candidate topic word: not a stop word, has a letter, at least 2 characters."""
    return len(word) >= 2 and word not in stop_words and any(ch.isalpha() for ch in word)


def build_vocabularies(train_tokens: list[list[str]], stop_words, bow: dict, lm: dict) -> tuple[list[str], int]:
    """(the token vocabulary, K): the K topic words first, then the other tokens, then <unk> (module docstring)."""
    n = len(train_tokens)
    df, tf = Counter(), Counter()
    for toks in train_tokens:
        tf.update(toks)
        df.update(set(toks))
    cands = [w for w in tf if topic_word_ok(w, stop_words) and df[w] >= bow["min_df"] and df[w] <= bow["max_df"] * n]
    cands.sort(key=lambda w: (-tf[w], w))
    topic = cands[:int(bow["max_size"])]
    if not topic:
        raise ConfigError(f"dataset.bow_vocab: no topic word in {n} training documents with min_df={bow['min_df']}, "
                          f"max_df={bow['max_df']}; lower min_df or raise max_df")
    in_topic = set(topic)
    rest = sorted((w for w in tf if w not in in_topic and tf[w] >= lm["min_count"]), key=lambda w: (-tf[w], w))
    room = max(0, int(lm["max_size"]) - len(topic) - 1)
    return [*topic, *rest[:room], UNK], len(topic)


def document_views(toks: list[str], ids: dict[str, int], k: int) -> tuple[list[int], list[int], list[int]]:
    """(lm_ids, bow_ids, align) of one document's tokens (module docstring): bow_ids[i] = lm_ids[pos_i] with
    pos_i the i-th position holding a topic word (id < k), align[i] = pos_i - 1."""
    unk = ids[UNK]
    lm_ids = [ids.get(t, unk) for t in toks]
    pos = [p for p, t in enumerate(lm_ids) if t < k]
    return lm_ids, [lm_ids[p] for p in pos], [p - 1 for p in pos]


def read_local(path: str, text_field: str, label_field: str) -> corpora.LabelledTexts:
    """Texts and string labels of a .jsonl / .csv / .tsv file; label ids follow the sorted label names."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"dataset.path: {p} is not a file (a .jsonl, .csv or .tsv with a text and a label column)")
    rows: list[dict] = []
    if p.suffix == ".jsonl":
        with p.open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    elif p.suffix in (".csv", ".tsv"):
        with p.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if p.suffix == ".tsv" else ","))
    else:
        raise ConfigError(f"dataset.path: {p.name}: choose a .jsonl, .csv or .tsv file")
    if not rows:
        raise ConfigError(f"dataset.path: {p} has no rows")
    for key, name in (("text_field", text_field), ("label_field", label_field)):
        if name not in rows[0]:
            raise ConfigError(f"dataset.{key}: '{name}' is not a column of {p.name}; choose one of: {', '.join(rows[0])}")
    rows = [r for r in rows if str(r[text_field] or "").strip()]
    names = sorted({str(r[label_field]) for r in rows})
    index = {n: i for i, n in enumerate(names)}
    return corpora.LabelledTexts([str(r[text_field]) for r in rows], [index[str(r[label_field])] for r in rows], names,
                                 "classification")


# ---------------------------------------------------------------------------------------------- data
class DocumentRows:
    """Map-style dataset of one split's documents (a torch DataLoader takes any object with these two methods)."""

    def __init__(self, docs: list[dict], rows: list[int] | None = None):
        self.docs = docs
        self.rows = list(range(len(docs))) if rows is None else rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[dict, int]:
        return self.docs[self.rows[i]], self.rows[i]


def collate_documents(items) -> dict:
    """The batch dict of (document, row) pairs: right-padded (B, D) and (B, L) tensors (module docstring)."""
    import torch

    b = len(items)
    d = max(1, max(len(doc["bow_ids"]) for doc, _ in items))
    length = max(1, max(len(doc["lm_ids"]) for doc, _ in items))
    bow = torch.zeros(b, d, dtype=torch.long)
    bow_mask = torch.zeros(b, d, dtype=torch.bool)
    align = torch.full((b, d), -1, dtype=torch.long)
    lm = torch.zeros(b, length, dtype=torch.long)
    lm_mask = torch.zeros(b, length, dtype=torch.bool)
    for j, (doc, _) in enumerate(items):
        n, m = len(doc["bow_ids"]), len(doc["lm_ids"])
        bow[j, :n] = torch.tensor(doc["bow_ids"], dtype=torch.long)
        align[j, :n] = torch.tensor(doc["align"], dtype=torch.long)
        bow_mask[j, :n] = True
        lm[j, :m] = torch.tensor(doc["lm_ids"], dtype=torch.long)
        lm_mask[j, :m] = True
    return {"bow_ids": bow, "bow_mask": bow_mask, "lm_ids": lm, "lm_mask": lm_mask, "align": align,
            "labels": torch.tensor([doc["label"] for doc, _ in items], dtype=torch.long),
            "index": torch.tensor([r for _, r in items], dtype=torch.long)}


@dataclass
class TopicData(TaskData):
    """Both views of every document of both splits, the vocabularies and the label names."""

    source: str
    label_names: list[str]
    vocab: list[str]  # token ids -> tokens; the first bow_vocab_size are the topic words
    bow_vocab_size: int
    train_docs: list[dict]  # each: lm_ids, bow_ids, align (lists of int), label (int)
    val_docs: list[dict]
    seq_len: int
    dropped: int = 0
    meta: dict = field(default_factory=dict)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def tokenizer(self):  # the vocabulary is the tokenizer: `save` writes it
        return None

    @property
    def module_class(self):  # imported when a run builds its module (Lightning and torch), not to validate a config
        from methods.topics.module import TopicModule

        return TopicModule

    def labels(self, split: str) -> np.ndarray:
        return np.asarray([d["label"] for d in self.split(split)], dtype=np.int64)

    def split(self, split: str) -> list[dict]:
        if split not in ("train", "val"):
            raise ValueError(f"split: {split!r}; choose one of: train, val")
        return self.train_docs if split == "train" else self.val_docs

    def batches(self, split: str, batch_size: int = 64):
        """One split's documents in order, as batch dicts (evaluation)."""
        docs = self.split(split)
        for i in range(0, len(docs), batch_size):
            yield collate_documents([(docs[r], r) for r in range(i, min(i + batch_size, len(docs)))])

    def make_loaders(self, batch_size: int, total_micro_batches: int, seed: int, start=lambda: 0, rank: int = 0,
                     world: int = 1, val_batches: int | None = None, num_workers: int = 0):
        """Training batches: a pure function of the global micro-batch index (ResumableBatchSampler); validation:
        the val split in order, this rank's share of its first `val_batches` x batch_size x world documents."""
        import torch

        from tasks.batches import ResumableBatchSampler

        n_val = len(self.val_docs) if val_batches is None else min(len(self.val_docs), val_batches * batch_size * world)
        sampler = ResumableBatchSampler(len(self.train_docs), batch_size, total_micro_batches, seed, start, rank, world)
        train_dl = torch.utils.data.DataLoader(DocumentRows(self.train_docs), batch_sampler=sampler,
                                               collate_fn=collate_documents, num_workers=num_workers)
        val_dl = torch.utils.data.DataLoader(DocumentRows(self.val_docs, list(range(n_val))[rank::world]),
                                             batch_size=batch_size, shuffle=False, collate_fn=collate_documents)
        return train_dl, val_dl

    def counts(self) -> dict[str, int]:
        return {"train_documents": len(self.train_docs), "val_documents": len(self.val_docs),
                "train_words": sum(len(d["bow_ids"]) for d in self.train_docs),
                "train_tokens": sum(len(d["lm_ids"]) for d in self.train_docs),
                "topic_vocab": self.bow_vocab_size, "classes": len(self.label_names)}

    def baselines(self, val_dl) -> dict[str, float]:
        """The perplexity exp(mean_d NLL_d / |d|) of the add-one unigram distribution of the training split's topic
        words on the validation documents: the floor a topic model has to beat."""
        k = self.bow_vocab_size
        counts = np.ones(k)
        for d in self.train_docs:
            np.add.at(counts, np.asarray(d["bow_ids"], dtype=np.int64), 1)
        logp = np.log(counts / counts.sum())
        per_doc = [-logp[np.asarray(d["bow_ids"])].mean() for d in self.val_docs if d["bow_ids"]]
        return {"val/unigram_ppl": float(np.exp(np.mean(per_doc)))} if per_doc else {}

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "topic_vocab.json").write_text(json.dumps(
            {"vocab": self.vocab, "bow_vocab_size": self.bow_vocab_size, "label_names": self.label_names}))


# ---------------------------------------------------------------------------------------------- the task
class TopicDocuments(Task):
    """Labelled documents as a bag-of-words view and the full token sequence, aligned (module docstring)."""

    provides = frozenset({"bag-of-words"})
    model_kinds = ("topic-model",)

    def __init__(self, source: str = "stdlib-packages", generator: dict | None = None, path: str | None = None,
                 text_field: str = "text", label_field: str = "label", val_fraction: float = 0.2,
                 max_examples: int | None = None, bow_vocab: dict | None = None, lm_vocab: dict | None = None):
        problems = []
        if source not in SOURCES:
            problems.append(f"dataset.source: must be one of {', '.join(SOURCES)}, got {source!r}")
        if source == "local" and not path:
            problems.append("dataset.path: source=local needs a file (.jsonl, .csv or .tsv with text and label columns)")
        self.generator = dict(generator or {})
        if self.generator:
            import inspect

            known = set(inspect.signature(corpora.stdlib_packages).parameters) - {"root", "include", "cache_dir"}
            problems += [f"dataset.generator.{k}: not an argument of stdlib_packages; choose from: {', '.join(sorted(known))}"
                         for k in sorted(set(self.generator) - known)]
        if not (isinstance(val_fraction, (int, float)) and 0 < val_fraction < 1):
            problems.append(f"dataset.val_fraction: must be in (0, 1), got {val_fraction!r}")
        if max_examples is not None and not (isinstance(max_examples, int) and max_examples >= 4):
            problems.append(f"dataset.max_examples: must be an integer >= 4 or null (all), got {max_examples!r}")
        self.bow_vocab = self._keys("bow_vocab", bow_vocab, BOW_VOCAB, problems)
        self.lm_vocab = self._keys("lm_vocab", lm_vocab, LM_VOCAB, problems)
        b, m = self.bow_vocab, self.lm_vocab
        checks = (("bow_vocab", "max_size", b, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
                  ("bow_vocab", "min_df", b, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
                  ("bow_vocab", "max_df", b, lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "in (0, 1]"),
                  ("lm_vocab", "max_size", m, lambda v: isinstance(v, int) and v >= 2, "an integer >= 2"),
                  ("lm_vocab", "min_count", m, lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"))
        problems += [f"dataset.{group}.{key}: must be {want}, got {spec[key]!r}"
                     for group, key, spec, ok, want in checks if not ok(spec[key])]
        if problems:
            raise ValueError("; ".join(problems))
        self.source, self.path, self.text_field, self.label_field = source, path, text_field, label_field
        self.val_fraction = float(val_fraction)
        self.max_examples = max_examples

    @staticmethod
    def _keys(name: str, given: dict | None, defaults: dict, problems: list[str]) -> dict:
        unknown = sorted(set(given or {}) - set(defaults))
        problems += [f"dataset.{name}.{k}: unknown key; choose from: {', '.join(defaults)}" for k in unknown]
        return {**defaults, **{k: v for k, v in (given or {}).items() if k in defaults}}

    def ignored_args(self) -> dict[str, str]:
        if self.source != "local" and self.path:
            return {"path": f"source={self.source} reads no file (dataset.source=local does)"}
        return {}

    def _texts(self, ctx: BuildContext) -> corpora.LabelledTexts:
        if self.source == "local":
            return read_local(self.path, self.text_field, self.label_field)
        return corpora.stdlib_packages(**{"min_chars": 20, **self.generator, "cache_dir": ctx.cache_dir})

    def build(self, ctx: BuildContext) -> TopicData:
        from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

        texts = self._texts(ctx)
        idx = np.arange(len(texts.texts))
        if self.max_examples is not None and len(idx) > self.max_examples:  # a stratified subsample, by hash
            keep, _ = corpora.stratified_split(texts.labels, 1 - self.max_examples / len(idx), texts.texts)
            idx = np.sort(np.asarray(keep))
        picked = [texts.texts[i] for i in idx]
        labels = np.asarray(texts.labels)[idx]
        train_idx, val_idx = corpora.stratified_split(labels, self.val_fraction, picked)
        seq_len = int(ctx.seq_len)
        toks = [tokens(t)[:seq_len] for t in picked]
        vocab, k = build_vocabularies([toks[i] for i in train_idx], ENGLISH_STOP_WORDS, self.bow_vocab, self.lm_vocab)
        ids = {w: i for i, w in enumerate(vocab)}
        splits, dropped = {}, 0
        for name, rows in (("train", train_idx), ("val", val_idx)):
            docs = []
            for i in rows.tolist():
                lm_ids, bow_ids, align = document_views(toks[i], ids, k)
                if not bow_ids:
                    dropped += 1
                    continue
                docs.append({"lm_ids": lm_ids, "bow_ids": bow_ids, "align": align, "label": int(labels[i]), "text_row": int(idx[i])})
            splits[name] = docs
        if not splits["train"] or not splits["val"]:
            raise ConfigError(f"dataset.val_fraction: {self.val_fraction} leaves an empty split of {len(picked)} documents")
        log.info("%s: %d train / %d val documents (%d without a topic word dropped), %d classes, K = %d topic words, "
                 "%d token ids", self.source, len(splits["train"]), len(splits["val"]), dropped, len(texts.label_names),
                 k, len(vocab))
        return TopicData(self.source, list(texts.label_names), vocab, k, splits["train"], splits["val"], seq_len,
                         dropped=dropped)
