"""PEG: uniform weights are InfoNCE, the denominator holds B − 1 in-batch + H hard + N bank negatives, and the
progressive weights follow the schedule (a function of progress and per-query difficulty)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from methods.retrieval.losses import info_nce
from methods.retrieval.module import DualEncoderModule
from methods.retrieval.peg import PEG, alpha_at, progressive_weights
from tasks.base import BuildContext
from tasks.retrieval import Retrieval


def test_alpha_schedule():
    assert alpha_at("easy_to_hard", 2.0, 0.0) == 2.0 and alpha_at("easy_to_hard", 2.0, 0.5) == 0.0
    assert alpha_at("easy_to_hard", 2.0, 1.0) == -2.0 and alpha_at("hard_to_easy", 2.0, 0.0) == -2.0
    assert alpha_at("uniform", 2.0, 0.3) == 0.0 and alpha_at("constant_hard", 1.0, 0.9) == -1.0


def test_weights_follow_difficulty_and_progress():
    ell = torch.tensor([0.1, 1.0, 3.0])
    early = progressive_weights(ell, "easy_to_hard", 1.0, 0.0)
    late = progressive_weights(ell, "easy_to_hard", 1.0, 1.0)
    assert early[0] > early[1] > early[2] and late[0] < late[1] < late[2]  # easy first, hard last
    assert torch.allclose(early.mean(), torch.tensor(1.0)) and torch.allclose(late.mean(), torch.tensor(1.0))
    assert torch.equal(progressive_weights(ell, "easy_to_hard", 1.0, 0.5), torch.ones(3))
    ref = 3 * torch.softmax(-0.4 * ell, 0)  # α(0.3) = 1 − 0.6
    assert torch.allclose(progressive_weights(ell, "easy_to_hard", 1.0, 0.3), ref, atol=1e-7)
    assert not progressive_weights(ell.requires_grad_(True), "constant_easy", 1.0, 0).requires_grad


def test_bad_values_are_one_line():
    with pytest.raises(ValueError, match="method.schedule: 'linear'; choose one of: easy_to_hard"):
        PEG(schedule="linear")
    with pytest.raises(ValueError, match="method.bank_size: -1"):
        PEG(bank_size=-1)


@pytest.fixture(scope="module")
def module():
    from transformers import BertConfig, BertModel

    ctx = BuildContext(seq_len=32, cache_dir=Path(os.environ["METHODBENCH_CACHE"]), seed=0, batch_size=4,
                       max_steps=4, accumulate_grad_batches=1)
    data = Retrieval(source="keyword-pairs", generator={"n_passages": 80}, query_len=12).build(ctx)
    method = PEG(hard_negatives=2, bank_size=6, schedule="uniform")
    data = method.prepare_data(data)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=data.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    return DualEncoderModule(BertModel(cfg, add_pooling_layer=False), method, data=data)


def test_uniform_peg_is_infonce_over_in_batch_hard_and_bank(module):
    train, _ = module.data.make_loaders(4, 3, seed=0)
    batches = list(train)
    module.train()
    module.method.loss(module, batches[0])  # fills the bank with 4 passages
    b = batches[1]
    v = module.encode_batch(b)
    bank = module.bank.negatives()
    assert v["hard"].shape == (4, 2, 16) and bank.shape == (4, 16)
    ref = info_nce(v["q"], v["p"], v["hard"], bank, module.temperature, p_rows=b["p_rows"])
    got = module.method.loss(module, b)
    assert torch.allclose(got, ref, atol=1e-6)
    # the denominator: B − 1 in-batch + 1 positive + H hard + N bank logits per query
    from methods.retrieval.losses import contrastive_logits

    assert contrastive_logits(v["q"], v["p"], v["hard"], bank).shape == (4, 4 - 1 + 1 + 2 + 4)


def test_prepare_data_mines_negatives_that_are_not_positives(module):
    d = module.data
    assert d.hard_negatives == 2 and d.bank_size == 6
    for qid, pid in d.train_pairs:
        assert pid not in d.hard[qid]
