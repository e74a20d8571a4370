"""kv_quant (kernels/kv_quant): group-wise asymmetric quantization with bit packing.

The reference defines the op; its own tests check the scheme (the packed bit layout, the error bound of
round-to-nearest, exact constant groups, the storage count). The Triton kernels must reproduce the
reference bit for bit under the interpreter (fp32 arithmetic both sides, small odd shapes: ragged last
groups, groups longer than the row, rows not a multiple of the row block). Tests whose names contain
`cuda` run on a GPU only (bf16 included): the same codes, dequantized values to the last bit.
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

import kernels
from kernels.kv_quant import BITS, KVQuantizer, QuantizedTensor
from kernels.kv_quant import reference as ref

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = HAS_TRITON and os.environ.get("TRITON_INTERPRET") == "1"
interpreter = pytest.mark.skipif(not INTERPRETED, reason="needs triton and TRITON_INTERPRET=1 (CPU only)")
cuda = pytest.mark.skipif(not (HAS_CUDA and HAS_TRITON), reason="needs a CUDA device and triton")

# (shape, group size): ragged last groups, a group longer than the row, a single element, 3-D leading dims
CASES = [((3, 7, 13), 5), ((2, 33), 32), ((5, 8), 4), ((1, 1), 3), ((2, 3, 1, 19), 64), ((9, 70), 16)]


def sample(shape, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 2 + torch.randn(shape[-1], generator=g)  # per-column offsets
    return x.to(device=device, dtype=dtype)


# ------------------------------------------------------------------------------------------------ reference
def test_packed_layout_is_little_end_first():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0, 3.0]])  # 2 bits, one group of 4 -> codes 0 1 2 3 | group of 1
    q = ref.quantize(x, 2, 4, scale_dtype=torch.float32)
    assert q.codes.tolist() == [[0 | 1 << 2 | 2 << 4 | 3 << 6 | 0 << 8]]
    assert q.zero.tolist() == [[0.0, 3.0]] and q.scale.tolist() == [[1.0, 0.0]]
    x8 = torch.arange(0, 256, 51, dtype=torch.float32)[None]  # 0 51 ... 255: codes 0..5 at 8 bits
    q8 = ref.quantize(x8, 8, 6, scale_dtype=torch.float32)
    words = [int(w) & 0xFFFFFFFF for w in q8.codes[0]]
    assert [(words[j // 4] >> (8 * (j % 4))) & 0xFF for j in range(6)] == [0, 51, 102, 153, 204, 255]


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape,group", CASES)
def test_round_to_nearest_error_bound(bits, shape, group):
    """|x - x^| <= scale / 2 for every element (fp32 scales), and the group minimum is exact."""
    x = sample(shape, seed=bits)
    q = ref.quantize(x, bits, group, scale_dtype=torch.float32)
    err = (ref.dequantize(q) - x).abs()
    n = shape[-1]
    half_step = q.scale.repeat_interleave(group, -1)[..., :n] / 2
    assert (err <= half_step * (1 + 1e-5) + 1e-6).all()
    lows = ref._grouped(x, group, float("inf")).amin(-1)
    assert torch.equal(q.zero, lows)


def test_ties_round_up():
    """The documented rounding (module docstring): floor(v + 1/2) in fp32, so a value halfway between two
    levels takes the upper one (KIVI's and GEAR's torch.round takes the even one)."""
    x = torch.tensor([[0.0, 0.5, 1.5, 2.5, 3.0]])  # one group, step 1 at 2 bits: 0.5, 1.5, 2.5 are ties
    q = ref.quantize(x, 2, 8, scale_dtype=torch.float32)
    assert ref.dequantize(q).tolist() == [[0.0, 1.0, 2.0, 3.0, 3.0]]
    assert torch.round(x).tolist() == [[0.0, 0.0, 2.0, 2.0, 3.0]]  # ties to even: 0.5 -> 0, 2.5 -> 2


def test_constant_groups_are_exact_and_storage_is_counted():
    x = torch.full((4, 10), 1.25)
    x[1] = -3.0
    q = ref.quantize(x, 4, 3)
    assert torch.equal(ref.dequantize(q), x) and (q.scale == 0).all()
    # 10 codes of 4 bits = 2 words per row; 4 groups per row of fp16 scale + fp16 zero
    assert q.codes.shape == (4, 2) and q.stored_bits() == 4 * (2 * 32 + 4 * 2 * 16)
    assert q.shape == x.shape


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="bits must be one of"):
        ref.quantize(torch.randn(2, 4), 3, 2)
    with pytest.raises(ValueError, match="group_size"):
        ref.quantize(torch.randn(2, 4), 2, 0)


def test_registry_serves_both_backends():
    assert kernels.known_backends("kv_quant") == ["reference", "triton"]
    quantizer = kernels.get("kv_quant", "reference")
    assert isinstance(quantizer, KVQuantizer) and isinstance(quantizer(torch.randn(2, 8), 2, 4), QuantizedTensor)
    with pytest.raises(KeyError, match="known: reference, triton"):
        kernels.get("kv_quant", "cuda")


# ------------------------------------------------------------------------------------------------ triton
# every shape, every bit width twice, both scale dtypes (the interpreter runs programs one by one: few cases)
TRITON_CASES = [(shape, group, bits, scale_dtype) for i, ((shape, group), scale_dtype) in
                enumerate(zip(CASES, [torch.float16, torch.float32] * 3)) for bits in (BITS[i % 4], BITS[(i + 1) % 4])]


@interpreter
@pytest.mark.parametrize("shape,group,bits,scale_dtype", TRITON_CASES)
def test_triton_matches_reference_fp32(shape, group, bits, scale_dtype):
    tri = kernels.get("kv_quant", "triton")
    x = sample(shape, seed=10 + bits)
    a, b = ref.quantize(x, bits, group, scale_dtype=scale_dtype), tri(x, bits, group, scale_dtype=scale_dtype)
    assert torch.equal(a.codes, b.codes)
    assert torch.equal(a.scale, b.scale) and torch.equal(a.zero, b.zero)
    assert b.scale.dtype == scale_dtype and (a.length, a.bits, a.group_size) == (b.length, b.bits, b.group_size)
    assert torch.equal(ref.dequantize(a), tri.dequantize(b))


@interpreter
def test_triton_fp16_inputs_and_outputs():
    tri = kernels.get("kv_quant", "triton")
    x = sample((6, 37), seed=3, dtype=torch.float16)
    a, b = ref.quantize(x, 4, 8), tri(x, 4, 8)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale) and torch.equal(a.zero, b.zero)
    assert torch.equal(ref.dequantize(a, torch.float16), tri.dequantize(b, torch.float16))


# ------------------------------------------------------------------------------------------------ CUDA
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("bits", BITS)
def test_triton_matches_reference_cuda(bits, dtype):
    """Same codes, scales and zeros as the reference on the GPU; dequantized values to the last bit."""
    tri = kernels.get("kv_quant", "triton")
    for shape, group in [*CASES, ((4, 32, 1000, 128), 32)]:
        x = sample(shape, seed=bits, dtype=dtype, device="cuda")
        a, b = ref.quantize(x, bits, group), tri(x, bits, group)
        assert torch.equal(a.codes, b.codes) and torch.equal(a.scale, b.scale) and torch.equal(a.zero, b.zero)
        torch.testing.assert_close(tri.dequantize(b), ref.dequantize(a), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(tri.dequantize(b, dtype), ref.dequantize(a, dtype))
