"""ZIP-FIT / DSIR-style selection, temperature sampling / scalarization / Cooldown, and the DGA update.

Data for selection is built locally without the runner: prose = the pydoc topic help texts of the stdlib
(`pydoc_data.topics`), code = Python source files of the installed stdlib."""

from __future__ import annotations

import os
import random
import sysconfig

import numpy as np
import pytest
import torch

from methods.data.mixing import (
    CooldownSchedule,
    dga_update,
    natural_probs,
    scalarization_weights,
    temperature_probs,
)
from methods.data.zip_fit import (
    alignment_scores,
    dsir_select,
    ncd,
    random_select,
    select_split,
    zip_fit_select,
)

CHUNK = 500


def _chunks(text: str, per_doc: int) -> list[str]:
    pieces = [text[i:i + CHUNK] for i in range(0, len(text) - CHUNK + 1, CHUNK)]
    return [p for p in pieces if p.strip()][:per_doc]


@pytest.fixture(scope="module")
def code_prose_mix():
    """(source texts, is_code flags, code target texts): 120 code + 120 prose chunks; target from other files."""
    import pydoc_data.topics

    prose = []
    for name in sorted(pydoc_data.topics.topics):
        prose += _chunks(pydoc_data.topics.topics[name], 4)
    prose = prose[:120]
    stdlib = sysconfig.get_paths()["stdlib"]
    files = sorted(f for f in os.listdir(stdlib) if f.endswith(".py") and os.path.getsize(os.path.join(stdlib, f)) > 4000)
    code_chunks = []
    for f in files:
        with open(os.path.join(stdlib, f), encoding="utf-8", errors="replace") as fh:
            code_chunks.append(_chunks(fh.read()[2000:], 3))  # skip licence headers / module docstrings
    target = [c for chunks in code_chunks[1::2][:20] for c in chunks[:1]]
    code = [c for chunks in code_chunks[0::2] for c in chunks][:120]
    assert len(prose) == 120 and len(code) == 120 and len(target) == 20
    source = code + prose
    is_code = np.array([True] * len(code) + [False] * len(prose))
    return source, is_code, target


def test_ncd_self_smaller_than_unrelated():
    x = "def add(a, b):\n    return a + b\n" * 8
    y = "The quick brown fox jumps over the lazy dog while the band plays on. " * 4
    for codec in ("gzip", "zlib", "bz2", "lzma"):
        assert ncd(x, x, codec) < ncd(x, y, codec), codec
    assert ncd(x, x) < 0.2 and 0.5 < ncd(x, y) < 1.1
    with pytest.raises(ValueError, match="codec"):
        ncd(x, y, "zstd")


def test_zip_fit_selects_code_for_code_target(code_prose_mix):
    source, is_code, target = code_prose_mix
    k = 60
    selected = zip_fit_select(source, target, k)
    assert len(set(selected.tolist())) == k
    assert is_code[selected].mean() >= 0.9
    rand = random_select(len(source), k, seed=0)
    assert is_code[rand].mean() < 0.75  # random sits near the 50% base rate


def test_zip_fit_deterministic_and_order_independent(code_prose_mix):
    source, _, target = code_prose_mix
    k = 60
    first = zip_fit_select(source, target, k)
    perm = list(range(len(source)))
    random.Random(0).shuffle(perm)
    shuffled = [source[i] for i in perm]
    selected_shuffled = zip_fit_select(shuffled, target, k)
    assert {source[i] for i in first} == {shuffled[i] for i in selected_shuffled}
    assert np.array_equal(first, zip_fit_select(source, target, k))


def test_zip_fit_parallel_equals_serial(code_prose_mix):
    source, _, target = code_prose_mix
    source, target = source[::6], target[:5]
    serial = alignment_scores(source, target, workers=1, chunk_size=8)
    parallel = alignment_scores(source, target, workers=2, chunk_size=8, progress=True)
    assert np.array_equal(serial, parallel)


def test_dsir_baseline_prefers_code(code_prose_mix):
    source, is_code, target = code_prose_mix
    k = 60
    fractions = [is_code[dsir_select(source, target, k, seed=s)].mean() for s in range(3)]
    print(f"DSIR code fraction of top-{k}: {fractions}")
    assert min(fractions) >= 0.75
    assert np.array_equal(dsir_select(source, target, k, seed=1), dsir_select(source, target, k, seed=1))


def test_select_split_is_a_datasets_split():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["a", "b", "c", "d"]})
    assert select_split(ds, np.array([3, 1]))["text"] == ["d", "b"]


# ---------------------------------------------------------------- temperature sampling, scalarization

SIZES = [1000, 100, 5]


def test_temperature_probs_limits():
    q = natural_probs(SIZES)
    np.testing.assert_allclose(temperature_probs(SIZES, 1.0), q, rtol=1e-12)
    previous_gap = None
    for tau in (1.0, 2.0, 5.0, 50.0, 1e6):
        p = temperature_probs(SIZES, tau)
        assert abs(p.sum() - 1.0) < 1e-12 and (p > 0).all()
        gap = np.abs(p - 1 / 3).max()
        assert previous_gap is None or gap < previous_gap  # monotonically closer to uniform
        previous_gap = gap
    np.testing.assert_allclose(temperature_probs(SIZES, 1e6), np.full(3, 1 / 3), atol=1e-5)
    with pytest.raises(ValueError, match="tau"):
        temperature_probs(SIZES, 0.0)


