"""Cut Cross-Entropy: every backend of `linear_cross_entropy` against the naive logits + F.cross_entropy.

Comparison rule (apple/ml-cross-entropy's tests): the ground truth is the naive loss on fp32 copies of the
inputs at full matmul precision; a backend passes when, element-wise, its distance to the truth is at most
the naive result's own distance in the same dtype plus a tolerance: fp32 1e-5 forward / 5e-4 backward,
fp16 1e-3, bf16 1e-2. Summed losses get the forward tolerance once per token.

Triton runs under the interpreter on CPU tensors (see conftest.py): tiny shapes, fp32 and fp16 only.
The tests whose names contain `cuda` run on a GPU only (bench/gpu_check.sh runs them), bf16 included.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

import pytest
import torch

import kernels
from kernels.cross_entropy import linear_cross_entropy
from kernels.cross_entropy import reference as ref_backend
from kernels.tracking import LargestAllocation

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1"
interpreter = pytest.mark.skipif(not INTERPRETED, reason="needs triton and TRITON_INTERPRET=1 (CPU only)")
cuda = pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs a CUDA device and triton")

FWD_TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
BWD_TOL = {torch.float32: 5e-4, torch.float16: 1e-3, torch.bfloat16: 1e-2}


# ------------------------------------------------------------------------------------------------ helpers
def make_inputs(shape, V, D, *, dtype=torch.float32, device="cpu", bias=False, ignore_frac=0.2, seed=0):
    """e (*shape, D), c (V, D) with logits of std ~2, targets with ignore_frac of -100."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(*shape, D, generator=g)
    c = torch.randn(V, D, generator=g) * (2.0 / D**0.5)
    b = torch.randn(V, generator=g) * 0.5 if bias else None
    t = torch.randint(0, V, shape, generator=g)
    t[torch.rand(shape, generator=g) < ignore_frac] = -100
    cast = lambda x: None if x is None else x.to(device=device, dtype=dtype)  # noqa: E731
    return cast(e), cast(c), cast(b), t.to(device)


def run(backend, e, c, b, t, **opts):
    """Loss (and lse) and the gradients of a weighted sum of them w.r.t. e, c, bias; all as fp32."""
    leaves = [x.detach().clone().requires_grad_() if x is not None else None for x in (e, c, b)]
    e_, c_, b_ = leaves
    out = linear_cross_entropy(e_, c_, t, bias=b_, backend=backend, **opts)
    loss, lse = out if opts.get("return_lse") else (out, None)
    # weights of mean-like size (1/tokens), as in apple/ml-cross-entropy's tests
    g, n = torch.Generator().manual_seed(1), max(1, int((t != -100).sum()))
    w = torch.randn(loss.shape, generator=g).to(loss.device) / n if loss.ndim else 1.0
    total = (loss * w).sum() / (n if opts.get("reduction") == "sum" else 1)
    if lse is not None:
        total = total + (lse * torch.randn(lse.shape, generator=g).to(lse.device)).sum() / n
    total.backward()
    res = {"loss": loss.detach().float()}
    if lse is not None:
        res["lse"] = lse.detach().float()
    for name, x in zip(("de", "dc", "dbias"), leaves):
        if x is not None:
            res[name] = x.grad.float()
    return res


def truth(e, c, b, t, **opts):
    """The naive backend on fp32 copies at full matmul precision."""
    prec = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        up = lambda x: None if x is None else x.float()  # noqa: E731
        return run("naive", up(e), up(c), up(b), t, **opts)
    finally:
        torch.set_float32_matmul_precision(prec)


def check_against_naive(backend, e, c, b, t, **opts):
    dtype = e.dtype
    gt = truth(e, c, b, t, **opts)
    same_dtype = run("naive", e, c, b, t, **opts) if dtype != torch.float32 else gt
    got = run(backend, e, c, b, t, **opts)
    n_tokens = int((t != -100).sum())
    for key, want in gt.items():
        tol = FWD_TOL[dtype] if key in ("loss", "lse") else BWD_TOL[dtype]
        if key == "loss" and opts.get("reduction") == "sum":
            tol *= n_tokens
        err = (got[key] - want).abs()
        allowed = (same_dtype[key] - want).abs() + tol
        assert got[key].shape == want.shape, key
        assert bool((err <= allowed).all()), f"{backend} {dtype} {key}: max error {err.max():.3g}, " \
                                            f"over the allowance by {(err - allowed).max():.3g} ({opts})"
    return got


