"""The Z-loss's properties (methods/losses/z_loss.py): shift and scale invariance, the factored (spherical)
forward equal to the naive one without N×V tensors, the gradient's span, and top-k accuracy that rises
when a small LM trains on it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels.tracking import LargestAllocation
from methods.losses.z_loss import ZLoss, next_token_topk, z_loss, z_loss_from_scores, z_loss_from_statistics
from tests.helpers import ValData, tiny_llama

A, B = 0.1, 10.0



def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def head_inputs(n=64, V=300, d=24, dtype=torch.float32, seed=0, offset=0.0):
    g = gen(seed)
    h = torch.randn(n, d, generator=g, dtype=dtype)
    w = torch.randn(V, d, generator=g, dtype=dtype) / d**0.5 + offset * torch.randn(d, generator=g, dtype=dtype)
    bias = torch.randn(V, generator=g, dtype=dtype)
    t = torch.randint(0, V, (n,), generator=g)
    return h, w, bias, t


# -- invariances ---------------------------------------------------------------------------------
def test_invariant_to_shift_and_positive_scale_while_ce_is_not():
    g = gen(1)
    o = 3 * torch.randn(32, 500, generator=g, dtype=torch.float64)
    t = torch.randint(0, 500, (32,), generator=g)
    ref = z_loss_from_scores(o, t, A, B)
    for scale, shift in ((1.0, 7.5), (1.0, -1e3), (0.01, 0.0), (250.0, 0.0), (3.7, -42.0)):
        assert (z_loss_from_scores(scale * o + shift, t, A, B) - ref).abs().max() <= 1e-6
    ce = F.cross_entropy(o, t, reduction="none")
    assert (F.cross_entropy(o + 7.5, t, reduction="none") - ce).abs().max() <= 1e-6  # CE: shift only
    for scale in (0.01, 3.7, 250.0):
        assert (F.cross_entropy(scale * o, t, reduction="none") - ce).abs().max() > 0.1
    assert (z_loss_from_scores(-o, t, A, B) - ref).abs().max() > 0.1  # a negative scale flips the ranking


def test_factored_form_is_invariant_too():
    """Shifting every score (bias + c) and scaling them (W, bias) * s leave the factored loss unchanged."""
    h, w, bias, t = head_inputs(dtype=torch.float64)
    ref = z_loss(h, w, t, A, B, bias=bias)
    for scale, shift in ((1.0, 123.0), (0.02, 0.0), (40.0, -5.0)):
        got = z_loss(h, scale * w, t, A, B, bias=scale * bias + shift)
        assert (got - ref).abs().max() <= 1e-6
    assert (z_loss(h, w, t, A, B, bias=bias + torch.linspace(0, 5, len(bias), dtype=torch.float64)) - ref).abs().max() > 1e-3


# -- factored == naive ---------------------------------------------------------------------------
@pytest.mark.parametrize("with_bias", [False, True])
def test_factored_forward_and_gradients_equal_naive(with_bias):
    h, w, bias, t = head_inputs()
    bias = bias if with_bias else None
    leaves = [h, w] + ([bias] if with_bias else [])
    grads = {}
    for form in ("naive", "factored"):
        xs = [x.clone().requires_grad_() for x in leaves]
        hh, ww, bb = xs[0], xs[1], (xs[2] if with_bias else None)
        if form == "naive":
            scores = hh @ ww.T + (bb if bb is not None else 0)
            loss = z_loss_from_scores(scores, t, A, B)
        else:
            loss = z_loss(hh, ww, t, A, B, bias=bb)
        loss.sum().backward()
        grads[form] = (loss.detach(), [x.grad for x in xs])
    (naive, g_naive), (fact, g_fact) = grads["naive"], grads["factored"]
    assert (fact - naive).abs().max() <= 1e-5
    assert naive.std() > 0.1  # a spread of losses, not one value
    for a_, b_ in zip(g_fact, g_naive):
        assert (a_ - b_).abs().max() <= 1e-5 * max(1.0, b_.abs().max().item())


def test_loss_follows_from_d_and_d_by_d_statistics():
    """(Σo, Σo², o_c) from h·w̄, hᵀQh and w_c·h (+ bias terms), with w̄ = Wᵀ1 and Q = WᵀW: the spherical family."""
    h, w, bias, t = head_inputs(dtype=torch.float64)
    V = len(w)
    w_sum, q = w.sum(0), w.T @ w                       # d and d×d: independent of the tokens
    score_sum = h @ w_sum + bias.sum()
    square_sum = ((h @ q) * h).sum(-1) + 2 * h @ (w.T @ bias) + bias.square().sum()
    target_score = (h * w[t]).sum(-1) + bias[t]
    got = z_loss_from_statistics(score_sum, square_sum, target_score, V, A, B)
    naive = z_loss_from_scores(h @ w.T + bias, t, A, B)
    assert (got - naive).abs().max() <= 1e-10
    assert (z_loss(h, w, t, A, B, bias=bias) - naive).abs().max() <= 1e-10


def test_factored_form_stays_accurate_when_scores_share_a_large_mean():
    """A common offset on every row of W moves every score by the same (large) amount: the centred d×d
    statistic keeps fp32 close to the fp64 value."""
    h, w, bias, t = head_inputs(offset=30.0)
    want = z_loss_from_scores((h.double() @ w.double().T), t, A, B)
    scores = h @ w.T
    assert (scores.mean(-1).abs() / scores.std(-1)).median() > 5  # the mean dominates
    assert (z_loss(h, w, t, A, B) - want).abs().max() <= 1e-4




def test_factored_form_never_forms_the_scores():
    n, V, d = 256, 2000, 16
    h, w, bias, t = head_inputs(n, V, d)
    largest = {}
    for form in ("naive", "factored"):
        hh, ww, bb = (x.clone().requires_grad_() for x in (h, w, bias))
        with LargestAllocation() as tracker:
            if form == "naive":
                loss = z_loss_from_scores(hh @ ww.T + bb, t, A, B)
            else:
                loss = z_loss(hh, ww, t, A, B, bias=bb)
            loss.mean().backward()
        largest[form] = tracker.largest
    assert largest["naive"] >= n * V
    assert largest["factored"] <= V * d, largest


# -- the gradient's span ---------------------------------------------------------------------------
def span_residual(grad: torch.Tensor, o: torch.Tensor, c: int) -> float:
    basis = torch.stack([o, torch.ones_like(o), F.one_hot(torch.tensor(c), len(o)).to(o)], dim=1)  # V x 3
    coef = torch.linalg.lstsq(basis, grad.unsqueeze(1)).solution
    return float((basis @ coef).squeeze(1).sub(grad).norm() / grad.norm())


def test_gradient_lies_in_span_of_scores_ones_and_target():
    g = gen(2)
    for _ in range(5):
        o = (2 * torch.randn(200, generator=g, dtype=torch.float64)).requires_grad_()
        c = int(torch.randint(0, 200, (1,), generator=g))
        z_loss_from_scores(o, torch.tensor(c), A, B).backward()
        assert span_residual(o.grad, o.detach(), c) <= 1e-10
        o_ce = o.detach().clone().requires_grad_()  # control: softmax − e_c is not in that span
        F.cross_entropy(o_ce.unsqueeze(0), torch.tensor([c])).backward()
        assert span_residual(o_ce.grad, o.detach(), c) > 1e-2


# -- the method ----------------------------------------------------------------------------------
VOCAB = 64


def llama(seed=0):  # a transformers LlamaForCausalLM
    return tiny_llama(VOCAB, seed=seed)


def chain_blocks(n: int, length: int, seed: int) -> torch.Tensor:
    """Token sequences that follow a fixed permutation: next = PERM[current] (learnable from one token)."""
    perm = torch.randperm(VOCAB, generator=gen(123))
    start = torch.randint(0, VOCAB, (n,), generator=gen(seed))
    seq = [start]
    for _ in range(length - 1):
        seq.append(perm[seq[-1]])
    return torch.stack(seq, 1)


def test_training_with_z_loss_raises_top_k_accuracy():
    from methods.module import MethodModule

    model = llama()
    method = ZLoss(lr=1e-2, weight_decay=0.0, eval_topk=[1, 5])
    module = MethodModule(model, method)
    val = chain_blocks(16, 17, seed=99)
    with torch.no_grad():  # the hook computes the same loss as the naive form on the model's logits
        logits = model(input_ids=val[:, :-1]).logits
        want = z_loss_from_scores(logits, val[:, 1:], method.a, method.b).mean()
        assert (method.loss(module, val) - want).abs() <= 1e-5
    before = next_token_topk(model, val, (1, 5))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(60):
        opt.zero_grad()
        method.loss(module, chain_blocks(16, 17, seed=step)).backward()
        opt.step()
    after = next_token_topk(model, val, (1, 5))
    assert before["top1"] < 0.2 and before["top5"] < 0.4
    assert after["top1"] >= 0.9 and after["top5"] >= after["top1"]


def test_evaluate_reports_topk_on_capped_tokens():
    model = llama()
    out = ZLoss(eval_tokens=40, eval_topk=[1, 3]).evaluate(model, ValData(chain_blocks(10, 17, seed=5)))
    assert set(out) == {"top1", "top3", "topk_tokens"}
    assert out["topk_tokens"] == 48  # ceil(40 / 16) blocks of 16 targets
    assert 0 <= out["top1"] <= out["top3"] <= 1
    assert model.training  # left as it was


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="objective 'ce' is not one of z_loss, cross_entropy"):
        ZLoss(objective="ce")
    with pytest.raises(ValueError, match="a must be > 0"):
        ZLoss(a=0)
