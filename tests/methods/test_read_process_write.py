"""Order Matters (Vinyals, Bengio & Kudlur, ICLR 2016): Read-Process-Write (models/rpw.py), the sort-sets data kind
(tasks/sets.py) and the output-order search (methods/sets/read_process_write.py).

Proved here: the Process block's q*_P is the same under every permutation of the set while the Ptr-Net's LSTM
encoding is not, and the pointer distributions permute with the set; the pointer masks what it emitted and each
step is a distribution; P = 0 is a context-free pointer decoder (a constant initial state, first-step scores a
function of each element alone, = a hand-written pointer decoder); the search picks the most probable ordering
(brute force over all K! orderings); batches and the search's draws resume exactly; bad values are one-line errors.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from methods.sets.pointer import correct, restricted_greedy
from methods.sets.read_process_write import (
    ReadProcessWrite as RPWMethod,
)
from methods.sets.read_process_write import (
    all_orderings,
    best_ordering,
    ordering_log_probs,
    uniform_orderings,
)
from models.rpw import ReadProcessWrite
from tasks.base import BuildContext
from tasks.sets import SortSets


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def model(steps: int = 1, encoder: str = "set", seed: int = 0, hidden: int = 16) -> ReadProcessWrite:
    torch.manual_seed(seed)
    return ReadProcessWrite(hidden_size=hidden, process_steps=steps, encoder=encoder).eval()


def sets(b: int, n: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, n, generator=gen(seed))


def ctx() -> BuildContext:
    from pathlib import Path

    return BuildContext(seq_len=64, cache_dir=Path("/nonexistent"), seed=0, batch_size=8, max_steps=10,
                        accumulate_grad_batches=1)


# -- permutation invariance ------------------------------------------------------------------------
def test_process_is_permutation_invariant_and_the_lstm_encoder_is_not():
    """q*_P of every one of the 5! orders of each set equals the given order's within 1e-6 (float32; measured max
    |diff| 1.8e-7 at P = 1 and 5); the Ptr-Net encoder's final state moves by > 1e-3 (measured 0.019)."""
    x = sets(4, 5)
    for p in (1, 5):
        rpw = model(p)
        with torch.no_grad():
            ref = rpw.process(rpw.embed(x))
            worst = max((rpw.process(rpw.embed(x[:, list(perm)])) - ref).abs().max().item()
                        for perm in itertools.permutations(range(5)))
        assert worst < 1e-6, (p, worst)
        assert ref.abs().max() > 1e-2  # not trivially zero
    lstm = model(0, "lstm")
    with torch.no_grad():
        h0 = lstm.encode(x)[2][0]
        moved = max((lstm.encode(x[:, list(perm)])[2][0] - h0).abs().max().item()
                    for perm in itertools.permutations(range(5)))
    assert moved > 1e-3, moved


def test_pointer_distributions_permute_with_the_set():
    """RPW: permuting the set permutes every step's distribution (targets relabelled) within 1e-6 (measured 2.4e-7);
    Ptr-Net: not (measured 0.014)."""
    x, perm = sets(3, 6), torch.tensor([3, 0, 5, 1, 4, 2])
    y = x.argsort(dim=1)
    inverse = perm.argsort()  # element i of x is element inverse[i] of x[:, perm]
    for m, equal in ((model(3), True), (model(0, "lstm"), False)):
        with torch.no_grad():
            a = m(x, y)
            b = m(x[:, perm], inverse[y])[:, :, inverse]
        finite = torch.isfinite(a)
        assert torch.equal(finite, torch.isfinite(b))
        diff = (a[finite] - b[finite]).abs().max().item()
        assert (diff < 1e-6) if equal else (diff > 1e-3), diff


