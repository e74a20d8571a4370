"""Llama (transformers LlamaForCausalLM) built from our config, random init: RoPE, SwiGLU, RMSNorm, GQA."""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.base import Architecture, size_problems

if TYPE_CHECKING:
    from torch import nn


class Llama(Architecture):
    kind = "causal-lm"
    provides = frozenset({"decoder-layers"})  # model.get_decoder().layers: attention + MLP blocks (FLAP, EvoPress, ...)
    hf_auto = "AutoModelForCausalLM"

    def __init__(self, hidden_size: int = 256, intermediate_size: int = 688, num_layers: int = 4, num_heads: int = 4,
                 num_kv_heads: int | None = None, tie_embeddings: bool = False, rope_theta: float = 10000.0,
                 init_std: float = 0.02):
        problems = size_problems(hidden_size=hidden_size, intermediate_size=intermediate_size, num_layers=num_layers,
                                 num_heads=num_heads)
        if num_heads > 0 and num_kv_heads is not None and (num_kv_heads <= 0 or num_heads % num_kv_heads):
            problems.append(f"model.num_kv_heads ({num_kv_heads}) must divide model.num_heads ({num_heads})")
        if problems:
            raise ValueError("; ".join(problems))
        self.hidden_size, self.intermediate_size, self.num_layers = hidden_size, intermediate_size, num_layers
        self.num_heads, self.num_kv_heads = num_heads, num_kv_heads or num_heads
        self.tie_embeddings, self.rope_theta, self.init_std = tie_embeddings, float(rope_theta), init_std

    def hf_config(self, vocab_size: int, seq_len: int):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads, max_position_embeddings=seq_len,
            rope_parameters={"rope_type": "default", "rope_theta": self.rope_theta},
            tie_word_embeddings=self.tie_embeddings, initializer_range=self.init_std, use_cache=False,
            attn_implementation="sdpa",
        )

    def build(self, vocab_size: int, seq_len: int) -> nn.Module:
        from transformers import LlamaForCausalLM

        return LlamaForCausalLM(self.hf_config(vocab_size, seq_len))

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return list(model.get_decoder().layers)

    def activation_bytes(self, model, batch, seq_len, act_bytes, checkpointing):
        """Korthikanti et al. (2022), "Reducing Activation Recomputation in Large Transformer Models", for a Llama
        block in eager mode with fused attention (SDPA keeps no s x s matrix): the tensors saved for backward are
        about 11 h-sized (norm outputs, q/k/v, attention output, projections, residuals) and 4 intermediate-sized
        (gate, up, SiLU, product) in the activation dtype, plus two fp32 RMSNorm inputs. With activation
        checkpointing a layer keeps only its input and one layer is recomputed at a time. Checked on an H200
        (llama-60m, batch 64 x 256, bf16-mixed): within 5% of torch.cuda.max_memory_allocated, eager."""
        cfg = model.config
        h, i, n = cfg.hidden_size, cfg.intermediate_size, len(self.blocks(model))
        per_layer = seq_len * batch * (act_bytes * (11 * h + 4 * i) + 2 * 4 * h)
        if checkpointing:
            return float(n * seq_len * batch * h * act_bytes + per_layer)
        return float(n * per_layer)
