"""GaLore (method=galore: methods/optimizers/frugal.py with reference=galore-torch) against the GaLore
authors' package, galore_torch.GaLoreAdamW (dev extra), fed the same random gradients under the same lr
schedule: the same bases at every step and the same weights after 20 steps (4 basis refreshes)."""

from __future__ import annotations

import copy

import pytest
import torch
from omegaconf import OmegaConf

from methods.optimizers.frugal import Frugal, projectable_parameters
from tests.helpers import lazy_import, tiny_llama

galore_torch = lazy_import("galore_torch")  # the package (dev extra), imported when a test first uses it

STEPS, T, LR, WD, SCALE, EPS = 20, 5, 1e-2, 0.1, 0.25, 1e-6  # EPS: the package's default
GRAD_SCALE = 1e-4  # LM-sized gradients, so that where ε sits matters (√v ~ 1e-4 against ε = 1e-6)
# Largest |ours - package| over all weights after STEPS steps, measured: float64 2.2e-16 (GQA, rank 8:
# 1.1e-16), float32 1.2e-7 (one ulp of the norm weights, ~1); the FRUGAL code's formula (reference=frugal)
# is 1.1e-3 away in both.
TOL = {torch.float64: 1e-12, torch.float32: 1e-6}


def random_grads(model, step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    return [GRAD_SCALE * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            for p in model.parameters()]


def galore_pair(reference: str, dtype: torch.dtype, kv_heads: int | None = None, rank: int | None = None,
                package_rank: int = 8, steps: int = STEPS) -> tuple[float, float]:
    """(max |ours - package| over the weights after `steps`, max over steps of the bases' difference)."""
    ours = tiny_llama(64, layers=1, kv_heads=kv_heads, seed=0).to(dtype)
    theirs = copy.deepcopy(ours)
    method = Frugal(lr=LR, eps=EPS, weight_decay=WD, density=0.25, update_gap=T, subspace="svd",
                    reset_statistics=False, inactive_update_rule="no", proj_params_lr_scale=SCALE,
                    reference=reference, rank=rank, seed=0)
    opt = method.build_optimizer(ours)
    # the GaLore repository's torchrun_main.py groups: attn/mlp nn.Linear weights projected, the rest plain
    proj = [p for _, p in projectable_parameters(theirs)]
    ids = {id(p) for p in proj}
    ref = galore_torch.GaLoreAdamW(
        [{"params": [p for p in theirs.parameters() if id(p) not in ids]},
         {"params": proj, "rank": package_rank, "update_proj_gap": T, "scale": SCALE, "proj_type": "std"}],
        lr=LR, betas=method.betas, eps=EPS, weight_decay=WD, no_deprecation_warning=True)
    schedule = method.lr_lambda(steps)
    basis_gap = 0.0
    for s in range(steps):
        for o in (opt, ref):
            for group in o.param_groups:
                group["lr"] = LR * schedule(s)
        for model in (ours, theirs):
            for p, g in zip(model.parameters(), random_grads(model, s)):
                p.grad = g
        opt.step()
        ref.step()
        for (_, p), q in zip(projectable_parameters(ours), proj):
            mine = opt.state[p]["basis"]  # (n, r) on the right (m >= n), (m, r) on the left
            theirs_q = ref.state[q]["projector"].ortho_matrix
            theirs_q = theirs_q.T if p.shape[0] >= p.shape[1] else theirs_q
            gap = (mine - theirs_q).abs().max().item() if mine.shape == theirs_q.shape else float("inf")
            basis_gap = max(basis_gap, gap)
    diff = max((p - q).abs().max().item() for p, q in zip(ours.parameters(), theirs.parameters()))
    return diff, basis_gap


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_galore_matches_galore_torch(dtype):
    diff, basis_gap = galore_pair("galore-torch", dtype)
    assert basis_gap == 0.0  # the same SVD of the same gradient (float32 in both)
    assert diff <= TOL[dtype]
    # the FRUGAL code's variant (ε inside the bias correction, decay before the update) is far outside it
    old, _ = galore_pair("frugal", dtype)
    assert old > 100 * TOL[torch.float32]


def test_one_absolute_rank_is_the_packages_rank_under_gqa():
    # kv_heads=2: k_proj/v_proj are 16 x 32, the other matrices have min(m, n) = 32. The package's one rank 8
    # is rank=8 here; the default per-matrix round(0.25 * min(m, n)) gives k/v rank 4 instead.
    diff, basis_gap = galore_pair("galore-torch", torch.float64, kv_heads=2, rank=8)
    assert basis_gap == 0.0 and diff <= TOL[torch.float64]
    per_matrix, _ = galore_pair("galore-torch", torch.float64, kv_heads=2, rank=None, steps=1)
    assert per_matrix > 1e-6
    # the dry run's plan follows the rank (meta tensors) and is what the optimizer holds
    method = Frugal(subspace="svd", reset_statistics=False, inactive_update_rule="no", reference="galore-torch",
                    rank=8)
    model = tiny_llama(64, layers=1, kv_heads=2, seed=0)
    opt = method.build_optimizer(model)
    for p, g in zip(model.parameters(), random_grads(model, 0)):
        p.grad = g
    opt.step()
    assert {opt.state[p]["basis"].shape[1] for _, p in projectable_parameters(model)} == {8}
    assert method.optimizer_state_bytes(tiny_llama(64, layers=1, kv_heads=2, device="meta")) == opt.state_bytes()


def test_galore_config_is_the_package_and_the_frugal_variant_is_an_option():
    from tests.conftest import compose_cfg

    cfg = OmegaConf.to_container(compose_cfg(["method=galore"]).method)
    assert cfg["reference"] == "galore-torch" and cfg["subspace"] == "svd" and cfg["rank"] is None
    assert not cfg["reset_statistics"] and cfg["inactive_update_rule"] == "no"
    Frugal(**{k: v for k, v in cfg.items() if k != "_target_"} | {"reference": "frugal"})
    with pytest.raises(ValueError, match="galore-torch"):
        Frugal(subspace="svd", reference="galore-torch")  # FRUGAL's sign_sgd + reset: not GaLore
    with pytest.raises(ValueError, match="rank"):
        Frugal(subspace="svd", reset_statistics=False, inactive_update_rule="no", rank=-1)