# (shift, softcap, reduction, bias, return_lse): covers each option on and off at least once
CASES = [
    (0, None, "mean", False, False),
    (1, None, "sum", True, False),
    (0, 3.0, "none", True, True),
    (1, 3.0, "mean", False, True),
    (2, None, "none", False, True),
    (0, 3.0, "sum", False, False),
]


def opts_of(case):
    shift, softcap, reduction, bias, return_lse = case
    return bias, {"shift": shift, "softcap": softcap, "reduction": reduction, "return_lse": return_lse}


# ------------------------------------------------------------------------------------------------ naive
def test_naive_is_f_cross_entropy():
    e, c, _, t = make_inputs((3, 11), 50, 8)
    got = linear_cross_entropy(e, c, t, backend="naive", reduction="none")
    want = torch.nn.functional.cross_entropy((e @ c.T).reshape(-1, 50), t.reshape(-1), reduction="none")
    torch.testing.assert_close(got, want.reshape(3, 11))
    # shift=1 equals slicing by hand; ignored tokens give 0 with reduction none
    got = linear_cross_entropy(e, c, t, backend="naive", shift=1, reduction="none")
    want = torch.nn.functional.cross_entropy((e[:, :-1] @ c.T).reshape(-1, 50), t[:, 1:].reshape(-1),
                                             reduction="none")
    torch.testing.assert_close(got, want.reshape(3, 10))


# -------------------------------------------------------------------------------------------- reference
@pytest.fixture
def small_chunks(monkeypatch):
    """Force 256-wide vocabulary chunks so small vocabularies span several (and a ragged last one)."""
    monkeypatch.setattr(ref_backend, "CHUNK_ELEMENTS", 1)


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [False, True])
def test_reference_matches_naive_fp32(small_chunks, shift, softcap, reduction, bias):
    e, c, b, t = make_inputs((3, 29), 1000, 40, bias=bias)
    check_against_naive("reference", e, c, b, t, shift=shift, softcap=softcap, reduction=reduction,
                        return_lse=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES[:3])
def test_reference_matches_naive_half(small_chunks, dtype, case):
    bias, opts = opts_of(case)
    e, c, b, t = make_inputs((2, 33), 700, 48, dtype=dtype, bias=bias)
    check_against_naive("reference", e, c, b, t, **opts)


def test_reference_no_ignored_tokens_and_all_ignored(small_chunks):
    e, c, _, t = make_inputs((4, 16), 600, 16, ignore_frac=0.0)
    check_against_naive("reference", e, c, None, t, reduction="none")
    t_all = torch.full_like(t, -100)
    for backend in ("naive", "reference"):
        assert torch.isnan(linear_cross_entropy(e, c, t_all, backend=backend))
        assert linear_cross_entropy(e, c, t_all, backend=backend, reduction="sum") == 0




def test_reference_never_allocates_n_by_v_but_naive_does():
    N, V, D = 64, 20000, 16
    e, c, b, t = make_inputs((N,), V, D, bias=True)
    chunk = ref_backend.vocab_chunk(N, V)
    assert chunk < V
    largest = {}
    for backend in ("naive", "reference"):
        e_, c_, b_ = (x.clone().requires_grad_() for x in (e, c, b))
        with LargestAllocation() as tracker:
            loss, lse = linear_cross_entropy(e_, c_, t, bias=b_, shift=1, backend=backend, return_lse=True)
            (loss + lse.square().mean()).backward()
        largest[backend] = tracker.largest
    assert largest["naive"] >= (N - 1) * V
    assert largest["reference"] < N * V // 2
    assert largest["reference"] <= max(N * chunk, V * D), largest


def test_argument_errors():
    e, c, _, t = make_inputs((2, 5), 30, 8)
    with pytest.raises(KeyError, match="naive, reference, triton"):
        linear_cross_entropy(e, c, t, backend="fast")
    with pytest.raises(ValueError, match="shift"):
        linear_cross_entropy(e, c, t, shift=5)
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(e, c, t[:, :4])
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(e, c, t, reduction="avg")
    with pytest.raises(IndexError, match=r"\[0, 30\)"):
        linear_cross_entropy(e, c, t.clamp(min=0) + 29)


