"""Ranking metrics with trec_eval's conventions: nDCG@k, Recall@k, MRR@k, from a run and qrels in pytrec_eval's layout.

    run   = {qid: {pid: score}}        qrels = {qid: {pid: relevance}}

For each query the run is ranked as trec_eval ranks it: score descending, ties by passage id descending
(trec_eval's comparison of docnos). With rel_i the relevance of the passage at rank i (0 when it is not judged):

    DCG@k  = Σ_{i<=k} rel_i / log2(i + 1)           (trec_eval's ndcg_cut: the gain is the relevance itself)
    nDCG@k = DCG@k / IDCG@k,  IDCG@k the DCG of the judged relevances sorted descending
    Recall@k = |relevant in the top k| / |relevant|                  (relevant: relevance > 0)
    MRR@k  = 1 / (rank of the first relevant passage), 0 if none is in the top k  (trec_eval's recip_rank on the
             run cut at k)

The mean is over the queries of `qrels` that have a relevant passage; a query the run lacks scores 0 (BEIR's and
pytrec_eval's means are over the queries present in both: pass only those to compare). Checked against
pytrec_eval (trec_eval's C code) on random runs in tests/methods/test_retrieval_metrics.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]
DEFAULT_KS = (1, 10, 100)


def ranked(scores: dict[str, float]) -> list[str]:
    """Passage ids in trec_eval's order: score descending, then passage id descending."""
    return [pid for pid, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def query_metrics(rels: dict[str, int], scores: dict[str, float], ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """The metrics of one query (see the module docstring)."""
    order = ranked(scores)
    gains = [max(int(rels.get(pid, 0)), 0) for pid in order]
    relevant = sum(1 for r in rels.values() if r > 0)
    ideal = sorted((r for r in rels.values() if r > 0), reverse=True)
    out: dict[str, float] = {}
    for k in ks:
        dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]) if g)
        idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
        out[f"ndcg@{k}"] = dcg / idcg if idcg > 0 else 0.0
        out[f"recall@{k}"] = sum(1 for g in gains[:k] if g > 0) / relevant if relevant else 0.0
        first = next((i for i, g in enumerate(gains[:k]) if g > 0), None)
        out[f"mrr@{k}"] = 0.0 if first is None else 1.0 / (first + 1)
    return out


def evaluate_run(qrels: Qrels, run: Run, ks: Iterable[int] = DEFAULT_KS, per_query: bool = False):
    """{"ndcg@10": ..., "recall@100": ..., "mrr@10": ...}: the mean over the judged queries (module docstring);
    per_query=True: ({metric: mean}, {qid: {metric: value}})."""
    ks = tuple(int(k) for k in ks)
    queries = sorted(q for q, rels in qrels.items() if any(r > 0 for r in rels.values()))
    each = {q: query_metrics(qrels[q], run.get(q, {}), ks) for q in queries}
    names = [f"{m}@{k}" for k in ks for m in ("ndcg", "recall", "mrr")]
    means = {n: float(np.mean([each[q][n] for q in queries])) if queries else 0.0 for n in names}
    return (means, each) if per_query else means


def spearman(x, y) -> float:
    """Spearman's rank correlation (scipy.stats.spearmanr; average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)).statistic)
