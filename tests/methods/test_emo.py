"""EMO's properties (methods/losses/emo.py): the combined loss equals CE in value but not in gradient; DEMD
lies in [0, 2] under the total-variation bound, vanishes on mass that sits on the target's cost vector,
pushes harder on dissimilar tokens; the chunked DEMD equals the official all-vocabulary computation without
forming N×V tensors; the cost embedding is a frozen, unsaved copy; the diversity measures."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.tracking import LargestAllocation
from methods.losses.emo import (
    COST_BUFFER,
    EMO,
    distinct_n,
    emo_combine,
    expected_cost,
    expected_cost_from_logits,
    repetition_n,
)
from tests.helpers import ValData, tiny_llama


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def unit_rows(V: int, d: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    return F.normalize(torch.randn(V, d, generator=gen(seed), dtype=dtype), dim=1)


def on_logits(logits: torch.Tensor, targets: torch.Tensor, cost: torch.Tensor, **kw) -> torch.Tensor:
    """DEMD through the chunked path with an identity classifier, so `logits` are the hidden states and
    gradients with respect to them are gradients with respect to the logits."""
    eye = torch.eye(logits.shape[-1], dtype=logits.dtype)
    return expected_cost(logits, eye, targets, cost, **kw)


# -- value and gradient of the combination ------------------------------------------------------------
def test_forward_value_equals_cross_entropy_but_gradient_differs():
    g = gen(0)
    V = 50
    logits = (3 * torch.randn(64, V, generator=g)).requires_grad_()
    t = torch.randint(0, V, (64,), generator=g)
    cost = unit_rows(V, 8, seed=1)
    ce = F.cross_entropy(logits, t, reduction="none")
    demd = on_logits(logits, t, cost)
    loss = emo_combine(ce, demd)
    assert (loss - ce).abs().max() <= 1e-6
    g_emo, = torch.autograd.grad(loss.mean(), logits, retain_graph=True)
    g_ce, = torch.autograd.grad(ce.mean(), logits, retain_graph=True)
    g_demd, = torch.autograd.grad(demd.mean(), logits)
    want = 0.5 * (g_ce + (ce / demd).detach()[:, None] * g_demd)
    assert (g_emo - want).abs().max() <= 1e-6
    assert (g_emo - g_ce).abs().max() > 1e-3


def llama(vocab=64, seed=0):  # a transformers LlamaForCausalLM
    return tiny_llama(vocab, seed=seed)


def test_method_loss_equals_the_runner_cross_entropy():
    from methods.module import MethodModule

    model = llama()
    method = EMO(cost_embedding="model")
    model = method.prepare_model(model)
    module = MethodModule(model, method)
    batch = torch.randint(0, 64, (4, 17), generator=gen(3))
    emo_loss = method.loss(module, batch)
    ce = module.lm_loss(batch)
    assert (emo_loss - ce).abs() <= 1e-6
    emo_loss.backward()
    g_emo = model.lm_head.weight.grad.clone()
    model.zero_grad()
    module.lm_loss(batch).backward()
    assert (g_emo - model.lm_head.weight.grad).abs().max() > 1e-6  # the DEMD half moves the gradient


# -- DEMD's range and zeros ---------------------------------------------------------------------------
def test_demd_lies_in_0_2_and_under_total_variation_times_max_cost():
    g = gen(4)
    V, n = 40, 200
    cost = unit_rows(V, 6, seed=5)
    cost[1] = -cost[0]  # a token opposite to token 0
    t = torch.randint(0, V, (n,), generator=g)
    t[:50] = 0
    for scale in (0.1, 1.0, 5.0, 30.0):
        logits = scale * torch.randn(n, V, generator=g)
        logits[:50, 1] = 40.0 + 10 * scale  # mass on the target's opposite
        logits[50:100].scatter_(1, t[50:100, None], 40.0 + 10 * scale)  # mass on the target
        demd = on_logits(logits, t, cost)
        assert demd.min() >= -1e-6 and demd.max() <= 2 + 1e-6
        p = torch.softmax(logits, -1)
        tv = 1 - p.gather(1, t[:, None]).squeeze(1)
        max_cost = (1 - cost[t] @ cost.T).amax(1)
        assert (demd <= tv * max_cost + 1e-6).all()
        assert demd[:50].min() > 1.99 and demd[50:100].max() < 1e-6  # both ends are reached


def test_mass_on_a_token_with_the_target_cost_vector_gives_zero_demd_but_positive_ce():
    V, y, twin = 10, 3, 7
    cost = unit_rows(V, 5, seed=6)
    cost[twin] = cost[y]
    t = torch.tensor([y, y])
    logits = torch.full((2, V), -30.0)
    logits[0, [y, twin]] = 30.0  # half on the target, half on its twin
    logits[1, twin] = 30.0       # all on the twin
    demd = on_logits(logits, t, cost)
    ce = F.cross_entropy(logits, t, reduction="none")
    assert demd.abs().max() <= 1e-6
    assert ce[0] == pytest.approx(0.6931, abs=1e-3) and ce[1] > 50
    other = logits.clone()
    other[:, twin], other[:, 0] = -30.0, 30.0  # the same mass on an unrelated token: DEMD > 0
    assert on_logits(other, t, cost).min() > 0.1


def test_gradient_pushes_harder_on_dissimilar_tokens():
    """Equal mass on a token close to the target and on one far from it: DEMD's gradient lowers the far
    one's logit more (CE's gradient is the same on both)."""
    y, near, far = 0, 1, 2
    cost = torch.zeros(4, 3)
    cost[y] = torch.tensor([1.0, 0.0, 0.0])
    cost[near] = F.normalize(torch.tensor([0.9, 0.43, 0.0]), dim=0)
    cost[far] = F.normalize(torch.tensor([-0.5, 0.0, 0.86]), dim=0)
    cost[3] = F.normalize(torch.tensor([0.0, 1.0, 1.0]), dim=0)
    logits = torch.tensor([[0.5, 1.0, 1.0, 0.0]], requires_grad=True)
    t = torch.tensor([y])
    demd = on_logits(logits, t, cost)
    ce = F.cross_entropy(logits, t, reduction="none")
    g_demd, = torch.autograd.grad(demd.sum(), logits, retain_graph=True)
    g_ce, = torch.autograd.grad(ce.sum(), logits, retain_graph=True)
    g_emo, = torch.autograd.grad(emo_combine(ce, demd).sum(), logits)
    assert g_ce[0, far] == pytest.approx(g_ce[0, near].item(), abs=1e-7)
    assert g_demd[0, far] > 0 and g_demd[0, far] > g_demd[0, near] + 0.1
    assert g_demd[0, near] < 0  # cheaper than the current expected cost: pulled up, like the target
    assert g_demd[0, y] < 0  # and raises the target
    assert g_emo[0, far] > g_emo[0, near] + 1e-3


# -- chunked == the official computation -------------------------------------------------------------
@pytest.mark.parametrize("chunk", [7, 101, None])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_chunked_equals_unchunked(chunk, dtype):
    g = gen(7)
    n, V, D = 37, 101, 12
    x = torch.randn(n, D, generator=g, dtype=dtype)
    w = torch.randn(V, D, generator=g, dtype=dtype)
    b = torch.randn(V, generator=g, dtype=dtype)
    t = torch.randint(0, V, (n,), generator=g)
    cost = unit_rows(V, 9, seed=8, dtype=dtype)
    results = []
    for chunked in (True, False):
        xx, ww, bb = (v.clone().requires_grad_() for v in (x, w, b))
        if chunked:
            demd = expected_cost(xx, ww, t, cost, bias=bb, chunk_size=chunk)
        else:
            demd = expected_cost_from_logits(xx @ ww.T + bb, t, cost)
        (demd * torch.linspace(0.5, 2, n, dtype=dtype)).sum().backward()
        results.append((demd.detach(), xx.grad, ww.grad, bb.grad))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    for got, want in zip(*results):
        assert (got - want).abs().max() <= tol * max(1.0, want.abs().max().item())




def test_chunked_demd_never_forms_n_by_v():
    g = gen(9)
    n, V, D = 256, 4000, 16
    x = torch.randn(n, D, generator=g, requires_grad=True)
    w = torch.randn(V, D, generator=g, requires_grad=True)
    t = torch.randint(0, V, (n,), generator=g)
    cost = unit_rows(V, D, seed=10)
    with LargestAllocation() as tracker:
        expected_cost(x, w, t, cost).sum().backward()
    assert tracker.largest <= max(n * 256, V * D) < n * V


# -- the method ---------------------------------------------------------------------------------------
def test_cost_embedding_is_a_frozen_unsaved_unit_row_copy():
    model = llama()
    model = EMO(cost_embedding="model").prepare_model(model)
    cost = getattr(model, COST_BUFFER)
    assert torch.allclose(cost.norm(dim=1), torch.ones(len(cost)))
    assert torch.allclose(cost, F.normalize(model.lm_head.weight.detach(), dim=1))
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)
    assert torch.allclose(cost, F.normalize(-model.lm_head.weight.detach(), dim=1))  # unchanged by training
    assert COST_BUFFER not in model.state_dict()  # checkpoints load into a plain model
    llama().load_state_dict(model.state_dict())


class BaseModels:
    """A stand-in for the runner's `Method.trained_model`: role -> a model, calls recorded."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __call__(self, role="base", changes=None):
        self.calls.append(role)
        return self.model