# ---------------------------------------------------------------------------------------------- registry
def test_registry_has_every_backend_and_runner_call_works():
    assert kernels.known_backends("cross_entropy") == ["naive", "reference", "triton"]
    e, c, _, t = make_inputs((2, 7), 40, 8)
    want = linear_cross_entropy(e, c, t, backend="naive", reduction="sum")
    for backend in ("naive", "reference"):
        got = kernels.get("cross_entropy", backend)(e, c, t, reduction="sum")  # MethodModule.lm_loss's call
        torch.testing.assert_close(got, want)


def test_registry_triton_without_cuda_errors_or_falls_back(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="kernel_fallback"):
        kernels.get("cross_entropy", "triton")
    with caplog.at_level(logging.WARNING, logger="kernels"):
        fn = kernels.get("cross_entropy", "triton", fallback=True)
    assert fn is kernels.get("cross_entropy", "reference")
    assert "falling back" in caplog.text


# ----------------------------------------------------------------------------------- triton (interpreter)
@interpreter
@pytest.mark.parametrize("case", CASES, ids=str)
def test_triton_interpreter_matches_naive_fp32(case):
    bias, opts = opts_of(case)
    e, c, b, t = make_inputs((2, 19), 83, 24, bias=bias)  # 38 tokens x 83 words: ragged 16 x 32 x 16 tiles
    check_against_naive("triton", e, c, b, t, **opts)


@interpreter
@pytest.mark.parametrize("case", [CASES[0], CASES[2], CASES[3]], ids=str)
def test_triton_interpreter_matches_naive_fp16(case):
    bias, opts = opts_of(case)
    e, c, b, t = make_inputs((2, 19), 83, 24, dtype=torch.float16, bias=bias)
    check_against_naive("triton", e, c, b, t, **opts)


@interpreter
def test_triton_interpreter_no_ignored_tokens():
    e, c, b, t = make_inputs((37,), 70, 20, bias=True, ignore_frac=0.0)
    check_against_naive("triton", e, c, b, t, reduction="none")


def peaked_inputs(N, V, D, *, dtype=torch.float32, device="cpu", seed=0, n_peaks=8, scale=40.0):
    """Each token's softmax peaks (about `scale` above the rest) on one of n_peaks words; its target is
    another of them. Gradient filtering should skip every tile without a peak word; sorting the
    vocabulary by average logit gathers the peak words into the last tile(s).
    """
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(V, D, generator=g)
    c = c / c.norm(dim=1, keepdim=True)
    peaks = torch.randperm(V, generator=g)[:n_peaks]
    peak = peaks[torch.arange(N) % n_peaks]
    e = scale * c[peak] + 0.1 * torch.randn(N, D, generator=g)
    t = peaks[(torch.arange(N) + 1) % n_peaks]  # another peak word: a gradient the filter must keep
    return e.to(device, dtype), c.to(device, dtype), t.to(device)


def filtered_vs_exact(e, c, t, eps, sort_vocab=True):
    from kernels.cross_entropy import triton as tri

    grads, losses = [], []
    for filter_eps in (None, eps):
        e_, c_ = e.clone().requires_grad_(), c.clone().requires_grad_()
        rows_tgt = t.reshape(-1)
        nll, _ = tri.cce_nll_and_lse(e_, None, c_, None, rows_tgt, None, filter_eps, sort_vocab=sort_vocab)
        with tri.count_skipped_tiles() as counts:
            nll.mean().backward()
        losses.append(nll.detach())
        grads.append((e_.grad.float(), c_.grad.float()))
    return losses, grads, counts


