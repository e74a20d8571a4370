"""Essential sparsity's properties (methods/compression/essential_sparsity.py): one-shot global magnitude
pruning reaches exactly the asked sparsity with one global threshold, N:M keeps exactly N of every M, the mask
holds while fine-tuning, and the knee finder returns the point of maximum curvature."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from methods.compression.essential_sparsity import (
    EssentialSparsity,
    essential_sparsity,
    plot_sparsity_curve,
    prunable_linears,
)
from tests.helpers import tiny_llama

VOCAB = 96



def llama(seed: int = 0) -> LlamaForCausalLM:
    return tiny_llama(VOCAB, heads=2, seed=seed).eval()


class Blocks:
    """The part of TokenData the method reads: seeded (n, T+1) training blocks."""

    def __init__(self, n: int = 32, T: int = 16):
        self._blocks = torch.randint(0, VOCAB, (n, T + 1), generator=torch.Generator().manual_seed(1))

    def blocks(self, split: str) -> torch.Tensor:
        return self._blocks


def prunable_weights(model) -> torch.Tensor:
    return torch.cat([lin.weight.detach().flatten() for _, lin in prunable_linears(model)])


# -- one-shot global magnitude pruning ---------------------------------------------------------
@pytest.mark.parametrize("s", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_global_sparsity_is_exactly_s_with_one_threshold(s):
    dense = llama()
    before = prunable_weights(dense)
    assert int((before == 0).sum()) == 0
    model = EssentialSparsity(sparsity=s).compress(copy.deepcopy(dense), Blocks())
    after = prunable_weights(model)
    pruned = after == 0
    assert int(pruned.sum()) == round(s * before.numel())
    if 0 < s < 1:  # every pruned |w| <= every kept |w|
        assert before[pruned].abs().max() <= before[~pruned].abs().min()
    assert torch.equal(after[~pruned], before[~pruned])  # kept weights untouched
    # embeddings, norms and lm_head are not pruned
    for (name, p), (_, q) in zip(dense.named_parameters(), model.named_parameters()):
        if not any(k in name for k in ("self_attn", "mlp")):
            assert torch.equal(p, q), name


def test_ties_are_broken_by_index():
    model = llama()
    with torch.no_grad():
        for _, lin in prunable_linears(model):
            lin.weight.copy_(torch.where(torch.rand_like(lin.weight) < 0.5, -0.01, 0.01))  # all |w| equal
    n = prunable_weights(model).numel()
    EssentialSparsity(sparsity=0.3).compress(model, Blocks())
    pruned = prunable_weights(model) == 0
    k = round(0.3 * n)
    assert pruned[:k].all() and not pruned[k:].any()  # the first k in module order, row-major


# -- N:M ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_m", ["2:4", "1:4", "4:8"])
def test_n_m_groups_keep_exactly_n_largest(n_m):
    n, m = (int(v) for v in n_m.split(":"))
    dense = llama()
    model = EssentialSparsity(n_m=n_m).compress(copy.deepcopy(dense), Blocks())
    for (name, lin), (_, lin0) in zip(prunable_linears(model), prunable_linears(dense)):
        groups = lin.weight.detach().reshape(lin.out_features, -1, m)
        orig = lin0.weight.detach().reshape(lin.out_features, -1, m).abs()
        kept = groups != 0
        assert (kept.sum(-1) == n).all(), name
        lowest_kept = torch.where(kept, orig, torch.inf).amin(-1)
        highest_pruned = torch.where(kept, -torch.inf, orig).amax(-1)
        assert (highest_pruned <= lowest_kept).all(), name
    assert math.isclose(EssentialSparsity(n_m=n_m).evaluate(model, None)["sparsity"], 1 - n / m)


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="method.n_m"):
        EssentialSparsity(n_m="2-4")
    with pytest.raises(ValueError, match="method.n_m"):
        EssentialSparsity(n_m="5:4")
    with pytest.raises(ValueError, match="method.sparsity"):
        EssentialSparsity(sparsity=1.5)
    with pytest.raises(ValueError, match="divisible by 3"):
        EssentialSparsity(n_m="1:3").compress(llama(), Blocks())


# -- fine-tuning with the mask fixed -------------------------------------------------------------
@pytest.mark.parametrize("n_m", [None, "2:4"])
def test_mask_does_not_change_while_fine_tuning(n_m):
    dense = llama()
    one_shot = EssentialSparsity(sparsity=0.6, n_m=n_m).compress(copy.deepcopy(dense), Blocks())
    method = EssentialSparsity(sparsity=0.6, n_m=n_m, finetune_steps=6, finetune_lr=1e-2, finetune_batch_size=4)
    tuned = method.compress(copy.deepcopy(dense), Blocks())
    w0, w1 = prunable_weights(one_shot), prunable_weights(tuned)
    assert torch.equal(w0 == 0, w1 == 0)  # the same entries are zero, no more, no fewer
    assert (w1[w0 != 0] != w0[w0 != 0]).float().mean() > 0.9  # and the kept ones did train
    assert len(method.finetune_losses) == 6 and method.finetune_losses[-1] < method.finetune_losses[0]
    assert tuned.training is False  # the mode it came in with


# -- the knee ----------------------------------------------------------------------------------
def test_knee_is_the_maximum_curvature_point_of_a_smooth_curve():
    # y = 1 − (e^{kx} − 1)/(e^k − 1) on [0, 1] is its own unit-square scaling; its curvature
    # κ = k·u / (1 + u²)^{3/2}, u = k·e^{kx}/(e^k − 1) = |y'|, peaks where u = 1/√2:
    k = 5.0
    x_star = math.log((math.exp(k) - 1) / (k * math.sqrt(2))) / k  # 0.6075
    x = np.linspace(0, 1, 1001)
    y = 1 - (np.exp(k * x) - 1) / (np.exp(k) - 1)
    assert abs(essential_sparsity(x, y) - x_star) < 2e-3
    # any units and either sign: the knee does not move
    assert abs(essential_sparsity(100 * x, 7 - 3 * y) / 100 - x_star) < 2e-3


def test_knee_of_a_broken_line_on_the_sweep_grid():
    s = np.round(np.arange(10) * 0.1, 2)  # 0, 10, ..., 90%
    loss = np.where(s <= 0.5, 3.0 + 0.1 * s, 3.05 + 4.0 * (s - 0.5))  # flat, then falls off at 50%
    assert essential_sparsity(s, loss) == pytest.approx(0.5)
    assert essential_sparsity(s[::-1], loss[::-1]) == pytest.approx(0.5)  # order of the samples does not matter
    assert essential_sparsity(s, np.full(10, 2.0)) == pytest.approx(0.9)  # flat: no knee before the end
    with pytest.raises(ValueError):
        essential_sparsity([0.0, 0.1], [1.0, 2.0])


def test_plot_is_written(tmp_path):
    s = np.arange(10) * 0.1
    path = plot_sparsity_curve(s, 1 + s ** 4, 0.7, tmp_path / "curve.png", title="t")
    assert path.stat().st_size > 1000


# -- the paper's comparison at small scale -------------------------------------------------------
def test_magnitude_pruning_keeps_the_trained_model_far_better_than_random_pruning(base_lm):
    dense, data = base_lm
    val = data.blocks("val")[:32]

    def val_loss(model) -> float:
        with torch.no_grad():
            logits = model(input_ids=val[:, :-1]).logits
        return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), val[:, 1:].flatten()))

    magnitude = EssentialSparsity(sparsity=0.5).compress(copy.deepcopy(dense), data)
    rand = copy.deepcopy(dense)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, lin in prunable_linears(rand):
            lin.weight.mul_(torch.rand(lin.weight.shape, generator=gen) >= 0.5)
    base = val_loss(dense)
    # at 50% one-shot magnitude pruning costs a fraction of what random pruning of the same weights costs
    assert val_loss(magnitude) - base < 0.25 * (val_loss(rand) - base)
