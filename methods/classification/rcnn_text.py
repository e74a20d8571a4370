"""Recurrent Convolutional Neural Networks for Text Classification (Lai, Xu, Liu & Zhao, AAAI 2015), as in
S. Lai's thesis "Word and Document Embeddings based on Neural Network Approaches" (arXiv:1611.05962): the
paper's training settings for a text classifier. The architecture is `model=rcnn` (models/rcnn.py):

    c_l(w_i) = f(W^(l) c_l(w_{i-1}) + W^(sl) e(w_{i-1})),   c_r(w_i) = f(W^(r) c_r(w_{i+1}) + W^(sr) e(w_{i+1}))
    y_i = tanh(W^(2) [c_l(w_i); e(w_i); c_r(w_i)] + b^(2)),   y = max_i y_i,   p = softmax(W^(4) y + b^(4))

trained on the cross-entropy of the labels (the classifier module's loss, unchanged) by stochastic gradient
descent, θ ← θ − α ∂(−log p(class | D, θ))/∂θ, with α = 0.01 (the paper's learning rate).

This method is the optimizer and its schedule; it trains any classifier backbone, so the baselines
(`model=mean-emb`, `model=cnn-text`) get the same settings in a comparison.

Deviations (also in configs/method/rcnn_text.yaml and the README row):
- Mini-batches (dataset.batch_size, mean cross-entropy) instead of per-example updates; constant α, no
  momentum, no weight decay (the paper names none). The runner's gradient clipping (trainer.grad_clip) is not
  the paper's: `trainer.grad_clip=null` turns it off.
- `optimizer: adamw` (with the baseline's betas/eps and this lr) is an option for short runs: after 300 steps
  (batch 32) on dataset=keyword-cls (position, 4 classes) plain SGD at α = 0.01 leaves RCNN at chance (val
  macro-F1 0.21), AdamW at lr 3e-3 reaches 1.00 (measured on the CPU, seed 0; the paper trains for epochs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from methods.base import Method

if TYPE_CHECKING:
    import torch
    from torch import nn

OPTIMIZERS = ("sgd", "adamw")


class RCNNText(Method):
    """Plain SGD at the paper's α = 0.01 (constant), or AdamW; the loss is the classifier's cross-entropy."""

    needs_task = frozenset({"text-classification"})

    def __init__(self, name: str = "rcnn_text", lr: float = 0.01, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.0, warmup_steps: int = 0, min_lr_ratio: float = 1.0,
                 optimizer: str = "sgd", momentum: float = 0.0):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        problems = []
        if optimizer not in OPTIMIZERS:
            problems.append(f"method.optimizer: {optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
        if not 0 <= momentum < 1:
            problems.append(f"method.momentum: must be in [0, 1), got {momentum}")
        if problems:
            raise ValueError("; ".join(problems))
        self.optimizer, self.momentum = optimizer, float(momentum)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        import torch

        if self.optimizer == "adamw":
            return super().build_optimizer(model)
        return torch.optim.SGD(self.param_groups(model), lr=self.lr, momentum=self.momentum)

    def optimizer_state_bytes(self, model: nn.Module) -> int:
        """SGD: none, or one fp32 momentum buffer per parameter; AdamW: two moments."""
        if self.optimizer == "adamw":
            return super().optimizer_state_bytes(model)
        per = 4 if self.momentum > 0 else 0
        return sum(per * p.numel() for p in model.parameters() if p.requires_grad)
