"""Retrieval-based Disentangled Representation Learning with Natural Language Supervision (VDR, Vocabulary
Disentangled Retrieval; Zhou et al., ICLR 2024, arXiv:2212.07699), its semi-parametric loss (SVDR).

Official code: github.com/jzhoubu/VDR (src/ir/encoder/vdr.py, src/ir/training/loss_utils.py,
src/ir/utils/sparsify_utils.py, src/ir/biencoder/biencoder.py, conf/biencoder/vdr.yaml,
conf/train/svdr_nq.yaml, train_ir.py, src/ir/training/model_utils.py) and its successor
github.com/jzhoubu/vsearch (the same encoder and loss; src/ir/retriever/{retriever,index}.py). Every rule
below is read from that code; the paper body was not read.

Representation (VDREncoder.forward): a text x of tokens t = 1..L with last hidden states h_t of the encoder, E
the encoder's own word-embedding matrix (V x H, tied: the projection trains the input embeddings), LN a new
LayerNorm over H (torch's defaults, not the MLM head's transform), elu1p(z) = ELU(z) + 1 > 0:

    v(x)_j = max_{t real} elu1p( LN(h_t) · E_j )   for j >= skip_ids,     v(x)_j = 0 for j < skip_ids     (V,)

skip_ids = 999 on BERT's uncased WordPiece (shift_vocab_num: ids 0-998 are [PAD], [unused*], [UNK], [CLS],
[SEP], [MASK]); `skip_ids: auto` counts the leading ids of the tokenizer that are special tokens or [unused*]
placeholders: 999 for model=minilm's WordPiece (BERT's), 5 for the WordPiece a task trains ([PAD] [UNK] [CLS]
[SEP] [MASK] first). Views of v (sparsify_utils):

    bow(x)_j = 1 if token j occurs in x (j >= skip_ids, not a special token), else 0    (binary bag of tokens)
    topk(x)  = v(x) ⊙ (top-k mask of v(x) ∪ bow mask of x)                    at most k + |bow(x)| nonzeros

Loss (loss_utils.compute_vdr_loss with semi=True, sym_loss=True: the SVDR configs svdr_nq / svdr_hlp) over the
global batch (every rank's queries Q and passages P = positives then every query's hard negatives):

    sym(a, b) = ½ [ CE_i( a(q_i) · b(P)ᵀ / τ ) + CE_j( b(p_j) · a(Q)ᵀ / τ ) ]      (q_i's positive is p_i; the
               second term for the positives only: each positive passage against all queries)
    L = ¼ [ sym(topk, dense) + sym(dense, topk) + sym(bow, dense) + sym(dense, bow) ]    τ = 1 (raw scores)

`semi: false` is the plain VDR config (vdr_nq): ½ [ sym(topk, dense) + sym(bow, dense) ]. `symmetric: false`
keeps the query-side CE only (BiEncoderNllLoss). Every query sees every passage and every hard negative of the
global batch (DPR's layout), not only its own hard negatives.

Retrieval (biencoder.encode_queries / encode_corpus, the BEIR interface the paper evaluates with): both sides
are embedded with `topk = 768` and `activate_lexical = False`: v ⊙ top-k mask, without the BoW union.
`encode(side=...)` returns exactly that (what the task indexes for side "passage" and queries with for side
"query"), and the task searches the passages through the inverted index (methods/retrieval/index.py).
`passage_view: bow` indexes the binary bag of tokens of each passage instead (vsearch's BoTIndex: SVDR's
non-parametric index, queried with the same top-k queries).

Defaults from conf/train/svdr_nq.yaml and conf/biencoder/vdr.yaml: AdamW lr 2e-5, eps 1e-8, betas (0.9,
0.999), no weight decay, linear warmup then linear decay to 0 (model_utils.get_schedule_linear), max_grad_norm
2.0, batch 32 per GPU, 1 hard negative, topk 768, max-pooling, no normalisation, query/passage max length
128/256. They are for a pretrained BERT. A tiny random encoder (model=bert-tiny) needs method.lr=1e-3 and
method.temperature=10: at τ = 1 its nearly constant v (every coordinate ≈ elu1p(0) = 1 at initialisation)
makes logits in the thousands, and on stdlib-retrieval it collapsed onto the same few tokens for every text
(test nDCG@10 0.01; τ = 10: 0.25).

Deviations from the official code (also in configs/method/vdr.yaml):
- One shared encoder (DualEncoder) for queries and passages; the official BiEncoder has two (shared_encoder:
  False), each with its own BERT and LayerNorm.
- The max-pool runs over real tokens only (attention_mask 1); the official `vocab_embs.max(1)` also pools the
  padded positions, so a text's vector there depends on the batch's padding.
- v keeps all V coordinates, with ids < skip_ids exactly 0; the official slices them off (V - 999
  coordinates). The scores, the views and the loss are the same; token ids are the tokenizer's own here (no
  shift to undo).
- The BoW excludes the tokenizer's special tokens even at ids >= skip_ids (none on BERT's vocabulary or a
  task's trained WordPiece) and the padding (attention_mask 0); the official scatters every input id (pad 0
  included), which only its slice at 999 removes.
- Under DDP each rank computes the loss of its own queries against the gathered passages (and of its own
  positives against the gathered queries), through methods.retrieval.losses.gather; the official gathers
  everything and every rank computes the whole global loss. With DDP's gradient averaging both give the
  gradient of the global loss.
- A passage of the global batch that is the query's own positive (the same corpus row: two queries of one
  passage in a batch, or one query's mined negative that is another's positive) is masked out of its negatives
  (and the query out of the passage's), as methods.retrieval.losses.info_nce does; the official does not mask.
- The symmetric loss averages its two directions (VDR's SymmetryBiEncoderNllLoss: (loss1 + loss2) / 2);
  vsearch's later symmetry_biencoder_nll_loss sums them (optionally rescaled): twice the loss, the same
  minimiser.
- Gradient clipping is the trainer's (trainer.grad_clip, 1.0 by default; the official max_grad_norm is 2.0:
  set trainer.grad_clip=2.0 to match); warmup is counted in optimizer steps (warmup_steps), the official's in
  epochs (1 epoch); the official trains in fp16 with a GradScaler, here hardware= decides the precision.
- The task's encoder settings (dataset.encoder.pooling / normalize) do not apply: v is max-pooled and not
  normalised, as in the official configs; a memory bank (dataset.contrastive.bank_size > 0) is refused.
- Not implemented: the retrieved negatives (ret_negatives, 0 in the configs), the contrastive-mask option
  (cts_mask, off in the configs), mean/top-k mean pooling (pooling: max in the configs), the cross-modal image
  encoder.
- `evaluate` (ours): the inverted index's size over the first stats_passages passages (eval/index_passages,
  eval/index_nnz, eval/index_mb, beside the dense matrix's eval/dense_mb), the mean nonzeros per passage and
  per query, the search latency per query of the inverted index and of dense scoring of the same vectors
  measured in the same call (eval/query_ms, eval/dense_query_ms and their ratio eval/index_speedup), the share
  of each passage's top-10 tokens that occur in it (eval/top10_in_input), and the top tokens of the first few
  passages (logged; `figures` draws them as a table: figures/top_tokens.png, with a .txt). The task's own search
  (the eval/ndcg@10 of the run) encodes the whole corpus sparse, batch by batch (RetrievalData.encode_sparse: memory
  in proportion to the nonzeros: ~6.4 KB a passage at 768 + BoW nonzeros, float32 values and int32 columns; the
  index holds them again in float64), and searches the inverted index in chunks of queries; only these statistics hold a dense (stats_passages, V) matrix.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import Method
from methods.batching import pad_right
from methods.retrieval.encoder import SIDES, DualEncoder
from methods.retrieval.losses import gather

log = logging.getLogger(__name__)

BERT_SKIP_IDS = 999  # bert-base-uncased: [PAD], [unused0-98], [UNK], [CLS], [SEP], [MASK], [unused99-993]
PASSAGE_VIEWS = ("topk", "bow")
VIEWS = ", ".join(PASSAGE_VIEWS)
_UNUSED = re.compile(r"^\[unused\d+\]$")


def elu1p(x: torch.Tensor) -> torch.Tensor:
    """ELU(x) + 1: positive, and increasing (so it commutes with the max-pool)."""
    return F.elu(x) + 1


def reserved_prefix(tokenizer) -> int:
    """The number of leading vocabulary ids that are special tokens or [unused*] placeholders: 999 on BERT's
    uncased WordPiece (the official shift_vocab_num), 5 on a WordPiece trained with [PAD] [UNK] [CLS] [SEP]
    [MASK] first."""
    special = set(getattr(tokenizer, "all_special_ids", ()) or ())
    n = 0
    for token in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))):
        if n not in special and not _UNUSED.match(str(token)):
            break
        n += 1
    return n


def topk_mask(v: torch.Tensor, k: int) -> torch.Tensor:
    """(B, V) bool: the k largest entries of each row (sparsify_utils.build_topk_mask); k >= V selects all."""
    k = min(int(k), v.shape[-1])
    mask = torch.zeros_like(v, dtype=torch.bool)
    return mask.scatter_(-1, v.topk(k, dim=-1).indices, True) if k > 0 else mask


def sparse_view(v: torch.Tensor, k: int, bow: torch.Tensor | None = None) -> torch.Tensor:
    """v ⊙ (top-k mask ∪ bow mask): the k largest entries, and every input token's entry whatever its rank."""
    mask = topk_mask(v, k)
    if bow is not None:
        mask = mask | (bow > 0)
    return v * mask


