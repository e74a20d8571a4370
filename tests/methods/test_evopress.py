"""EvoPress's properties (methods/compression/evopress.py): the budget holds for every candidate, elitism,
the search reaches the dynamic-programming optimum of an additive objective, the DP is optimal, and the
level database (round-to-nearest quantization, block dropping) does what it says."""

from __future__ import annotations

import copy
import itertools
import math
import random

import pytest
import torch

from methods.compression.evopress import (
    Database,
    EvoPress,
    dp_allocation,
    evolutionary_search,
    mutate,
    rtn_quantize,
)
from tests.helpers import tiny_llama

BITS = [2, 3, 4, 8]



def llama(layers: int = 2, seed: int = 0):  # a transformers LlamaForCausalLM
    return tiny_llama(1024, hidden=64, intermediate=128, layers=layers, heads=2, max_pos=64, init_std=0.1,
                      seed=seed).eval()


@pytest.fixture(scope="module")
def lm(request):
    """(model, calibration inputs): the trained tiny base model where tests/conftest.py has one (`base_lm`),
    else a random-init model of the same shape on random tokens."""
    try:
        model, data = request.getfixturevalue("base_lm")
        return copy.deepcopy(model).float().eval(), EvoPress(calibration_tokens=1024, tokens=[256, 1024], survivors=[2, 1],
                                                             seed=0).calibration(data)
    except pytest.FixtureLookupError:
        return llama(), torch.randint(0, 1024, (16, 64), generator=torch.Generator().manual_seed(0))


def cost(state, costs) -> int:
    return sum(costs[u][lv] for u, lv in enumerate(state))


# -- the level database ----------------------------------------------------------------------------
def test_rtn_error_shrinks_with_bits_and_8_bit_is_near_lossless():
    w = torch.randn(48, 200, generator=torch.Generator().manual_seed(0))  # 200 = 3 groups of 64 + one of 8
    errors = [float((rtn_quantize(w, b, 64) - w).norm() / w.norm()) for b in BITS]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-2 and errors[0] > 0.1
    for b in BITS:  # b bits: at most 2^b distinct values in every group of every row, and 0 stays exact
        q = rtn_quantize(w, b, 64)
        for lo in range(0, 200, 64):
            for row in q[:, lo:lo + 64]:
                assert len(row.unique()) <= 2**b
    grid = torch.arange(16.0).repeat(3, 1) * 0.25 - 1.0  # 16 evenly spaced values, 0 among them: exact at 4 bits
    assert torch.allclose(rtn_quantize(grid, 4, 16), grid, atol=1e-6)
    assert float(rtn_quantize(torch.zeros(2, 8), 2, 8).abs().max()) == 0.0


def test_dropping_a_block_is_removing_it():
    model, x = llama(layers=3), torch.randint(0, 1024, (2, 64))
    db = Database(model, "drop", target=2.0)
    assert db.budget == 2 and db.costs == [[0, 1]] * 3
    db.apply((1, 0, 1))
    dropped = model(input_ids=x).logits
    removed = copy.deepcopy(model)
    del removed.model.layers[1]
    removed.config.num_hidden_layers = 2
    assert torch.equal(dropped, removed(input_ids=x).logits)
    db.apply(None)
    assert not torch.equal(model(input_ids=x).logits, dropped)


# -- the search --------------------------------------------------------------------------------------
def additive_instance(seed: int, n: int = 12):
    """Units of two sizes (like attention and MLP matrices) at {2, 3, 4, 8} bits, errors a_u 4^-b, one unit
    so sensitive that the optimum gives it 8 bits; budget: 3 bits on average."""
    r = random.Random(seed)
    sizes = [r.choice((1, 2)) for _ in range(n)]
    costs = [[s * b for b in BITS] for s in sizes]
    sensitivity = [math.exp(r.uniform(-2, 2)) * s for s in sizes]
    sensitivity[0] *= 3000
    errors = [[a * 4.0**-b * r.uniform(0.8, 1.2) for b in BITS] for a in sensitivity]
    return costs, errors, sum(c[1] for c in costs)


def test_mutations_keep_the_cost_exactly():
    costs, _, budget = additive_instance(0, n=20)
    rng, state = random.Random(0), (1,) * 20
    made, visited = 0, set()
    for _ in range(2000):
        child = mutate(state, costs, rng)
        if child is not None and child != state:  # a draw may undo itself: the search rejects those
            assert cost(child, costs) == budget
            made += 1
            state = child  # walk on: the levels spread over the whole ladder
            visited |= set(state)
    assert made > 1000 and visited == {0, 1, 2, 3}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reaches_the_dp_optimum_of_an_additive_objective(seed):
    costs, errors, budget = additive_instance(seed)
    objective = lambda s: sum(errors[u][lv] for u, lv in enumerate(s))  # noqa: E731
    seen = []

    def score(candidates, tokens):
        seen.extend(candidates)
        return [objective(c) for c in candidates]

    start = (1,) * len(costs)  # uniform 3 bits
    best, history = evolutionary_search(costs, start, score, 150, 16, [4, 2, 1], [1, 1, 1], random.Random(seed))
    optimum = dp_allocation(errors, costs, budget)
    assert cost(optimum, costs) == budget and BITS[optimum[0]] == 8
    assert objective(start) > 10 * objective(optimum)
    assert objective(best) == pytest.approx(objective(optimum), rel=1e-12)
    assert all(cost(c, costs) == budget for c in seen) and len(seen) > 150 * 16
    fits = [h["fitness"] for h in history]
    assert all(b <= a for a, b in zip(fits, fits[1:]))


