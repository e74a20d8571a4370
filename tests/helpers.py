"""Builders shared by the tests: small random transformers models."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM


class lazy_import:
    """A module imported on first attribute access, skipping the test if it is not installed: for reference
    packages whose import costs seconds (badam imports transformers.trainer), so collecting the suite stays fast."""

    def __init__(self, name: str):
        self._name, self._module = name, None

    def __getattr__(self, attr: str):
        if attr.startswith("_"):  # pytest's probes at collection (fixture markers, __wrapped__): not the module's
            raise AttributeError(attr)
        if self._module is None:
            self._module = pytest.importorskip(self._name)
        return getattr(self._module, attr)


def tiny_llama(vocab: int, *, hidden: int = 32, intermediate: int = 64, layers: int = 2, heads: int = 4,
               kv_heads: int | None = None, max_pos: int = 32, init_std: float = 0.02, seed: int | None = 0,
               attn: str | None = None, device: str | torch.device = "cpu") -> LlamaForCausalLM:
    """A randomly initialised Llama (RoPE, SwiGLU, no cache by default); `seed` None keeps the global RNG."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if seed is not None:
        torch.manual_seed(seed)
    extra = {"attn_implementation": attn} if attn else {}
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads or heads, max_position_embeddings=max_pos,
                      initializer_range=init_std, use_cache=False, **extra)
    with torch.device(device):
        return LlamaForCausalLM(cfg)


class ValData:
    """The part of the runner's TokenData an evaluate() hook reads: `blocks("val")`, given here directly."""

    def __init__(self, blocks: torch.Tensor):
        self._blocks = blocks

    def blocks(self, split: str) -> torch.Tensor:
        assert split == "val"
        return self._blocks