def bag_of_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """(B, V) float: 1 where token j occurs among the real tokens of the row and keep[j], else 0."""
    out = torch.zeros(input_ids.shape[0], keep.shape[0], device=input_ids.device)
    out.scatter_add_(1, input_ids, attention_mask.to(out.dtype))
    return ((out > 0) & keep).to(out.dtype)


def symmetric_ce(a_local: torch.Tensor, a_all: torch.Tensor, b_local: torch.Tensor, b_all: torch.Tensor,
                 temperature: float = 1.0, symmetric: bool = True, same_qp: torch.Tensor | None = None,
                 same_pq: torch.Tensor | None = None) -> torch.Tensor:
    """sym(a, b): query view a, passage view b. a_local (B, V) this rank's queries, a_all (B_g, V) every
    rank's (this rank's first); b_local (B, V) this rank's positives, b_all (B_g + N_g, V) every rank's
    positives (this rank's first), then every hard negative. Query i's positive is passage i. same_qp (B, B_g
    + N_g) and same_pq (B, B_g): True where a negative is the same corpus passage as the positive (masked out
    of the softmax)."""
    target = torch.arange(a_local.shape[0], device=a_local.device)
    logits = (a_local.float() @ b_all.float().T) / temperature
    if same_qp is not None:
        logits = logits.masked_fill(same_qp, float("-inf"))
    q_to_p = F.cross_entropy(logits, target)
    if not symmetric:
        return q_to_p
    logits = (b_local.float() @ a_all.float().T) / temperature
    if same_pq is not None:
        logits = logits.masked_fill(same_pq, float("-inf"))
    return (q_to_p + F.cross_entropy(logits, target)) / 2


