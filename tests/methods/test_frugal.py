"""FRUGAL's properties (methods/optimizers/frugal.py): its special cases, its state size, its subspace
re-selection, its projections, exact resume, and a run through the real runner."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

from methods.optimizers.frugal import FRUGAL, Frugal, projectable_parameters, select_blocks
from tests.conftest import TINY, compose_cfg, run_in_process
from tests.helpers import tiny_llama

VOCAB = 64



def llama(layers: int = 2, device: str = "cpu", seed: int = 0):  # a transformers LlamaForCausalLM
    return tiny_llama(VOCAB, layers=layers, max_pos=16, seed=seed, device=device)


BATCHES = [torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(s)) for s in range(20)]


def backward(model, step: int) -> None:
    x = BATCHES[step % len(BATCHES)]
    model(input_ids=x, labels=x).loss.backward()


def train(model, opt, steps, start: int = 0) -> None:
    for s in range(start, start + steps):
        opt.zero_grad()
        backward(model, s)
        opt.step()


def moment_numel(opt) -> int:
    return sum(v.numel() for s in opt.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq"))


# -- special cases -------------------------------------------------------------------------------
def test_rho_one_is_adamw_step_for_step():
    a, b = llama(), llama()
    method = Frugal(density=1.0, update_gap=1000, block_order="random", lr=1e-2, weight_decay=0.1)
    fr = method.build_optimizer(a)
    ref = torch.optim.AdamW(method.param_groups(b), lr=method.lr, betas=method.betas, eps=method.eps)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, method.lr_lambda(20)) for o in (fr, ref)]
    worst = 0.0
    for s in range(20):
        for model, opt, sched in ((a, fr, scheds[0]), (b, ref, scheds[1])):
            opt.zero_grad()
            backward(model, s)
            opt.step()
            sched.step()
        worst = max(worst, max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters())))
    assert worst <= 1e-6
    assert a.model.layers[0].mlp.up_proj.weight.sub(llama().model.layers[0].mlp.up_proj.weight).abs().max() > 1e-3


def test_rho_zero_is_sign_descent_and_the_rest_is_adamw():
    model, lr, wd = llama(), 1e-2, 0.1
    method = Frugal(density=0.0, lr=lr, weight_decay=wd)
    opt = method.build_optimizer(model)
    proj = {id(p) for _, p in projectable_parameters(model)}
    rest = [p for p in model.parameters() if id(p) not in proj]
    shadow = [p.detach().clone().requires_grad_() for p in rest]  # torch AdamW fed the same gradients
    # one weight decay on every parameter, norms included (the FRUGAL code's groups)
    ref = torch.optim.AdamW(shadow, lr=lr, betas=method.betas, eps=method.eps, weight_decay=wd)
    for s in range(5):
        opt.zero_grad()
        backward(model, s)
        before = {id(p): (p.detach().clone(), p.grad.clone()) for p in model.parameters()}
        for p, q in zip(rest, shadow):
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
        for _, p in projectable_parameters(model):
            w, g = before[id(p)]
            assert torch.equal(p, w * (1 - lr * wd) - lr * g.sign())
            assert not opt.state[p]  # state-free: nothing stored
        for p, q in zip(rest, shadow):
            assert (p - q).abs().max() <= 1e-7


def test_one_weight_decay_on_every_parameter_like_the_official_code():
    """The FRUGAL code puts every non-projectable parameter in one group with the one λ (norms, embeddings
    included), unlike the AdamW baseline's 1-D exemption; 12 steps at λ = 0.1 differ by ~1e-2 between the two."""
    model = llama()
    groups = Frugal(weight_decay=0.1).param_groups(model)
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.1 for p in g["params"]}
    assert decayed == {id(p) for p in model.parameters()}
    w = model.model.norm.weight.detach().clone()
    opt = Frugal(density=0.25, lr=1e-2, weight_decay=0.1).build_optimizer(model)
    model.model.norm.weight.grad = torch.zeros_like(w)  # Adam(0) = 0: only the decay moves it
    opt.step()
    assert torch.equal(model.model.norm.weight, w * (1 - 1e-2 * 0.1))


