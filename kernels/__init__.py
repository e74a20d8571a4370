"""Kernel registry: `get(op, backend)` returns the function that computes `op`.

One folder per op; `reference.py` is plain torch and runs anywhere. A hardware config maps each op to a
backend (`hardware.kernels`); a backend that cannot run on this machine is an error unless the caller
allows falling back to the reference, which is then logged. A Triton backend runs where CUDA is, or on
the CPU under the Triton interpreter (`TRITON_INTERPRET=1` set before the kernel module is imported;
correct but very slow: tests only).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    target: str  # "module:function"
    needs_cuda: bool = False
    triton: bool = False  # written in Triton: also runs under the Triton interpreter

    def available(self) -> bool:
        if not self.needs_cuda:
            return True
        if self.triton and importlib.util.find_spec("triton") is None:
            return False
        import torch

        return torch.cuda.is_available() or (self.triton and os.environ.get("TRITON_INTERPRET") == "1")

    def load(self) -> Callable:
        module, fn = self.target.split(":")
        return getattr(importlib.import_module(module), fn)


REGISTRY: dict[str, dict[str, Backend]] = {
    "cross_entropy": {
        "naive": Backend("kernels.cross_entropy.naive:linear_cross_entropy"),
        "reference": Backend("kernels.cross_entropy.reference:linear_cross_entropy"),
        "triton": Backend("kernels.cross_entropy.triton:linear_cross_entropy", needs_cuda=True, triton=True),
    },
    "kv_quant": {
        "reference": Backend("kernels.kv_quant.reference:kv_quant"),
        "triton": Backend("kernels.kv_quant.triton:kv_quant", needs_cuda=True, triton=True),
    },
}


def known_ops() -> list[str]:
    return sorted(REGISTRY)


def known_backends(op: str) -> list[str]:
    return sorted(REGISTRY.get(op, {}))


def get(op: str, backend: str = "reference", *, fallback: bool = False) -> Callable:
    if op not in REGISTRY:
        raise KeyError(f"kernels: unknown op {op!r}; known ops: {', '.join(known_ops())}")
    backends = REGISTRY[op]
    if backend not in backends:
        raise KeyError(f"kernels: unknown backend {backend!r} for {op}; known: {', '.join(known_backends(op))}")
    chosen = backends[backend]
    if not chosen.available():
        if not fallback:
            raise RuntimeError(f"kernels: {op}/{backend} needs a CUDA device; set hardware.kernel_fallback=true "
                               f"or hardware.kernels.{op}=reference")
        log.warning("kernels: %s/%s cannot run here; falling back to %s/reference", op, backend, op)
        chosen = backends["reference"]
    return chosen.load()