def duplicate_masks(p_rows: torch.Tensor, n_rows: torch.Tensor | None, gather_fn=gather):
    """(same_qp, same_pq) of symmetric_ce from the corpus rows of this rank's positives (B,) and hard
    negatives (B*H,): a passage (positive or hard negative) of the global batch that is query i's positive
    passage is not its negative, and a query of the global batch whose positive is passage j is not passage
    j's negative (the diagonal excepted)."""
    b = p_rows.shape[0]
    q_rows_all = gather_fn(p_rows)
    p_rows_all = q_rows_all
    if n_rows is not None and n_rows.numel():
        p_rows_all = torch.cat([q_rows_all, gather_fn(n_rows)])
    diag = torch.arange(b, device=p_rows.device)
    same_qp = p_rows[:, None] == p_rows_all[None, :]
    same_qp[diag, diag] = False
    same_pq = p_rows[:, None] == q_rows_all[None, :]
    same_pq[diag, diag] = False
    return same_qp, same_pq


def vdr_loss(q: torch.Tensor, q_bow: torch.Tensor, p: torch.Tensor, p_bow: torch.Tensor, k: int,
             n: torch.Tensor | None = None, n_bow: torch.Tensor | None = None, temperature: float = 1.0,
             semi: bool = True, symmetric: bool = True, p_rows: torch.Tensor | None = None,
             n_rows: torch.Tensor | None = None, gather_fn=gather) -> tuple[torch.Tensor, dict]:
    """The (S)VDR loss (module docstring) of this rank's dense query vectors q (B, V), positives p (B, V),
    hard negatives n (B*H, V) or None, and their bags of tokens; (loss, {term name: value}). p_rows (B,),
    n_rows (B*H,): the passages' corpus rows, to keep a query's own positive passage out of its negatives.

    Top-k views are taken per vector (before the all-gather, as the official fetch_global_vectors); gather_fn
    is methods.retrieval.losses.gather (every rank's rows, this rank's first, with gradient; identity on one
    process).
    """
    has_n = n is not None and n.numel() > 0
    if not has_n:
        n = n_bow = None
    views = {"dense": (q, p, n),
             "topk": (sparse_view(q, k, q_bow), sparse_view(p, k, p_bow),
                      None if n is None else sparse_view(n, k, n_bow)),
             "bow": (q_bow, p_bow, n_bow)}
    same_qp = same_pq = None
    if p_rows is not None:
        same_qp, same_pq = duplicate_masks(p_rows, n_rows if has_n else None, gather_fn)

    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def globals_of(view: str) -> tuple[torch.Tensor, torch.Tensor]:  # every rank's (queries, passages)
        if view not in cache:
            qv, pv, nv = views[view]
            p_all = gather_fn(pv) if nv is None else torch.cat([gather_fn(pv), gather_fn(nv)], 0)
            cache[view] = gather_fn(qv), p_all
        return cache[view]

    pairs = [("topk", "dense"), ("dense", "topk"), ("bow", "dense"), ("dense", "bow")] if semi else \
        [("topk", "dense"), ("bow", "dense")]
    terms = {f"{qv}_{pv}": symmetric_ce(views[qv][0], globals_of(qv)[0], views[pv][1], globals_of(pv)[1],
                                        temperature, symmetric, same_qp, same_pq) for qv, pv in pairs}
    return torch.stack(list(terms.values())).mean(), terms


