"""Retrieval metrics against trec_eval (pytrec_eval, its C code) on the same run files, and hand cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from methods.retrieval.metrics import evaluate_run, query_metrics, ranked, spearman

pytrec_eval = pytest.importorskip("pytrec_eval")


def _random_case(seed: int, n_queries: int = 40, n_passages: int = 200, ties: bool = False):
    rng = np.random.default_rng(seed)
    pids = [f"d{i:03d}" for i in range(n_passages)]
    qrels, run = {}, {}
    for q in range(n_queries):
        qid = f"q{q}"
        judged = rng.choice(n_passages, size=int(rng.integers(1, 8)), replace=False)
        rels = {pids[j]: int(rng.integers(0, 4)) for j in judged}
        rels[pids[judged[0]]] = max(1, rels[pids[judged[0]]])  # at least one relevant
        qrels[qid] = rels
        retrieved = rng.choice(n_passages, size=int(rng.integers(5, 150)), replace=False)
        scores = rng.integers(0, 5, size=len(retrieved)).astype(float) if ties else rng.normal(size=len(retrieved))
        run[qid] = {pids[j]: float(s) for j, s in zip(retrieved, scores)}
    return qrels, run


def _trec(qrels, run, k: int):
    ev = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{k}", f"recall.{k}"})
    cut = {q: {p: s for p, s in sorted(r.items(), key=lambda x: (x[1], x[0]), reverse=True)[:k]} for q, r in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(cut)
    res = ev.evaluate(run)
    return {q: {"ndcg": res[q][f"ndcg_cut_{k}"], "recall": res[q][f"recall_{k}"], "mrr": rr[q]["recip_rank"]} for q in res}


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_trec_eval(seed, ties):
    qrels, run = _random_case(seed, ties=ties)
    means, each = evaluate_run(qrels, run, ks=(1, 10, 100), per_query=True)
    for k in (1, 10, 100):
        ref = _trec(qrels, run, k)
        for q in qrels:
            for m in ("ndcg", "recall", "mrr"):
                assert each[q][f"{m}@{k}"] == pytest.approx(ref[q][m], abs=1e-9), (q, m, k)
        for m in ("ndcg", "recall", "mrr"):
            assert means[f"{m}@{k}"] == pytest.approx(np.mean([ref[q][m] for q in qrels]), abs=1e-9)


def test_hand_case():
    rels = {"a": 2, "b": 1, "c": 0}
    scores = {"x": 3.0, "b": 2.0, "a": 1.0, "c": 0.5}  # ranks: x (unjudged), b, a, c
    m = query_metrics(rels, scores, ks=(1, 2, 10))
    dcg = 1 / math.log2(3) + 2 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx(dcg / idcg)
    assert m["mrr@10"] == pytest.approx(0.5) and m["mrr@1"] == 0.0
    assert m["recall@1"] == 0.0 and m["recall@2"] == 0.5 and m["recall@10"] == 1.0


def test_trec_eval_tie_order_and_missing_queries():
    assert ranked({"a": 1.0, "b": 1.0, "c": 2.0}) == ["c", "b", "a"]  # score desc, then docno desc
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 0}}  # q3 has nothing relevant: not counted
    out = evaluate_run(qrels, {"q1": {"a": 1.0}}, ks=(10,))
    assert out["ndcg@10"] == 0.5 and out["mrr@10"] == 0.5  # q2 absent from the run scores 0


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
