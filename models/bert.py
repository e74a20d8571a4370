"""BERT (transformers BertForMaskedLM) built from our config, random init: a bidirectional encoder with the
masked-language-model head, for encoder tasks (tasks/mlm.py: masked-token prediction)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.base import Architecture, size_problems

if TYPE_CHECKING:
    from torch import nn


class Bert(Architecture):
    kind = "masked-lm"
    provides = frozenset({"encoder"})
    hf_auto = "AutoModelForMaskedLM"

    def __init__(self, hidden_size: int = 128, intermediate_size: int = 512, num_layers: int = 2, num_heads: int = 2,
                 dropout: float = 0.1, init_std: float = 0.02):
        problems = size_problems(hidden_size=hidden_size, intermediate_size=intermediate_size, num_layers=num_layers,
                                 num_heads=num_heads)
        if problems:
            raise ValueError("; ".join(problems))
        self.hidden_size, self.intermediate_size, self.num_layers, self.num_heads = (hidden_size, intermediate_size,
                                                                                      num_layers, num_heads)
        self.dropout, self.init_std = float(dropout), float(init_std)

    def hf_config(self, vocab_size: int, seq_len: int):
        from transformers import BertConfig

        return BertConfig(
            vocab_size=vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads, max_position_embeddings=seq_len,
            hidden_dropout_prob=self.dropout, attention_probs_dropout_prob=self.dropout,
            initializer_range=self.init_std, type_vocab_size=1, pad_token_id=None, attn_implementation="sdpa",
        )

    def build(self, vocab_size: int, seq_len: int) -> nn.Module:
        from transformers import BertForMaskedLM

        return BertForMaskedLM(self.hf_config(vocab_size, seq_len))

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The encoder's layers, wherever the model holds its BERT encoder (BertForMaskedLM.bert, a BertModel, or
        a task's wrapper around either, e.g. a classifier head)."""
        from transformers.models.bert.modeling_bert import BertEncoder as _Layers

        return next((list(m.layer) for m in model.modules() if isinstance(m, _Layers)), [])

    def activation_bytes(self, model, batch, seq_len, act_bytes, checkpointing):
        """As the Llama estimate (models/llama.py), for a post-norm BERT layer with a GELU MLP: ~10 h-sized
        tensors (q/k/v, attention output, projection, dropout masks, two LayerNorm inputs/outputs) and 2
        intermediate-sized ones (the MLP's input to GELU and its output) per token."""
        cfg = model.config
        h, i, n = cfg.hidden_size, cfg.intermediate_size, len(self.blocks(model))
        per_layer = seq_len * batch * act_bytes * (10 * h + 2 * i)
        if checkpointing:
            return float(n * seq_len * batch * h * act_bytes + per_layer)
        return float(n * per_layer)


class BertEncoder(Bert):
    """The BERT encoder alone (transformers BertModel, no head, no pooler): what a task puts its own head on
    (tasks/text_cls.py: a classifier). Built from our config at random init, or a real checkpoint through
    `model.init_from` (an HF directory such as the all-MiniLM-L6-v2 that `model=minilm` loads offline)."""

    kind = "encoder"
    hf_auto = "AutoModel"

    def build(self, vocab_size: int, seq_len: int) -> nn.Module:
        from transformers import BertModel

        return BertModel(self.hf_config(vocab_size, seq_len), add_pooling_layer=False)

    def from_pretrained(self, name: str, meta: bool = False) -> nn.Module:
        model = super().from_pretrained(name, meta=meta)
        if getattr(model, "pooler", None) is not None:  # a classification head pools itself: BERT's pooler is unused
            model.pooler = None
        return model