# -- state size ----------------------------------------------------------------------------------
MODES = [("block", "descending"), ("columns", "random"), ("rows", "random"),
         ("randk", "random"), ("svd", "random"), ("random", "random")]


@pytest.mark.parametrize("subspace,order", MODES)
def test_state_size_formula_and_the_dry_run_plan(subspace, order):
    # 4 layers x 7 matrices: ρ=0.25 selects 7 whole matrices; every dimension (32, 64) is divisible by 4
    rho, model = 0.25, llama(layers=4)
    method = Frugal(density=rho, subspace=subspace, block_order=order)
    opt = method.build_optimizer(model)
    train(model, opt, 1)
    proj = {id(p): p.numel() for _, p in projectable_parameters(model)}
    n_proj = sum(proj.values())
    n_rest = sum(p.numel() for p in model.parameters() if id(p) not in proj)
    assert moment_numel(opt) == 2 * (rho * n_proj + n_rest)
    extra = opt.state_bytes() - 4 * moment_numel(opt)
    if subspace in ("svd", "random"):  # the basis Q: r x min(m, n) per matrix, r = ρ·min(m, n)
        shapes = [p.shape for _, p in projectable_parameters(model)]
        assert extra == 4 * sum(round(rho * min(s)) * min(s) for s in shapes)
    elif subspace != "block":
        assert extra > 0  # int64 indices of the chosen coordinates
    # the dry run's number (meta tensors, nothing allocated) is what the optimizer holds
    assert method.optimizer_state_bytes(llama(layers=4, device="meta")) == opt.state_bytes()


def test_random_blocks_count_within_whole_blocks_and_plan_is_an_upper_bound():
    rho, model = 0.25, llama(layers=4)
    method = Frugal(density=rho, update_gap=1, block_order="random")
    opt = method.build_optimizer(model)
    sizes = {id(p): p.numel() for _, p in projectable_parameters(model)}
    n_rest = sum(p.numel() for p in model.parameters() if id(p) not in sizes)
    plan = method.optimizer_state_bytes(model)
    for s in range(6):
        train(model, opt, 1, start=s)
        assert abs(moment_numel(opt) - 2 * (rho * sum(sizes.values()) + n_rest)) <= 2 * 7 * max(sizes.values())
        assert opt.state_bytes() <= plan
    assert method.optimizer_state_bytes(model) < Frugal(density=1.0).optimizer_state_bytes(model)


# -- re-selection --------------------------------------------------------------------------------
def test_active_blocks_change_every_T_steps_and_adam_counters_restart():
    T, model = 5, llama()
    opt = Frugal(density=0.25, update_gap=T, block_order="random").build_optimizer(model)
    group = next(g for g in opt.param_groups if g["projectable"])
    windows = []
    for s in range(3 * T):
        train(model, opt, 1, start=s)
        if s % T == 0:
            windows.append(list(group["active"]))
        assert group["active"] == windows[-1]
        assert len(group["active"]) == round(0.25 * 14)
        for i, p in enumerate(group["params"]):
            if i in group["active"]:
                assert opt.state[p]["step"] == s % T + 1  # restarted at the last re-selection
            else:
                assert not opt.state[p]
    assert windows[0] != windows[1] != windows[2]


def test_badam_walks_whole_layers_from_the_top():
    model = llama(layers=4)
    opt = Frugal(density=0.25, update_gap=2, block_order="descending", inactive_update_rule="no").build_optimizer(model)
    seen = []
    for s in range(10):
        train(model, opt, 1, start=s)
        if s % 2 == 0:
            layers = {n.split(".")[2] for n in opt.active_names()}
            assert len(opt.active_names()) == 7 and len(layers) == 1
            seen.append(layers.pop())
    assert seen == ["3", "2", "1", "0", "3"]


