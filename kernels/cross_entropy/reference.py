"""Linear cross-entropy, plain torch: the reference every faster backend is tested against.

    loss = CE(hidden @ weight.T, targets)

Taking the hidden states and the classifier weight (not the logits) is the interface that lets a
backend avoid materialising the (tokens x vocab) logit matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                  ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """hidden (..., D), weight (V, D), targets (...) -> mean (or sum) token loss, in float32."""
    logits = (hidden.reshape(-1, hidden.shape[-1]) @ weight.t()).float()
    return F.cross_entropy(logits, targets.reshape(-1), ignore_index=ignore_index, reduction=reduction)
