"""LoL's properties (methods/retrieval/lol_prf.py): the comparative regulariser L_cr (zero when more feedback never
hurts, the mean positive gap otherwise, = the code's util.pairwise_hinge), revisions that are exact prefixes of one
token sequence (drawn as a pure function of the micro-batch index), n_compare = 0 giving exactly lambda_pr * L_pr, the
reformulation CE's target (the lowest-scored positive, the other positives masked) and a corpus matrix that is the
initial model's encoding and never trained."""

from __future__ import annotations

import copy
import math
from itertools import product

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from methods.retrieval.lol_prf import (
    LoLModule,
    LoLPRF,
    PRFReformulator,
    comparative_regularization,
    draw_feedback_counts,
    feedback_sequence,
    lol_loss,
    reciprocal_ranks,
    reformulation_loss,
    revision,
    violation_rates,
)


# -- the official code's pieces, read literally (util.pairwise_hinge; trainer.compute_loss's revision effects) --------
def code_pairwise_hinge(y_pred, y_true, margin=0.0):
    pairs = list(product(range(y_true.shape[1]), repeat=2))
    pt, pp = y_true[:, pairs], y_pred[:, pairs]
    mask = (pt[:, :, 0] - pt[:, :, 1]) > 0
    s1, s2 = pp[:, :, 0][mask], pp[:, :, 1][mask]
    return F.margin_ranking_loss(s1, s2, mask.float()[mask], margin=margin, reduction="mean")


def code_loss_cr(pr_loss, n_compare):
    effects = -pr_loss.view(-1, 1 + n_compare)
    labels = torch.arange(effects.size(1), 0, -1).unsqueeze(0).expand_as(effects)
    return code_pairwise_hinge(effects, labels, margin=0.0)


# -- (i) L_cr ----------------------------------------------------------------------------------------------------------
def test_loss_cr_is_zero_when_losses_do_not_increase_with_feedback():
    group, fb = torch.tensor([0, 0, 0, 1, 1]), torch.tensor([5, 3, 0, 2, 1])
    for losses in ([1.0, 2.0, 3.0, 0.5, 0.9], [2.0, 2.0, 2.0, 1.0, 1.0], [0.1, 0.2, 7.0, 0.0, 0.0]):
        assert float(comparative_regularization(torch.tensor(losses), group, fb)) == 0.0


def test_loss_cr_is_the_mean_positive_gap_over_pairs_of_one_query():
    # one query, K = 5, 3, 0 with L = 3, 1, 2: gaps (5>3) 2, (5>0) 1, (3>0) -1 -> 0; mean over 3 pairs = 1
    l_cr = comparative_regularization(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0, 0, 0]), torch.tensor([5, 3, 0]))
    assert float(l_cr) == pytest.approx(1.0)
    # two queries, revisions in any order: pairs (2>0) gap 0.5, (4>1) gap -0.5 -> 0: mean 0.25 (no cross-query pair)
    l_cr = comparative_regularization(torch.tensor([1.0, 1.5, 0.2, 0.7]), torch.tensor([0, 0, 1, 1]),
                                      torch.tensor([0, 2, 4, 1]))
    assert float(l_cr) == pytest.approx(0.25)
    # a query alone (no pair) contributes nothing and the result stays differentiable
    lone = torch.tensor([4.0], requires_grad=True)
    out = comparative_regularization(lone, torch.tensor([0]), torch.tensor([3]))
    out.backward()
    assert float(out) == 0.0 and float(lone.grad) == 0.0


@pytest.mark.parametrize("n_compare", [1, 2, 3])
def test_loss_cr_equals_the_codes_pairwise_hinge_on_full_groups(n_compare):
    g = torch.Generator().manual_seed(n_compare)
    b, r = 6, 1 + n_compare
    losses = torch.rand(b * r, generator=g) * 5
    group = torch.arange(b).repeat_interleave(r)
    fb = torch.tensor([k for _ in range(b) for k in range(r + 1, 1, -1)])  # K descending within each group
    ours = comparative_regularization(losses, group, fb)
    assert torch.allclose(ours, code_loss_cr(losses, n_compare), atol=1e-7)


