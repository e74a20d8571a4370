"""Temperature sampling, scalarization and Cooldown as methods (methods/data/balanced.py) on the runner's
multi-domain data: the sampler switches τ at the configured step, upweighting's loss weights are p/q per
example, and, through the methods' own probabilities and losses, the expected gradient of upsampling equals
that of upweighting (the paper's equivalence under full gradient descent). The formula-level properties
(p(1) = q, p → uniform, the enumerated gradient identity on p and w) are in test_data_selection.py."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from methods.data.balanced import Cooldown, Scalarization, TemperatureSampling, mixture_probs
from methods.data.mixing import natural_probs, scalarization_weights, temperature_probs
from runner.data import build_data
from tasks.mixture import MixtureSampler
from tests.conftest import compose_cfg

SEQ = 64


@pytest.fixture(scope="module")
def mix():
    cfg = compose_cfg(["dataset=mixture-tiny", f"model.seq_len={SEQ}", "trainer.max_steps=40",
                       "trainer.accumulate_grad_batches=2"])
    data = build_data(cfg.dataset, SEQ, os.environ["METHODBENCH_CACHE"])
    data.accumulate, data.max_steps = 2, 40  # as MixtureTask.build sets them from the trainer config
    yield data
    data.set_sampling(None)


class StubModule:
    """What a method's loss hook reads of MethodModule: the step, the batch's domains, lm_loss, log."""

    def __init__(self, per_token: torch.Tensor | None = None, domains=None, step: int = 0, logging: bool = False):
        self.per_token, self.batch_domains, self.global_step, self.logging = per_token, domains, step, logging
        self.logged: dict[str, float] = {}

    def _logging_step(self) -> bool:
        return self.logging

    def log(self, key, value, **kwargs):
        self.logged[key] = value

    def lm_loss(self, batch, reduction="mean"):
        return self.per_token if reduction == "none" else self.per_token.mean()


def _frequencies(data, micro_batches: range, batch_size: int = 64) -> np.ndarray:
    sampler = MixtureSampler(data, batch_size, micro_batches.stop, seed=1)
    counts = np.zeros(len(data.domains))
    for b in micro_batches:
        np.add.at(counts, sampler.draw(b)[0], 1)
    return counts / counts.sum(), counts.sum()


def _close(freq, p, n, sigmas=5.0) -> bool:
    return bool((np.abs(freq - p) <= sigmas * np.sqrt(p * (1 - p) / n) + 1e-12).all())


def test_cooldown_switches_at_the_configured_step_in_the_sampler(mix):
    method = Cooldown(taus=[50.0, 1.0], switch_steps=[0.5])  # half of trainer.max_steps=40: step 20
    method.prepare_data(mix)
    assert method.schedule.switch_steps == [20]
    sizes, sampled = mix.sizes, mix.sampled
    hot, q = mixture_probs(sizes, sampled, 50.0), mix.natural_probs()
    np.testing.assert_allclose(mix.probs(19), hot)
    np.testing.assert_allclose(mix.probs(20), q)
    # accumulate_grad_batches=2: micro-batches 0..39 are steps 0..19, 40.. are steps 20..
    before, n1 = _frequencies(mix, range(0, 40))
    after, n2 = _frequencies(mix, range(40, 80))
    assert _close(before, hot, n1) and not _close(before, q, n1)
    assert _close(after, q, n2) and not _close(after, hot, n2)
    assert before[3] == after[3] == 0  # the sample: false domain, under every τ
    steps = Cooldown(taus=[5.0, 2.0, 1.0], switch_steps=[7, 12])  # ints are steps
    assert [steps.tau(s) for s in (0, 6, 7, 11, 12, 99)] == [5.0, 5.0, 2.0, 2.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="trainer.max_steps"):
        Cooldown(switch_steps=[0.5]).resolve(None)
    with pytest.raises(ValueError, match="method.switch_steps"):
        Cooldown(taus=[5.0, 1.0], switch_steps=[1, 2])


def test_temperature_sampling_draws_p_tau(mix):
    TemperatureSampling(tau=3.0).prepare_data(mix)
    p = mixture_probs(mix.sizes, mix.sampled, 3.0)
    np.testing.assert_allclose(p[:3], temperature_probs(mix.sizes[:3], 3.0))
    freq, n = _frequencies(mix, range(0, 60))
    assert _close(freq, p, n) and not _close(freq, mix.natural_probs(), n)


def test_scalarization_weights_are_p_over_q_per_example(mix):
    method = Scalarization(tau=3.0)
    method.prepare_data(mix)
    np.testing.assert_allclose(mix.probs(0), mix.natural_probs())  # it draws with the natural q
    w = method.weights(0)
    np.testing.assert_allclose(w[:3], scalarization_weights(mix.sizes[:3], 3.0), rtol=1e-12)
    assert w[3] == 0.0
    torch.manual_seed(0)
    per_token = torch.rand(6, 5, dtype=torch.float64)
    domains = torch.tensor([0, 2, 2, 1, 0, 2])
    loss = method.loss(StubModule(per_token, domains), torch.zeros(6, 6, dtype=torch.long))
    expected = sum(w[k] * per_token[b].mean() for b, k in enumerate(domains.tolist())) / 6
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    one = Scalarization(tau=1.0)
    one.prepare_data(mix)  # τ = 1: every weight is 1, the baseline's loss
    assert float(one.loss(StubModule(per_token, domains), None)) == pytest.approx(float(per_token.mean()), rel=1e-6)
    with pytest.raises(ValueError, match="domain-labelled"):
        method.loss(StubModule(per_token, None), None)
    mix.set_sampling(None)


def test_expected_gradient_of_upsampling_equals_upweighting_through_the_methods():
    """Exact expectation over one-example batches (the loss is a batch mean, so the expectation does not depend
    on B), with each method's own sampling probabilities and loss hook."""

    class Data:
        domains, sampled = ["big", "mid", "tiny", "target"], [True, True, True, False]
        sizes = np.array([6, 3, 1, 2])

        def set_sampling(self, fn):
            self.fn = fn

    torch.manual_seed(0)
    blocks = [torch.randn(n, 4, dtype=torch.float64) for n in Data.sizes]
    theta = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def per_token(x):  # (1, T=3) token losses of block x: a smooth non-quadratic function of θ
        return (0.5 * (theta - x[1:]) ** 2 + torch.sin(theta * x[0])).unsqueeze(0)

    def expected_grad(method, data):
        method.prepare_data(data)
        draw = data.fn(0)
        total = 0.0
        for k, xs in enumerate(blocks):
            for x in xs:
                module = StubModule(per_token(x), torch.tensor([k]))
                total = total + draw[k] / len(xs) * method.loss(module, None)
        return torch.autograd.grad(total, theta)[0]

    for tau in (2.0, 7.0):
        g_up = expected_grad(TemperatureSampling(tau=tau), Data())
        g_weight = expected_grad(Scalarization(tau=tau), Data())
        torch.testing.assert_close(g_up, g_weight, rtol=1e-12, atol=1e-12)
        g_natural = expected_grad(TemperatureSampling(tau=1.0), Data())
        assert (g_natural - g_up).abs().max() > 1e-3  # and τ matters, so the identity has teeth
    q = natural_probs(Data.sizes[:3])
    np.testing.assert_allclose(mixture_probs(Data.sizes, Data.sampled, 1.0)[:3], q)