# -- the pointer -------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps,encoder", [(0, "set"), (2, "set"), (0, "lstm")])
def test_pointer_masks_emitted_elements_and_each_step_sums_to_one(steps, encoder):
    m = model(steps, encoder)
    x = sets(5, 7)
    y = torch.stack([torch.randperm(7, generator=gen(i)) for i in range(5)])
    with torch.no_grad():
        logp = m(x, y)
        pred = m.greedy(x, 7)
    p = logp.exp()
    assert torch.allclose(p.sum(-1), torch.ones(5, 7), atol=1e-6)
    for t in range(7):  # exactly the elements emitted before step t have probability 0
        emitted = torch.zeros(5, 7, dtype=torch.bool).scatter(1, y[:, :t], True)
        assert torch.equal(torch.isneginf(logp[:, t]), emitted)
        assert (p[:, t][~emitted] > 0).all()
    assert torch.equal(pred.sort(dim=1).values, torch.arange(7).expand(5, 7))  # greedy never repeats
    allowed = torch.zeros(5, 7, dtype=torch.bool)
    allowed[:, [1, 4, 6]] = True
    chosen = m.greedy(x, 3, allowed=allowed)
    assert torch.equal(chosen.sort(dim=1).values, torch.tensor([1, 4, 6]).expand(5, 3))