# -- (ii) revisions are prefixes ---------------------------------------------------------------------------------------
def test_feedback_sequence_layout_and_truncation_rules():
    ids, seps = feedback_sequence([2, 10, 11, 3], [[20, 21, 22], [30, 31]], sep_id=3)
    assert ids == [2, 10, 11, 3, 20, 21, 22, 3, 30, 31, 3] and seps == [3, 7, 10]
    assert revision(ids, seps, 0) == [2, 10, 11, 3] and revision(ids, seps, 1) == [2, 10, 11, 3, 20, 21, 22, 3]
    assert revision(ids, seps, 2) == ids
    # each passage cut to min(max_p_len, room - 1); none added with < 10 tokens of room
    ids, seps = feedback_sequence([2, 10, 3], [list(range(100, 130)), list(range(200, 230))], 3, max_seq_len=20,
                                  max_p_len=8)
    assert ids == [2, 10, 3, *range(100, 108), 3] and seps == [2, 11]  # room 8 < 10 after the first: stop
    ids, _ = feedback_sequence([2, 10, 3], [list(range(100, 130))], 3, max_seq_len=16, max_p_len=128)
    assert len(ids) == 16 and ids[-1] == 3  # cut to the room left


def test_draw_feedback_counts_is_distinct_descending_and_bounded():
    rng = np.random.default_rng(0)
    for available in range(6):
        for nc in range(4):
            ks = draw_feedback_counts(available, nc, rng)
            assert ks == sorted(set(ks), reverse=True) and len(ks) == min(1 + nc, available + 1)
            assert all(0 <= k <= available for k in ks)


def test_train_revisions_are_exact_prefixes_of_one_sequence(prf):
    data = prf(n_compare=2, max_seq_len=128)  # room for all 5 passages (at most 10 + 5 x 13 tokens)
    seen_k = set()
    for b in range(4):
        batch = data.train_batch([(b, row) for row in range(6)], seed=0)
        ids, mask, sep = batch["input_ids"], batch["attention_mask"], data.sep_id
        for g in batch["group"].unique().tolist():
            rows = (batch["group"] == g).nonzero().flatten().tolist()
            ks = batch["feedback"][rows].tolist()
            assert ks == sorted(set(ks), reverse=True)  # distinct, descending
            n_run = len(data.train.feedback[int(batch["index"][g])])
            assert len(ks) == 3 or ks == list(range(n_run, -1, -1))  # 1 + n_compare, or every count of a short run
            seqs = [ids[r, :int(mask[r].sum())].tolist() for r in rows]
            longest = seqs[0]
            first_sep = longest.index(sep)
            for s, k in zip(seqs, ks):
                assert s == longest[:len(s)] and s[-1] == sep  # a prefix, closed by a separator
                assert s[first_sep + 1:].count(sep) == k  # exactly k feedback passages
                types = batch["token_type_ids"][rows[ks.index(k)], :len(s)].tolist()
                assert types == [0] * (first_sep + 1) + [1] * (len(s) - first_sep - 1)
                seen_k.add(k)
    assert seen_k == set(range(0, 6))  # 0 (no feedback) up to K_max = 5 occur


