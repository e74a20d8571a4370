"""Exact dense search and the inverted index: the same rankings as brute-force scoring, and BM25 through bm25s."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from methods.retrieval.bm25 import BM25, mine_hard_negatives
from methods.retrieval.index import InvertedIndex, dense_search, to_run


def test_dense_search_is_exact_in_any_chunking():
    g = torch.Generator().manual_seed(0)
    q, p = torch.randn(13, 8, generator=g), torch.randn(301, 8, generator=g)
    full = q @ p.T
    for max_scores in (1, 301, 3000, 10 ** 8):  # one query at a time .. all at once
        s, i = dense_search(q, p, k=7, max_scores=max_scores)
        ref_s, ref_i = full.topk(7, dim=1)
        assert torch.equal(i, ref_i) and torch.allclose(s, ref_s)


def _sparse(rng, n, v, density):
    x = rng.random((n, v)) * (rng.random((n, v)) < density)
    return x.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_inverted_index_ranks_as_dense_scoring(seed):
    rng = np.random.default_rng(seed)
    p, q = _sparse(rng, 400, 500, 0.02), _sparse(rng, 30, 500, 0.05)
    p[5] = p[9]  # duplicate passages: equal scores, ties by row ascending in both
    index = InvertedIndex(torch.from_numpy(p))
    assert index.nnz == int((p != 0).sum())
    s, rows = index.search(torch.from_numpy(q), k=20)
    dense = q.astype(np.float64) @ p.astype(np.float64).T
    ref_rows = np.argsort(-dense, axis=1, kind="stable")[:, :20]
    assert np.array_equal(rows, ref_rows)
    assert np.allclose(s, np.take_along_axis(dense, ref_rows, 1), rtol=0, atol=1e-12)
    d_s, d_rows = dense_search(torch.from_numpy(q).double(), torch.from_numpy(p).double(), k=20)
    assert np.allclose(d_s.numpy(), s, atol=1e-5)  # dense_search scores in float32


def test_inverted_index_takes_sparse_matrices_and_any_query_chunking():
    """scipy CSR passages and queries (RetrievalData.encode_sparse) rank as the dense arrays do; the queries' chunks
    (max_scores) change nothing."""
    from scipy import sparse

    rng = np.random.default_rng(2)
    p, q = _sparse(rng, 300, 400, 0.03), _sparse(rng, 17, 400, 0.05)
    ref_s, ref_rows = InvertedIndex(torch.from_numpy(p)).search(torch.from_numpy(q), k=9)
    index = InvertedIndex(sparse.csr_matrix(p))
    for max_scores in (1, 300, 301 * 5, 10 ** 8):
        s, rows = index.search(sparse.csr_matrix(q), k=9, max_scores=max_scores)
        assert np.array_equal(rows, ref_rows) and np.array_equal(s, ref_s), max_scores
    s, rows = index.search(sparse.csr_matrix((0, 400), dtype=np.float32), k=9)
    assert s.shape == rows.shape == (0, 9)


def test_posting_lists_hold_the_nonzeros():
    p = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 3.0], [0.0, 4.0, 0.0]])
    index = InvertedIndex(p)
    rows, w = index.posting(1)
    assert rows.tolist() == [0, 2] and w.tolist() == [2.0, 4.0]
    assert index.posting(0)[0].tolist() == [1]
    assert index.bytes() == index.nnz * 8 + 8 * 4


def test_to_run():
    run = to_run(["q1"], ["a", "b", "c"], np.array([[3.0, 1.0]]), np.array([[2, 0]]))
    assert run == {"q1": {"c": 3.0, "a": 1.0}}


def test_bm25_ranks_the_matching_passage_first_and_mines_negatives():
    texts = ["the quick brown fox jumps", "a lazy dog sleeps all day", "quick thinking saves the fox",
             "brown bears eat honey", "nothing in common here"]
    bm = BM25(texts)
    scores, rows = bm.search(["quick fox", "zebra"], k=3)
    assert rows[0, 0] in (0, 2) and set(rows[0, :2]) == {0, 2}
    assert (rows[1] == -1).all() and (scores[1] == 0).all()  # no word in common: no results
    neg = mine_hard_negatives(bm, ["quick brown fox"], [{0}], n=2)
    assert 0 not in neg[0] and neg[0][0] in (2, 3) and len(neg[0]) == 2
    assert mine_hard_negatives(bm, ["quick brown fox"], [{0}], n=1, skip=1)[0] == neg[0][1:2]