def test_block_orders_cycle_like_the_official_code():
    walk = []
    start = None
    for _ in range(3):
        idx, start = select_blocks(8, 4, "mirror", start, None)
        walk.append(idx)
    assert walk == [[0, 1, 6, 7], [2, 3, 4, 5], [0, 1, 6, 7]]
    assert select_blocks(8, 3, "ascending", 6, None) == ([0, 6, 7], 1)
    assert select_blocks(8, 3, "descending", 1, None) == ([0, 1, 7], 6)
    with pytest.raises(ValueError, match="mirror"):
        Frugal(density=0.25, block_order="mirror").build_optimizer(llama(layers=4))  # 7 blocks: odd


def test_galore_keeps_statistics_and_refreshes_the_basis():
    T, model = 3, llama()
    opt = Frugal(density=0.25, update_gap=T, subspace="svd", reset_statistics=False,
                 inactive_update_rule="no").build_optimizer(model)
    p = model.model.layers[0].mlp.up_proj.weight
    bases = []
    for s in range(2 * T):
        train(model, opt, 1, start=s)
        assert opt.state[p]["step"] == s + 1
        bases.append(opt.state[p]["basis"].clone())
    assert torch.equal(bases[0], bases[T - 1]) and not torch.equal(bases[T - 1], bases[T])
    reset = Frugal(density=0.25, update_gap=T, subspace="svd").build_optimizer(model)
    train(model, reset, T + 1)
    assert reset.state[p]["step"] == 1


# -- projections ---------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(24, 40), (40, 24)])
@pytest.mark.parametrize("subspace", ["svd", "random"])
def test_projector_is_orthonormal_and_the_complement_is_g_minus_PPtg(shape, subspace):
    torch.manual_seed(1)
    lr, rho, eps = 1e-2, 0.25, 1e-8
    w = torch.nn.Parameter(torch.randn(shape))
    g = torch.randn(shape)
    for rule in ("sgd", "sign_sgd"):
        p = torch.nn.Parameter(w.detach().clone())
        opt = FRUGAL([{"params": [p], "projectable": True}], lr=lr, eps=eps, density=rho, subspace=subspace,
                     inactive_update_rule=rule)
        p.grad = g.clone()
        opt.step()
        q = opt.state[p]["basis"]
        r = round(rho * min(shape))
        assert q.shape == (min(shape), r)
        torch.testing.assert_close(q.T @ q, torch.eye(r), atol=1e-5, rtol=0)
        right = shape[0] >= shape[1]
        proj = g @ q @ q.T if right else q @ q.T @ g
        if subspace == "svd":  # the span of the top-r singular vectors of g
            sv = torch.linalg.svdvals(g)
            torch.testing.assert_close(proj.norm(), sv[:r].square().sum().sqrt(), rtol=1e-5, atol=0)
        low = g @ q if right else q.T @ g
        adam = low / (low.abs() + eps)  # Adam's first step from zero moments
        full = adam @ q.T if right else q @ adam
        resid = g - proj
        free = resid if rule == "sgd" else resid.sign()
        torch.testing.assert_close(p.detach(), w - lr * full - lr * free, atol=1e-6, rtol=0)


def test_coordinate_subspace_adam_on_chosen_columns_sign_on_the_others():
    lr = 1e-2
    p = torch.nn.Parameter(torch.zeros(6, 8))
    opt = FRUGAL([{"params": [p], "projectable": True}], lr=lr, density=0.25, subspace="columns")
    p.grad = torch.randn(6, 8) * 0.1
    opt.step()
    idx = opt.state[p]["index"]
    assert idx.numel() == 2 and opt.state[p]["exp_avg"].shape == (6, 2)
    others = [c for c in range(8) if c not in idx.tolist()]
    g = p.grad
    torch.testing.assert_close(p[:, idx], -lr * g[:, idx] / (g[:, idx].abs() + 1e-8), atol=1e-7, rtol=0)
    assert torch.equal(p[:, others], -lr * g[:, others].sign())


