"""MPU's properties (methods/classification/mpu.py): the length-sensitive prior pi(L), the PU risk and its clamp, the
pseudo-labels, CE + lambda * L_PU with lambda = 0 exactly the plain CE, and sentence-deletion multiscaling."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from methods.classification.mpu import (
    MPU,
    binary_f1,
    delete_sentences,
    length_prior,
    mpu_loss,
    multiscale,
    pu_loss,
    pu_pseudo_labels,
    pu_risks,
    split_sentences,
)


# -- the prior ---------------------------------------------------------------------------------------------
def matrix_power_prior(length: int, pi: float) -> float:
    """prior_kit.expectation_matrix read literally (float64): the (L+1)-state chain's L-th power from state 0."""
    if length < 3:
        return pi
    trans = np.zeros((length + 1, length + 1))
    trans[1:, :-1] += np.eye(length) * pi
    trans[:-1, 1:] += np.eye(length) * (1 - pi)
    trans[0, 0] += pi
    trans[length, length] += 1 - pi
    dist = np.linalg.matrix_power(trans, length)[0]
    return 1.0 - (dist * np.arange(length + 1)).sum() / length


@pytest.mark.parametrize("pi", [0.2, 0.3])
def test_prior_is_pi_below_three_non_decreasing_and_tends_to_two_pi(pi):
    table = length_prior(4096, pi)
    assert (table[:3] == pi).all()
    assert (np.diff(table) >= 0).all() and table[3] > pi
    gap = 2 * pi - table
    assert (gap[3:] > 0).all() and (np.diff(gap[3:]) < 0).all()  # below 2 pi, closer at every length
    assert gap[4096] < 2e-4  # ~ pi / ((1 - 2 pi) L)
    assert gap[4096] * 4096 == pytest.approx(pi / (1 - 2 * pi), rel=1e-2)


def test_prior_matches_the_catalog_values_and_the_matrix_definition():
    table = length_prior(60, 0.2)
    assert table[10] == pytest.approx(0.367, abs=5e-4) and table[55] == pytest.approx(0.394, abs=5e-4)
    for length in range(61):
        assert abs(table[length] - matrix_power_prior(length, 0.2)) <= 1e-12, length
    assert length_prior(512, 0.2)[512] == pytest.approx(0.39935, abs=1e-5)


# -- pseudo-labels and the PU risk -------------------------------------------------------------------------
def test_pseudo_labels_follow_the_code():
    labels = torch.tensor([0, 0, 1, 1, 0, 1])          # 1 = machine
    lengths = torch.tensor([55, 54, 54, 55, 200, 3])
    assert pu_pseudo_labels(labels, lengths, 55).tolist() == [1, 0, -1, 0, 1, -1]  # P, ignored, U, ignored, P, U


def test_pu_risks_equal_a_hand_computation():
    s = torch.tensor([0.9, 0.2, 0.7, 0.4, 0.1], dtype=torch.float64)
    pseudo = torch.tensor([1, 1, -1, -1, 0])
    prior = torch.tensor([0.39, 0.37, 0.3, 0.2, 0.25], dtype=torch.float64)
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    r_p = (0.39 * sig(-0.9) + 0.37 * sig(-0.2)) / 2
    r_n = (sig(0.7) + sig(0.4)) / 2 - (0.39 * sig(0.9) + 0.37 * sig(0.2)) / 2
    got_p, got_n = pu_risks(s, pseudo, prior)
    assert got_p.item() == pytest.approx(r_p, abs=1e-14) and got_n.item() == pytest.approx(r_n, abs=1e-14)
    assert r_n > 0 and pu_loss(s, pseudo, prior).item() == pytest.approx(r_p + r_n, abs=1e-14)
    # nothing to learn from: no P and no U -> 0
    assert pu_loss(s, torch.zeros(5, dtype=torch.long), prior).item() == 0


def _clamped_case():
    """Scores with R_N < 0 although U is not empty (real scores; a probability s cannot do it, see below)."""
    s = torch.tensor([4.0, 3.0, -3.0, 0.5], dtype=torch.float64, requires_grad=True)
    pseudo = torch.tensor([1, 1, -1, 0])
    prior = torch.tensor([0.4, 0.4, 0.2, 0.2], dtype=torch.float64)
    return s, pseudo, prior


def test_loss_is_exactly_r_p_when_r_n_is_negative():
    s, pseudo, prior = _clamped_case()
    r_p, r_n = pu_risks(s, pseudo, prior)
    assert r_n.item() < 0
    loss = pu_loss(s, pseudo, prior)
    assert torch.equal(loss, r_p)
    (g_loss,) = torch.autograd.grad(loss, s)
    (g_rp,) = torch.autograd.grad(pu_risks(s, pseudo, prior)[0], s)
    assert torch.equal(g_loss, g_rp)
    assert g_loss[2] == 0 and g_loss[3] == 0  # the U and the ignored example get no gradient then


