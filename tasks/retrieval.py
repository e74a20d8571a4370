"""Retrieval for bi-encoders, in BEIR's layout: a corpus, queries and qrels per split, (query, positive passage)
training pairs with optional BM25-mined hard negatives, exact dense or inverted-index search, and nDCG/Recall/MRR.

    python -m runner model=bert-tiny dataset=stdlib-retrieval           # a tiny encoder fine-tuned with InfoNCE
    python -m runner model=minilm dataset=stdlib-retrieval              # the real all-MiniLM-L6-v2, fine-tuned
    python -m runner model=minilm dataset=stdlib-retrieval trainer.max_steps=0   # MiniLM zero-shot
    python -m runner model=minilm dataset=beir-local dataset.path=~/beir/scifact  # any BEIR download

Sources (methods/retrieval/corpora.py says exactly what each is):
  stdlib-retrieval  real text, generated pairs: a standard-library docstring's summary -> the rest of it; a sentence
                    cut out of a passage -> what remains of it
  keyword-pairs     generated smoke set: a few marker words -> the passage holding them
  beir              a local BEIR directory (`path`), or a BEIR dataset by hub name (path=hf://BeIR/scifact)

The encoder (`encoder.pooling`: cls | mean, `encoder.normalize`) is a methods.retrieval.DualEncoder around the
model; the module (DualEncoderModule) trains it with InfoNCE over in-batch negatives (gathered across ranks),
`negatives.hard` BM25-mined hard negatives per query and a memory bank of `contrastive.bank_size` earlier
passages, at temperature `contrastive.temperature` (the baseline's loss; a method changes it through
`Method.loss`). Validation logs val/loss (InfoNCE over the dev pairs) and val/ndcg@10, val/mrr@10 of full-corpus
retrieval for the dev queries; `evaluate` reports the test split (eval/ndcg@10, eval/recall@100, eval/mrr@10, per
query kind where the source has kinds) beside BM25 on the same queries (eval/bm25/*), the reference row.

Tokenizer (`tokenizer.kind`): `auto` takes a pretrained model's own (model=minilm's WordPiece) and otherwise trains
an uncased WordPiece on the corpus ([PAD]=0, [UNK], [CLS], [SEP], [MASK]); `hf` loads `tokenizer.name`.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any

from methods.retrieval import corpora
from methods.retrieval.corpora import RetrievalCorpus
from tasks.base import BuildContext, Task, TaskData
from tasks.common import check_encoder_tokenizer, encoder_tokenizer

log = logging.getLogger(__name__)

SOURCES = {"stdlib-retrieval": "stdlib_retrieval", "keyword-pairs": "keyword_pairs", "beir": "load_beir"}
POOLING = ("cls", "mean")  # methods.retrieval.encoder.POOLING (not imported here: it imports torch)
EVAL_SPLITS = ("dev", "test")
DEFAULTS = {
    "encoder": {"pooling": "mean", "normalize": True},
    "contrastive": {"temperature": 0.05, "bank_size": 0},
    "negatives": {"hard": 0, "skip": 0},
    "eval": {"split": "test", "k": 100, "val_retrieval": True, "batch_size": 64},
}


# ---------------------------------------------------------------------------------------------- data
@dataclass
class RetrievalData(TaskData):
    """The corpus, queries, qrels, encoded: what the run and every method hook get (see the module docstring)."""

    source: str
    corpus: RetrievalCorpus
    tokenizer: Any
    vocab_size: int
    query_len: int
    passage_len: int
    pooling: str = "mean"
    normalize: bool = True
    temperature: float = 0.05
    bank_size: int = 0
    hard_negatives: int = 0
    eval_split: str = "test"
    eval_k: int = 100
    val_retrieval: bool = True
    eval_batch_size: int = 64
    train_pairs: list[tuple[str, str]] = field(default_factory=list)
    hard: dict[str, list[str]] = field(default_factory=dict)
    passage_ids: list[list[int]] = field(default_factory=list)
    _bm25: Any = field(default=None, repr=False)
    _query_ids: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @property
    def module_class(self):  # imported when a run builds its module (Lightning and torch), not to validate a config
        from methods.retrieval.module import DualEncoderModule

        return DualEncoderModule

    def __post_init__(self):
        self.corpus_row = {pid: i for i, pid in enumerate(self.corpus.corpus_ids)}
        if not self.passage_ids:
            self.passage_ids = self.encode(self.corpus.corpus_texts, self.passage_len)
        if not self.train_pairs:
            self.train_pairs = sorted((q, p) for q, rels in self.corpus.qrels.get("train", {}).items()
                                      for p, r in rels.items() if r > 0)

    @property
    def corpus_ids(self) -> list[str]:
        return self.corpus.corpus_ids

    @property
    def corpus_texts(self) -> list[str]:
        return self.corpus.corpus_texts

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def encode(self, texts: list[str], max_len: int) -> list[list[int]]:
        """Token ids with the tokenizer's special tokens ([CLS] ... [SEP]), truncated to max_len."""
        if not texts:
            return []
        return self.tokenizer(list(texts), truncation=True, max_length=int(max_len))["input_ids"]

    def query_ids(self, qid: str) -> list[int]:
        """The token ids of one query (cached)."""
        if qid not in self._query_ids:
            self._query_ids[qid] = self.encode([self.corpus.queries[qid]], self.query_len)[0]
        return self._query_ids[qid]

    def queries_of(self, split: str) -> tuple[list[str], list[str]]:
        """(qids, texts) of the queries judged in `split` (with a relevant passage), sorted by qid."""
        qrels = self.corpus.qrels.get(split, {})
        qids = sorted(q for q, rels in qrels.items() if any(r > 0 for r in rels.values()))
        return qids, [self.corpus.queries[q] for q in qids]

    def pairs_of(self, split: str) -> list[tuple[str, str]]:
        """(qid, pid) for every positive of every query of `split`, sorted."""
        return sorted((q, p) for q, rels in self.corpus.qrels.get(split, {}).items() for p, r in rels.items() if r > 0)

    def with_hard_negatives(self, n: int, skip: int = 0) -> RetrievalData:
        """This data with `n` BM25-mined hard negatives per train query (its top-ranked passages that are not judged
        relevant, after skipping the first `skip` of them): what a method that needs them returns from prepare_data."""
        from dataclasses import replace

        from methods.retrieval.bm25 import mine_hard_negatives

        if n <= 0:
            return replace(self, hard_negatives=0, hard={})
        qids, texts = self.queries_of("train")
        qrels = self.corpus.qrels["train"]
        positives = [{self.corpus_row[p] for p, r in qrels[q].items() if r > 0} for q in qids]
        mined = mine_hard_negatives(self.bm25(), texts, positives, int(n), int(skip))
        return replace(self, hard_negatives=int(n), hard={q: [self.corpus_ids[r] for r in rows] for q, rows in zip(qids, mined)})

    # -- search ------------------------------------------------------------------------------
    def bm25(self):
        """BM25 over the corpus (methods/retrieval/bm25.py), built once."""
        if self._bm25 is None:
            from methods.retrieval.bm25 import BM25

            self._bm25 = BM25(self.corpus_texts)
        return self._bm25

    def first_pass(self, split: str, k: int = 100) -> dict[str, dict[str, float]]:
        """The BM25 run {qid: {pid: score}} of `split`'s queries (top k; only passages that share a word)."""
        qids, texts = self.queries_of(split)
        scores, rows = self.bm25().search(texts, k)
        return {q: {self.corpus_ids[int(r)]: float(s) for s, r in zip(scores[i], rows[i]) if r >= 0}
                for i, q in enumerate(qids)}

    def encode_texts(self, model, ids: list[list[int]], side: str, batch_size: int | None = None):
        """(N, D) vectors of the encoded texts `ids` by the DualEncoder `model` (eval mode, no grad, float32 on
        the CPU); the model's training mode is restored."""
        import torch

        batch_size = int(batch_size or self.eval_batch_size)
        device = next(model.parameters()).device
        collate = _Pad(self.pad_id)
        was_training = model.training
        model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(ids), batch_size):
                x, mask = collate(ids[i:i + batch_size])
                out.append(model.encode(x.to(device), mask.to(device), side=side).float().cpu())
        model.train(was_training)
        return torch.cat(out) if out else torch.zeros((0, 0))

    def encode_sparse(self, model, ids: list[list[int]], side: str, batch_size: int | None = None):
        """encode_texts as a scipy CSR matrix (N, D) of float32, batch by batch: memory in proportion to the
        nonzeros, not N x D (a vocabulary-space encoder, model.sparse, over a whole corpus)."""
        from scipy import sparse

        batch_size = int(batch_size or self.eval_batch_size)
        blocks = [sparse.csr_matrix(self.encode_texts(model, ids[i:i + batch_size], side, batch_size).numpy())
                  for i in range(0, len(ids), batch_size)]
        return sparse.vstack(blocks, format="csr") if blocks else sparse.csr_matrix((0, 0), dtype="float32")

    def search(self, model, split: str = "test", k: int | None = None, passages=None) -> dict[str, dict[str, float]]:
        """The run of `model` (a DualEncoder) for `split`'s queries over the whole corpus: exact dense search, or,
        when the model's vectors are sparse (model.sparse), the inverted index over sparse encodings
        (encode_sparse). `passages`: the corpus vectors already encoded (side="passage"), e.g. by a method that
        reuses them."""
        from methods.retrieval.index import InvertedIndex, dense_search, to_run

        k = int(k or self.eval_k)
        qids, _ = self.queries_of(split)
        if not qids:
            return {}
        if getattr(model, "sparse", False):
            q = self.encode_sparse(model, [self.query_ids(x) for x in qids], "query")
            p = self.encode_sparse(model, self.passage_ids, "passage") if passages is None else passages
            scores, rows = InvertedIndex(p).search(q, k)
        else:
            q = self.encode_texts(model, [self.query_ids(x) for x in qids], "query")
            p = self.encode_texts(model, self.passage_ids, "passage") if passages is None else passages
            scores, rows = dense_search(q, p, k)
        return to_run(qids, self.corpus_ids, scores, rows)

    def metrics(self, run: dict, split: str) -> dict[str, float]:
        """nDCG@10, Recall@{1,10,100}, MRR@10 of `run` on `split`'s qrels, and per query kind where the source has
        kinds (summary/ndcg@10, ...)."""
        from methods.retrieval.metrics import evaluate_run

        qrels = self.corpus.qrels.get(split, {})
        out = _named(evaluate_run(qrels, run))
        kinds = self.corpus.meta.get("query_kind")
        if kinds:
            for kind in sorted(set(kinds.values())):
                sub = {q: r for q, r in qrels.items() if kinds.get(q) == kind}
                if sub:
                    out[f"{kind}/ndcg@10"] = evaluate_run(sub, run, ks=(10,))["ndcg@10"]
        return out

    # -- the task protocol -------------------------------------------------------------------
    def make_loaders(self, batch_size: int, total_micro_batches: int, seed: int, start=lambda: 0, rank: int = 0,
                     world: int = 1, val_batches: int | None = None, num_workers: int = 0):
        """Training batches are a pure function of the global micro-batch index (ResumableBatchSampler) over
        `train_pairs`; validation is the dev pairs in order (capped at `val_batches` batches per rank)."""
        import torch

        from tasks.batches import ResumableBatchSampler

        if not self.train_pairs:
            raise ValueError(f"dataset={self.source}: no training pairs (the train split has no judged queries)")
        train = _Pairs(self, self.train_pairs)
        dev = self.pairs_of("dev")
        n_val = len(dev) if val_batches is None else min(len(dev), val_batches * batch_size * world)
        val = _Pairs(self, dev[:n_val][rank::world])
        sampler = ResumableBatchSampler(len(train), batch_size, total_micro_batches, seed, start, rank, world)
        collate = _Collate(self.pad_id, self.hard_negatives)
        train_dl = torch.utils.data.DataLoader(train, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                                               generator=torch.Generator().manual_seed(seed))
        val_dl = torch.utils.data.DataLoader(val, batch_size=batch_size, shuffle=False, collate_fn=collate)
        return train_dl, val_dl

    def counts(self) -> dict[str, int]:
        out = {"passages": len(self.corpus_ids), "train_pairs": len(self.train_pairs)}
        out.update({f"{s}_queries": len(self.queries_of(s)[0]) for s in corpora.SPLITS})
        return out

    def baselines(self, val_dl) -> dict[str, float]:
        """BM25 on the dev queries over the whole corpus: the reference to beat (val/bm25_ndcg@10, ...)."""
        if not self.queries_of("dev")[0]:
            return {}
        m = self.metrics(self.first_pass("dev", self.eval_k), "dev")
        return {f"val/bm25_{k}": v for k, v in m.items() if k in ("ndcg@10", "mrr@10", "recall@100")}

    def evaluate(self, model) -> dict[str, float]:
        """The model's retrieval metrics on the eval split (eval/ndcg@10, ...), and BM25's on the same queries
        (eval/bm25/...)."""
        split = self.eval_split
        if not self.queries_of(split)[0]:
            return {}
        out = self.metrics(self.search(model, split), split)
        out.update({f"bm25/{k}": v for k, v in self.metrics(self.first_pass(split, self.eval_k), split).items()})
        return out


