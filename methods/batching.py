"""Token-id rows to model inputs: the one right-padding rule every encoder task and method batches with."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, L) long, right-padded with `pad_id` to the longest row (at least one
    column, so an all-empty batch still has a shape); the mask is 1 on every real token."""
    width = max((len(r) for r in rows), default=0) or 1
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, :len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[b, :len(r)] = 1
    return ids, mask
