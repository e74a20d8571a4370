"""A bi-encoder over any encoder: queries and passages to vectors, scored by their inner product.

    h = encoder(input_ids, attention_mask)                    (B, L, H) last hidden states
    e = pool(h)                                              (B, H): `cls` (the first token, [CLS]: DPR's, BERT's)
                                                              or `mean` over real tokens (sentence-transformers')
    e = e / ‖e‖  when normalize (cosine similarity)           score(q, p) = e_q · e_p

One encoder for both sides (shared weights, as DPR's successors do; `side` is passed on so that a subclass can
treat them differently). The backbone is a transformers BERT-like model (BertForMaskedLM: its `.bert`; BertModel,
e.g. the real all-MiniLM-L6-v2) or a custom nn.Module returning (B, L, H) hidden states. A method with another
representation subclasses DualEncoder, overrides `encode` and sets `sparse = True` when its vectors live in
vocabulary space (VDR): the task then searches them with the inverted index (methods/retrieval/index.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from methods.classification.classifier import feature_size, pool

POOLING = ("cls", "mean")
SIDES = ("query", "passage")


def base_encoder(backbone: nn.Module) -> nn.Module:
    """The encoder of a transformers model with a task head (BertForMaskedLM.bert), else the model itself."""
    base = getattr(backbone, "base_model", None)
    return base if isinstance(base, nn.Module) else backbone


def last_hidden(backbone: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L, H) last hidden states of the backbone's encoder."""
    out = base_encoder(backbone)(input_ids=input_ids, attention_mask=attention_mask)
    hidden = getattr(out, "last_hidden_state", out)
    return hidden[0] if isinstance(hidden, (tuple, list)) else hidden


class DualEncoder(nn.Module):
    """backbone + pooling (+ L2 normalisation): `encode(ids, mask, side)` -> (B, D) vectors."""

    sparse = False  # True: vectors in vocabulary space, searched through the inverted index

    def __init__(self, backbone: nn.Module, pooling: str = "cls", normalize: bool = False):
        super().__init__()
        if pooling not in POOLING:
            raise ValueError(f"pooling: {pooling!r}; choose one of: {', '.join(POOLING)}")
        self.backbone = backbone
        self.pooling = pooling
        self.normalize = bool(normalize)

    @property
    def encoder(self) -> nn.Module:
        return base_encoder(self.backbone)

    @property
    def config(self):  # the backbone's (transformers) config: what the runner reads of a model
        return getattr(self.backbone, "config", None)

    @property
    def dim(self) -> int:
        return feature_size(self.backbone)

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return last_hidden(self.backbone, input_ids, attention_mask)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
               side: str = "passage") -> torch.Tensor:
        if side not in SIDES:
            raise ValueError(f"side: {side!r}; choose one of: {', '.join(SIDES)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        e = pool(self.hidden(input_ids, attention_mask), attention_mask, self.pooling)
        return F.normalize(e, dim=-1) if self.normalize else e

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                side: str = "passage") -> torch.Tensor:
        return self.encode(input_ids, attention_mask, side)
