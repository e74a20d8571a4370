"""Methods that fail on cue, for tests/test_faults.py (a YAML-free `method._target_=tests.faulty.NanLossAt`)."""

from __future__ import annotations

from typing import Any

from methods.base import Method


class NanLossAt(Method):
    """The baseline (AdamW + cross-entropy) whose loss is nan at the 1-based micro-batches `nan_at`: a divergence
    at a known step, with everything else as the baseline computes it."""

    def __init__(self, nan_at: list[int] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.nan_at = frozenset(nan_at or [])

    def loss(self, module: Any, batch: Any) -> Any:
        loss = super().loss(module, batch)
        return loss * float("nan") if module.micro_batches_seen in self.nan_at else loss
