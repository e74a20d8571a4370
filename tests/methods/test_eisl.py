"""EISL's properties (methods/losses/eisl.py) and its noisy-copy task (methods/losses/noisy_copy.py,
runner/seq2seq.py): n = T is cross-entropy, n = 1 with a hard choice ignores target order, the convolution is
the diagonal sum, padding changes nothing per sequence, the task is seeded and only its training targets are
noisy, and `python -m runner method=eisl model=t5-tiny dataset=noisy-copy` trains and reports BLEU."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from methods.losses.eisl import EISL, eisl_loss, match_costs, ngram_costs, resolve_ngrams
from methods.losses.noisy_copy import BLANK, NoisyCopy
from tests.conftest import run_cli, run_dirs


def random_log_probs(B=3, T=7, V=11, seed=0, spread=12.0) -> torch.Tensor:
    """Log-probabilities with a wide spread, so that some fall below the −20 floor."""
    g = torch.Generator().manual_seed(seed)
    return F.log_softmax(spread * torch.randn(B, T, V, generator=g, dtype=torch.float64), dim=-1)


def random_targets(B=3, T=7, V=11, seed=1) -> torch.Tensor:
    return torch.randint(1, V, (B, T), generator=torch.Generator().manual_seed(seed))


# -- the loss ------------------------------------------------------------------------------------
@pytest.mark.parametrize("ngram", [[0], [7]])  # 0: the whole output (official convention), or T itself
def test_whole_sequence_ngram_is_token_averaged_cross_entropy_with_floor(ngram):
    lp, y = random_log_probs(), random_targets()
    picked = lp.gather(2, y[..., None])[..., 0]
    assert (picked < -20).any(), "the test needs log-probabilities below the floor"
    ce_floored = -picked.clamp_min(-20).mean()
    loss = eisl_loss(lp, y, ngram)  # gumbel selection: a single window leaves nothing to choose
    torch.testing.assert_close(loss, ce_floored, rtol=1e-12, atol=1e-12)
    assert not torch.isclose(loss, -picked.mean())  # the floor matters: plain CE differs


def test_whole_sequence_ngram_equals_the_runner_cross_entropy_on_a_t5_batch():
    """Through the method's own path: the decoder teacher-forced on an equal-length batch, EISL with n = T
    equals the seq2seq module's cross-entropy (kernel registry); the floor is inactive at random init."""
    from models.t5 import T5
    from tasks.seq2seq import Seq2SeqModule

    torch.manual_seed(0)
    model = T5(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2).build(vocab_size=40, seq_len=16)
    module = Seq2SeqModule(model, EISL())
    sources, targets = torch.randint(2, 40, (4, 6)), torch.randint(2, 40, (4, 6))
    targets[:, -1] = 1  # EOS; no padding: every target has the full length
    batch = torch.stack([sources, targets], dim=1)
    method = EISL(ngram=[0], ce_fraction=0.0, teacher_forcing=1.0)
    torch.testing.assert_close(method.loss(module, batch), module.lm_loss(batch), rtol=1e-5, atol=1e-6)
    mixed = EISL(ngram=[0], ce_fraction=0.0, ce_weight=0.3, eisl_weight=0.7)
    torch.testing.assert_close(mixed.loss(module, batch), module.lm_loss(batch), rtol=1e-5, atol=1e-6)


def test_unigram_with_hard_selection_ignores_target_order():
    lp, y = random_log_probs(T=9), random_targets(T=9)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(2))
    a = eisl_loss(lp, y, [1], selection="max")
    b = eisl_loss(lp, y[:, perm], [1], selection="max")
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # bigrams and cross-entropy do see the order
    assert not torch.isclose(eisl_loss(lp, y, [2], selection="max"), eisl_loss(lp, y[:, perm], [2], selection="max"))
    assert not torch.isclose(eisl_loss(lp, y, [0]), eisl_loss(lp, y[:, perm], [0]))


def test_convolution_equals_explicit_diagonal_loop():
    c0 = torch.randn(2, 9, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))  # T' != T
    for n in (1, 2, 3, 6):
        loop = torch.zeros(2, 9 - n + 1, 6 - n + 1, dtype=torch.float64)
        for i in range(9 - n + 1):
            for j in range(6 - n + 1):
                loop[:, i, j] = sum(c0[:, i + k, j + k] for k in range(n)) / n
        torch.testing.assert_close(ngram_costs(c0, n), loop, rtol=1e-12, atol=1e-12)


def test_match_costs_gather_floor_and_zeroed_pad_targets():
    lp, y = random_log_probs(T=5), random_targets(T=5)
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[0, 3:] = False
    c0 = match_costs(lp, y, mask)
    for b in range(3):
        for i in range(5):
            for j in range(5):
                want = max(float(lp[b, i, y[b, j]]), -20.0) if mask[b, j] else 0.0
                assert float(c0[b, i, j]) == pytest.approx(want, abs=1e-12)


