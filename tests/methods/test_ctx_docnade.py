"""ctx-DocNADE (textTOvec, ICLR 2019; models/docnade.py, tasks/topics.py, methods/topics/): the properties of the
issue. lam = 0 reproduces DocNADE exactly (values, gradients, training); p(v_i | v_<i) ignores v_>=i (and every
token from v_i on); the summed log-conditionals equal a brute-force likelihood (one softmax per conditional, the
LSTM re-run on each prefix alone); the task's alignment never lets the LM see v_i or later; bad values are one line.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from methods.topics.ctx_docnade import CtxDocNADE
from methods.topics.metrics import classification, ir_precision
from models.docnade import DocNADE, DocNADEArchitecture
from tasks.base import BuildContext
from tasks.topics import TopicDocuments, collate_documents, document_views

V, K, H = 30, 20, 8  # token ids, topic words (ids < K), hidden size


def model(lm: bool, lam: float = 0.0, combine: str = "post", activation: str = "sigmoid", seed: int = 0,
          loud: bool = False) -> DocNADE:
    torch.manual_seed(seed)
    m = DocNADE(V, H, activation=activation, lm=lm, lam=lam, combine=combine)
    m.set_bow_vocab(K)
    if loud:  # the code's W init is ~1e-3 wide: the LSTM's input would be ~0; make every path matter
        with torch.no_grad():
            m.W.weight.normal_(0, 1)
            m.c.normal_(0, 1)
    return m


def random_batch(n: int = 5, seed: int = 0, length: tuple[int, int] = (3, 14)) -> tuple[dict, list[list[int]]]:
    """Random token sequences (ids < V; ids < K are topic words) and their batch dict (tasks/topics.py views)."""
    rng = np.random.default_rng(seed)
    seqs, docs = [], []
    vocab = {str(i): i for i in range(V)} | {"<unk>": V - 1}
    while len(seqs) < n:
        toks = rng.integers(0, V, size=int(rng.integers(*length))).tolist()
        lm_ids, bow_ids, align = document_views([str(t) for t in toks], vocab, K)
        if bow_ids:
            seqs.append(toks)
            docs.append({"lm_ids": lm_ids, "bow_ids": bow_ids, "align": align, "label": 0})
    return collate_documents([(d, i) for i, d in enumerate(docs)]), seqs


def inputs(b: dict) -> dict:
    return {k: b[k] for k in ("bow_ids", "bow_mask", "lm_ids", "lm_mask", "align")}


# ------------------------------------------------------------------------------------------ lam = 0 == DocNADE
@pytest.mark.parametrize("combine", ["post", "pre"])
def test_lambda_zero_reproduces_docnade_exactly(combine):
    batch, _ = random_batch(6)
    plain, ctx = model(lm=False), model(lm=True, lam=0.0, combine=combine)
    for name, p in plain.named_parameters():  # the same draws: DocNADE's parameters come first
        assert torch.equal(p, dict(ctx.named_parameters())[name]), name
    opts = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (plain, ctx)]
    for _ in range(3):  # values, gradients and Adam steps: bit for bit
        outs = [m(**inputs(batch)) for m in (plain, ctx)]
        assert torch.equal(outs[0]["logits"], outs[1]["logits"]) and torch.equal(outs[0]["doc"], outs[1]["doc"])
        losses = [m.word_nll(**inputs(batch))[0].sum(1).mean() for m in (plain, ctx)]
        assert torch.equal(losses[0], losses[1])
        for opt, loss in zip(opts, losses):
            opt.zero_grad()
            loss.backward()
            opt.step()
    for name, p in plain.named_parameters():
        assert torch.equal(p, dict(ctx.named_parameters())[name]), name
    # and lam > 0 does change the model (the check above can fail)
    mixed = model(lm=True, lam=0.5, combine=combine)
    assert not torch.allclose(mixed(**inputs(batch))["logits"], model(lm=False)(**inputs(batch))["logits"])


# ------------------------------------------------------------------------------------------ autoregressive
@pytest.mark.parametrize("combine", ["post", "pre"])
def test_conditionals_ignore_v_i_and_everything_after(combine):
    """Rewriting v_i (into another topic word) and every token after it (v_>i and the other tokens between them)
    leaves p(. | v_<i) of positions <= i unchanged: float64, max |diff| measured <= 2e-15 (other batch shapes
    round differently; float32: 1e-6), tolerance 1e-10. Rewriting one token before
    v_i does change it (the LM sees stop words; DocNADE sees topic words)."""
    m = model(lm=True, lam=1.0, combine=combine, loud=True).double()
    batch, seqs = random_batch(8, seed=1, length=(6, 16))
    base = m(**inputs(batch))["logits"].log_softmax(-1)
    rng = np.random.default_rng(2)
    vocab = {str(i): i for i in range(V)} | {"<unk>": V - 1}
    checked = moved = 0
    for j, toks in enumerate(seqs):
        lm_ids, bow_ids, align = document_views([str(t) for t in toks], vocab, K)
        for i, a in enumerate(align):
            pos = a + 1  # v_i's position in the token sequence
            # v_i itself becomes another topic word (the i-th conditional's context stays the text before pos), every
            # later token is redrawn, and the length changes too
            tail = rng.integers(0, V, size=len(toks) - pos - 1 + int(rng.integers(0, 4))).tolist()
            new = toks[:pos] + [int(rng.integers(0, K))] + tail
            nb, _ = random_batch_from([new])
            out = m(**inputs(nb))["logits"].log_softmax(-1)
            assert (out[0, :i + 1] - base[j, :i + 1]).abs().max() <= 1e-10
            checked += 1
            if pos >= 1:  # change the token just before v_i: its conditional moves
                before = list(toks)
                before[pos - 1] = (before[pos - 1] + 1) % V
                if (before[pos - 1] < K) == (toks[pos - 1] < K):  # keep the views' shapes
                    nb, _ = random_batch_from([before])
                    diff = (m(**inputs(nb))["logits"].log_softmax(-1)[0, i] - base[j, i]).abs().max()
                    assert diff > 1e-4
                    moved += 1
    assert checked > 30 and moved > 10


def random_batch_from(seqs: list[list[int]]) -> tuple[dict, list[list[int]]]:
    vocab = {str(i): i for i in range(V)} | {"<unk>": V - 1}
    docs = []
    for toks in seqs:
        lm_ids, bow_ids, align = document_views([str(t) for t in toks], vocab, K)
        docs.append({"lm_ids": lm_ids, "bow_ids": bow_ids, "align": align, "label": 0})
    return collate_documents([(d, i) for i, d in enumerate(docs)]), seqs


# ------------------------------------------------------------------------------------------ brute force
@pytest.mark.parametrize("lm,combine,activation", [(False, "post", "sigmoid"), (True, "post", "sigmoid"),
                                                    (True, "pre", "tanh"), (True, "post", "relu")])
def test_summed_log_conditionals_equal_brute_force_likelihood(lm, combine, activation):
    """log p(v) = sum_i log softmax(b + U h_i)[v_i], h_i from an explicit loop: c + sum_{k<i} W[v_k] added up word by
    word, h^LM_i = the LSTM run on the tokens before v_i alone (its last output; 0 when there are none). float64;
    measured |diff| <= 1.5e-14, tolerance 1e-10. Also the representation h after the last word."""
    m = model(lm=lm, lam=0.7 if lm else 0.0, combine=combine, activation=activation, loud=True).double()
    batch, seqs = random_batch(6, seed=3)
    nll, doc = m.word_nll(**inputs(batch))
    g = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}[activation]
    vocab = {str(i): i for i in range(V)} | {"<unk>": V - 1}
    with torch.no_grad():
        for j, toks in enumerate(seqs):
            lm_ids, bow_ids, align = document_views([str(t) for t in toks], vocab, K)

            def lm_state(prefix: list[int]) -> torch.Tensor:
                if not lm or not prefix:
                    return torch.zeros(H, dtype=torch.float64)
                out, _ = m.lstm(m.W.weight[torch.tensor(prefix)].unsqueeze(0))
                return out[0, -1]

            def hidden(a: torch.Tensor, h_lm: torch.Tensor) -> torch.Tensor:
                lam = m.lam
                return g(a) + lam * h_lm if combine == "post" else g(a + lam * h_lm)

            logp, a = 0.0, m.c.clone()
            for i, v in enumerate(bow_ids):
                h = hidden(a, lm_state(lm_ids[:align[i] + 1]))
                logits = torch.stack([m.U.bias[w] + m.U.weight[w] @ h for w in range(K)])  # the K topic words only
                logp += float(logits[v] - torch.logsumexp(logits, 0))
                a = a + m.W.weight[v]
            assert abs(-float(nll[j].sum()) - logp) <= 1e-10
            assert torch.allclose(doc[j], hidden(a, lm_state(lm_ids)), atol=1e-12, rtol=0)


# ------------------------------------------------------------------------------------------ the task
TEXTS = {
    "sql": ["The database stores a table of rows, and the query reads the table.",
            "A query joins two tables; the database returns rows.",
            "Rows of the table are sorted by the query before the database writes them.",
            "The database index makes every query on the table faster.",
            "An empty table has no rows for the query."],
    "net": ["The socket sends a packet to the server over the network.",
            "A server accepts a socket and reads every packet.",
            "The network drops a packet when the server is busy.",
            "Every socket of the server has a network address.",
            "The packet reaches the server through the network socket."],
}


def local_task(tmp_path: Path, **kwargs) -> tuple[TopicDocuments, object]:
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for label, ts in TEXTS.items() for t in ts))
    task = TopicDocuments(source="local", path=str(path), val_fraction=0.4, bow_vocab={"min_df": 2}, **kwargs)
    ctx = BuildContext(seq_len=64, cache_dir=tmp_path, seed=0, batch_size=2, max_steps=4, accumulate_grad_batches=1)
    return task, task.build(ctx)


def check_alignment(data) -> int:
    k, n = data.bow_vocab_size, 0
    for doc in data.train_docs + data.val_docs:
        lm_ids, bow_ids, align = doc["lm_ids"], doc["bow_ids"], doc["align"]
        pos = [p for p, t in enumerate(lm_ids) if t < k]  # where the topic words are, in document order
        assert bow_ids == [lm_ids[p] for p in pos] and len(align) == len(bow_ids)
        for i, a in enumerate(align):
            # the LM state at align[i] has read tokens 0 .. align[i]: all of the text before v_i, nothing from v_i on
            assert a == pos[i] - 1 and -1 <= a < pos[i] and lm_ids[a + 1] == bow_ids[i]
            n += 1
    return n


def test_alignment_never_shows_the_lm_v_i_or_later(tmp_path):
    _, data = local_task(tmp_path)
    vocab = data.vocab[:data.bow_vocab_size]
    assert {"database", "table", "query", "socket", "server", "network"} <= set(vocab)
    assert not {"the", "a", "of", "and", "every"} & set(vocab)  # scikit-learn's stop words stay out of K
    assert {"the", "a"} <= set(data.vocab[data.bow_vocab_size:])  # ... but the LM reads them
    doc = next(d for d in data.train_docs + data.val_docs if d["text_row"] == 0)  # "The database stores a table ..."
    words = [data.vocab[t] for t in doc["lm_ids"]]
    assert words[:2] == ["the", "database"] and doc["align"][0] == 0  # v_1 = database, its context "the"
    assert check_alignment(data) > 20


def test_alignment_on_the_stdlib_corpus():
    """The same invariants on 300 real docstrings (stratified subsample), seq_len 64."""
    import os

    task = TopicDocuments(max_examples=300)
    cache = Path(os.environ.get("METHODBENCH_CACHE", Path.home() / ".cache" / "methodbench"))
    data = task.build(BuildContext(seq_len=64, cache_dir=cache, seed=0, batch_size=8, max_steps=4, accumulate_grad_batches=1))
    assert len(data.label_names) >= 2 and data.bow_vocab_size > 100
    assert check_alignment(data) > 1000


def test_split_is_stratified_and_batches_resume_exactly(tmp_path):
    _, data = local_task(tmp_path)
    _, again = local_task(tmp_path)
    assert data.train_docs == again.train_docs and data.val_docs == again.val_docs  # deterministic
    assert sorted(data.labels("val").tolist()) == [0, 0, 1, 1]  # 40% of each class of 5
    full, _ = data.make_loaders(2, 10, seed=3)
    resumed, _ = data.make_loaders(2, 10, seed=3, start=lambda: 6)
    a = [b["index"].tolist() for b in full]
    assert a[6:] == [b["index"].tolist() for b in resumed] and len(a) == 10
    assert len({tuple(x) for x in a}) > 1


def test_method_evaluates_the_papers_perplexity(tmp_path):
    """eval/ppl = exp(mean_d NLL_d / |d|) of the validation documents; IR and classification are reported."""
    _, data = local_task(tmp_path)
    torch.manual_seed(0)
    m = DocNADE(data.vocab_size, 8, lm=True, lam=0.5)
    m.set_bow_vocab(data.bow_vocab_size)
    out = CtxDocNADE(ir_fractions=[0.2, 1.0]).evaluate(m, data)
    nll, _ = m.word_nll(**inputs(collate_documents([(d, i) for i, d in enumerate(data.val_docs)])))
    lengths = np.asarray([len(d["bow_ids"]) for d in data.val_docs])
    assert out["ppl"] == pytest.approx(float(np.exp(np.mean(nll.sum(1).detach().numpy() / lengths))), rel=1e-6)
    assert 0 <= out["ir_precision@0.2"] <= 1 and out["ir_precision@1"] == pytest.approx(0.5)  # all 6 train docs: 3/6
    assert {"classification/accuracy", "classification/macro_f1"} <= set(out)


def test_ir_precision_and_classification_by_hand():
    corpus = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 1.0]])
    labels = np.array([0, 0, 1, 0])
    queries, qlabels = np.array([[1.0, 0.05], [0.0, 1.0]]), np.array([0, 1])
    p = ir_precision(queries, qlabels, corpus, labels, fractions=[0.25, 0.5, 1.0])
    # query 0 ranks 0, 1, 3, 2: top1 1, top2 1, all 3/4; query 1 ranks 2, 3, 1, 0: 1, 1/2, 1/4
    assert p == pytest.approx({0.25: 1.0, 0.5: 0.75, 1.0: 0.5})
    m = classification(corpus, labels, queries, qlabels, c=100.0)
    assert m["accuracy"] == 1.0


# ------------------------------------------------------------------------------------------ bad values
@pytest.mark.parametrize("build,key", [
    (lambda: TopicDocuments(val_fraction=1.5), "dataset.val_fraction"),
    (lambda: TopicDocuments(bow_vocab={"max_sise": 10}), "dataset.bow_vocab.max_sise"),
    (lambda: TopicDocuments(bow_vocab={"min_df": 0}), "dataset.bow_vocab.min_df"),
    (lambda: TopicDocuments(source="hub"), "dataset.source"),
    (lambda: TopicDocuments(source="local"), "dataset.path"),
    (lambda: DocNADE(10, 4, activation="softplus"), "model.activation"),
    (lambda: DocNADEArchitecture(activation="softplus"), "model.activation"),
    (lambda: DocNADEArchitecture(lam=-1.0, lm=True), "model.lam"),
    (lambda: DocNADE(10, 4, lm=False, lam=0.5), "model.lam"),
    (lambda: DocNADE(10, 4, lm=True, combine="inside"), "model.combine"),
    (lambda: DocNADE(10, 0), "model.hidden_size"),
    (lambda: CtxDocNADE(ir_fractions=[0.0]), "method.ir_fractions"),
    (lambda: CtxDocNADE(classifier_c=-1), "method.classifier_c"),
])
def test_bad_values_are_one_line(build, key):
    with pytest.raises(ValueError) as e:
        build()
    assert str(e.value).startswith(key) and "\n" not in str(e.value)