def test_tau_and_p_are_logged_at_logging_steps(mix):
    method = Cooldown(taus=[4.0, 1.0], switch_steps=[10])
    method.prepare_data(mix)
    quiet = StubModule(torch.ones(2, 3), torch.tensor([0, 1]), step=3, logging=False)
    method.loss(quiet, None)
    assert quiet.logged == {}
    for step, tau in ((3, 4.0), (10, 1.0)):
        module = StubModule(torch.ones(2, 3), torch.tensor([0, 1]), step=step, logging=True)
        method.loss(module, None)
        assert module.logged["mix/tau"] == tau
        p = mixture_probs(mix.sizes, mix.sampled, tau)
        assert [module.logged[f"mix/p/{d}"] for d in mix.domains] == pytest.approx(p.tolist())
    mix.set_sampling(None)


@pytest.mark.e2e
def test_cooldown_run_resumes_exactly_across_the_switch(tmp_path):
    """Through the runner: a cooldown run on the mixture, resumed from its step-3 checkpoint (τ switches at
    step 4), ends with the losses of the uninterrupted run: the domain draws are a function of the step."""
    from runner.train import run
    from tests.conftest import TINY

    overrides = [*TINY, "method=cooldown", "method.switch_steps=[4]", "dataset=mixture-tiny", "trainer.max_steps=6",
                 "trainer.val_every_n_steps=6", "trainer.checkpoint_every_n_steps=3", "logger=none",
                 f"paths.runs_dir={tmp_path}"]
    full = run(compose_cfg(overrides), run_dir=tmp_path / "full", identity="full")
    ckpts = tmp_path / "full" / "checkpoints"
    for f in ckpts.iterdir():
        if f.name != "step000003.ckpt":
            f.unlink()
    (tmp_path / "full" / "summary.json").unlink()  # as a run killed before its end: no summary (a finished run is not resumed)
    resumed = run(compose_cfg([*overrides, f"resume={tmp_path / 'full'}"]), run_dir=tmp_path / "full", identity="full")
    assert resumed["steps"] == full["steps"] == 6
    for key in ("train/loss", "val/loss", "val/loss/prose", "val/loss/code", "val/loss/markov", "val/loss/target"):
        assert resumed[key] == pytest.approx(full[key], abs=1e-6), key
