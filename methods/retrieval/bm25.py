"""BM25 (Robertson et al.) through bm25s: first-pass runs and hard-negative mining.

bm25s (Lù, 2024) with its defaults: the Lucene variant of BM25, k1 = 1.5, b = 0.75, words of two or more
characters, lowercased, English stop words removed, no stemming. Queries are tokenized the same way; a query with
no indexed word gets no results (bm25s returns zero scores for arbitrary rows: they are dropped here).
"""

from __future__ import annotations

import numpy as np


class BM25:
    """A BM25 index over `texts` (rows are the texts' positions)."""

    def __init__(self, texts: list[str], k1: float = 1.5, b: float = 0.75, stopwords: str | None = "en"):
        import bm25s

        self.stopwords = stopwords
        self.size = len(texts)
        self.retriever = bm25s.BM25(k1=k1, b=b)
        self.retriever.index(self._tokens(texts), show_progress=False)

    def _tokens(self, texts: list[str]) -> list[list[str]]:
        import bm25s

        return bm25s.tokenize(list(texts), stopwords=self.stopwords, return_ids=False, show_progress=False)

    def search(self, queries: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (Q, k), rows (Q, k)), best first; rows are -1 (score 0) where a query matches fewer than k texts."""
        k = min(int(k), self.size)
        if not queries:
            return np.zeros((0, k)), np.zeros((0, k), dtype=np.int64)
        tokens = [t if t else ["\u0000"] for t in self._tokens(queries)]  # bm25s wants a token; this one is in no text
        rows, scores = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        rows, scores = np.asarray(rows, dtype=np.int64), np.asarray(scores, dtype=np.float64)
        rows[scores <= 0] = -1
        scores[scores <= 0] = 0.0
        return scores, rows


def mine_hard_negatives(bm25: BM25, queries: list[str], positives: list[set[int]], n: int, skip: int = 0,
                        depth: int | None = None) -> list[list[int]]:
    """Per query, the first `n` BM25-ranked rows that are not its positives, after skipping the first `skip` such
    rows (the top of a BM25 run holds unjudged positives most often); searched to `depth` (default 4 (skip + n) + 8).
    A query with fewer matches gets fewer negatives."""
    if n <= 0:
        return [[] for _ in queries]
    depth = depth or 4 * (skip + n) + 8
    _, rows = bm25.search(queries, depth)
    out = []
    for q_rows, pos in zip(rows, positives):
        cands = [int(r) for r in q_rows if r >= 0 and int(r) not in pos]
        out.append(cands[skip:skip + n])
    return out