@pytest.mark.parametrize("init_from,cost,source", [
    (None, "auto", "base"),         # from scratch: the cached base model's head (the official code: a trained head)
    ("base", "auto", "model"),      # the run starts from a trained model: its own head
    ("/runs/x/checkpoints/last.ckpt", "auto", "model"),
    (None, "model", "model"),       # the option: this model's own head, even from scratch (random)
    ("hf://gpt2", "base", "base"),
])
def test_cost_embedding_comes_from_a_trained_head(init_from, cost, source):
    model, trained = llama(seed=0), llama(seed=1)  # `trained` stands for the cached base model
    method = EMO(cost_embedding=cost, model_init_from=init_from)
    method.trained_model = provider = BaseModels(trained)
    assert method.cost_source == source
    own = F.normalize(model.lm_head.weight.detach(), dim=1)
    got = getattr(method.prepare_model(model), COST_BUFFER)
    want = F.normalize((trained if source == "base" else model).lm_head.weight.detach(), dim=1)
    assert torch.allclose(got, want) and not torch.allclose(own, F.normalize(trained.lm_head.weight.detach(), dim=1))
    assert provider.calls == (["base"] if source == "base" else [])


def test_cost_embedding_from_scratch_needs_the_runners_base_model():
    with pytest.raises(RuntimeError, match="give cost_embedding=model"):
        EMO().prepare_model(llama())  # no runner, so no cached base model to copy
    method = EMO()
    method.trained_model = BaseModels(llama(vocab=80))
    with pytest.raises(ValueError, match=r"base model's head is \(80, 32\), this model's \(64, 32\)"):
        method.prepare_model(llama())
    with pytest.raises(ValueError, match="cost_embedding 'random' is not one of auto, base, model"):
        EMO(cost_embedding="random")