def assert_filter_bound(e, c, losses, grads, eps):
    """|dE_id error| <= eps * g * sum_j |c_jd| and |dC_jd error| <= eps * sum_i g |e_id| (g = 1/N), plus
    a few units of rounding in the output dtype (the accumulation order differs)."""
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=1e-6)  # the forward does not filter
    (de0, dc0), (de1, dc1) = grads
    g, ulp = 1.0 / e.shape[0], torch.finfo(e.dtype).eps
    bound_e = eps * g * c.float().abs().sum(0)[None, :] + 4 * ulp * de0.abs().max() + 1e-12
    bound_c = eps * g * e.float().abs().sum(0)[None, :] + 4 * ulp * dc0.abs().max() + 1e-12
    assert bool(((de1 - de0).abs() <= bound_e).all()), (de1 - de0).abs().max()
    assert bool(((dc1 - dc0).abs() <= bound_c).all()), (dc1 - dc0).abs().max()


@interpreter
def test_triton_interpreter_filtering_skips_tiles_within_bound():
    e, c, t = peaked_inputs(40, 96, 32)  # 3 row blocks x 3 vocabulary tiles
    eps = 1e-6
    losses, grads, counts = filtered_vs_exact(e, c, t, eps)
    assert counts["tiles"] == 9 and counts["skipped"] >= 6, counts  # only the peak words' tile is kept
    assert_filter_bound(e, c, losses, grads, eps)
    # without sorting the peak words are scattered over the tiles: fewer (here no) tiles can be skipped
    _, _, unsorted = filtered_vs_exact(e, c, t, eps, sort_vocab=False)
    assert unsorted["skipped"] < counts["skipped"]


@interpreter
def test_triton_interpreter_filter_eps_zero_is_exact():
    e, c, b, t = make_inputs((2, 19), 83, 24, bias=True)
    exact = run("triton", e, c, b, t, filter_eps=None, reduction="none")
    from kernels.cross_entropy import triton as tri

    with tri.count_skipped_tiles() as counts:
        zero = run("triton", e, c, b, t, filter_eps=0.0, reduction="none")
    assert counts["skipped"] == 0 and counts["tiles"] > 0
    for key in exact:
        assert torch.equal(exact[key], zero[key]), key


def test_triton_refuses_cpu_tensors_outside_the_interpreter(monkeypatch):
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    from kernels.cross_entropy import triton as tri

    monkeypatch.setattr(tri, "INTERPRETED", False)
    e, c, _, t = make_inputs((2, 5), 30, 16)
    with pytest.raises(RuntimeError, match="CUDA"):
        linear_cross_entropy(e, c, t, backend="triton")


# ------------------------------------------------------------------------- independent implementation
def _no_cpp_compiler() -> str | None:
    """Why torch.compile cannot build CPU code here (Inductor finds no working C++ compiler), else None: the
    one known reason the package's `torch_compile` implementation cannot run on a CPU machine."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        from torch._inductor.exc import InvalidCxxCompiler
    except ImportError:  # another torch layout: let the call itself say what is wrong
        return None
    try:
        get_cpp_compiler()
    except InvalidCxxCompiler as err:
        return str(err).splitlines()[0]
    return None


@functools.cache
def _package_result(shift: int, softcap: float | None, reduction: str) -> dict[str, torch.Tensor]:
    """apple/ml-cross-entropy's torch_compile implementation on `make_inputs((2, 24), 300, 32)`: the loss and
    the gradients of the same weighted sum `run` takes (the only implementation the package has on a CPU)."""
    import cut_cross_entropy as cce

    e, c, _, t = make_inputs((2, 24), 300, 32)
    e_, c_ = e.clone().requires_grad_(), c.clone().requires_grad_()
    loss = cce.linear_cross_entropy(e_, c_, t, softcap=softcap, reduction=reduction, shift=bool(shift),
                                    impl="torch_compile")
    n = max(1, int((t != -100).sum()))  # as `run` weighs
    w = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1)) / n if loss.ndim else 1.0
    ((loss * w).sum() / (n if reduction == "sum" else 1)).backward()
    return {"loss": loss.detach(), "de": e_.grad, "dc": c_.grad}


# Measured on the CPU (3 seeds, all three options): max |ours - theirs| / max |theirs| <= 1.7 fp32 eps for the
# loss and <= 4.7 eps for the gradients (triton under the interpreter; naive and reference <= 3.5 eps): the
# sums run in another order, nothing more. Allowed: 8 and 20 eps of the largest magnitude.
PARITY_TOL = {"loss": 8, "de": 20, "dc": 20}


@pytest.mark.e2e  # torch.compile runs the C++ compiler in a subprocess
@pytest.mark.parametrize("backend", ["naive", "reference", pytest.param("triton", marks=interpreter)])
@pytest.mark.parametrize("shift,softcap,reduction", [(1, None, "mean"), (0, 3.0, "none"), (1, 3.0, "sum")])
def test_parity_with_cut_cross_entropy_package(backend, shift, softcap, reduction):
    """Every backend that runs on a CPU against apple/ml-cross-entropy's own implementation (PyPI
    `cut-cross-entropy`), same inputs: the independent check of this file's naive ground truth."""
    pytest.importorskip("cut_cross_entropy")
    why = _no_cpp_compiler()
    if why:
        pytest.skip(f"torch.compile needs a C++ compiler on the CPU: {why}")
    theirs = _package_result(shift, softcap, reduction)
    e, c, _, t = make_inputs((2, 24), 300, 32)
    ours = run(backend, e, c, None, t, shift=shift, softcap=softcap, reduction=reduction)
    eps = torch.finfo(torch.float32).eps
    for key, want in theirs.items():
        assert ours[key].shape == want.shape, key
        tol = PARITY_TOL[key] * eps * float(want.abs().max())
        torch.testing.assert_close(ours[key], want, rtol=0, atol=tol, msg=lambda m, k=key: f"{backend} {k}: {m}")