def _named(m: dict[str, float]) -> dict[str, float]:
    """The metrics a retrieval table shows, in its order."""
    keys = ("ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100")
    return {k: m[k] for k in keys if k in m}


class _Pairs:
    """(query ids, positive ids, hard-negative ids per negative, pair row, positive row, negative rows)."""

    def __init__(self, data: RetrievalData, pairs: list[tuple[str, str]]):
        self.data, self.pairs = data, pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        d = self.data
        qid, pid = self.pairs[i]
        p_row = d.corpus_row[pid]
        n_rows = [d.corpus_row[n] for n in d.hard.get(qid, [])][:d.hard_negatives]
        if d.hard_negatives and len(n_rows) < d.hard_negatives:  # too few mined: fill with fixed other passages
            n_rows += [r for r in _fill_rows(qid, p_row, len(d.corpus_ids), d.hard_negatives) if r not in n_rows][
                :d.hard_negatives - len(n_rows)]
        return (d.query_ids(qid), d.passage_ids[p_row], [d.passage_ids[r] for r in n_rows], i, p_row, n_rows)


def _fill_rows(qid: str, positive: int, n: int, count: int) -> list[int]:
    """`count` + 1 passage rows other than `positive`, fixed by the query id (stand-in negatives)."""
    from methods.classification.corpora import text_hash

    start = text_hash(qid) % max(1, n)
    return [r for r in ((start + j) % n for j in range(count + 2)) if r != positive][:count + 1]


