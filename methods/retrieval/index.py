"""Search: exact dense search over passage vectors, and an inverted index for sparse (vocabulary-space) ones.

    dense_search(Q, P, k)       scores = Q Pᵀ in chunks of passages, the top k per query (exact, no approximation)
    InvertedIndex(P).search(Q)  P stored as postings: for each term t the passages with P[:, t] != 0 and their
                                weights (a CSR matrix of Pᵀ); a query visits only the postings of its nonzero terms:
                                score(q, p) = Σ_{t: q_t != 0} q_t P[p, t] — the same number as the dense dot product

Both rank ties by passage row ascending, so that the inverted index ranks exactly as dense scoring of the same
vectors (tests/methods/test_retrieval_index.py). Scores of the inverted index are accumulated in float64.
"""

from __future__ import annotations

import numpy as np
import torch

from methods.retrieval.metrics import Run


def _topk_rows(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k largest scores and their columns, ties by column ascending (a stable sort)."""
    k = min(k, scores.shape[1])
    cols = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, cols, axis=1), cols


def dense_search(queries: torch.Tensor, passages: torch.Tensor, k: int,
                 max_scores: int = 2 ** 24) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (Q, k), passage rows (Q, k)) of the exact inner-product search, ties by row ascending; queries are
    scored in chunks of at most `max_scores` query-passage scores (64 MB of float32)."""
    p = passages.float()
    step = max(1, int(max_scores) // max(1, p.shape[0]))
    out_s, out_i = [], []
    for start in range(0, queries.shape[0], step):
        s, i = _topk_rows((queries[start:start + step].float() @ p.T).cpu().numpy(), int(k))
        out_s.append(torch.from_numpy(s))
        out_i.append(torch.from_numpy(i))
    if not out_s:
        return torch.zeros((0, min(int(k), p.shape[0]))), torch.zeros((0, min(int(k), p.shape[0])), dtype=torch.long)
    return torch.cat(out_s), torch.cat(out_i)


class InvertedIndex:
    """Sparse passage vectors as postings lists (see the module docstring)."""

    def __init__(self, passages):
        """`passages`: (N, V) vectors, a tensor, an array or a scipy sparse matrix (RetrievalData.encode_sparse:
        memory in proportion to the nonzeros)."""
        from scipy import sparse

        m = passages.detach().cpu().numpy() if isinstance(passages, torch.Tensor) else passages
        m = sparse.csr_matrix(m, dtype=np.float64)
        m.eliminate_zeros()
        self.num_passages, self.vocab = m.shape
        self.postings = m.T.tocsr()  # row t: the passages where term t is nonzero, with its weights
        self.postings.sort_indices()

    @property
    def nnz(self) -> int:
        return int(self.postings.nnz)

    def bytes(self) -> int:
        """The postings' size: weights (float32 as stored on disk), passage ids (int32) and term offsets."""
        return int(self.nnz * (4 + 4) + 8 * (self.vocab + 1))

    def posting(self, term: int) -> tuple[np.ndarray, np.ndarray]:
        """(passage rows, weights) of one term."""
        lo, hi = self.postings.indptr[term], self.postings.indptr[term + 1]
        return self.postings.indices[lo:hi], self.postings.data[lo:hi]

    def search(self, queries, k: int, max_scores: int = 2 ** 24) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k), passage rows (Q, k)): each query accumulates the postings of its nonzero terms. Queries
        (dense or scipy sparse) go in chunks of at most `max_scores` query-passage scores (128 MB of float64)."""
        from scipy import sparse

        q = queries.detach().cpu().numpy() if isinstance(queries, torch.Tensor) else queries
        q = sparse.csr_matrix(q, dtype=np.float64)
        q.eliminate_zeros()
        k = min(int(k), self.num_passages)
        step = max(1, int(max_scores) // max(1, self.num_passages))
        out = [_topk_rows((q[start:start + step] @ self.postings).toarray(), k) for start in range(0, q.shape[0], step)]
        if not out:  # a sparse product visits, for each query, the postings of its nonzero terms only
            return np.zeros((0, k)), np.zeros((0, k), dtype=np.int64)
        return np.concatenate([s for s, _ in out]), np.concatenate([r for _, r in out])


def to_run(qids: list[str], pids: list[str], scores, rows) -> Run:
    """A run {qid: {pid: score}} from per-query (scores, rows) arrays."""
    scores, rows = np.asarray(scores), np.asarray(rows)
    return {q: {pids[int(r)]: float(s) for s, r in zip(scores[i], rows[i])} for i, q in enumerate(qids)}