def test_parity_skips_only_without_a_cpp_compiler(monkeypatch):
    """The parity test skips on the one known condition (no C++ compiler for torch.compile), checked before
    the call; any error of the call itself fails it (no matching on messages)."""
    from torch._inductor import cpp_builder
    from torch._inductor.exc import InvalidCxxCompiler

    def missing():
        raise InvalidCxxCompiler()

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    assert "No working C++ compiler" in _no_cpp_compiler()
    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", lambda: "g++")
    assert _no_cpp_compiler() is None

# --------------------------------------------------------------------------------------------- CUDA only
CUDA_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
CUDA_CASES = [(dtype, case) for dtype in (torch.float32, torch.bfloat16) for case in CASES] + \
             [(torch.float16, case) for case in CASES[:2]]


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype,case", CUDA_CASES, ids=str)
def test_triton_cuda_matches_naive(dtype, case):
    bias, opts = opts_of(case)
    prec = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # fp32 dots in ieee, not tf32
    try:
        e, c, b, t = make_inputs((3, 341), 1531, 200, dtype=dtype, device="cuda", bias=bias)
        check_against_naive("triton", e, c, b, t, **opts)
    finally:
        torch.set_float32_matmul_precision(prec)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_reference_cuda_matches_naive(dtype):
    e, c, b, t = make_inputs((2, 300), 3000, 128, dtype=dtype, device="cuda", bias=True)
    check_against_naive("reference", e, c, b, t, shift=1, softcap=3.0, reduction="none", return_lse=True)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=str)
def test_triton_cuda_filtering_skips_tiles_within_bound(dtype):
    e, c, t = peaked_inputs(1024, 4096, 256, dtype=dtype, device="cuda", n_peaks=16, scale=60.0)
    eps = torch.finfo(dtype).eps / 32  # the "auto" default
    losses, grads, counts = filtered_vs_exact(e, c, t, eps)
    assert counts["skipped"] > counts["tiles"] // 2, counts
    assert_filter_bound(e, c, losses, grads, eps)


@cuda
@pytest.mark.gpu
def test_triton_cuda_memory_is_a_fraction_of_naive():
    e, c, _, t = make_inputs((4096,), 32000, 512, dtype=torch.bfloat16, device="cuda", ignore_frac=0.0)
    extra = {}
    for backend in ("naive", "triton"):
        e_, c_ = e.clone().requires_grad_(), c.clone().requires_grad_()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss = linear_cross_entropy(e_, c_, t, backend=backend)
        fwd = torch.cuda.max_memory_allocated() - base
        loss.backward()
        extra[backend] = (fwd, torch.cuda.max_memory_allocated() - base)
    assert extra["triton"][0] <= 0.01 * extra["naive"][0], extra
    assert extra["triton"][1] <= 0.25 * extra["naive"][1], extra