def test_expected_gradient_of_sampling_equals_scalarized_gradient():
    """Tiny dataset (3 domains of 4, 2, 1 examples), per-example loss ℓ(θ, x) = ½‖θ − x‖² + sin(θ·x);
    exact expectation over the sampling distribution, no Monte Carlo."""
    torch.manual_seed(0)
    domains = [torch.randn(n, 3, dtype=torch.float64) for n in (4, 2, 1)]
    sizes = [len(d) for d in domains]
    theta = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def example_losses(x):
        return 0.5 * ((theta - x) ** 2).sum(-1) + torch.sin(x @ theta)

    for tau in (1.0, 3.0, 10.0):
        p = temperature_probs(sizes, tau)
        # upsample: P(example j of domain k) = p_k / n_k
        sampled = sum(float(p[k]) / len(d) * example_losses(d).sum() for k, d in enumerate(domains))
        g_sampled, = torch.autograd.grad(sampled, theta)
        # upweight: P(example) = 1 / N, loss weighted by w_k = p_k / q_k
        w = scalarization_weights(sizes, tau)
        n_total = sum(sizes)
        scalarized = sum(float(w[k]) / n_total * example_losses(d).sum() for k, d in enumerate(domains))
        g_scalarized, = torch.autograd.grad(scalarized, theta)
        torch.testing.assert_close(g_sampled, g_scalarized, rtol=1e-12, atol=1e-12)
        if tau > 1:  # and it differs from the natural (τ = 1) gradient, so the check has teeth
            natural = sum(example_losses(d).sum() for d in domains) / n_total
            g_natural, = torch.autograd.grad(natural, theta)
            assert (g_natural - g_sampled).abs().max() > 1e-3


def test_cooldown_switches_at_configured_step():
    schedule = CooldownSchedule(taus=(5.0, 1.0), switch_steps=(50,))
    assert [schedule.tau(s) for s in (0, 49, 50, 51, 10_000)] == [5.0, 5.0, 1.0, 1.0, 1.0]
    three = CooldownSchedule(taus=(10.0, 3.0, 1.0), switch_steps=(10, 20))
    assert [three.tau(s) for s in (9, 10, 19, 20)] == [10.0, 3.0, 3.0, 1.0]
    with pytest.raises(ValueError, match="switch_steps"):
        CooldownSchedule(taus=(5.0, 1.0), switch_steps=())


# ---------------------------------------------------------------- DGA

def test_dga_update_formula_and_simplex():
    torch.manual_seed(0)
    k, d = 6, 40
    alpha = torch.softmax(torch.randn(k, dtype=torch.float64), 0)
    g = torch.randn(k, d, dtype=torch.float64)
    g_spe = torch.randn(d, dtype=torch.float64)
    eta = 0.3
    new = dga_update(alpha, g, g_spe, lr=eta)
    logits = torch.log(alpha) + eta * torch.stack([torch.dot(g[i], g_spe) for i in range(k)])
    expected = torch.exp(logits - logits.max())
    expected = expected / expected.sum()
    torch.testing.assert_close(new, expected, rtol=0, atol=1e-7)
    for beta in (0.0, 0.5, 0.9):
        a = alpha
        for _ in range(20):
            a = dga_update(a, torch.randn(k, d, dtype=torch.float64) * 5, g_spe, lr=eta, beta=beta)
            assert (a >= 0).all() and abs(float(a.sum()) - 1.0) < 1e-12
    ema = dga_update(alpha, g, g_spe, lr=eta, beta=0.9)
    torch.testing.assert_close(ema, 0.9 * alpha + 0.1 * new)
    with pytest.raises(ValueError, match="beta"):
        dga_update(alpha, g, g_spe, beta=1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dga_raises_weight_of_domains_in_the_specific_set(seed):
    """4 linear-regression domains with different true weights; the specific set is drawn from domains 0
    and 1. A linear model trained on the α-mixture, with α updated by DGA from its actual minibatch
    gradients, moves mass onto domains 0 and 1 (their sum; once the model fits the specific set, the split
    between 0 and 1 follows minibatch noise, so each one alone is checked only at the first update)."""
    gen = torch.Generator().manual_seed(seed)
    k, d, n = 4, 16, 256
    true_w = torch.randn(k, d, generator=gen)
    xs = torch.randn(k, n, d, generator=gen)
    ys = torch.einsum("knd,kd->kn", xs, true_w) + 0.1 * torch.randn(k, n, generator=gen)
    spe_x = torch.cat([xs[0, :16], xs[1, :16]])
    spe_y = torch.cat([ys[0, :16], ys[1, :16]])
    torch.manual_seed(seed)
    model = torch.nn.Linear(d, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    alpha = torch.full((k,), 1.0 / k, dtype=torch.float64)

    def loss_on(x, y):
        return 0.5 * ((model(x).squeeze(-1) - y) ** 2).mean()

    def flat_grad(loss):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])

    history = [alpha]
    for step in range(60):
        idx = torch.randint(0, n, (16,), generator=gen)
        loss = sum(float(alpha[i]) * loss_on(xs[i, idx], ys[i, idx]) for i in range(k))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 5 == 4:  # T_r = 5
            idx = torch.randint(0, n, (32,), generator=gen)
            grads = torch.stack([flat_grad(loss_on(xs[i, idx], ys[i, idx])) for i in range(k)]).double()
            g_spe = flat_grad(loss_on(spe_x, spe_y)).double()
            alpha = dga_update(alpha, grads, g_spe, lr=0.05, beta=0.5)
            history.append(alpha)
    mass = [float(a[0] + a[1]) for a in history]
    print("DGA mass on specific domains:", [round(m, 3) for m in mass])
    assert mass[-1] > 0.65  # from 0.5 (uniform)
    assert float(history[1][0]) > 0.25 and float(history[1][1]) > 0.25  # each rises at the first update
    assert float(history[-1][2]) < 0.25 and float(history[-1][3]) < 0.25  # each falls from 0.25
    assert mass[len(mass) // 2] > mass[0]