class _Pad:
    """(ids (B, L), attention mask (B, L)) right-padded to the longest row."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[list[int]]):
        from methods.batching import pad_right

        return pad_right(rows, self.pad_id)


class _Collate:
    """The batch dict of the module docstring of methods/retrieval/module.py."""

    def __init__(self, pad_id: int, hard: int):
        self.pad, self.hard = _Pad(pad_id), int(hard)

    def __call__(self, items) -> dict:
        import torch

        q, qm = self.pad([x[0] for x in items])
        p, pm = self.pad([x[1] for x in items])
        out = {"q_input_ids": q, "q_attention_mask": qm, "p_input_ids": p, "p_attention_mask": pm,
               "index": torch.tensor([x[3] for x in items], dtype=torch.long),
               "p_rows": torch.tensor([x[4] for x in items], dtype=torch.long)}
        if self.hard:
            n, nm = self.pad([row for x in items for row in x[2]])
            out.update({"n_input_ids": n, "n_attention_mask": nm,
                        "n_rows": torch.tensor([x[5] for x in items], dtype=torch.long)})
        return out


# ---------------------------------------------------------------------------------------------- the task
def _block(name: str, given: dict | None) -> dict:
    unknown = sorted(set(given or {}) - set(DEFAULTS[name]))
    if unknown:
        raise ValueError(f"dataset.{name}.{unknown[0]}: unknown; choose from: {', '.join(DEFAULTS[name])}")
    return {**DEFAULTS[name], **(given or {})}


class Retrieval(Task):
    """Queries, passages and qrels for a bi-encoder (see the module docstring)."""

    provides = frozenset({"retrieval"})
    model_kinds = ("encoder", "masked-lm")

    def __init__(self, source: str = "stdlib-retrieval", generator: dict | None = None, path: str | None = None,
                 max_passages: int | None = None, query_len: int = 64, passage_len: int | None = None,
                 tokenizer: dict | None = None, encoder: dict | None = None, contrastive: dict | None = None,
                 negatives: dict | None = None, eval: dict | None = None):
        if source not in SOURCES:
            raise ValueError(f"dataset.source: {source!r}; choose one of: {', '.join(SOURCES)}")
        self.source = source
        self.fn = getattr(corpora, SOURCES[source])
        self.generator = dict(generator or {})
        if source != "beir":
            params = inspect.signature(self.fn).parameters
            unknown = sorted(set(self.generator) - set(params) - {"root", "include", "cache_dir"})
            if unknown:
                raise ValueError(f"dataset.generator.{unknown[0]}: not an argument of {self.fn.__name__}; choose from: "
                                 f"{', '.join(p for p in params if p not in ('root', 'include', 'cache_dir'))}")
        elif not path:
            raise ValueError("dataset.path: source=beir needs a BEIR directory (corpus.jsonl, queries.jsonl, qrels/) "
                             "or hf://<org>/<name>")
        self.path = path
        self.max_passages = None if max_passages is None else int(max_passages)
        if int(query_len) < 3 or (passage_len is not None and int(passage_len) < 3):
            raise ValueError(f"dataset.query_len / passage_len: {query_len} / {passage_len}; at least 3 tokens "
                             "([CLS] ... [SEP])")
        self.query_len = int(query_len)
        self.passage_len = None if passage_len is None else int(passage_len)
        self.tokenizer = check_encoder_tokenizer(tokenizer)
        self.encoder = _block("encoder", encoder)
        if self.encoder["pooling"] not in POOLING:
            raise ValueError(f"dataset.encoder.pooling: {self.encoder['pooling']!r}; choose one of: {', '.join(POOLING)}")
        self.contrastive = _block("contrastive", contrastive)
        if not float(self.contrastive["temperature"]) > 0:
            raise ValueError(f"dataset.contrastive.temperature: {self.contrastive['temperature']}; must be positive")
        if int(self.contrastive["bank_size"]) < 0:
            raise ValueError(f"dataset.contrastive.bank_size: {self.contrastive['bank_size']}; a number of passages >= 0")
        self.negatives = _block("negatives", negatives)
        if int(self.negatives["hard"]) < 0 or int(self.negatives["skip"]) < 0:
            raise ValueError(f"dataset.negatives: hard={self.negatives['hard']}, skip={self.negatives['skip']}; counts >= 0")
        self.eval = _block("eval", eval)
        if self.eval["split"] not in EVAL_SPLITS:
            raise ValueError(f"dataset.eval.split: {self.eval['split']!r}; choose one of: {', '.join(EVAL_SPLITS)}")

    def ignored_args(self) -> dict[str, str]:
        if self.source != "beir" and self.path:
            return {"path": f"source={self.source} is generated; path is read by source=beir"}
        return {}

    def _corpus(self, ctx: BuildContext) -> RetrievalCorpus:
        if self.source == "beir":
            return self.fn(self.path, max_passages=self.max_passages, **self.generator)
        args = dict(self.generator)
        if "cache_dir" in inspect.signature(self.fn).parameters:
            args["cache_dir"] = ctx.cache_dir
        if self.max_passages is not None and "max_passages" in inspect.signature(self.fn).parameters:
            args["max_passages"] = self.max_passages
        elif self.max_passages is not None:
            args["n_passages"] = self.max_passages
        return self.fn(**args)

    def build(self, ctx: BuildContext) -> RetrievalData:
        corpus = self._corpus(ctx)
        train_texts = corpus.corpus_texts + [corpus.queries[q] for q in corpus.qrels.get("train", {})]
        tok = encoder_tokenizer(self.tokenizer, ctx.model_source, train_texts, ctx.cache_dir)
        data = RetrievalData(
            self.source, corpus, tok, len(tok), self.query_len, self.passage_len or int(ctx.seq_len),
            pooling=self.encoder["pooling"], normalize=bool(self.encoder["normalize"]),
            temperature=float(self.contrastive["temperature"]), bank_size=int(self.contrastive["bank_size"]),
            hard_negatives=int(self.negatives["hard"]), eval_split=self.eval["split"], eval_k=int(self.eval["k"]),
            val_retrieval=bool(self.eval["val_retrieval"]), eval_batch_size=int(self.eval["batch_size"]))
        if data.hard_negatives:
            data = data.with_hard_negatives(data.hard_negatives, int(self.negatives["skip"]))
        log.info("%s: %d passages, %d train pairs, queries train/dev/test %s, tokenizer %d tokens", self.source,
                 len(corpus.corpus_ids), len(data.train_pairs), "/".join(str(len(data.queries_of(s)[0]))
                                                                           for s in corpora.SPLITS), len(tok))
        return data
