"""A sequence classifier (or regressor) over any encoder: backbone -> pooling -> dropout -> linear head.

    features = pool(backbone(input_ids, attention_mask))      (B, H)
    logits   = W · dropout(features) + b                       (B, C), or (B,) scores when C = 1 (regression)

The backbone is a transformers BERT-like model (BertForMaskedLM: its `.bert` encoder is used and its MLM head
left alone; BertModel, e.g. the real all-MiniLM-L6-v2) or a custom nn.Module that declares `kind = "encoder"`
(models/rcnn.py): it returns (B, L, H) hidden states, which are pooled here, or (B, H) features, used as they
are (a model with its own pooling). Pooling: `cls` (the first token: BERT's [CLS]), `mean` over real tokens
(sentence-transformers' MiniLM), or `max` over real tokens.

`embed(ids)` and `from_embeddings(embeds, mask)` split the forward at the input embeddings, so that attribution
methods (Integrated Gradients) can interpolate there: model(ids, mask) == from_embeddings(embed(ids), mask).
"""

from __future__ import annotations

import torch
from torch import nn

POOLING = ("cls", "mean", "max")


def _encoder(backbone: nn.Module) -> nn.Module:
    """The encoder of a transformers model with a task head (BertForMaskedLM.bert), else the model itself."""
    base = getattr(backbone, "base_model", None)
    return base if isinstance(base, nn.Module) else backbone


def feature_size(backbone: nn.Module) -> int:
    """The width of what the backbone returns per token (or per sequence)."""
    config = getattr(backbone, "config", None)
    size = getattr(backbone, "hidden_size", None) or getattr(config, "hidden_size", None)
    if not size:
        raise ValueError(f"{type(backbone).__name__}: a classification backbone has `hidden_size` (or config.hidden_size)")
    return int(size)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """(B, L, H) hidden states -> (B, H), over the real tokens (attention_mask 1) only."""
    if how == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    if how == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
    if how == "max":
        return hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).amax(1)
    raise ValueError(f"pooling: {how!r}; choose one of: {', '.join(POOLING)}")


class SequenceClassifier(nn.Module):
    """backbone + pooling + head; `num_labels=1` makes it a regressor returning (B,) scores."""

    def __init__(self, backbone: nn.Module, num_labels: int, pooling: str = "cls", dropout: float = 0.1):
        super().__init__()
        if pooling not in POOLING:
            raise ValueError(f"pooling: {pooling!r}; choose one of: {', '.join(POOLING)}")
        self.backbone = backbone
        self.pooling = pooling
        self.num_labels = int(num_labels)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_size(backbone), self.num_labels)
        std = getattr(getattr(backbone, "config", None), "initializer_range", 0.02)
        nn.init.normal_(self.head.weight, std=std)  # BERT's head init
        nn.init.zeros_(self.head.bias)

    @property
    def encoder(self) -> nn.Module:
        return _encoder(self.backbone)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, L, E) input embeddings of the backbone (word embeddings only: position and type embeddings are
        added inside a BERT encoder, as for inputs_embeds)."""
        return self.encoder.get_input_embeddings()(input_ids)

    def _features(self, attention_mask: torch.Tensor, **inputs) -> torch.Tensor:
        out = self.encoder(attention_mask=attention_mask, **inputs)
        hidden = getattr(out, "last_hidden_state", out)
        if isinstance(hidden, (tuple, list)):
            hidden = hidden[0]
        return hidden if hidden.ndim == 2 else pool(hidden, attention_mask, self.pooling)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, H) pooled features."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        return self._features(attention_mask, input_ids=input_ids)

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.dropout(features))
        return logits.squeeze(-1) if self.num_labels == 1 else logits

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self._head(self.features(input_ids, attention_mask))

    def from_embeddings(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The logits (or scores) from given input embeddings (B, L, E) instead of token ids."""
        if attention_mask is None:
            attention_mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return self._head(self._features(attention_mask, inputs_embeds=embeds))