def reference_pointer(m: ReadProcessWrite, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A pointer decoder written from the equations, started from the constant state (h_0, c_0) = b_init:
    d_t = LSTM(m_{y_{t-1}} | go, d_{t-1}), u_i = v^T tanh(W_1 m_i + W_2 d_t), log-softmax over the unemitted."""
    h_size = m.hidden_size
    mem = m.read(x.unsqueeze(-1))
    h, c = (v.expand(x.shape[0], h_size) for v in m.init_state.bias.chunk(2))
    w_ih, w_hh = m.decoder.weight_ih, m.decoder.weight_hh
    bias = m.decoder.bias_ih + m.decoder.bias_hh
    inp, out = m.go.expand(x.shape[0], h_size), []
    mask = torch.zeros(x.shape, dtype=torch.bool)
    for t in range(y.shape[1]):
        i, f, g, o = (inp @ w_ih.T + h @ w_hh.T + bias).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        u = (torch.tanh(mem @ m.w_mem.weight.T + (h @ m.w_dec.weight.T + m.w_dec.bias).unsqueeze(1))
             @ m.v.weight.T).squeeze(-1)
        out.append(F.log_softmax(u.masked_fill(mask, float("-inf")), dim=1))
        mask = mask.clone()
        mask[torch.arange(len(y)), y[:, t]] = True
        inp = mem[torch.arange(len(y)), y[:, t]]
    return torch.stack(out, 1)


def test_zero_process_steps_is_the_context_free_pointer_decoder():
    """P = 0 means: q*_0 = 0, so the decoder starts from (h_0, c_0) = b_init for every set (the Process LSTM and
    W_init get no gradient), and its first-step score of element i is a function of x_i alone. The model equals a
    pointer decoder written from the equations with that constant start (1e-6; measured 0: bitwise); the first
    score of element 1 is bitwise unchanged when every other element changes, while with P = 1 it moves (measured
    3.5e-4)."""
    m0 = model(0)
    x = sets(4, 6)
    y = x.argsort(dim=1)
    _, _, (h0, c0) = m0.encode(x)
    _, _, (h1, c1) = m0.encode(sets(4, 6, seed=9))
    assert torch.equal(h0, h1) and torch.equal(c0, c1)
    assert torch.equal(torch.cat([h0[0], c0[0]]), m0.init_state.bias)
    with torch.no_grad():
        ours, ref = m0(x, y), reference_pointer(m0, x, y)
    assert torch.equal(torch.isneginf(ours), torch.isneginf(ref))
    assert (ours - ref)[torch.isfinite(ref)].abs().max() < 1e-6
    m0.train()
    m0(x, y).gather(2, y.unsqueeze(-1)).sum().backward()
    assert all(p.grad is None for p in m0.process_cell.parameters())
    assert m0.init_state.weight.grad.abs().max() == 0 and m0.init_state.bias.grad.abs().max() > 0
    x2 = x.clone()
    x2[:, 1:] = torch.rand(4, 5, generator=gen(7))  # every element but the first changes
    for steps, context_free in ((0, True), (1, False)):
        m = model(steps)
        with torch.no_grad():
            u_a = score_first(m, x)[:, 0]
            u_b = score_first(m, x2)[:, 0]
        moved = (u_a - u_b).abs().max().item()
        assert (moved == 0) if context_free else (moved > 1e-5), (steps, moved)


def score_first(m: ReadProcessWrite, x: torch.Tensor) -> torch.Tensor:
    """(B, N) the first step's raw pointer scores u_i,1."""
    mem, memory, state = m.encode(x)
    d = m.decoder(m.go.expand(x.shape[0], -1), state)[0]
    return m.scores(m.w_mem(memory), d)


# -- the order search --------------------------------------------------------------------------------
def test_search_picks_the_max_probability_ordering_by_brute_force():
    """K = 4 of N = 6 (24 orderings): best_ordering over all_orderings = the arg-max of log p(π(Y) | X) computed
    one ordering at a time; ordering_log_probs = model.log_prob per ordering (1e-6); sampled candidates never beat
    it, and the method's search step (candidates: 0) returns the same orderings."""
    torch.manual_seed(3)
    m = model(2, seed=3)
    x = sets(5, 6, seed=4)
    y = x.argsort(dim=1)[:, :4].sort(dim=1).values
    cands = all_orderings(y)
    assert cands.shape == (5, 24, 4)
    best, scores = best_ordering(m, x, cands)
    with torch.no_grad():
        for b in range(5):
            brute = {perm: m.log_prob(x[b:b + 1], y[b, list(perm)].unsqueeze(0)).item()
                     for perm in itertools.permutations(range(4))}
            top = max(brute, key=brute.get)
            assert torch.equal(best[b], y[b, list(top)])
            assert max(abs(scores[b, i].item() - brute[perm]) for i, perm in
                       enumerate(itertools.permutations(range(4)))) < 1e-6
    assert len({tuple(r) for r in best.tolist()}) > 1  # the choice depends on the example
    sampled = uniform_orderings(y, 6, gen(0))
    assert (ordering_log_probs(m, x, sampled).max(dim=1).values <= scores.max(dim=1).values + 1e-6).all()
    method = RPWMethod(order="search", warmup_fraction=0.0, candidates=0)
    module = type("M", (), {"model": m, "seed": 0, "micro_batches_seen": 1})()
    assert torch.equal(method.training_targets(module, {"x": x, "y": y}), best)
    sampled_method = RPWMethod(order="search", warmup_fraction=0.0, candidates=5)
    chosen = sampled_method.training_targets(module, {"x": x, "y": y})
    pool = sampled_method.search_candidates(m, x, y, sampled_method.generator(module))
    assert pool.shape == (5, 6, 4) and torch.equal(pool[:, -1], restricted_greedy(m, x, y))
    assert torch.equal(chosen, best_ordering(m, x, pool)[0])


def test_uniform_orderings_are_permutations_uniform_and_a_function_of_the_step():
    y = torch.tensor([[2, 5, 7]])
    draws = uniform_orderings(y.expand(6000, 3), 1, gen(0))[:, 0]
    assert torch.equal(draws.sort(dim=1).values, y.expand(6000, 3))
    counts = torch.tensor([(draws == torch.tensor(p)).all(1).sum().item()
                           for p in itertools.permutations([2, 5, 7])], dtype=torch.float)
    chi2 = ((counts - 1000) ** 2 / 1000).sum().item()
    assert chi2 < 20.5, chi2  # chi-square, 5 dof: p = 0.001
    method = RPWMethod(order="uniform")
    a = type("M", (), {"model": None, "seed": 3, "micro_batches_seen": 11})()
    b = type("M", (), {"model": None, "seed": 3, "micro_batches_seen": 12})()
    batch = {"x": torch.rand(64, 5), "y": torch.arange(5).expand(64, 5)}
    assert torch.equal(method.training_targets(a, batch), method.training_targets(a, batch))
    assert not torch.equal(method.training_targets(a, batch), method.training_targets(b, batch))
    assert torch.equal(RPWMethod().training_targets(a, batch), batch["y"])  # order: given


def test_search_switches_after_the_warmup_fraction():
    method = RPWMethod(order="search", warmup_fraction=0.25)
    for step, searching in ((0, False), (249, False), (250, True), (999, True)):
        trainer = type("T", (), {"global_step": step, "max_steps": 1000})()
        module = type("M", (), {"_trainer": trainer, "trainer": trainer})()
        assert method.searching(module) is searching
    assert not RPWMethod(order="uniform", warmup_fraction=0.0).searching(type("M", (), {})())


# -- the data ----------------------------------------------------------------------------------------
def test_sort_sets_targets_and_exact_resume_of_batches():
    task = SortSets(generator={"n": 6, "train_size": 200, "val_size": 40, "seed": 5})
    data = task.build(ctx())
    again = task.build(ctx())
    assert np.array_equal(data.train_x, again.train_x) and data.train_x.dtype == np.float32
    assert not np.array_equal(data.train_x[:40], data.val_x)
    assert (np.diff(np.take_along_axis(data.train_x, data.train_y, 1), axis=1) > 0).all()  # ascending values
    assert data.module_class.__name__ == "PointerModule" and data.vocab_size == 6
    assert math.isclose(data.uniform_loss(), np.mean(np.log([6, 5, 4, 3, 2, 1])))
    whole, _ = data.make_loaders(8, 60, seed=1)
    resumed, val = data.make_loaders(8, 60, seed=1, start=lambda: 37)
    full = list(whole)
    later = list(resumed)
    assert len(full) == 60 and len(later) == 23
    for a, b in zip(full[37:], later):
        assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"]) and torch.equal(a["index"], b["index"])
    assert torch.equal(full[0]["x"], torch.from_numpy(data.train_x[full[0]["index"].numpy()]))
    assert sum(len(v["x"]) for v in val) == 40
    subset = SortSets(generator={"n": 6, "k": 3, "train_size": 50, "val_size": 10}, target="set").build(ctx())
    assert subset.train_y.shape == (50, 3) and (np.diff(subset.train_y, axis=1) > 0).all()  # canonical index order
    smallest = np.sort(np.argsort(subset.train_x, axis=1)[:, :3], axis=1)
    assert np.array_equal(subset.train_y, smallest)


def test_set_accuracy_is_order_free_and_sorted_accuracy_is_exact():
    y = torch.tensor([[0, 2, 4], [1, 3, 5]])
    pred = torch.tensor([[4, 0, 2], [1, 3, 0]])
    whole, steps = correct(pred, y, "set", 6)
    assert whole.tolist() == [True, False] and steps.tolist() == [[True] * 3, [True, True, False]]
    whole, steps = correct(pred, y, "sorted", 6)
    assert whole.tolist() == [False, False] and steps.tolist() == [[False] * 3, [True, True, False]]


# -- errors ------------------------------------------------------------------------------------------
def test_bad_values_are_one_line_errors():
    cases = [
        (lambda: SortSets(generator={"n": 1}), r"dataset.generator.n: must be >= 2"),
        (lambda: SortSets(generator={"n": 5, "k": 6}), r"dataset.generator.k: must be null \(= n\) or an integer"),
        (lambda: SortSets(generator={"size": 5}), r"dataset.generator.size: unknown key"),
        (lambda: SortSets(target="bag"), r"dataset.target: must be one of sorted, set, got 'bag'"),
        (lambda: SortSets(generator={"train_size": 0}), r"dataset.generator.train_size: must be positive"),
        (lambda: ReadProcessWrite(process_steps=-1), r"model.process_steps: must be >= 0"),
        (lambda: ReadProcessWrite(encoder="gru"), r"model.encoder: must be one of set, lstm"),
        (lambda: ReadProcessWrite(encoder="lstm", process_steps=2), r"model.process_steps: the lstm encoder"),
        (lambda: RPWMethod(order="best"), r"method.order: must be one of given, uniform, search"),
        (lambda: RPWMethod(warmup_fraction=1.5), r"method.warmup_fraction: must be in \[0, 1\]"),
        (lambda: RPWMethod(candidates=-1), r"method.candidates: must be an integer >= 0"),
    ]
    for make, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            make()
        assert "\n" not in str(err.value)
    m = model(1)
    with pytest.raises(ValueError, match="method.candidates: 0 enumerates 40320 orderings"):
        RPWMethod(order="search", candidates=0).search_candidates(m, sets(1, 8), torch.arange(8)[None], gen(0))


# -- learning ----------------------------------------------------------------------------------------
def train_sorting(steps: int, process_steps: int, encoder: str = "set", n: int = 4) -> float:
    """Sequence accuracy of greedy decoding on 500 held-out sets after `steps` AdamW steps (batch 64)."""
    m = model(process_steps, encoder, hidden=32).train()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = gen(11)
    for _ in range(steps):
        x = torch.rand(64, n, generator=g)
        y = x.argsort(dim=1)
        loss = -m(x, y).gather(2, y.unsqueeze(-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.rand(500, n, generator=gen(12))
    return correct(m.greedy(x, n), x.argsort(dim=1), "sorted", n)[0].float().mean().item()


def test_read_process_write_learns_to_sort_four_numbers():
    """150 steps of batch 64, N = 4, H = 32: above 0.8 exact-sequence accuracy (measured 1.0; chance 1/24)."""
    acc = train_sorting(150, 1)
    assert acc > 0.8, acc


def test_pointer_module_trains_the_mean_step_cross_entropy_of_the_given_order():
    """The task's module: lm_loss (method=adamw's loss) = mean over examples and steps of -log p(y_t | y_<t, X) of the
    data's order, by hand; the method's order=given is the same loss; tokens = output steps."""
    from methods.base import Method
    from methods.sets.module import PointerModule

    data = SortSets(generator={"n": 5, "train_size": 32, "val_size": 8}).build(ctx())
    m = model(1)
    module = PointerModule(m, Method(), data=data)
    batch = next(iter(data.make_loaders(8, 1, seed=0)[0]))
    logp = m(batch["x"], batch["y"])
    hand = -torch.stack([logp[b, t, batch["y"][b, t]] for b in range(8) for t in range(5)]).mean()
    assert torch.allclose(module.lm_loss(batch), hand, atol=1e-6)
    assert torch.allclose(RPWMethod().loss(module, batch), hand, atol=1e-6)
    assert torch.allclose(module.lm_loss(batch, reduction="sum"), hand * 40, atol=1e-5)
    assert module.batch_tokens(batch) == 40 and not module.reports_perplexity
    with pytest.raises(TypeError, match="PointerModule needs tasks.sets.SetData"):
        PointerModule(m, Method(), data=object())


def test_order_statistics_name_the_preferred_ordering():
    """A stand-in pointer model that always emits the allowed elements in descending value: every set's preferred
    ordering is descending (1.0), none ascending; the method reports it for target=set only."""
    from methods.sets.pointer import order_statistics

    class Descending(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def greedy(self, x, steps, allowed=None):
            return x.masked_fill(~allowed, -1.0).argsort(dim=1, descending=True)[:, :steps]

        def log_prob(self, x, targets):
            return torch.full((len(x),), -2.0)

    data = SortSets(generator={"n": 6, "k": 3, "train_size": 10, "val_size": 20}, target="set").build(ctx())
    stats = order_statistics(Descending(), data.val_x, data.val_y)
    assert stats["chosen_order/descending_value"] == 1.0 and stats["chosen_order/ascending_value"] == 0.0
    assert stats["chosen_order/loss"] == pytest.approx(2 / 3)
    assert RPWMethod().evaluate(Descending(), data) == stats
    assert RPWMethod().evaluate(Descending(), SortSets(generator={"train_size": 10, "val_size": 5}).build(ctx())) == {}