def test_revision_draws_are_a_pure_function_of_the_micro_batch_index(prf):
    data = prf(n_compare=1)
    a = data.train_batch([(7, 0), (7, 1), (7, 2)], seed=3)
    b = data.train_batch([(7, 0), (7, 1), (7, 2)], seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    later = [data.train_batch([(b_, r) for r in range(3)], seed=3)["input_ids"] for b_ in range(8, 12)]
    assert any(x.shape != a["input_ids"].shape or not torch.equal(x, a["input_ids"]) for x in later)
    # a resumed loader (start=3) yields exactly micro-batches 3.. of the uninterrupted one
    full = list(zip(range(6), data.make_loaders(4, 6, seed=1)[0]))
    resumed = list(data.make_loaders(4, 6, seed=1, start=lambda: 3)[0])
    assert len(resumed) == 3
    for (_, x), y in zip(full[3:], resumed):
        assert all(torch.equal(x[k], y[k]) for k in x)


# -- (iii) n_compare = 0 -----------------------------------------------------------------------------------------------
def test_n_compare_zero_is_lambda_pr_times_l_pr_exactly_with_no_regulariser_gradient():
    losses = torch.tensor([2.0, 0.5, 3.0, 1.0], requires_grad=True)  # "more feedback" revisions worse: L_cr would fire
    group, fb = torch.tensor([0, 0, 1, 1]), torch.tensor([3, 1, 4, 0])
    total, parts = lol_loss(losses, group, fb, lambda_pr=0.7, lambda_cr=1.0, n_compare=0)
    assert torch.equal(total, 0.7 * losses.mean()) and "loss_cr" not in parts
    (grad,) = torch.autograd.grad(total, losses)
    assert torch.equal(grad, torch.full_like(losses, 0.7 / 4))
    total1, parts1 = lol_loss(losses, group, fb, lambda_pr=0.7, lambda_cr=1.0, n_compare=1)
    (grad1,) = torch.autograd.grad(total1, losses)
    assert float(parts1["loss_cr"]) > 0 and not torch.equal(grad1, grad)  # the regulariser's gradient, when on


def test_n_compare_zero_batches_hold_one_revision_per_query(prf):
    batch = prf(n_compare=0).train_batch([(0, r) for r in range(5)], seed=0)
    assert batch["group"].tolist() == list(range(5))


# -- (iv) the reformulation CE -----------------------------------------------------------------------------------------
def test_reformulation_target_is_the_lowest_scored_positive_with_the_other_positives_masked():
    scores = torch.tensor([[2.0, 0.5, 1.0, 3.0, -1.0],
                           [0.0, 1.0, 2.0, 3.0, 4.0]])
    positives = torch.tensor([[0, 2, 3], [4, -1, -1]])
    got = reformulation_loss(scores, positives)
    # row 0: positives 0, 2, 3 score 2, 1, 3 -> target 2; 0 and 3 masked: CE over {0.5, 1.0, -1.0} at 1.0
    want0 = -(1.0 - math.log(math.exp(0.5) + math.exp(1.0) + math.exp(-1.0)))
    want1 = -(4.0 - math.log(sum(math.exp(x) for x in (0.0, 1.0, 2.0, 3.0, 4.0))))
    assert got.tolist() == pytest.approx([want0, want1], abs=1e-6)
    # the code's loop, literally (trainer.compute_loss, "passage ranking")
    q_p = scores.clone()
    labels = []
    for q, poss in enumerate([[0, 2, 3], [4]]):
        labels.append(poss[int(q_p[q, poss].argmin())])
        for p in poss:
            if p != labels[-1]:
                q_p[q, p] = float("-inf")
    assert torch.allclose(got, F.cross_entropy(q_p, torch.tensor(labels), reduction="none"))
    # no gradient reaches the masked positives' scores
    s = scores.clone().requires_grad_(True)
    reformulation_loss(s, positives).sum().backward()
    assert s.grad[0, 0] == 0 and s.grad[0, 3] == 0 and s.grad[0, 2] < 0


def test_reciprocal_rank_and_violation_rates_hand_cases():
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.4, 0.3, 0.2, 0.1]])
    assert reciprocal_ranks(scores, torch.tensor([[2, 3], [3, -1]]), k=3).tolist() == pytest.approx([0.5, 0.0])
    rates = violation_rates([[3.0, 2.0, 1.0], [1.0, 2.0, 0.5], [4.0]])  # pairs: 0/3 and 1/3 violated; [4.0]: no pair
    assert rates["violation_rate"] == pytest.approx(1 / 6) and rates["violation_rate@max_vs_0"] == 0.0


# -- (v) the corpus matrix ---------------------------------------------------------------------------------------------
def test_corpus_matrix_is_the_initial_encoding_and_receives_no_gradient(prf, backbone):
    from methods.retrieval.encoder import DualEncoder

    data = prf(n_compare=1)
    method = LoLPRF(n_compare=1, max_seq_len=64, max_q_len=8, max_p_len=12, lr=1e-2)
    initial = copy.deepcopy(backbone)
    module = LoLModule(backbone, method, data=data)
    model = module.model
    assert isinstance(model, PRFReformulator) and model.corpus.shape == (len(data.corpus_ids), 32)
    want = data.inner.encode_texts(DualEncoder(initial, data.inner.pooling, data.inner.normalize), data.passage_ids,
                                   side="passage")
    assert torch.allclose(model.corpus, want, atol=1e-5)  # the initial model with the task's pooling
    assert not model.corpus.requires_grad and all(p is not model.corpus for p in model.parameters())
    assert "corpus" in dict(model.named_buffers()) and "corpus" not in model.state_dict()  # not in checkpoints
    before = model.corpus.clone()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = data.train_batch([(0, r) for r in range(4)], seed=0)
    model.train()
    for _ in range(2):
        losses = module.revision_losses(batch)
        total, _ = lol_loss(losses, batch["group"], batch["feedback"], 1.0, 1.0, 1)
        opt.zero_grad()
        total.backward()
        assert model.corpus.grad is None
        assert model.dense_proj.weight.grad is not None and model.dense_proj.weight.grad.abs().sum() > 0
        opt.step()
    assert torch.equal(model.corpus, before)
    out = data.evaluate(model)
    assert 0.0 <= out["violation_rate"] <= 1.0 and {"ndcg@10", "mrr@10", "prf0/ndcg@10", "dense/ndcg@10"} <= set(out)