@pytest.mark.parametrize("seed", range(10))
def test_dp_is_optimal_against_brute_force(seed):
    r = random.Random(seed)
    n = 5
    costs = [[s * b for b in BITS] for s in (r.choice((2, 3, 5)) for _ in range(n))]
    errors = [[r.uniform(0, 1) for _ in BITS] for _ in range(n)]  # not even monotone in the level
    budget = r.randint(sum(c[0] for c in costs), sum(c[-1] for c in costs))
    feasible = [s for s in itertools.product(range(4), repeat=n) if cost(s, costs) <= budget]
    brute = min(sum(errors[u][lv] for u, lv in enumerate(s)) for s in feasible)
    state = dp_allocation(errors, costs, budget)
    assert cost(state, costs) <= budget
    assert sum(errors[u][lv] for u, lv in enumerate(state)) == pytest.approx(brute, abs=1e-12)


# -- on a model ----------------------------------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.parametrize("target_bits", [3.0, 2.5])
def test_no_candidate_of_a_model_search_breaks_the_budget(lm, monkeypatch, target_bits):
    model, inputs = lm
    applied = []
    original = Database.apply

    def recording(self, state):
        if state is not None:
            applied.append((tuple(state), self.cost(state), self.budget))
        original(self, state)

    monkeypatch.setattr(Database, "apply", recording)
    method = EvoPress(target_bits=target_bits, generations=4, offspring=8, survivors=[2, 1], tokens=[128, 512],
                      calibration_tokens=len(inputs) * 64, initial_candidates=4, seed=0)
    method.compress_on(copy.deepcopy(model), inputs)
    budget = applied[0][2]
    assert budget == sum(m.weight.numel() for m in model.modules()
                         if isinstance(m, torch.nn.Linear) and m is not model.lm_head) * target_bits
    assert len(applied) > 4 * 8 and all(c <= budget for _, c, _ in applied)
    searched = applied[method.initial_candidates:] if target_bits == 2.5 else applied  # after the random starts
    assert {c for _, c, _ in searched} == {method.cost}
    assert method.result["avg_bits"] <= target_bits


@pytest.mark.e2e
def test_parent_fitness_never_rises_and_is_the_compressed_models_kl(lm):
    model, inputs = lm
    pool = len(inputs) * 64
    method = EvoPress(generations=6, offspring=8, survivors=[2, 1], tokens=[256, pool], calibration_tokens=pool, seed=1)
    compressed = method.compress_on(copy.deepcopy(model), inputs)
    fits = [h["fitness"] for h in method.history]
    assert len(fits) == 7 and all(b <= a for a, b in zip(fits, fits[1:]))
    assert fits[-1] < fits[0]  # it found something better than uniform 3 bits
    uniform = EvoPress(search="uniform", tokens=[pool], survivors=[1], calibration_tokens=pool, seed=1)
    uniform.compress_on(copy.deepcopy(model), inputs)
    assert fits[0] == pytest.approx(uniform.result["fitness"], rel=1e-6)
    # the history's last value is the KL of the model compress() returned, recomputed from scratch
    dense = copy.deepcopy(model)
    with torch.no_grad():
        lp = torch.log_softmax(dense(input_ids=inputs).logits, -1)
        lq = torch.log_softmax(compressed(input_ids=inputs).logits, -1)
    assert float((lp.exp() * (lp - lq)).sum(-1).mean()) == pytest.approx(fits[-1], rel=1e-5)
    # every linear holds its chosen level's round-to-nearest weights; the average is exactly 3 bits
    originals = dict(model.named_modules())
    for name, bits in method.levels.items():
        w = dict(compressed.named_modules())[name].weight
        assert torch.equal(w, rtn_quantize(originals[name].weight, int(bits), 128))
    assert method.result["avg_bits"] == 3.0 and set(method.levels.values()) != {3.0}


@pytest.mark.e2e
def test_dp_baseline_spends_at_most_the_budget(lm):
    model, inputs = lm
    for error in ("kl", "nmse"):
        method = EvoPress(search="dp", dp_error=error, tokens=[512], survivors=[1], calibration_tokens=len(inputs) * 64)
        method.compress_on(copy.deepcopy(model), inputs)
        assert method.result["budget_used"] <= 1.0 and method.result["avg_bits"] <= 3.0


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="search 'ga' is not one of evo, uniform, dp"):
        EvoPress(search="ga")
    with pytest.raises(ValueError, match="survivors"):
        EvoPress(survivors=[4, 2])
    with pytest.raises(ValueError, match="calibration_tokens"):
        EvoPress(tokens=[256, 8192, 100_000], calibration_tokens=4096)
    with pytest.raises(ValueError, match="outside what the levels"):
        Database(llama(layers=1), "quant", target=9.0)