def test_the_config_hands_emo_the_runs_init_from():
    from hydra.utils import instantiate

    from tests.conftest import compose_cfg

    assert instantiate(compose_cfg(["method=emo"]).method).model_init_from is None
    method = instantiate(compose_cfg(["method=emo", "model.init_from=base"]).method)
    assert (method.model_init_from, method.cost_source) == ("base", "model")


@pytest.mark.e2e
def test_runner_from_scratch_copies_the_cached_base_models_head(base_lm, tmp_path, monkeypatch):
    """`python -m runner method=emo` with model.init_from unset: the cost embedding is the head of the same
    cached base model `model.init_from=base` would load (the `base_lm` fixture's), not the random init's."""
    import torch.random

    from tests.conftest import TINY, run_in_process

    seen = []
    original = EMO.prepare_model

    def recording(self, model):
        out = original(self, model)
        seen.append((getattr(out, COST_BUFFER).clone(), out.lm_head.weight.detach().clone()))
        return out

    monkeypatch.setattr(EMO, "prepare_model", recording)
    run_in_process(["method=emo", *TINY, "base_steps=300", "trainer.max_steps=0", "logger=none",
                    "method.eval_prompts=2", "method.new_tokens=4", "method.eval_tokens=64"], tmp_path / "run")
    (cost, own_head), = seen
    base_head = base_lm[0].get_output_embeddings().weight.detach()
    assert torch.allclose(cost, F.normalize(base_head.float(), dim=1))
    assert not torch.allclose(cost, F.normalize(own_head.float(), dim=1))