def test_identity_head_and_config_checks(backbone):
    model = PRFReformulator(backbone, head_init="identity")
    assert torch.equal(model.dense_proj.weight, torch.eye(32)) and not model.dense_proj.bias.any()
    assert model.max_positions == 64 and not model.uses_token_types
    with pytest.raises(ValueError, match="method.n_compare"):
        LoLPRF(n_compare=6, max_feedback=5)
    with pytest.raises(ValueError, match="method.max_seq_len"):
        LoLPRF(max_seq_len=100, max_q_len=128)
    with pytest.raises(ValueError, match="method.query_pooling"):
        LoLPRF(query_pooling="max")
    # query_pooling=task: LayerNorm(W pool(h) + b) with the task's pooling; cls: the code's h_CLS
    ids, mask = torch.tensor([[2, 7, 9, 3, 0]]), torch.tensor([[1, 1, 1, 1, 0]])
    backbone.eval()  # no dropout
    hidden = backbone.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    task = PRFReformulator(backbone, pooling="mean", query_pooling="task")
    want = F.layer_norm((hidden * mask[..., None]).sum(1) / 4, (32,))
    assert torch.allclose(task.encode(ids, mask, side="query"), want, atol=1e-5)
    assert torch.allclose(model.encode(ids, mask, side="query"), F.layer_norm(hidden[:, 0], (32,)), atol=1e-5)


def test_retriever_from_loads_a_dual_encoder_runs_backbone(backbone, inner, tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    state = {f"model.backbone.{k}": v + 1.0 if v.is_floating_point() else v for k, v in backbone.state_dict().items()}
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {**state, "model.other": torch.zeros(1)}}, tmp_path / "run" / "checkpoints" / "step000004.ckpt")
    fresh = BertForMaskedLM(BertConfig(vocab_size=inner.vocab_size, hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
                                       type_vocab_size=1))
    loaded = LoLPRF(retriever_from=str(tmp_path)).prepare_model(fresh)  # a run name's directory: its newest run
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[f"model.backbone.{k}"]), k
    with pytest.raises(ValueError, match="method.retriever_from"):
        LoLPRF(retriever_from=str(tmp_path / "none")).prepare_model(fresh)


def test_schedule_is_transformers_linear_with_warmup_ratio():
    def hf_linear(step, warm, total):  # transformers.optimization._get_linear_schedule_with_warmup_lr_lambda
        if step < warm:
            return float(step) / float(max(1, warm))
        return max(0.0, float(total - step) / float(max(1, total - warm)))

    for total in (7, 50, 333):
        f = LoLPRF(warmup_ratio=0.1).lr_lambda(total)
        warm = math.ceil(0.1 * total)  # TrainingArguments.get_warmup_steps
        assert [f(s) for s in range(total + 1)] == pytest.approx([hf_linear(s, warm, total) for s in range(total + 1)])


# -- fixtures ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inner(tmp_path_factory):
    from methods.retrieval.corpora import keyword_pairs
    from tasks.common import wordpiece_tokenizer
    from tasks.retrieval import RetrievalData

    corpus = keyword_pairs(n_passages=120)
    tok = wordpiece_tokenizer(corpus.corpus_texts, 512, tmp_path_factory.mktemp("tok"))
    return RetrievalData("keyword-pairs", corpus, tok, len(tok), 16, 48)


@pytest.fixture
def prf(inner):
    def make(n_compare: int = 1, max_seq_len: int = 64):
        return LoLPRF(n_compare=n_compare, max_seq_len=max_seq_len, max_q_len=8, max_p_len=12).prepare_data(inner)

    return make


@pytest.fixture
def backbone(inner):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    return BertForMaskedLM(BertConfig(vocab_size=inner.vocab_size, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
                                      type_vocab_size=1))
