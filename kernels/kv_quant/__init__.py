"""Group-wise asymmetric uniform quantization with bit packing: the op KIVI and GEAR store a KV cache with
(KIVI, arXiv:2402.02750; GEAR, arXiv:2403.05527).

Along the last axis of x (..., N), consecutive groups of G elements (the last group may be shorter) each
get their own zero point and step:

    zero = min(group),   scale = (max(group) - min(group)) / (2^b - 1)       stored in `scale_dtype`
    code = clamp(floor((x - zero) / scale + 1/2), 0, 2^b - 1)               with the stored zero and scale
    x^   = code * scale + zero                                               (dequantize)

Everything is computed in fp32, the codes from the zero and scale as stored, and ties round up
(floor(v + 1/2)). KIVI's code (quant/new_pack.py) does each step in the cache's dtype (fp16: x - min and
the division each rounded to fp16) and rounds ties to even (torch's round_); GEAR's simulated quantizer
computes in fp32 from the unrounded zero and step, ties to even. Their codes differ from these by one
level only where (x - zero) / scale lies within rounding error of a half-integer.

A group whose elements are all equal has scale 0, code 0 and is restored exactly. Codes are packed
32 / b to an int32 word along the last axis, code j in bits [b * (j mod 32/b), b * (j mod 32/b + 1)) of
word j div (32/b) (the last word is padded with zeros), so a quantized (..., N) tensor stores
32 * ceil(N b / 32) bits of codes and 2 * ceil(N / G) scale/zero values per row. b is 1, 2, 4 or 8.

Which axis is "last" is the caller's choice: KIVI quantizes keys per channel (groups run along tokens:
pass K transposed, (..., D, T)) and values per token (groups run along channels: pass V, (..., T, D)).

Backends (`kernels.get("kv_quant", backend)` returns a `KVQuantizer`: call it to quantize, and
`.dequantize(q)`; they agree exactly in fp32):

- `reference`: plain torch, any device.
- `triton`: a min/max kernel per (row block, group), then one kernel that quantizes and packs a tile of
  words, and one that unpacks and dequantizes. CUDA, or the Triton interpreter on the CPU (tests only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

BITS = (1, 2, 4, 8)


@dataclass(frozen=True)
class QuantizedTensor:
    """Packed codes (..., ceil(N / (32/b))) int32, and per group scale and zero (..., ceil(N / G))."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    length: int  # N, the last axis of the quantized tensor
    bits: int
    group_size: int

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.codes.shape[:-1], self.length))

    def stored_bits(self) -> int:
        """Bits held in memory: packed codes (32 per word) plus scales and zeros at their dtype's width."""
        return (self.codes.numel() * 32 + self.scale.numel() * self.scale.element_size() * 8
                + self.zero.numel() * self.zero.element_size() * 8)


@dataclass(frozen=True)
class KVQuantizer:
    """One backend of the op: `quantizer(x, bits, group_size, scale_dtype=...) -> QuantizedTensor`,
    `quantizer.dequantize(q, dtype=...) -> tensor`."""

    name: str
    quantize: Callable[..., QuantizedTensor]
    dequantize: Callable[..., torch.Tensor]

    def __call__(self, x: torch.Tensor, bits: int, group_size: int, *, scale_dtype: torch.dtype = torch.float16
                 ) -> QuantizedTensor:
        return self.quantize(x, bits, group_size, scale_dtype=scale_dtype)


def check_args(x: torch.Tensor, bits: int, group_size: int) -> None:
    if bits not in BITS:
        raise ValueError(f"kv_quant: bits must be one of {BITS}, got {bits}")
    if group_size < 1:
        raise ValueError(f"kv_quant: group_size must be >= 1, got {group_size}")
    if x.ndim < 1 or x.shape[-1] == 0:
        raise ValueError(f"kv_quant: x must have a non-empty last axis, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"kv_quant: x must be floating point, got {x.dtype}")


def words_per_row(length: int, bits: int) -> int:
    per_word = 32 // bits
    return -(-length // per_word)


def groups_per_row(length: int, group_size: int) -> int:
    return -(-length // group_size)
