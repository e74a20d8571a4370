"""BAdam (method=badam: methods/optimizers/frugal.py with reference=badam) against the BAdam authors' package,
badam.BlockOptimizer around torch.optim.AdamW (dev extra), fed the same random gradients under the same lr
schedule, through five block switches (the descending walk over 4 layers and back to the top)."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from methods.optimizers.frugal import Frugal, projectable_parameters
from tests.helpers import lazy_import, tiny_llama

badam = lazy_import("badam")  # the package (dev extra), imported when a test first uses it

LAYERS, T, LR, WD = 4, 3, 1e-2, 0.1
STEPS = 5 * T  # layers 3, 2, 1, 0, then 3 again with fresh state
# FRUGAL's BAdam runs keep embeddings, norms and lm_head always active: the package's active_modules
ACTIVE = ["embed_tokens", "norm", "lm_head"]
# Largest |ours - package| over all weights, measured (float32, the package's precision): 0.0 (bit for bit:
# the same torch AdamW arithmetic); the FRUGAL code's BAdam (reference=frugal) is 5.3e-2 away.
TOL = 1e-7


@pytest.fixture(autouse=True)
def _no_full_gc_per_switch(monkeypatch):
    """The package runs gc.collect() at every block switch (~1 s each in a test process); no effect on numbers."""
    monkeypatch.setattr(badam.block_optim, "gc", SimpleNamespace(collect=lambda: 0))


def random_grads(model, step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(2000 + step)
    return [1e-3 * torch.randn(p.shape, generator=gen) for p in model.parameters()]


def package(model, method: Frugal, shift: bool = True):
    base = torch.optim.AdamW(model.parameters(), lr=method.lr, betas=method.betas, eps=method.eps,
                             weight_decay=method.weight_decay)
    opt = badam.BlockOptimizer(base, list(model.named_parameters()), switch_block_every=T,
                               switch_mode="descending", active_modules=ACTIVE, verbose=0)
    if shift:
        # the package tests (global_step + 1) % T after counting the step: its first block gets T - 1 steps,
        # every later one T. One step earlier on its counter, its windows are ours: [0, T), [T, 2T), ...
        opt.global_step = -1
    return opt


def badam_pair(reference: str, steps: int = STEPS) -> float:
    """max |ours - package| over the weights after `steps`, both fed the same gradients."""
    ours = tiny_llama(64, layers=LAYERS, seed=0)
    theirs = copy.deepcopy(ours)
    method = Frugal(lr=LR, weight_decay=WD, density=1 / LAYERS, update_gap=T, block_order="descending",
                    inactive_update_rule="no", reference=reference, seed=0)
    opt = method.build_optimizer(ours)
    ref = package(theirs, method)
    schedule = method.lr_lambda(steps)
    for s in range(steps):
        for group in opt.param_groups:
            group["lr"] = LR * schedule(s)
        ref.param_groups[0]["lr"] = LR * schedule(s)  # the package copies it to its base optimizer
        for model in (ours, theirs):
            for p, g in zip(model.parameters(), random_grads(model, s)):
                p.grad = g.clone()
        opt.step()
        ref.step()
    return max((p - q).abs().max().item() for p, q in zip(ours.parameters(), theirs.parameters()))


def test_badam_matches_the_package_through_block_switches():
    assert badam_pair("badam") <= TOL
    # the FRUGAL code's variant decays the frozen blocks and keeps the always-active parameters' state
    assert badam_pair("frugal") > 1e-3


def test_frozen_blocks_stay_bit_identical_and_every_state_restarts_at_a_switch():
    model = tiny_llama(64, layers=LAYERS, seed=0)
    method = Frugal(lr=LR, weight_decay=WD, density=1 / LAYERS, update_gap=T, block_order="descending",
                    inactive_update_rule="no", reference="badam")
    opt = method.build_optimizer(model)
    proj = projectable_parameters(model)
    norm = model.model.norm.weight
    for s in range(2 * T):
        before = {n: p.detach().clone() for n, p in proj}
        for p, g in zip(model.parameters(), random_grads(model, s)):
            p.grad = g
        opt.step()
        active = set(opt.active_names())
        assert {n.split(".")[2] for n in active} == {str(LAYERS - 1 - s // T)}  # one whole layer, top down
        for n, p in proj:
            assert torch.equal(p, before[n]) != (n in active)  # outside the window: no update, no decay
        assert opt.state[norm]["step"] == s % T + 1  # the always-active norm's Adam restarts too


def test_the_packages_first_block_is_one_step_short():
    """What the shift in `package` accounts for: unshifted, the package leaves the top layer after T - 1 steps."""
    model = tiny_llama(64, layers=LAYERS, seed=0)
    opt = package(model, Frugal(lr=LR), shift=False)
    top = model.model.layers[LAYERS - 1].mlp.up_proj.weight
    for s in range(T - 1):
        assert top.requires_grad
        for p, g in zip(model.parameters(), random_grads(model, s)):
            p.grad = g
        opt.step()
    assert not top.requires_grad and model.model.layers[LAYERS - 2].mlp.up_proj.weight.requires_grad


def test_badam_config_and_its_weight_decay_groups():
    from tests.conftest import compose_cfg

    cfg = OmegaConf.to_container(compose_cfg(["method=badam"]).method)
    assert cfg["reference"] == "badam" and cfg["block_order"] == "descending"
    assert cfg["inactive_update_rule"] == "no" and cfg["reset_statistics"]
    method = Frugal(**{k: v for k, v in cfg.items() if k != "_target_"})
    assert math.isclose(method.weight_decay, 0.1)
    # badam's rule: λ = 0 only for names with "bias" (its LayerNorm test never matches a parameter)
    lin = torch.nn.Module()
    lin.mlp = torch.nn.Linear(4, 4)
    lin.norm = torch.nn.LayerNorm(4)
    groups = method.param_groups(lin)
    decay = {id(p) for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert decay == {id(lin.mlp.weight), id(lin.norm.weight)}
    with pytest.raises(ValueError, match="reference=badam"):
        Frugal(reference="badam")  # sign_sgd outside the block: FRUGAL, not BAdam
