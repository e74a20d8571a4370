"""T5 (transformers T5ForConditionalGeneration) built from our config, random init: the encoder-decoder of the
seq2seq tasks (tasks/seq2seq.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.base import Architecture, size_problems

if TYPE_CHECKING:
    from torch import nn


class T5(Architecture):
    kind = "seq2seq-lm"
    hf_auto = "AutoModelForSeq2SeqLM"

    def __init__(self, hidden_size: int = 64, intermediate_size: int = 128, num_layers: int = 2, num_heads: int = 4,
                 tie_embeddings: bool = True, init_std: float = 1.0, dropout: float = 0.0):
        problems = size_problems(hidden_size=hidden_size, intermediate_size=intermediate_size, num_layers=num_layers,
                                 num_heads=num_heads)
        if problems:
            raise ValueError("; ".join(problems))
        self.hidden_size, self.intermediate_size, self.num_layers, self.num_heads = (hidden_size, intermediate_size,
                                                                                      num_layers, num_heads)
        self.tie_embeddings, self.init_std, self.dropout = tie_embeddings, float(init_std), float(dropout)

    def hf_config(self, vocab_size: int):
        from transformers import T5Config

        return T5Config(
            vocab_size=vocab_size, d_model=self.hidden_size, d_ff=self.intermediate_size,
            d_kv=self.hidden_size // self.num_heads, num_layers=self.num_layers, num_decoder_layers=self.num_layers,
            num_heads=self.num_heads, dropout_rate=self.dropout, initializer_factor=self.init_std,
            tie_word_embeddings=self.tie_embeddings, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
            feed_forward_proj="relu", use_cache=False,
        )

    def build(self, vocab_size: int, seq_len: int) -> nn.Module:
        from transformers import T5ForConditionalGeneration

        return T5ForConditionalGeneration(self.hf_config(vocab_size))

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return [*model.get_encoder().block, *model.get_decoder().block]

    def activation_bytes(self, model, batch, seq_len, act_bytes, checkpointing):
        """As the Llama estimate (models/llama.py), per block: an encoder block saves ~8 h-sized and 2 d_ff-sized
        tensors (norm, q/k/v, attention output, projection, residual; ReLU MLP in and out), a decoder block adds a
        cross-attention (~5 h-sized more); sources and targets both `seq_len` long."""
        cfg = model.config
        h, i = cfg.d_model, cfg.d_ff
        enc = seq_len * batch * act_bytes * (8 * h + 2 * i)
        dec = seq_len * batch * act_bytes * (13 * h + 2 * i)
        if checkpointing:
            return float(len(self.blocks(model)) * seq_len * batch * h * act_bytes + max(enc, dec))
        return float(cfg.num_layers * enc + cfg.num_decoder_layers * dec)
