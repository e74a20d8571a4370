"""LoL: A Comparative Regularization Loss over Query Reformulation Losses for Pseudo-Relevance Feedback
(Zhu, Pang, Lan, Shen, Cheng; SIGIR 2022, arXiv:2204.11545).

Official code: github.com/zycdev/LoL (trainer.py, qr_dataset.py, modeling.py, util.py, arguments.py, run.py,
README.md); every rule below is read from it (the paper body: unverified beyond the code).

A query reformulator reads the query and its pseudo-relevant feedback, the top-K passages of a first-pass run:

    x_K = [CLS] q [SEP] p1 [SEP] p2 [SEP] ... pK [SEP]                       (qr_dataset.QryRfmDataset)
    q_K = LayerNorm(W h_CLS(x_K) + b)                                        (modeling.DenseDqr, norm_power nan)

and is scored against a fixed corpus matrix D (N, H) of passages encoded once by the frozen document encoder.
The reformulation loss is a cross-entropy over the whole corpus, its target the *lowest*-scored positive with the
other positives masked (trainer.compute_loss, "passage ranking"):

    s = D q_K                          p* = argmin_{p in P+} s_p              s_p = -inf for p in P+ \\ {p*}
    L_pr(q_K) = -log softmax(s)_{p*}

Revisions: each query sample draws 1 + n_compare distinct feedback counts K_0 > K_1 > ... from {0, ..., K_max}
and revision r keeps the first K_r passages, an exact prefix of the same token sequence (QryRfmCollator). More
feedback should never hurt, so LoL adds a pairwise hinge (margin 0) over the revisions of each query
(util.pairwise_hinge on the effects -L_pr with labels R, R-1, ..., 1):

    L_cr = mean over pairs (a, b) of one query's revisions with K_a > K_b of max(0, L_pr(q_{K_a}) - L_pr(q_{K_b}))
    L    = lambda_pr * mean_revisions L_pr + lambda_cr * L_cr                 (L_cr only when n_compare > 0)

Defaults from the README's ANCE command and arguments.py: K_max 5 (max_n_prf), shuffled feedback (shuffle_psgs:
the K_0 passages are a random subset of the top K_max in random order), n_compare 1, lambda_pr 1, lambda_cr 1,
max_seq_len 512 / max_q_len 128 / max_p_len 128, lr 1e-5 with linear warm-up over 10% of the steps then linear
decay to 0 (transformers' default schedule), AdamW (transformers 4.19: betas 0.9/0.999, eps 1e-8, no weight
decay), 12 / (1 + n_compare) epochs, 36 / (1 + n_compare) query samples per device (x3 reformulating GPUs).

How it runs here (`method=lol_prf dataset=stdlib-retrieval`):
  - `prepare_data` wraps the task's RetrievalData in PRFData: the train/dev/test queries with their BM25 first
    pass (`data.first_pass(split, K_max)`), the feedback passages' tokens, the positives' corpus rows. Its train
    batches are revision groups (a dict, below) drawn by tasks.batches.ResumableBatchSampler (the class of the
    wrapped data's own train sampler: a method does not import tasks/); the revision draws of micro-batch b's
    query i come from a generator seeded by (seed, b, i), so a resumed run sees the same revisions. Validation: the dev queries with all their feedback (K_max, rank order, as the code's dev set).
  - The initial model: model= (model.init_from), or with method.retriever_from the encoder of a dense-retriever run
    of the same task (method=adamw, the task's InfoNCE: the ANCE of this setting), loaded in `prepare_model`.
  - LoLModule wraps the architecture's model in a PRFReformulator and, before training, encodes the whole corpus
    once with the *initial* model as a DualEncoder with the task's pooling and normalisation (no grad, eval mode):
    the corpus matrix, a buffer of the reformulator (never trained; left out of checkpoints: a resumed run
    encodes it again from the same initial model).
  - `evaluate` (PRFData): the eval split's queries (dataset.eval.split: test) with K = 0 .. K_max passages of their
    BM25 run in rank order, scored against the same corpus matrix: eval/ndcg@10, eval/mrr@10, eval/recall@100 with
    K_max feedback (the trained reformulator); eval/prf{K}/... for each K (eval/prf0: the reformulator without feedback); eval/dense/... (the
    initial model's own query vectors: the dense retriever before PRF); eval/bm25/... (the first pass); the
    violation rates: eval/violation_rate (per query, the fraction of its pairs K_a > K_b with
    L_pr(K_a) > L_pr(K_b), averaged over the queries) and eval/violation_rate@max_vs_0 (the fraction of queries
    with L_pr(K_max) > L_pr(0)); eval/loss_pr@K (the mean L_pr with K passages).

A train batch (R = the revisions of B query samples, at most B (1 + n_compare)):
    input_ids, attention_mask, token_type_ids (R, L)  right-padded; token type 1 on the feedback passages
    group (R,)        the revision's query sample in the batch (0 .. B-1); its revisions are consecutive, K descending
    feedback (R,)     K_r, the passages the revision keeps
    positives (R, P)  corpus rows of the query's positives, -1 padded
    index (B,)        the samples' rows of PRFData.train

Deviations from the official code (also in configs/method/lol_prf.yaml):
- First pass: the task's BM25 run (bm25s), not ANCE's own run (`ance-bf`); the corpus matrix: the initial model
  with the task's pooling, not ANCE's prebuilt pyserini index. Training and validation score the *whole* corpus,
  as evaluation does; the code trains (and validates) against subsets (the union of the ANCE top-20 and the other runs' top-5 of the train
  queries, and their positives: notebooks/preprocess_index_ance.ipynb), a memory saving of its 8.8M passages.
- query_pooling `task` (ours; default `cls`, the code's h_CLS): h = the task's pooling (mean over the tokens of
  the whole sequence for dataset.encoder.pooling=mean), so that an encoder whose embedding is not its [CLS] state
  starts as its own dense retriever (with W = I the LayerNorm of its embedding: the same direction up to centring).
- The head: W = identity, b = 0 at the start (so that q_0 lives in the encoder's space from step 0); the code
  builds a fresh nn.Linear (PyTorch's default init) and LayerNorm, replaced by weights from `model.pt` in the
  checkpoint directory where one exists (for uniCOIL, notebooks/convert_unicoil_model.ipynb saves its token head
  there; the ANCE conversion is not in the repository). `head_init: random` is the code's fresh init.
- Feedback counts are drawn from {0, ..., m} with m the passages that fit in max_seq_len (the code's rule: a
  passage is cut to the room left and none is added with fewer than 10 tokens of room); the code draws from
  {0, ..., len(run)} and indexes past its separators when fewer fit. Shuffled feedback is drawn as the first
  passages of a random permutation of the run (the distribution of random.sample(run, K_0)). A query whose run
  has fewer than n_compare passages gets fewer revisions (L_cr averages the pairs there are; the code assumes
  full groups).
- A model with fewer positions than max_seq_len (bert-tiny: model.seq_len) gets max_seq_len = its positions and
  max_q_len, max_p_len scaled by the same ratio (512 / 128 / 128 -> 64 / 16 / 16).
- Not implemented (each 0 in the README's commands): lambda_qr (query-ranking CE), lambda_rr (feedback-passage
  re-ranking BCE, and its psg_transform / reranker head), lambda_sr (sparse L1/FLOPS); the sparse reformulators
  (uniCOIL / SPLADE-style, `dqrs*`) and the code's norm_power (its ANCE runs use nan: no normalisation).
- Token type ids (1 on the feedback) go to the encoder when its config has type_vocab_size > 1 (BERT), as the
  code does for BERT; never for RoBERTa (ANCE) or our bert-tiny (type_vocab_size 1), as the code for RoBERTa.
- fp16: the scores and losses are computed in float32 (the code: autocast off for the corpus product, then the
  CE in float32 too, as here).
- Several devices: DDP broadcasts buffers, the corpus matrix too (the code keeps it on one extra GPU); one device
  is the recipe.
- Evaluation adds eval/violation_rate (ours) and the per-K metrics of the code's predict loop (PRF0..PRF5)
  computed with our trec_eval-convention metrics (methods.retrieval.metrics) on the top eval_k (the task's
  eval.k, 100; the code: top 1000).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods.base import Method
from methods.classification.classifier import pool
from methods.module import MethodModule
from methods.retrieval.encoder import DualEncoder
from methods.retrieval.metrics import ranked

log = logging.getLogger(__name__)

HEAD_INITS = ("identity", "random")
QUERY_POOLING = ("cls", "task")
MIN_ROOM = 10  # qr_dataset: no passage is added with fewer than 10 tokens of room left


# -- sequences and revisions (qr_dataset.QryRfmDataset / QryRfmCollator) ----------------------------------------
def feedback_sequence(query_ids: list[int], passages: list[list[int]], sep_id: int, max_seq_len: int = 512,
                      max_p_len: int = 128) -> tuple[list[int], list[int]]:
    """(input_ids, sep_indices) of [CLS] q [SEP] p1 [SEP] ... : `query_ids` is [CLS] q [SEP] (already cut to
    max_q_len + 2), `passages` the feedback passages' tokens without special tokens. Each passage is cut to
    min(max_p_len, room - 1) tokens; none is added once fewer than 10 tokens of room are left. sep_indices[k] is
    the position of the separator that closes passage k (sep_indices[0]: the query's)."""
    ids = list(query_ids)
    seps = [len(ids) - 1]
    for p in passages:
        start = len(ids)
        if max_seq_len - start < MIN_ROOM:
            break
        ids += list(p[:min(max_p_len, max_seq_len - start - 1)]) + [sep_id]
        seps.append(len(ids) - 1)
    return ids, seps


def revision(input_ids: list[int], sep_indices: list[int], k: int) -> list[int]:
    """The sequence with its first k feedback passages: the prefix up to the separator that closes passage k."""
    if not 0 <= k < len(sep_indices):
        raise ValueError(f"revision: k={k} with {len(sep_indices) - 1} passages in the sequence")
    return list(input_ids[:sep_indices[k] + 1])


def token_types(length: int, first_sep: int) -> list[int]:
    """0 on [CLS] q [SEP], 1 on the feedback."""
    return [0] * (first_sep + 1) + [1] * (length - first_sep - 1)


def draw_feedback_counts(available: int, n_compare: int, rng: np.random.Generator) -> list[int]:
    """1 + n_compare distinct counts from {0, ..., available}, descending (fewer when there are fewer):
    sorted(random.sample(range(available + 1), 1 + n_compare), reverse=True)."""
    n = min(1 + int(n_compare), available + 1)
    return sorted((int(k) for k in rng.choice(available + 1, size=n, replace=False)), reverse=True)


# -- the losses -------------------------------------------------------------------------------------------------
def positives_tensor(positives: list[list[int]], device=None) -> torch.Tensor:
    """(R, P) corpus rows, -1 padded."""
    width = max(1, max((len(p) for p in positives), default=1))
    out = torch.full((len(positives), width), -1, dtype=torch.long)
    for i, p in enumerate(positives):
        out[i, :len(p)] = torch.tensor(p, dtype=torch.long)
    return out.to(device) if device is not None else out


def reformulation_loss(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """(R,) L_pr: CE over the corpus scores (R, N) whose target is each row's lowest-scored positive, the other
    positives masked to -inf. `positives` (R, P): corpus rows, -1 padded; every row has one at least."""
    valid = positives >= 0
    if not bool(valid.any(1).all()):
        raise ValueError("reformulation_loss: a revision without a positive passage")
    rows = positives.clamp_min(0)
    pos_scores = scores.gather(1, rows).masked_fill(~valid, float("inf"))
    target = rows.gather(1, pos_scores.argmin(1, keepdim=True)).squeeze(1)  # the lowest-scored positive
    other = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, rows, valid)
    other.scatter_(1, target.unsqueeze(1), False)
    return F.cross_entropy(scores.masked_fill(other, float("-inf")), target, reduction="none")


def comparison_pairs(group: torch.Tensor, feedback: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(more, less): indices of every pair of revisions of the same query with feedback[more] > feedback[less]."""
    g, k = group.tolist(), feedback.tolist()
    pairs = [(a, b) if k[a] > k[b] else (b, a) for a, b in combinations(range(len(g)), 2)
             if g[a] == g[b] and k[a] != k[b]]
    if not pairs:
        empty = torch.zeros(0, dtype=torch.long, device=group.device)
        return empty, empty
    t = torch.tensor(pairs, dtype=torch.long, device=group.device)
    return t[:, 0], t[:, 1]


def comparative_regularization(losses: torch.Tensor, group: torch.Tensor, feedback: torch.Tensor,
                               margin: float = 0.0) -> torch.Tensor:
    """L_cr = mean over pairs (more feedback a, less b) of one query of max(0, L_a - L_b + margin); 0 without a pair
    (util.pairwise_hinge = F.margin_ranking_loss(-L_a, -L_b, 1, margin))."""
    more, less = comparison_pairs(group, feedback)
    if more.numel() == 0:
        return losses.sum() * 0.0
    return F.relu(losses[more] - losses[less] + margin).mean()


def lol_loss(losses: torch.Tensor, group: torch.Tensor, feedback: torch.Tensor, lambda_pr: float = 1.0,
             lambda_cr: float = 1.0, n_compare: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(L, {"loss_pr", "loss_cr"}): L = lambda_pr * mean L_pr (+ lambda_cr * L_cr when n_compare > 0)."""
    loss_pr = losses.mean()
    total = lambda_pr * loss_pr
    parts = {"loss_pr": loss_pr.detach()}
    if n_compare > 0:  # arguments.py: lambda_cr is 0 without comparative samples
        loss_cr = comparative_regularization(losses, group, feedback)
        parts["loss_cr"] = loss_cr.detach()
        total = total + lambda_cr * loss_cr
    return total, parts


def violation_rates(losses_by_k: list[list[float]]) -> dict[str, float]:
    """Per query the losses with K = 0, 1, ..., m passages: {"violation_rate": mean over queries of the fraction of
    pairs K_a > K_b with L_a > L_b, "violation_rate@max_vs_0": fraction of queries with L_m > L_0}; queries with
    m = 0 are left out."""
    pair, end = [], []
    for ls in losses_by_k:
        if len(ls) < 2:
            continue
        pairs = [(ls[a] > ls[b]) for b, a in combinations(range(len(ls)), 2)]  # a > b: more feedback
        pair.append(float(np.mean(pairs)))
        end.append(float(ls[-1] > ls[0]))
    return {"violation_rate": float(np.mean(pair)) if pair else float("nan"),
            "violation_rate@max_vs_0": float(np.mean(end)) if end else float("nan")}


# -- the reformulator -------------------------------------------------------------------------------------------
class PRFReformulator(DualEncoder):
    """The backbone + LayerNorm(Linear(h)) for queries with feedback, h = h_CLS (query_pooling `cls`, the code's) or
    the task's pooling of the last hidden states (`task`); the frozen corpus matrix as a buffer.

    `encode(side="query")` is the reformulated query vector (token types, when given and the encoder has them);
    `encode(side="passage")` the DualEncoder's (the backbone as it is now, the task's pooling): the corpus matrix
    is what PRF scores against, encoded once by the initial model (`set_corpus`)."""

    def __init__(self, backbone: nn.Module, pooling: str = "cls", normalize: bool = False, head_init: str = "identity",
                 query_pooling: str = "cls"):
        super().__init__(backbone, pooling=pooling, normalize=normalize)
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init: {head_init!r}; choose one of: {', '.join(HEAD_INITS)}")
        if query_pooling not in QUERY_POOLING:
            raise ValueError(f"query_pooling: {query_pooling!r}; choose one of: {', '.join(QUERY_POOLING)}")
        self.query_pooling = query_pooling
        h = self.dim
        self.dense_proj = nn.Linear(h, h)
        self.layer_norm = nn.LayerNorm(h)
        if head_init == "identity":
            with torch.no_grad():
                self.dense_proj.weight.copy_(torch.eye(h))
                self.dense_proj.bias.zero_()
        # not in state_dict (checkpoints): LoLModule encodes it again from the initial model, which a resumed run
        # rebuilds the same way (MS MARCO's is 27 GB in float32); a model saved whole (torch.save) keeps it
        self.register_buffer("corpus", torch.zeros(0, h), persistent=False)

    @property
    def uses_token_types(self) -> bool:
        return int(getattr(self.config, "type_vocab_size", 1) or 1) > 1

    @property
    def max_positions(self) -> int | None:
        n = getattr(self.config, "max_position_embeddings", None)
        if n and getattr(self.config, "model_type", "") in ("roberta", "xlm-roberta"):
            n -= 2  # RoBERTa's positions start after the padding index
        return int(n) if n else None

    def set_corpus(self, matrix: torch.Tensor) -> None:
        self.corpus = matrix.detach().to(self.corpus.device, torch.float32).contiguous()

    def reformulate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H) q = LayerNorm(W h + b), h = h_CLS or the task's pooling (query_pooling)."""
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None and self.uses_token_types else {}
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        hidden = getattr(out, "last_hidden_state", out)
        hidden = hidden[0] if isinstance(hidden, (tuple, list)) else hidden
        h = hidden[:, 0] if self.query_pooling == "cls" else pool(hidden, attention_mask, self.pooling)
        return self.layer_norm(self.dense_proj(h))

    def encode(self, input_ids, attention_mask=None, side: str = "passage", token_type_ids=None) -> torch.Tensor:
        if side == "query":
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            return self.reformulate(input_ids, attention_mask, token_type_ids)
        return super().encode(input_ids, attention_mask, side)

    def corpus_scores(self, q: torch.Tensor) -> torch.Tensor:
        """(B, N) float32 scores against the corpus matrix (autocast off, as the code)."""
        if self.corpus.shape[0] == 0:
            raise RuntimeError("PRFReformulator: the corpus matrix is empty (LoLModule encodes it before training)")
        with torch.autocast(device_type=q.device.type, enabled=False):
            return q.float() @ self.corpus.T


# -- the data ---------------------------------------------------------------------------------------------------
@dataclass
class PRFSplit:
    """One split's queries: their [CLS] q [SEP] tokens, first-pass feedback (corpus rows, rank order), positives."""

    qids: list[str]
    query_ids: list[list[int]]
    feedback: list[list[int]]
    positives: list[list[int]]

    def __len__(self) -> int:
        return len(self.qids)


class _Items(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item):
        return item


class _IndexedBatches(torch.utils.data.Sampler):
    """The ResumableBatchSampler's batches as [(micro-batch index, row), ...]: the draws' seed."""

    def __init__(self, inner):
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        first = int(self.inner.start())
        for j, rows in enumerate(self.inner):
            yield [(first + j, int(r)) for r in rows]


class PRFData:
    """The retrieval task's data with PRF revision-group batches (module docstring): the task protocol of
    tasks/base.TaskData (make_loaders, counts, baselines, evaluate, figures, save; not a subclass: methods do not
    import tasks/), every other attribute the wrapped RetrievalData's."""

    module_class: ClassVar[type | None] = None  # LoLModule (set below)

    def __init__(self, inner: Any, max_feedback: int = 5, n_compare: int = 1, shuffle_feedback: bool = True,
                 max_seq_len: int = 512, max_q_len: int = 128, max_p_len: int = 128, eval_k: int | None = None):
        self.inner = inner
        self.max_feedback, self.n_compare, self.shuffle_feedback = int(max_feedback), int(n_compare), shuffle_feedback
        self.max_seq_len, self.max_q_len, self.max_p_len = int(max_seq_len), int(max_q_len), int(max_p_len)
        self.eval_k = int(inner.eval_k if eval_k is None else eval_k)  # null: the task's eval.k
        self.reference: dict[str, float] = {}  # eval/dense/*: the initial model's own queries (LoLModule sets them)
        tok = inner.tokenizer
        self.pad_id = int(getattr(inner, "pad_id", None) or getattr(tok, "pad_token_id", None) or 0)
        sep = getattr(tok, "sep_token_id", None)
        self.sep_id = int(sep) if sep is not None else int(inner.encode(["a"], 8)[0][-1])
        self.splits = {s: self._split(s) for s in ("train", "dev", "test")}
        rows = sorted({r for sp in self.splits.values() for fb in sp.feedback for r in fb})
        texts = [inner.corpus_texts[r] for r in rows]
        self.passage_tokens = {r: ids[1:-1] for r, ids in zip(rows, inner.encode(texts, self.max_p_len + 2))}
        if not len(self.splits["train"]):
            raise ValueError("lol_prf: the retrieval task has no train query with a positive passage")

    def __getattr__(self, name: str):  # the wrapped data's attributes (tokenizer, corpus, queries_of, ...)
        if name == "inner" or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def train(self) -> PRFSplit:
        return self.splits["train"]

    def _split(self, split: str) -> PRFSplit:
        inner = self.inner
        qrels = inner.corpus.qrels.get(split, {})
        qids, texts = inner.queries_of(split)
        keep = [i for i, q in enumerate(qids) if any(r > 0 for r in qrels.get(q, {}).values())]
        qids, texts = [qids[i] for i in keep], [texts[i] for i in keep]
        if not qids:
            return PRFSplit([], [], [], [])
        run = inner.first_pass(split, self.max_feedback) if self.max_feedback > 0 else {}
        row = inner.corpus_row
        feedback = [[row[p] for p in ranked(run.get(q, {}))][:self.max_feedback] for q in qids]
        positives = [sorted(row[p] for p, r in qrels[q].items() if r > 0 and p in row) for q in qids]
        return PRFSplit(qids, inner.encode(texts, self.max_q_len + 2), feedback, positives)

    # -- sequences
    def fit_to(self, positions: int) -> None:
        """A model with fewer positions than max_seq_len: max_seq_len becomes `positions`, and max_q_len and
        max_p_len shrink by the same ratio (the code's 512 / 128 / 128 -> 64 / 16 / 16), so that feedback still fits."""
        if positions >= self.max_seq_len:
            return
        ratio = positions / self.max_seq_len
        before = (self.max_seq_len, self.max_q_len, self.max_p_len)
        self.max_q_len = max(1, min(int(self.max_q_len * ratio), positions - 2 - MIN_ROOM))
        self.max_p_len = max(1, int(self.max_p_len * ratio))
        self.max_seq_len = int(positions)
        log.info("lol_prf: max_seq_len / max_q_len / max_p_len %s -> %s (the model's %d positions)", before,
                 (self.max_seq_len, self.max_q_len, self.max_p_len), positions)

    def sequence(self, split: PRFSplit, i: int, order: list[int] | None = None) -> tuple[list[int], list[int]]:
        """Query i's full sequence (input_ids, sep_indices); `order` permutes its feedback (shuffled feedback)."""
        fb = split.feedback[i] if order is None else [split.feedback[i][j] for j in order]
        q = split.query_ids[i]
        if len(q) > self.max_q_len + 2:  # the tokenizer's truncation at max_q_len + 2: the first tokens, then [SEP]
            q = q[:self.max_q_len + 1] + q[-1:]
        return feedback_sequence(q, [self.passage_tokens[r] for r in fb], self.sep_id, self.max_seq_len,
                                 self.max_p_len)

    def revisions(self, split: PRFSplit, i: int, rng: np.random.Generator | None) -> list[tuple[list[int], int, int]]:
        """[(input_ids, first_sep, K), ...] of query i: K_0 > K_1 > ... drawn with `rng` (training), or None: every
        K from the most that fit down to 0 (evaluation, rank order)."""
        order = None
        if rng is not None and self.shuffle_feedback:
            order = rng.permutation(len(split.feedback[i])).tolist()
        ids, seps = self.sequence(split, i, order)
        fit = len(seps) - 1
        ks = draw_feedback_counts(fit, self.n_compare, rng) if rng is not None else list(range(fit, -1, -1))
        return [(revision(ids, seps, k), seps[0], k) for k in ks]

    def collate(self, split: PRFSplit, items: list[tuple[int, list[tuple[list[int], int, int]]]]) -> dict:
        """A dict batch of the revision groups [(row, revisions), ...] (module docstring)."""
        seqs, first, group, fb, pos = [], [], [], [], []
        for g, (row, revs) in enumerate(items):
            for ids, sep0, k in revs:
                seqs.append(ids)
                first.append(sep0)
                group.append(g)
                fb.append(k)
                pos.append(split.positives[row])
        width = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        types = torch.zeros_like(input_ids)
        for r, (s, sep0) in enumerate(zip(seqs, first)):
            input_ids[r, :len(s)] = torch.tensor(s, dtype=torch.long)
            mask[r, :len(s)] = 1
            types[r, :len(s)] = torch.tensor(token_types(len(s), sep0), dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": types,
                "group": torch.tensor(group, dtype=torch.long), "feedback": torch.tensor(fb, dtype=torch.long),
                "positives": positives_tensor(pos), "index": torch.tensor([row for row, _ in items], dtype=torch.long)}

    def train_batch(self, items: list[tuple[int, int]], seed: int) -> dict:
        """The batch of [(micro-batch index, row), ...]: row's revisions drawn from a generator seeded by
        (seed, micro-batch index, row): a pure function of the micro-batch index."""
        groups = [(row, self.revisions(self.train, row, np.random.default_rng([seed % 2 ** 32, b, row])))
                  for b, row in items]
        return self.collate(self.train, groups)

    def eval_batch(self, split: PRFSplit, rows: list[int], k: int | None = None) -> dict:
        """Query rows with K = k passages (None: all that fit), rank order."""
        groups = []
        for row in rows:
            revs = self.revisions(split, row, None)
            groups.append((row, [revs[0] if k is None else revs[max(0, len(revs) - 1 - k)]]))
        return self.collate(split, groups)

    def make_loaders(self, batch_size: int, total_micro_batches: int, seed: int, start=lambda: 0, rank: int = 0,
                     world: int = 1, val_batches: int | None = None, num_workers: int = 0):
        """Train: revision groups of `batch_size` query samples, batch b the task's ResumableBatchSampler's batch b
        over the train queries; val: the validation queries with all their feedback, in order, `val_batches`
        per rank."""
        from functools import partial

        # tasks.batches.ResumableBatchSampler, the class of the wrapped data's own train sampler (a method does not
        # import tasks/: DESIGN's layers)
        task_sampler = type(self.inner.make_loaders(batch_size, total_micro_batches, seed, start, rank, world,
                                                    val_batches=0)[0].batch_sampler)
        sampler = task_sampler(len(self.train), batch_size, total_micro_batches, seed, start, rank, world)
        train_dl = torch.utils.data.DataLoader(_Items(len(self.train)), batch_sampler=_IndexedBatches(sampler),
                                               collate_fn=partial(self.train_batch, seed=int(seed)),
                                               num_workers=num_workers)
        val = self.val_split
        n = len(val) if val_batches is None else min(len(val), val_batches * batch_size * world)
        rows = list(range(n))[rank::world]
        chunks = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
        val_dl = torch.utils.data.DataLoader(chunks, batch_size=None, collate_fn=partial(self.eval_batch, val))
        return train_dl, val_dl

    @property
    def val_split(self) -> PRFSplit:
        return self.splits["dev"] if len(self.splits["dev"]) else self.splits["test"]

    def counts(self) -> dict[str, int]:
        return {"train_queries": len(self.train), "val_queries": len(self.val_split),
                "test_queries": len(self.splits["test"]), "corpus_passages": len(self.inner.corpus_ids)}

    def baselines(self, val_dl) -> dict[str, float]:
        """The BM25 first pass on the validation queries: what their feedback comes from."""
        split = self.val_split_name
        m = self.inner.metrics(self.inner.first_pass(split, self.eval_k), split)
        return {f"val/bm25_{k}": m[k] for k in ("ndcg@10", "mrr@10") if k in m}

    @property
    def val_split_name(self) -> str:
        return "dev" if len(self.splits["dev"]) else "test"

    def figures(self, model, directory) -> dict:
        return {}

    def save(self, directory) -> None:
        self.inner.save(directory)

    # -- evaluation
    @torch.no_grad()
    def query_vectors(self, model: PRFReformulator, split: PRFSplit, k: int | None,
                      batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """((Q, H) reformulated queries with k passages (None or more than fit: all that fit), (Q,) their L_pr)."""
        device = next(model.parameters()).device
        vecs, losses = [], []
        for lo in range(0, len(split), batch_size):
            b = self.eval_batch(split, list(range(lo, min(len(split), lo + batch_size))), k)
            b = {n: t.to(device) for n, t in b.items()}
            q = model.encode(b["input_ids"], b["attention_mask"], side="query", token_type_ids=b["token_type_ids"])
            vecs.append(q.float().cpu())
            losses.append(reformulation_loss(model.corpus_scores(q), b["positives"]).cpu())
        return torch.cat(vecs), torch.cat(losses)

    def run_of(self, qvecs: torch.Tensor, corpus: torch.Tensor, qids: list[str], chunk: int = 256) -> dict:
        """The exact inner-product run of query vectors over the corpus matrix (top eval_k): on the CPU through
        methods.retrieval.index.dense_search (ties by row), on the corpus's GPU by torch.topk in chunks of queries
        (an MS MARCO-sized corpus; ties at the cut in topk's order)."""
        from methods.retrieval.index import dense_search, to_run

        k = min(self.eval_k, corpus.shape[0])
        if corpus.is_cuda:
            parts = [(qvecs[i:i + chunk].to(corpus.device).float() @ corpus.float().T).topk(k, dim=1)
                     for i in range(0, qvecs.shape[0], chunk)]
            scores = torch.cat([p.values.cpu() for p in parts])
            rows = torch.cat([p.indices.cpu() for p in parts])
        else:
            scores, rows = dense_search(qvecs, corpus.float(), k)
        return to_run(qids, list(self.inner.corpus_ids), scores.numpy(), rows.numpy())

    def evaluate(self, model) -> dict[str, float]:
        """PRF retrieval and the violation rates on the task's eval split (module docstring)."""
        if not isinstance(model, PRFReformulator) or model.corpus.shape[0] == 0:
            raise TypeError(f"lol_prf: evaluates a PRFReformulator with its corpus matrix, got {type(model).__name__}")
        name = self.inner.eval_split
        split = self.splits[name]
        if not len(split):
            return {}
        was = model.training
        model.eval()
        out: dict[str, float] = {}
        per_k = []
        for k in range(self.max_feedback + 1):  # K = max_feedback: every passage that fits, the K_max of the code
            qvecs, losses = self.query_vectors(model, split, k)
            per_k.append(losses)
            m = self.inner.metrics(self.run_of(qvecs, model.corpus, split.qids), name)
            if k == self.max_feedback:
                out.update(m)
            out.update({f"prf{k}/ndcg@10": m["ndcg@10"], f"prf{k}/mrr@10": m["mrr@10"],
                        f"loss_pr@{k}": float(losses.mean())})
        fits = [len(self.revisions(split, i, None)) - 1 for i in range(len(split))]
        table = torch.stack(per_k, 1).tolist()  # (Q, K_max + 1): K above what fits repeats all that fit
        out.update(violation_rates([row[:f + 1] for row, f in zip(table, fits)]))
        bm = self.inner.metrics(self.inner.first_pass(name, self.eval_k), name)
        out.update({f"bm25/{k}": v for k, v in bm.items()})
        out.update(self.reference)
        model.train(was)
        return out


# -- the module -------------------------------------------------------------------------------------------------
class LoLModule(MethodModule):
    """MethodModule on PRF revision groups: a PRFReformulator with the corpus matrix of the initial model.
    val/loss is the mean L_pr of the validation queries with all their feedback, val/mrr@10 their MRR@10 over
    the corpus matrix (the code's eval mrr10)."""

    reports_perplexity = False

    def __init__(self, model, method, kernels_map=None, kernel_fallback=True, data=None, seed=0):
        if not isinstance(data, PRFData):
            raise TypeError(f"LoLModule needs methods.retrieval.lol_prf.PRFData as data (method=lol_prf's prepare_data), "
                            f"got {type(data).__name__}")
        fresh = not isinstance(model, PRFReformulator)
        if fresh:
            model = PRFReformulator(model, pooling=data.inner.pooling, normalize=data.inner.normalize,
                                    head_init=getattr(method, "head_init", "identity"),
                                    query_pooling=getattr(method, "query_pooling", "cls"))
            if model.query_pooling == "cls" and model.pooling != "cls":
                log.warning("lol_prf: the reformulator reads h_CLS (method.query_pooling=cls, the code's) but the "
                            "corpus matrix is %s-pooled (dataset.encoder.pooling): q_0 does not start as the dense "
                            "retriever's query; dataset.encoder.pooling=cls or method.query_pooling=task", model.pooling)
        super().__init__(model, method, kernels_map, kernel_fallback, data=data, seed=seed)
        if model.max_positions:
            data.fit_to(model.max_positions)
        if fresh or model.corpus.shape[0] == 0:
            self.encode_corpus(data)
        self._val_rr = torch.zeros((), dtype=torch.float64)

    @torch.no_grad()
    def encode_corpus(self, data: PRFData) -> None:
        """The corpus matrix: every passage encoded by the model as it is now (the initial model) with the task's
        pooling, in eval mode, without gradient (on a GPU when there is one: method.corpus_device); and
        eval/dense/*: the retrieval of the same DualEncoder's own query vectors on the eval split (the dense
        retriever before PRF)."""
        model, inner = self.model, data.inner
        want = getattr(self.method, "corpus_device", "auto")
        if want == "auto":
            want = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu"
        home = next(model.parameters()).device
        dual = DualEncoder(model.backbone, model.pooling, model.normalize).to(want)
        corpus = inner.encode_texts(dual, inner.passage_ids, side="passage")
        model.set_corpus(corpus)
        split = inner.eval_split
        if inner.queries_of(split)[0]:
            qids, _ = inner.queries_of(split)
            qvecs = inner.encode_texts(dual, [inner.query_ids(q) for q in qids], side="query")
            m = inner.metrics(data.run_of(qvecs, corpus.to(want), qids), split)  # = inner.search's run
            data.reference = {f"dense/{k}": m[k] for k in ("ndcg@10", "mrr@10", "recall@100") if k in m}
        model.to(home)
        log.info("lol_prf: corpus matrix %s encoded by the initial model (%s pooling%s) on %s", tuple(corpus.shape),
                 model.pooling, ", normalized" if model.normalize else "", want)

    def revision_losses(self, batch: dict) -> torch.Tensor:
        """(R,) L_pr of every revision in the batch."""
        q = self.model.encode(batch["input_ids"], batch["attention_mask"], side="query",
                              token_type_ids=batch.get("token_type_ids"))
        return reformulation_loss(self.model.corpus_scores(q), batch["positives"])

    def lm_loss(self, batch: dict, reduction: str = "mean") -> torch.Tensor:
        """The reformulation loss without the regulariser (mean L_pr)."""
        losses = self.revision_losses(batch)
        return losses if reduction == "none" else losses.sum() if reduction == "sum" else losses.mean()

    def batch_tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._val_rr = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        q = self.model.encode(batch["input_ids"], batch["attention_mask"], side="query",
                              token_type_ids=batch.get("token_type_ids"))
        scores = self.model.corpus_scores(q)
        self._val_sum += reformulation_loss(scores, batch["positives"]).double().sum()
        self._val_count += scores.shape[0]
        self._val_rr += reciprocal_ranks(scores, batch["positives"], 10).double().sum()

    def on_validation_epoch_end(self) -> None:
        count = self.trainer.strategy.reduce(self._val_count, reduce_op="sum")
        rr = self.trainer.strategy.reduce(self._val_rr, reduce_op="sum")
        super().on_validation_epoch_end()
        self.log("val/mrr@10", (rr / count.clamp_min(1)).float(), sync_dist=False)


def reciprocal_ranks(scores: torch.Tensor, positives: torch.Tensor, k: int = 10) -> torch.Tensor:
    """(R,) 1 / rank of the best-scored positive when it is in the top k, else 0 (ties: the positive first)."""
    valid = positives >= 0
    best = scores.gather(1, positives.clamp_min(0)).masked_fill(~valid, float("-inf")).amax(1, keepdim=True)
    rank = (scores > best).sum(1) + 1
    return torch.where(rank <= k, 1.0 / rank.to(scores.dtype), torch.zeros_like(best.squeeze(1)))


PRFData.module_class = LoLModule


def retriever_checkpoint(source: str) -> Path:
    """A .ckpt, or the newest checkpoint of a run directory (checkpoints/last.ckpt, else the last step file) or of
    the newest run under a run name's directory."""
    path = Path(source).expanduser()
    if path.is_file():
        return path
    runs = [path] if (path / "checkpoints").is_dir() else sorted(
        (d for d in path.glob("*") if (d / "checkpoints").is_dir()), key=lambda d: d.stat().st_mtime, reverse=True)
    for run in runs:
        ckdir = run / "checkpoints"
        found = [ckdir / "last.ckpt"] if (ckdir / "last.ckpt").exists() else sorted(ckdir.glob("step*.ckpt"))[-1:]
        if found:
            return found[0]
    raise ValueError(f"method.retriever_from: no checkpoint in {path} (a .ckpt, or a run directory with checkpoints/)")


# -- the method -------------------------------------------------------------------------------------------------
class LoLPRF(Method):
    """Dense PRF query reformulation: L = lambda_pr L_pr + lambda_cr L_cr over revision groups (module docstring)."""

    needs_task = frozenset({"retrieval"})
    module_class = LoLModule

    def __init__(self, name: str = "lol_prf", lr: float = 1e-5, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, warmup_steps: int = 0, min_lr_ratio: float = 0.0,
                 warmup_ratio: float | None = 0.1, lambda_pr: float = 1.0, lambda_cr: float = 1.0, n_compare: int = 1,
                 max_feedback: int = 5, shuffle_feedback: bool = True, max_seq_len: int = 512, max_q_len: int = 128,
                 max_p_len: int = 128, head_init: str = "identity", query_pooling: str = "cls",
                 eval_k: int | None = None, corpus_device: str = "auto", retriever_from: str | None = None):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        problems = [f"method.{k}: must be {want}, got {v}" for k, v, want, ok in (
            ("lambda_pr", lambda_pr, "> 0", lambda_pr > 0), ("lambda_cr", lambda_cr, ">= 0", lambda_cr >= 0),
            ("max_feedback", max_feedback, ">= 1", max_feedback >= 1),
            ("n_compare", n_compare, f"in [0, max_feedback = {max_feedback}]", 0 <= n_compare <= max_feedback),
            ("max_q_len", max_q_len, ">= 1", max_q_len >= 1), ("max_p_len", max_p_len, ">= 1", max_p_len >= 1),
            ("max_seq_len", max_seq_len, f"> max_q_len + 2 + {MIN_ROOM}", max_seq_len >= max_q_len + 2 + MIN_ROOM),
            ("warmup_ratio", warmup_ratio, "null or in [0, 1]", warmup_ratio is None or 0 <= warmup_ratio <= 1),
            ("head_init", head_init, f"one of {', '.join(HEAD_INITS)}", head_init in HEAD_INITS),
            ("query_pooling", query_pooling, f"one of {', '.join(QUERY_POOLING)}", query_pooling in QUERY_POOLING),
            ("eval_k", eval_k, "null or >= 10", eval_k is None or eval_k >= 10),
            ("corpus_device", corpus_device, "auto, cpu or cuda", corpus_device in ("auto", "cpu", "cuda"))) if not ok]
        if problems:
            raise ValueError("; ".join(problems))
        self.warmup_ratio = None if warmup_ratio is None else float(warmup_ratio)
        self.lambda_pr, self.lambda_cr, self.n_compare = float(lambda_pr), float(lambda_cr), int(n_compare)
        self.max_feedback, self.shuffle_feedback = int(max_feedback), bool(shuffle_feedback)
        self.max_seq_len, self.max_q_len, self.max_p_len = int(max_seq_len), int(max_q_len), int(max_p_len)
        self.head_init, self.query_pooling, self.corpus_device = head_init, query_pooling, corpus_device
        self.retriever_from = None if retriever_from in (None, "") else str(retriever_from)
        self.eval_k = None if eval_k is None else int(eval_k)

    def prepare_data(self, data):
        if not all(hasattr(data, k) for k in ("corpus", "first_pass", "encode", "queries_of", "pooling")):
            raise ValueError(f"lol_prf: needs the retrieval task's data (dataset=stdlib-retrieval, ...), "
                             f"got {type(data).__name__}")
        return PRFData(data, self.max_feedback, self.n_compare, self.shuffle_feedback, self.max_seq_len,
                       self.max_q_len, self.max_p_len, self.eval_k)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """method.retriever_from: the encoder of a dense-retriever run of this task (method=adamw's DualEncoder, its
        run directory or .ckpt) starts the reformulator and encodes the corpus, as the paper starts from ANCE."""
        if self.retriever_from is None or isinstance(model, PRFReformulator):
            return model
        path = retriever_checkpoint(self.retriever_from)
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        state = {k.removeprefix("model.backbone."): v for k, v in state.items() if k.startswith("model.backbone.")}
        if not state:
            raise ValueError(f"method.retriever_from: {path} holds no DualEncoder weights (model.backbone.*)")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"method.retriever_from: {path} does not fit the model (missing {list(missing)[:3]}, "
                             f"unexpected {list(unexpected)[:3]}): the same model= and dataset= as that run")
        log.info("lol_prf: the initial model is the encoder of %s", path)
        return model

    def loss(self, module, batch: dict) -> torch.Tensor:
        losses = module.revision_losses(batch)
        total, parts = lol_loss(losses, batch["group"], batch["feedback"], self.lambda_pr, self.lambda_cr,
                                self.n_compare)
        if module._logging_step():
            for k, v in parts.items():
                module.log(f"train/{k}", v, on_step=True, on_epoch=False)
        return total

    def lr_lambda(self, total_steps: int):
        """transformers' linear schedule: 0 -> 1 over the warm-up (ceil(warmup_ratio x steps), else warmup_steps),
        then linearly to min_lr_ratio (0: the code's) at the last step."""
        warm = math.ceil(self.warmup_ratio * total_steps) if self.warmup_ratio is not None else self.warmup_steps
        floor = self.min_lr_ratio

        def f(step: int) -> float:
            if step < warm:
                return step / max(1, warm)
            return floor + (1 - floor) * max(0.0, (total_steps - step) / max(1, total_steps - warm))

        return f