def test_clamp_with_probability_scores_fires_exactly_on_batches_without_unlabeled():
    """With s = P(human) in [0, 1], l(-s) = sigmoid(s) >= 0.5 > 2 pi * sigmoid(1) >= pi(L) * l(-s) for pi < 0.34: R_N > 0
    whenever U is non-empty, and R_N < 0 whenever U is empty and P is not; then the loss is R_P exactly."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 200, (64,), generator=g)
    prior = torch.as_tensor(length_prior(200, 0.2))[lengths]
    for trial in range(20):
        s = torch.rand(64, generator=g, dtype=torch.float64)
        labels = torch.randint(0, 2, (64,), generator=g)
        if trial % 2:
            labels[lengths < 55] = 0  # no short machine text: no U
        pseudo = pu_pseudo_labels(labels, lengths, 55)
        r_p, r_n = pu_risks(s, pseudo, prior)
        has_u = bool((pseudo == -1).any())
        assert (r_n.item() > 0) == has_u
        assert torch.equal(pu_loss(s, pseudo, prior), r_p + r_n if has_u else r_p)


# -- the total loss ----------------------------------------------------------------------------------------
class TinyClassifier(nn.Module):
    def __init__(self, vocab=50, dim=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, 2)

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).float()
        return self.head((self.emb(input_ids) * m).sum(1) / m.sum(1))


@dataclass
class StubModule:
    """What MPU.loss uses of the ClassifierModule (the contract): logits(batch) and lm_loss(batch)."""
    model: nn.Module

    def logits(self, batch):
        return self.model(batch["input_ids"], batch["attention_mask"])

    def lm_loss(self, batch, reduction="mean"):
        return F.cross_entropy(self.logits(batch), batch["labels"], reduction=reduction)


def make_batch(seed=0, n=16, width=80):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, width + 1, (n,), generator=g)
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    ids = torch.randint(1, 50, (n, width), generator=g) * mask
    labels = torch.randint(0, 2, (n,), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "index": torch.arange(n)}


def _grads(loss, model):
    return [g.clone() for g in torch.autograd.grad(loss, list(model.parameters()))]


def test_lambda_zero_is_the_plain_ce_bitwise():
    torch.manual_seed(0)
    module, batch = StubModule(TinyClassifier()), make_batch()
    plain = module.lm_loss(batch)
    loss = MPU(pu_weight=0).loss(module, batch)
    assert torch.equal(loss, plain)
    assert all(torch.equal(a, b) for a, b in zip(_grads(loss, module.model), _grads(module.lm_loss(batch), module.model)))
    logits = module.logits(batch)
    lengths = batch["attention_mask"].sum(1)
    assert torch.equal(mpu_loss(logits, batch["labels"], lengths, 0.0), F.cross_entropy(logits, batch["labels"]))


def test_total_loss_is_ce_plus_lambda_pu_on_token_lengths():
    torch.manual_seed(0)
    module, batch = StubModule(TinyClassifier()), make_batch(seed=1)
    method = MPU(pu_weight=0.4, prior=0.2, len_thres=40)
    loss = method.loss(module, batch)
    logits, labels = module.logits(batch), batch["labels"]
    lengths = batch["attention_mask"].sum(1)                        # L: non-pad tokens
    pseudo = pu_pseudo_labels(labels, lengths, 40)
    assert (pseudo == 1).any() and (pseudo == -1).any()
    prior = torch.as_tensor(length_prior(int(lengths.max()), 0.2), dtype=torch.float32)[lengths]
    want = F.cross_entropy(logits, labels) + 0.4 * pu_loss(torch.softmax(logits, -1)[:, 0], pseudo, prior)
    assert (loss - want).abs().item() <= 1e-7
    grads = _grads(loss, module.model)
    assert max((a - b).abs().max().item() for a, b in zip(grads, _grads(module.lm_loss(batch), module.model))) > 1e-4
    # padding more does not change L, hence not the loss
    wide = {**batch, "input_ids": F.pad(batch["input_ids"], (0, 7)), "attention_mask": F.pad(batch["attention_mask"], (0, 7))}
    assert (method.loss(module, wide) - loss).abs().item() <= 1e-6


# -- text multiscaling -------------------------------------------------------------------------------------
WORDS = "the model writes text and a person reads it while the detector decides who wrote each line".split()


def random_text(rng: np.random.Generator, n_sentences: int) -> str:
    out = []
    for _ in range(n_sentences):
        words = list(rng.choice(WORDS, size=int(rng.integers(3, 12))))
        out.append(" ".join(words).capitalize() + str(rng.choice([".", "!", "?"])))
    return rng.choice([" ", "  ", "\n"]).join(out)


def is_subsequence(part: list[str], whole: list[str]) -> bool:
    it = iter(whole)
    return all(any(p == w for w in it) for p in part)


@pytest.mark.parametrize("p", [0.25, 0.6, 1.0])
def test_sentence_deletion_removes_whole_sentences_and_keeps_at_least_one(p):
    rng = np.random.default_rng(0)
    texts = [random_text(rng, int(rng.integers(1, 8))) for _ in range(120)]
    out = multiscale(texts, p, seed=5)
    changed = 0
    for text, new in zip(texts, out):
        sentences = split_sentences(text)
        assert new.strip()
        if new == text:
            continue
        kept = split_sentences(new)  # fewer sentences, or all of them joined by single spaces (as the code does)
        assert 1 <= len(kept) <= len(sentences) and is_subsequence(kept, sentences)
        assert new == " ".join(kept)
        changed += len(kept) < len(sentences)
    assert (changed == 0) if p == 1.0 else changed > 30  # p = 1 drops everything: the code keeps the original
    one = "Only one sentence here, with a comma."
    assert delete_sentences(one, 0.99, np.random.default_rng(0)) == one


def test_sentence_deletion_rate_is_p():
    rng = np.random.default_rng(1)
    texts = [random_text(rng, 4) for _ in range(400)]
    kept = [len(split_sentences(t)) for t in multiscale(texts, 0.25, seed=0)]
    want = 4 * 0.75 + 4 * 0.25**4  # an all-dropped text keeps its 4 sentences
    sigma = (4 * 0.25 * 0.75) ** 0.5 / len(texts) ** 0.5
    assert abs(np.mean(kept) - want) < 5 * sigma


def test_sentence_deletion_is_deterministic_for_a_seed():
    rng = np.random.default_rng(2)
    texts = [random_text(rng, 6) for _ in range(50)]
    a, b = multiscale(texts, 0.25, seed=7), multiscale(texts, 0.25, seed=7)
    assert a == b and multiscale(texts, 0.25, seed=8) != a
    assert multiscale(texts[10:20], 0.25, seed=7) != a[10:20]  # row i is seeded by (seed, i) ...
    assert multiscale(texts[:20], 0.25, seed=7) == a[:20]      # ... so a prefix is unchanged


# -- the method's hooks ------------------------------------------------------------------------------------
@dataclass
class FakeData:
    train_texts: list = field(default_factory=list)
    train_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    task_type: str = "classification"
    num_labels: int = 2
    source: str = "aigt"

    def replace(self, train_texts=None, train_labels=None, val_texts=None, val_labels=None):
        return replace(self, train_texts=train_texts if train_texts is not None else self.train_texts,
                       train_labels=train_labels if train_labels is not None else self.train_labels)


def test_prepare_data_deletes_sentences_seeded_and_keeps_labels():
    rng = np.random.default_rng(3)
    data = FakeData([random_text(rng, 5) for _ in range(40)], np.arange(40) % 2)
    assert MPU(deletion_prob=0.0).prepare_data(data) is data
    out = MPU(deletion_prob=0.25, seed=11).prepare_data(data)
    assert out.train_texts == multiscale(data.train_texts, 0.25, seed=11) and out.train_texts != data.train_texts
    assert out.train_labels is data.train_labels
    torch.manual_seed(11)  # seed: null -> the run's seed (torch.initial_seed after seed_everything)
    assert MPU(deletion_prob=0.25).prepare_data(data).train_texts == out.train_texts
    with pytest.raises(ValueError, match="binary classification"):
        MPU().prepare_data(FakeData(num_labels=3))


def test_config_checks_and_f1():
    with pytest.raises(ValueError) as e:
        MPU(pu_weight=-1, prior=0.0, deletion_prob=2, sentence_splitter="regex")
    assert all(k in str(e.value) for k in ("pu_weight", "prior", "deletion_prob", "sentence_splitter"))
    assert MPU.needs_task == frozenset({"text-classification"})
    pred, labels = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 1, 0, 1])
    assert binary_f1(pred, labels) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # machine = positive class
    assert binary_f1(np.zeros(3, int), np.zeros(3, int)) == 0.0


# -- end to end --------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_runs_through_the_runner(tmp_path):
    """method=mpu on a binary keyword task (12-40 words: with len_thres=28 tokens both P and U occur)."""
    from tests.conftest import run_in_process

    s = run_in_process(["model=bert-tiny", "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1",
                        "model.num_heads=2", "model.seq_len=48", "method=mpu", "method.lr=3e-3", "method.len_thres=28",
                        "dataset=keyword-cls", "++dataset.generator.num_classes=2", "dataset.generator.variant=bag",
                        "++dataset.generator.n=400", "dataset.tokenizer.vocab_size=300", "dataset.batch_size=16",
                        "trainer.max_steps=20", "trainer.val_every_n_steps=20", "trainer.val_batches=2",
                        "hardware.threads=1", "logger=none"], tmp_path / "run")
    assert s["stages"] == ["prepare_data", "train", "evaluate"] and s["steps"] == 20
    assert np.isfinite(s["train/loss"]) and np.isfinite(s["val/loss"])
    assert s["eval/short/n"] > 0 and s["eval/long/n"] > 0
    assert s["eval/short/n"] + s["eval/long/n"] == s["data/val_examples"]
    for k in ("eval/short/f1", "eval/long/f1", "eval/short/accuracy", "eval/long/accuracy"):
        assert 0 <= s[k] <= 1, k
