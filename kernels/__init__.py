"""Kernel registry: `get(op, backend)` returns the function that computes `op`.

One folder per op; `reference.py` is plain torch and runs anywhere. A hardware config maps each op to a
backend (`hardware.kernels`); a backend that cannot run on this machine is an error unless the caller
allows falling back to the reference, which is then logged.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    target: str  # "module:function"
    needs_cuda: bool = False

    def available(self) -> bool:
        if not self.needs_cuda:
            return True
        import torch

        return torch.cuda.is_available()

    def load(self) -> Callable:
        module, fn = self.target.split(":")
        return getattr(importlib.import_module(module), fn)


REGISTRY: dict[str, dict[str, Backend]] = {
    "cross_entropy": {
        "reference": Backend("kernels.cross_entropy.reference:cross_entropy"),
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
