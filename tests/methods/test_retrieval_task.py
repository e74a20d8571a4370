"""The retrieval task: its sources in BEIR layout (splits by passage, exact and seeded), BEIR directories, batches that
resume exactly, mined hard negatives, search and evaluation through a DualEncoder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from methods.retrieval import corpora
from methods.retrieval.encoder import DualEncoder
from tasks.base import BuildContext
from tasks.retrieval import Retrieval

CACHE = Path(os.environ["METHODBENCH_CACHE"])


@pytest.fixture(scope="module")
def stdlib():
    return corpora.stdlib_retrieval(cache_dir=CACHE)


def test_stdlib_retrieval_splits_by_passage(stdlib):
    c = stdlib
    assert len(c.corpus_ids) > 1000 and all(len(c.qrels[s]) > 100 for s in corpora.SPLITS)
    split_of = {}
    for s, qrels in c.qrels.items():
        for rels in qrels.values():
            for pid in rels:
                assert split_of.setdefault(pid, s) == s, f"{pid} is judged in two splits"
    kinds = c.meta["query_kind"]
    text = dict(zip(c.corpus_ids, c.corpus_texts))
    for qid, kind in kinds.items():
        if kind == "sentence":  # the cut sentence is a query, and is no longer in its passage
            pid = qid.removeprefix("s:")
            assert c.queries[qid] not in text[pid]
    assert corpora.stdlib_retrieval(cache_dir=CACHE).qrels == c.qrels  # deterministic


def test_subset_keeps_every_split():
    c = corpora.stdlib_retrieval(max_passages=200, cache_dir=CACHE)
    assert len(c.corpus_ids) == 200 and all(len(c.qrels[s]) > 0 for s in corpora.SPLITS)


def test_keyword_pairs_queries_are_markers_of_their_passage():
    c = corpora.keyword_pairs(n_passages=50)
    text = dict(zip(c.corpus_ids, c.corpus_texts))
    for split in c.qrels.values():
        for qid, rels in split.items():
            (pid,) = rels
            assert all(w in text[pid].split() for w in c.queries[qid].split())


def test_load_beir_directory(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text("\n".join(json.dumps(d) for d in (
        {"_id": "d1", "title": "Fox", "text": "The quick fox."}, {"_id": "d2", "title": "", "text": "A dog."})))
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "fox?"}) + "\n")
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    c = corpora.load_beir(tmp_path)
    assert c.corpus_texts == ["Fox. The quick fox.", "A dog."]
    assert c.qrels == {"train": {}, "dev": {}, "test": {"q1": {"d1": 1}}}
    with pytest.raises(ValueError, match="corpus.jsonl"):
        corpora.load_beir(tmp_path / "nowhere")


@pytest.mark.parametrize("kwargs, match", [
    ({"source": "msmarco"}, "dataset.source: 'msmarco'; choose one of: stdlib-retrieval, keyword-pairs, beir"),
    ({"generator": {"n_passages": 3}}, "dataset.generator.n_passages: not an argument of stdlib_retrieval"),
    ({"source": "beir"}, "dataset.path: source=beir needs"),
    ({"encoder": {"pooling": "max"}}, "dataset.encoder.pooling: 'max'; choose one of: cls, mean"),
    ({"negatives": {"hard_negatives": 2}}, "dataset.negatives.hard_negatives: unknown; choose from: hard, skip"),
    ({"eval": {"split": "train"}}, "dataset.eval.split: 'train'; choose one of: dev, test"),
])
def test_bad_config_is_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace("?", r"\?")):
        Retrieval(**kwargs)


def _ctx():
    return BuildContext(seq_len=48, cache_dir=CACHE, seed=0, batch_size=4, max_steps=10, accumulate_grad_batches=1)


@pytest.fixture(scope="module")
def data():
    return Retrieval(source="keyword-pairs", generator={"n_passages": 120}, query_len=16,
                     negatives={"hard": 2}).build(_ctx())


def test_batches_resume_exactly_and_hold_hard_negatives(data):
    train, _ = data.make_loaders(4, 6, seed=3)
    batches = list(train)
    later, _ = data.make_loaders(4, 6, seed=3, start=lambda: 2)
    for a, b in zip(batches[2:], later):
        assert all(torch.equal(a[k], b[k]) for k in a)
    b = batches[0]
    assert b["q_input_ids"].shape[0] == 4 and b["n_input_ids"].shape[0] == 8 and b["n_rows"].shape == (4, 2)
    for i, row in enumerate(b["index"].tolist()):
        qid, pid = data.train_pairs[row]
        assert data.corpus_ids[int(b["p_rows"][i])] == pid
        assert data.corpus_row[pid] not in b["n_rows"][i].tolist()  # a hard negative is never the positive
        n_ids = b["n_input_ids"][2 * i][: int(b["n_attention_mask"][2 * i].sum())].tolist()
        assert n_ids == data.passage_ids[int(b["n_rows"][i, 0])]


def _tiny_encoder(vocab: int):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    return DualEncoder(BertModel(cfg, add_pooling_layer=False), pooling="mean", normalize=True)


class _Sparse(DualEncoder):
    sparse = True

    def encode(self, input_ids, attention_mask=None, side="passage"):
        return torch.relu(super().encode(input_ids, attention_mask, side))


def test_search_dense_and_sparse_rank_the_same_vectors(data):
    dense = _tiny_encoder(data.vocab_size)
    sparse = _Sparse(dense.backbone, pooling="mean", normalize=True)
    run_s = data.search(sparse, "test", k=10)
    qids, _ = data.queries_of("test")
    relu = _Sparse(dense.backbone, pooling="mean", normalize=True)
    relu.sparse = False  # the same vectors, exact dense search
    run_d = data.search(relu, "test", k=10)
    assert list(run_s) == qids
    for q in qids:
        assert list(run_s[q]) == list(run_d[q])
    out = data.evaluate(dense)
    assert {"ndcg@10", "mrr@10", "recall@100", "bm25/ndcg@10"} <= set(out)
    assert out["bm25/ndcg@10"] > 0.9 > out["ndcg@10"]  # markers: BM25 solves it, an untrained encoder does not


def test_a_retrieval_runs_checkpoint_initialises_the_plain_architecture(tmp_path):
    """model.init_from=<a retrieval run's checkpoint>: the bi-encoder's backbone weights load into model=bert-tiny."""
    from omegaconf import OmegaConf

    from runner.models import build_model

    m = OmegaConf.load(Path(__file__).resolve().parents[2] / "configs" / "model" / "bert-tiny.yaml")
    torch.manual_seed(0)
    trained = DualEncoder(build_model(m, 50))
    ckpt = tmp_path / "x.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in trained.state_dict().items()}}, ckpt)
    m.init_from = str(ckpt)
    torch.manual_seed(1)
    loaded = build_model(m, 50)
    for k, v in trained.backbone.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