def test_random_unit_rows_reduce_demd_to_one_minus_the_target_probability():
    """Why the cost embedding must be trained: near-orthogonal random rows (d = 256) make every other token
    cost ~1, so DEMD ~ 1 − Q(y) and the cost carries no similarity (measured here: 0.010 apart on average,
    0.095 at most, where 1 − Q(y) spans 0.71 to 1)."""
    g = gen(12)
    V, n = 500, 256
    cost = unit_rows(V, 256, seed=13)
    logits = 2 * torch.randn(n, V, generator=g)
    t = torch.randint(0, V, (n,), generator=g)
    q_y = torch.softmax(logits, -1).gather(1, t[:, None]).squeeze(1)
    gap = (on_logits(logits, t, cost) - (1 - q_y)).abs()
    assert gap.mean() < 0.02 and gap.max() < 0.15

def test_distinct_and_repetition():
    assert distinct_n([[1, 2, 1, 2]], 1) == 0.5
    assert distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)
    assert distinct_n([[1, 2], [1, 2]], 2) == 0.5  # counted over all continuations together
    assert repetition_n([[5, 5, 5, 5, 5]], 4) == 0.5
    assert repetition_n([[1, 2, 3, 4, 5], [1, 1, 1, 1, 1, 1]], 4) == pytest.approx((0 + 2 / 3) / 2)


def test_evaluate_is_seeded_and_measures_samples_and_references():
    model = EMO(cost_embedding="model").prepare_model(llama())
    blocks = torch.randint(0, 64, (12, 33), generator=gen(11))
    method = EMO(eval_prompts=4, prompt_tokens=8, new_tokens=100, eval_tokens=64)
    first, second = method.evaluate(model, ValData(blocks)), method.evaluate(model, ValData(blocks))
    assert first == second
    assert {"distinct_1", "distinct_2", "distinct_3", "rep_4", "ref_distinct_2", "ref_rep_4", "demd"} <= set(first)
    pick = torch.randperm(12, generator=gen(0))[:4]
    assert first["ref_distinct_1"] == distinct_n(blocks[pick, 8:33].tolist(), 1)  # new_tokens capped at 25
    assert 0 <= first["demd"] <= 2
    greedy = EMO(eval_prompts=4, prompt_tokens=8, new_tokens=25, decoding="greedy").evaluate(model, ValData(blocks))
    assert greedy["rep_4"] >= first["rep_4"]  # an untrained model's greedy continuations loop
    with pytest.raises(ValueError, match="prompt_tokens"):
        EMO(prompt_tokens=33).evaluate(model, ValData(blocks))


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="objective 'mle' is not one of emo, cross_entropy"):
        EMO(objective="mle")
    with pytest.raises(ValueError, match="decoding 'beam' is not one of sample, greedy"):
        EMO(decoding="beam")