# -- exact resume --------------------------------------------------------------------------------
RESUME = [dict(block_order="random"), dict(subspace="svd"), dict(subspace="randk"),
          dict(subspace="random", reset_statistics=False), dict(block_order="descending", density=0.5),
          dict(subspace="svd", reset_statistics=False, inactive_update_rule="no", reference="galore-torch"),
          dict(block_order="descending", inactive_update_rule="no", reference="badam")]


@pytest.mark.parametrize("kw", RESUME, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_state_dict_resume_equals_uninterrupted(kw):
    """Save model + optimizer mid-window (as Lightning's checkpoint does), load into fresh objects whose
    seed differs, continue: the same parameters, bit for bit, as the run that never stopped."""
    T, total, cut = 4, 14, 6
    full = llama()
    opt = Frugal(update_gap=T, seed=0, **kw).build_optimizer(full)
    train(full, opt, total)

    first = llama()
    opt1 = Frugal(update_gap=T, seed=0, **kw).build_optimizer(first)
    train(first, opt1, cut)
    buf = io.BytesIO()
    torch.save({"model": first.state_dict(), "opt": opt1.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=False)

    resumed, control = llama(seed=5), llama(seed=5)
    opt2 = Frugal(update_gap=T, seed=99, **kw).build_optimizer(resumed)
    resumed.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["opt"])
    train(resumed, opt2, total - cut, start=cut)
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    # without the optimizer state the continuation differs (the check above can fail)
    control.load_state_dict(ck["model"])
    train(control, Frugal(update_gap=T, seed=99, **kw).build_optimizer(control), total - cut, start=cut)
    assert any(not torch.equal(a, b) for a, b in zip(full.parameters(), control.parameters()))


# -- through the runner --------------------------------------------------------------------------
@pytest.mark.e2e
def test_runner_trains_resumes_exactly_and_plans_less_memory(tmp_path, capsys):
    args = [*TINY, "method=frugal", "method.update_gap=4", "trainer.max_steps=12", "trainer.checkpoint_every_n_steps=6",
            "trainer.val_every_n_steps=12", "logger=csv"]
    run = tmp_path / "frugal" / "run"  # the runner in this process: the CLI is tests/test_e2e.py's
    run_in_process(args, run)
    full = json.loads((run / "summary.json").read_text())
    assert full["config"]["method"]["_target_"] == "methods.optimizers.frugal.Frugal"
    assert full["steps"] == 12 and full["val/loss"] < math.log(full["vocab_size"])
    ck = torch.load(run / "checkpoints" / "step000006.ckpt", weights_only=False, map_location="cpu")
    (group,) = [g for g in ck["optimizer_states"][0]["param_groups"] if g["projectable"]]
    assert group["frugal_step"] == 6 and group["selections"] == 2 and len(group["active"]) == 4
    # crash after step 6: resume from that checkpoint reproduces the uninterrupted run
    for f in (run / "checkpoints").glob("*.ckpt"):
        if f.name != "step000006.ckpt":
            f.unlink()
    (run / "summary.json").unlink()
    run_in_process([*args, f"resume={run}"], run)
    again = json.loads((run / "summary.json").read_text())
    assert again["train/loss"] == pytest.approx(full["train/loss"], abs=1e-6)
    assert again["val/loss"] == pytest.approx(full["val/loss"], abs=1e-6)

    # the dry run's memory plan (runner.dryrun, as `dry_run=true` runs it) for llama-1b on an H100
    from runner.dryrun import plan

    printed = {}
    for m in ("adamw", "frugal"):
        plan(compose_cfg([f"method={m}", "model=llama-1b", "hardware=h100", "dry_run=true"]), tmp_path)
        row = next(line for line in capsys.readouterr().out.splitlines() if "optimizer state" in line)
        printed[m] = float(row.split("│")[2].replace(",", ""))
        assert json.loads((tmp_path / "dry_run.json").read_text())["bytes_per_gpu"]["optimizer state"] > 0
    assert printed["adamw"] == pytest.approx(2 * 4 * 1_339_082_752 / 2**30, abs=0.01)
    assert printed["frugal"] < 0.35 * printed["adamw"]