def test_ngram_orders_and_weights_follow_the_official_rules():
    assert resolve_ngrams([1, 2], 10) == ([1, 2], [0.8, 0.2])
    assert resolve_ngrams([1, 2, 4], 10) == ([1, 2, 4], [1 / 3] * 3)
    assert resolve_ngrams([0], 10) == ([10], [1.0])
    assert resolve_ngrams([-1, 2], 10) == ([9, 2], [0.5, 0.5])
    assert resolve_ngrams([12], 10) == ([10], [1.0])  # none fits: the whole output
    assert resolve_ngrams([1, 12], 10, [0.3, 0.7]) == ([1], [0.3])


def test_a_shifted_prediction_keeps_its_ngram_credit_but_loses_cross_entropy():
    """The paper's motivation: one inserted token shifts every position; CE punishes all of them, EISL
    still finds every target n-gram one position later."""
    V, T = 20, 8
    y = torch.arange(1, T + 1)[None]
    said = torch.cat([torch.tensor([[15]]), y[:, :-1]], dim=1)  # an insertion, then the target
    lp = F.log_softmax(torch.full((1, T, V), -8.0).scatter(2, said[..., None], 8.0), dim=-1)
    ce = float(eisl_loss(lp, y, [0]))
    ngram = float(eisl_loss(lp, y, [1, 2], selection="max"))
    assert ce > 14 and ngram < 0.2 * ce, (ce, ngram)


def test_padding_changes_nothing_per_sequence():
    """A padded batch gives the mean of each sequence's own loss (mean over its real n-grams, output
    windows past its length left out)."""
    lp, y = random_log_probs(B=2, T=8), random_targets(B=2, T=8)
    mask = torch.ones_like(y, dtype=torch.bool)
    mask[0, 5:] = False
    y = y.masked_fill(~mask, 0)
    both = eisl_loss(lp, y, [1, 2], target_mask=mask, output_mask=mask, selection="max")
    first = eisl_loss(lp[:1, :5], y[:1, :5], [1, 2], selection="max")
    second = eisl_loss(lp[1:], y[1:], [1, 2], selection="max")
    torch.testing.assert_close(both, (first + second) / 2, rtol=1e-12, atol=1e-12)


def test_gumbel_selection_is_a_convex_choice_between_mean_and_best_window():
    """Gumbel weights are a distribution over output windows: the matched cost of each n-gram lies between
    the worst and the best window, so the loss lies between the max-selection loss and the worst case;
    its gradient reaches the log-probabilities."""
    lp = random_log_probs(T=6).requires_grad_(True)
    y = random_targets(T=6)
    torch.manual_seed(0)
    g = eisl_loss(lp, y, [1, 2])
    best = eisl_loss(lp, y, [1, 2], selection="max")
    worst = -eisl_loss(-lp.clamp_min(-20), y, [1, 2], selection="max")
    assert float(best) - 1e-9 <= float(g) <= float(worst) + 1e-9
    g.backward()
    assert lp.grad is not None and lp.grad.abs().sum() > 0


@pytest.mark.parametrize("bad, msg", [(dict(selection="argmax"), "selection"), (dict(tau=0), "tau"),
                                      (dict(ce_fraction=1.5), "ce_fraction"), (dict(teacher_forcing=-1), "teacher_forcing"),
                                      (dict(ngram=[1, 2], ngram_weights=[1.0]), "ngram_weights"),
                                      (dict(ce_weight=0.0, eisl_weight=0.0), "eisl_weight")])
def test_bad_arguments_name_the_key(bad, msg):
    with pytest.raises(ValueError, match=msg):
        EISL(**bad)


# -- the noisy-copy task ---------------------------------------------------------------------------
def small(**kw) -> NoisyCopy:
    return NoisyCopy(**{"words": 30, "train_size": 400, "val_size": 50, "seed": 5, **kw})


def test_task_is_a_pure_function_of_its_seed():
    a, b = small(shuffle=3, blank=0.2).generate(), small(shuffle=3, blank=0.2).generate()
    assert a == b
    c = small(shuffle=3, blank=0.2, seed=6).generate()
    assert c.train_source != a.train_source and c.val_source != a.val_source