class VDREncoder(DualEncoder):
    """v(x) in vocabulary space (module docstring): `vocab` (dense v, the training view), `bow`, and `encode`,
    the retrieval view (top-k, or the bag of tokens for passages with passage_view="bow")."""

    sparse = True

    def __init__(self, backbone: nn.Module, skip_ids: int = BERT_SKIP_IDS, topk: int = 768,
                 eval_topk: int | None = None, eval_bow_union: bool = False, passage_view: str = "topk",
                 special_ids: tuple[int, ...] = ()):
        super().__init__(backbone, pooling="cls", normalize=False)  # pooling unused: VDR max-pools v itself
        embeddings = getattr(self.encoder, "get_input_embeddings", lambda: None)()
        if not isinstance(getattr(embeddings, "weight", None), torch.Tensor):
            raise ValueError(f"vdr: the backbone {type(backbone).__name__} has no word embeddings "
                             "(get_input_embeddings()): VDR scores the vocabulary with them")
        vocab, hidden = embeddings.weight.shape
        problems = [f"method.{k}: must be {want}, got {v}" for k, v, want, ok in (
            ("skip_ids", skip_ids, f"in [0, {vocab}) (the vocabulary's size)", 0 <= int(skip_ids) < vocab),
            ("topk", topk, ">= 1", int(topk) >= 1),
            ("eval_topk", eval_topk, "null or >= 1", eval_topk is None or int(eval_topk) >= 1),
            ("passage_view", passage_view, f"one of {VIEWS}", passage_view in PASSAGE_VIEWS))
            if not ok]
        if problems:
            raise ValueError("; ".join(problems))
        self.skip_ids, self.topk = int(skip_ids), int(topk)
        self.eval_topk = self.topk if eval_topk is None else int(eval_topk)
        self.eval_bow_union, self.passage_view = bool(eval_bow_union), passage_view
        self.ln = nn.LayerNorm(hidden)  # the official `self.ln`: a new LayerNorm (weight 1, bias 0, eps 1e-5)
        keep = torch.ones(vocab, dtype=torch.bool)
        keep[: self.skip_ids] = False
        keep[[i for i in special_ids if 0 <= i < vocab]] = False
        self.register_buffer("keep", keep, persistent=False)  # the coordinates v may use (and the BoW counts)

    @property
    def word_embeddings(self) -> torch.Tensor:
        return self.encoder.get_input_embeddings().weight

    @property
    def dim(self) -> int:
        return int(self.keep.shape[0])

    def vocab(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, V) dense v(x) ≥ 0: max over real tokens of elu1p(LN(h_t)·Eᵀ), 0 at ids < skip_ids."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        h = self.ln(self.hidden(input_ids, attention_mask))
        scores = h @ self.word_embeddings.to(h.dtype).T  # (B, L, V)
        # max before elu1p (increasing: the same value and gradient), over real tokens only; in place: the
        # matmul's backward does not need its output, and max's keeps only the argmax indices
        scores.masked_fill_(~attention_mask.bool().unsqueeze(-1), float("-inf"))
        v = elu1p(scores.max(1).values)
        return v.masked_fill(~self.keep, 0.0)

    def bow(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, V) binary bag of the row's real tokens (ids < skip_ids and special tokens excluded)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return bag_of_tokens(input_ids, attention_mask, self.keep)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               side: str = "passage") -> torch.Tensor:
        """The retrieval view: v ⊙ top-k mask (∪ BoW mask with eval_bow_union); passages with
        passage_view="bow": their bag of tokens."""
        if side not in SIDES:
            raise ValueError(f"side: {side!r}; choose one of: {', '.join(SIDES)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        bow = self.bow(input_ids, attention_mask)
        if side == "passage" and self.passage_view == "bow":
            return bow
        v = self.vocab(input_ids, attention_mask)
        return sparse_view(v, self.eval_topk, bow if self.eval_bow_union else None)


class VDR(Method):
    """The semi-parametric VDR loss on a vocabulary-space bi-encoder (module docstring)."""

    needs_task = frozenset({"retrieval"})
    supports_fsdp = False  # the projection reads the whole word-embedding matrix; only DDP is tested

    def __init__(self, name: str = "vdr", lr: float = 2e-5, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, warmup_steps: int = 0,
                 min_lr_ratio: float = 0.0,
                 skip_ids: int | str = "auto", topk: int = 768, semi: bool = True, symmetric: bool = True,
                 temperature: float = 1.0, eval_topk: int | None = None, eval_bow_union: bool = False,
                 passage_view: str = "topk", top_tokens: int = 10, top_token_passages: int = 4,
                 stats_passages: int | None = 10000):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        auto = isinstance(skip_ids, str)
        problems = [f"method.{k}: must be {want}, got {v}" for k, v, want, ok in (
            ("skip_ids", skip_ids, "auto or a count >= 0", skip_ids == "auto" if auto else skip_ids >= 0),
            ("topk", topk, ">= 1", topk >= 1), ("temperature", temperature, "positive", temperature > 0),
            ("eval_topk", eval_topk, "null or >= 1", eval_topk is None or eval_topk >= 1),
            ("passage_view", passage_view, f"one of {VIEWS}", passage_view in PASSAGE_VIEWS),
            ("top_tokens", top_tokens, ">= 1", top_tokens >= 1),
            ("top_token_passages", top_token_passages, ">= 0", top_token_passages >= 0),
            ("stats_passages", stats_passages, "null or >= 1", stats_passages is None or stats_passages >= 1))
            if not ok]
        if problems:
            raise ValueError("; ".join(problems))
        self.skip_ids = skip_ids if auto else int(skip_ids)
        self.topk, self.semi, self.symmetric = int(topk), bool(semi), bool(symmetric)
        self.temperature = float(temperature)
        self.eval_topk, self.eval_bow_union, self.passage_view = eval_topk, bool(eval_bow_union), passage_view
        self.top_tokens, self.top_token_passages = int(top_tokens), int(top_token_passages)
        self.stats_passages = None if stats_passages is None else int(stats_passages)
        self._special: tuple[int, ...] = ()
        self._reserved: int | None = None
        self._top_table: list[tuple[str, list[tuple[str, float]]]] = []

    # -- stages ------------------------------------------------------------------------------
    def prepare_data(self, data):
        """Reads the tokenizer's special ids and reserved prefix (for skip_ids: auto); the data is
        unchanged."""
        if int(getattr(data, "bank_size", 0) or 0) > 0:
            raise ValueError(f"method=vdr: dataset.contrastive.bank_size={data.bank_size}; VDR's loss has no "
                             "memory bank (set it to 0)")
        tok = data.tokenizer
        self._special = tuple(int(i) for i in (getattr(tok, "all_special_ids", ()) or ()))
        self._reserved = reserved_prefix(tok)
        return data

    def resolved_skip_ids(self) -> int:
        if self.skip_ids != "auto":
            return int(self.skip_ids)
        if self._reserved is None:
            raise ValueError("method.skip_ids: auto needs the tokenizer (read by prepare_data); set a number")
        return self._reserved

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if isinstance(model, VDREncoder):
            return model
        if isinstance(model, DualEncoder):
            model = model.backbone
        skip = self.resolved_skip_ids()
        log.info("vdr: ids < %d excluded from the vocabulary space (skip_ids=%s)", skip, self.skip_ids)
        return VDREncoder(model, skip_ids=skip, topk=self.topk, eval_topk=self.eval_topk,
                          eval_bow_union=self.eval_bow_union, passage_view=self.passage_view,
                          special_ids=self._special)

    # -- training ----------------------------------------------------------------------------
    def lr_lambda(self, total_steps: int):
        """The official get_schedule_linear: step/warmup while warming up, then linear decay to 0 (floor
        1e-7)."""
        warm = self.warmup_steps

        def f(step: int) -> float:
            if step < warm:
                return step / max(1, warm)
            return max(1e-7, (total_steps - step) / max(1, total_steps - warm))

        return f

    def loss(self, module, batch: dict) -> torch.Tensor:
        model = module.model
        if not isinstance(model, VDREncoder):
            raise TypeError(f"vdr: the module's model is a {type(model).__name__}, not a VDREncoder")

        def side(prefix: str):
            ids, mask = batch[f"{prefix}_input_ids"], batch[f"{prefix}_attention_mask"]
            return model.vocab(ids, mask), model.bow(ids, mask)

        (q, q_bow), (p, p_bow) = side("q"), side("p")
        n = n_bow = None
        if batch.get("n_input_ids") is not None and batch["n_input_ids"].numel():
            n, n_bow = side("n")
        n_rows = None if n is None else batch["n_rows"].reshape(-1)  # query i's: rows i*H .. i*H + H - 1
        loss, terms = vdr_loss(q, q_bow, p, p_bow, self.topk, n, n_bow, self.temperature, self.semi,
                               self.symmetric, batch.get("p_rows"), n_rows)
        if getattr(module, "_trainer", None) is not None and module.training and module._logging_step():
            for name, value in terms.items():
                module.log(f"train/vdr_{name}", value.detach(), on_step=True, on_epoch=False)
        return loss

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model: nn.Module, data) -> dict[str, float]:
        """Index size, search latency of the inverted index vs dense scoring, and the top tokens of a few
        passages. The index statistics are of the first `stats_passages` passages (eval/index_passages; the
        task's own search covers the whole corpus)."""
        from methods.retrieval.index import InvertedIndex, dense_search

        if not isinstance(model, VDREncoder):
            return {}
        rows = data.passage_ids if self.stats_passages is None else data.passage_ids[: self.stats_passages]
        passages = data.encode_texts(model, rows, "passage").float().cpu()
        qids, _ = data.queries_of(data.eval_split)
        queries = data.encode_texts(model, [data.query_ids(q) for q in qids], "query").float().cpu()
        index = InvertedIndex(passages)
        k = min(100, passages.shape[0])
        out = {"index_passages": float(passages.shape[0]), "index_nnz": float(index.nnz),
               "index_mb": index.bytes() / 2 ** 20, "dense_mb": passages.numel() * 4 / 2 ** 20,
               "passage_nnz": float((passages != 0).sum(1).float().mean()),
               "query_nnz": float((queries != 0).sum(1).float().mean()) if len(queries) else 0.0}
        if len(queries):
            t0 = time.perf_counter()
            index.search(queries, k)
            t1 = time.perf_counter()
            dense_search(queries, passages, k)
            t2 = time.perf_counter()
            out["query_ms"] = 1e3 * (t1 - t0) / len(queries)
            out["dense_query_ms"] = 1e3 * (t2 - t1) / len(queries)
            out["index_speedup"] = out["dense_query_ms"] / max(out["query_ms"], 1e-9)
        out["top10_in_input"] = self._top_in_input(model, data)
        self._top_table = self.top_token_table(model, data)
        for text, tokens in self._top_table:
            log.info("vdr top tokens of %r: %s", text, ", ".join(f"{t} {w:.2f}" for t, w in tokens))
        return out

    def _top_in_input(self, model: VDREncoder, data, limit: int = 256) -> float:
        """Mean share of a passage's 10 largest coordinates of v that are its own tokens (the first
        `limit`)."""
        ids = data.passage_ids[:limit]
        if not ids:
            return 0.0
        v, bow = self._dense_and_bow(model, ids, data)
        top = v.topk(min(10, v.shape[1]), dim=1).indices
        return float(bow.gather(1, top).mean())

    def _dense_and_bow(self, model: VDREncoder, ids: list[list[int]], data, batch_size: int = 64):
        device = next(model.parameters()).device
        pad = int(getattr(data.tokenizer, "pad_token_id", 0) or 0)
        vs, bows = [], []
        was_training = model.training
        model.eval()
        for start in range(0, len(ids), batch_size):
            rows = ids[start:start + batch_size]
            x, mask = (t.to(device) for t in pad_right(rows, pad))
            vs.append(model.vocab(x, mask).float().cpu())
            bows.append(model.bow(x, mask).cpu())
        model.train(was_training)
        return torch.cat(vs), torch.cat(bows)

    def top_token_table(self, model: VDREncoder, data) -> list[tuple[str, list[tuple[str, float]]]]:
        """(passage text, [(token, weight)] of its `top_tokens` largest coordinates of v) for the first
        passages (the official `disentangle`)."""
        n = min(self.top_token_passages, len(data.passage_ids))
        if n == 0:
            return []
        v, _ = self._dense_and_bow(model, data.passage_ids[:n], data)
        top = v.topk(min(self.top_tokens, v.shape[1]), dim=1)
        table = []
        for i in range(n):
            tokens = data.tokenizer.convert_ids_to_tokens(top.indices[i].tolist())
            table.append((data.corpus_texts[i], list(zip(tokens, top.values[i].tolist()))))
        return table

    def figures(self, model: nn.Module, data, directory) -> dict[str, Path]:
        """The top tokens of the first passages as a table (top_tokens.png, and top_tokens.txt beside it)."""
        if not isinstance(model, VDREncoder):
            return {}
        table = self._top_table or self.top_token_table(model, data)
        if not table:
            return {}
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        lines = [f"{text[:120]!r}\n    " + ", ".join(f"{t} {w:.3f}" for t, w in tokens)
                 for text, tokens in table]
        (directory / "top_tokens.txt").write_text("\n".join(lines) + "\n")
        return {"top_tokens": top_tokens_figure(table, directory / "top_tokens.png")}


def top_tokens_figure(table: list[tuple[str, list[tuple[str, float]]]], path: Path) -> Path:
    """A PNG table: one row per passage (its first words), its top tokens with their weights as the cells."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = max(len(tokens) for _, tokens in table)
    cells = [[f"{t}\n{w:.2f}" for t, w in tokens] + [""] * (width - len(tokens)) for _, tokens in table]
    rows = [(text[:40] + "…") if len(text) > 40 else text for text, _ in table]
    fig = Figure(figsize=(2.0 + 1.1 * width, 0.9 + 0.6 * len(table)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.axis("off")
    t = ax.table(cellText=cells, rowLabels=rows, colLabels=[f"#{j + 1}" for j in range(width)], loc="center",
                 cellLoc="center")
    t.auto_set_font_size(False)
    t.set_fontsize(7)
    t.scale(1.0, 2.0)
    ax.set_title("VDR: the largest coordinates of v(passage)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path