def test_noise_only_on_training_targets_and_references_clean():
    clean = small().generate()
    to_target = small().target_of()
    assert sorted(to_target.values()) == sorted(set(to_target.values()))  # a bijection
    for noise in (dict(shuffle=2), dict(shuffle=-1), dict(repetition=0.3), dict(blank=0.3),
                  dict(shuffle=2, repetition=0.3, blank=0.3)):
        noisy = small(**noise).generate()
        # sources, clean targets and validation references do not depend on the noise
        assert noisy.train_source == clean.train_source and noisy.val_source == clean.val_source
        assert noisy.train_clean == clean.train_clean == [[to_target[w] for w in s] for s in clean.train_source]
        assert noisy.val_target == clean.val_target == [[to_target[w] for w in s] for s in clean.val_source]
        changed = sum(t != c for t, c in zip(noisy.train_target, noisy.train_clean)) / len(noisy.train_clean)
        assert changed > 0.2, (noise, changed)
    assert clean.train_target == clean.train_clean  # no noise: the training targets are the clean ones


def dedup(words: list[str]) -> list[str]:
    return [w for i, w in enumerate(words) if i == 0 or words[i - 1] != w]


def test_each_noise_does_what_it_says():
    shuffled = small(shuffle=2).generate()
    for t, c in zip(shuffled.train_target, shuffled.train_clean):
        assert Counter(t) == Counter(c)  # a reordering
        assert sum(a != b for a, b in zip(t, c)) <= 3  # two chained swaps move at most three words
    repeated = small(repetition=0.5).generate()
    for t, c in zip(repeated.train_target, repeated.train_clean):  # c with some words doubled in place
        assert dedup(t) == dedup(c) and not Counter(c) - Counter(t)
    extra = sum(map(len, repeated.train_target)) - sum(map(len, repeated.train_clean))
    assert 0.4 < extra / sum(map(len, repeated.train_clean)) < 0.6
    blanked = small(blank=0.3).generate()
    hits = sum(b == BLANK for t in blanked.train_target for b in t)
    for t, c in zip(blanked.train_target, blanked.train_clean):
        assert len(t) == len(c) and all(a in (b, BLANK) for a, b in zip(t, c))
    assert 0.25 < hits / sum(map(len, blanked.train_clean)) < 0.35


def test_runner_data_keeps_references_clean_and_batches_resume():
    from tasks.base import BuildContext
    from tasks.seq2seq import Pairs, collate

    task = Pairs("noisy-copy", generator={"words": 30, "train_size": 200, "val_size": 20, "shuffle": -1, "seed": 5})
    data = task.build(BuildContext(seq_len=16, cache_dir=Path("."), seed=0, batch_size=8, max_steps=0,
                                   accumulate_grad_batches=1))
    corpus = NoisyCopy(words=30, train_size=200, val_size=20, shuffle=-1, seed=5).generate()
    assert data.references == [" ".join(t) for t in corpus.val_target]
    assert [data.decode(t) for _, t in data.val] == data.references
    assert [data.decode(t) for _, t in data.train] == [" ".join(t) for t in corpus.train_target]
    eos = data.tokenizer.eos_token_id
    assert all(s[-1] == eos and t[-1] == eos for s, t in data.train + data.val)
    batch = collate(data.train[:4])
    assert batch.shape[:2] == (4, 2) and int(batch[0, 1, len(data.train[0][1]) - 1]) == eos
    whole, _ = data.make_loaders(8, 6, seed=0, start=lambda: 0)
    resumed, _ = data.make_loaders(8, 6, seed=0, start=lambda: 4)
    assert all(torch.equal(a, b) for a, b in zip(list(whole)[4:], list(resumed)))


def test_bad_generator_keys_are_one_line_config_errors():
    from runner.config import validate
    from runner.errors import ConfigError
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["model=t5-tiny", "dataset=noisy-copy", "dataset.generator.shuffle=-3",
                       "+dataset.generator.noise=1"])
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    text = "\n".join(e.value.problems)
    assert "noise" in text and "choose keys from" in text
    # the encoder-decoder and the seq2seq task go together: each declares what it is (model kind / model_kinds)
    with pytest.raises(ConfigError, match="seq2seq-lm model.*or for model=t5-tiny: dataset=.*noisy-copy"):
        validate(compose_cfg(["model=t5-tiny"]))
    with pytest.raises(ConfigError, match="trains seq2seq-lm models; choose one of: .*model=t5-tiny"):
        validate(compose_cfg(["dataset=noisy-copy"]))
    validate(compose_cfg(["model=t5-tiny", "dataset=noisy-copy"]))


# -- end to end ------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_eisl_trains_through_the_runner_and_reports_bleu(tmp_path):
    run_cli("method=eisl", "model=t5-tiny", "dataset=noisy-copy", "dataset.generator.train_size=256",
            "dataset.generator.val_size=32", "dataset.batch_size=8", "trainer.max_steps=4",
            "trainer.val_every_n_steps=4", "trainer.val_batches=2", "hardware.threads=1", "logger=none",
            runs_dir=tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["steps"] == 4 and math.isfinite(s["val/loss"]) and math.isfinite(s["train/loss"])
    assert 0.0 <= s["eval/bleu"] <= 100.0 and 0.0 <= s["eval/exact_match"] <= 1.0
