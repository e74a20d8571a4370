"""The Emergence of Essential Sparsity in Large Pre-trained Models: The Weights that Matter
(Jaiswal, Liu, Chen, Wang; arXiv:2306.03805).

One-shot global magnitude pruning of a pre-trained model (the official `pruner.py`: torch's
`prune.global_unstructured` with `L1Unstructured` over every attention and MLP Linear weight):

    W = the entries of q/k/v/o_proj and gate/up/down_proj of every decoder layer,  N = |W|
    k = round(s·N)
    the k entries of smallest |w| become 0 (ties: the earlier entry in module order, then row-major)
    -> sparsity exactly k/N, and every pruned |w| <= every kept |w| (one global threshold)

    N:M variant: in every group of M consecutive weights along a row (the input dimension), keep the
    N of largest |w| (ties: the earlier one); the sparsity is 1 − N/M. N counts the kept weights, the
    usual reading of "2:4" (NVIDIA's sparse tensor cores): the official `prune_n_m_sparsity(prune_n,
    prune_m)` (assets/opt_sparseland/pruner.py, after Wanda's) takes N as the pruned ones. Both read 2:4
    alike; `1:4` keeps 1 of 4 here (75% sparse) and prunes 1 of 4 there (25%): the official N:M is
    `n_m=(M−N):M` here.

    optional fine-tuning with the mask m fixed (`finetune_steps` > 0), as a runner train stage (logged,
    checkpointed, resumable; stages compress -> train -> evaluate): `finetune_steps` AdamW steps (constant
    lr `finetune_lr`, no weight decay) of next-token cross-entropy on the run's training batches
    (dataset.batch_size blocks); the gradient of every pruned entry is multiplied by m (so AdamW's moments
    stay 0 there) and w <- w ⊙ m after every optimizer step. A resumed run prunes the same base model
    again (the same masks) and the trainer restores the fine-tuned weights and optimizer state.

Essential sparsity is "a sharp dropping point beyond which the performance declines much faster w.r.t.
the rise of sparsity level": the knee of the performance-vs-sparsity curve. `essential_sparsity` takes
it as the point of maximum curvature of the curve scaled to the unit square (x and y each divided by
their range), the curvature at a sample being that of the circle through it and its two neighbours
(Menger curvature, κ = 4·area / product of the three side lengths), which a straight stretch gives 0 and
which converges to |y''| / (1 + y'²)^{3/2} as the samples get denser.

Defaults from the paper: the sparsity grid 0, 10, ..., 90% (`sweeps/essential_sparsity.yaml`), one-shot
(no retraining) as the essential-sparsity curves are drawn; fine-tuning lr 2e-5 (BERT on MNLI).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from methods.base import Method

# nn.Linear modules of a decoder layer under one of these names are pruned (Llama: self_attn.*, mlp.*)
PRUNED_MODULES = frozenset({"self_attn", "attn", "attention", "mlp"})


def prunable_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, module) of the attention and MLP nn.Linear layers of the decoder blocks, in module order."""
    layers = model.get_decoder().layers
    return [(f"layers.{name}", m) for name, m in layers.named_modules()
            if isinstance(m, nn.Linear) and PRUNED_MODULES & set(name.split("."))]


def global_magnitude_masks(weights: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Boolean keep-masks (True = kept) pruning the round(s·N) entries of smallest |w| over all `weights`."""
    flat = torch.cat([w.detach().abs().flatten().float().cpu() for w in weights])
    n_pruned = round(sparsity * flat.numel())
    order = torch.sort(flat, stable=True).indices  # ascending |w|; equal |w| keep index order
    keep = torch.ones(flat.numel(), dtype=torch.bool)
    keep[order[:n_pruned]] = False
    return [m.view_as(w).to(w.device) for m, w in zip(keep.split([w.numel() for w in weights]), weights)]


def n_m_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with exactly n of every m consecutive entries along each row kept (largest |w| first)."""
    rows, cols = weight.shape
    if cols % m:
        raise ValueError(f"method.n_m: {n}:{m} needs input sizes divisible by {m}, got a {rows}x{cols} weight")
    groups = weight.detach().abs().float().reshape(rows, cols // m, m)
    top = torch.sort(groups, dim=-1, descending=True, stable=True).indices[..., :n]
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
    return keep.reshape(rows, cols)


def parse_n_m(n_m: str | None) -> tuple[int, int] | None:
    if n_m is None:
        return None
    try:
        n, m = (int(v) for v in str(n_m).split(":"))
    except ValueError:
        raise ValueError(f"method.n_m: {n_m!r} is not 'N:M' (e.g. '2:4') or null") from None
    if not 0 < n <= m:
        raise ValueError(f"method.n_m: {n_m!r} needs 0 < N <= M")
    return n, m


def apply_masks(linears: list[nn.Linear], masks: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for lin, mask in zip(linears, masks):
            lin.weight.mul_(mask.to(lin.weight.dtype))


def sparsity_of(model: nn.Module) -> float:
    """Fraction of zero entries over the prunable (attention and MLP) weights."""
    weights = [lin.weight for _, lin in prunable_linears(model)]
    return sum(int((w == 0).sum()) for w in weights) / max(1, sum(w.numel() for w in weights))


# ---------------------------------------------------------------------------------------------- the knee
def menger_curvature(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Curvature of the circle through each interior point and its two neighbours (0 at the ends)."""
    p = np.stack([x, y], axis=1)
    a, b, c = p[:-2], p[1:-1], p[2:]
    cross = np.abs((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))
    sides = np.linalg.norm(b - a, axis=1) * np.linalg.norm(c - b, axis=1) * np.linalg.norm(c - a, axis=1)
    kappa = np.divide(2 * cross, sides, out=np.zeros_like(cross), where=sides > 0)
    return np.concatenate([[0.0], kappa, [0.0]])


def essential_sparsity(sparsities, performance) -> float:
    """The knee of a performance-vs-sparsity curve: the sparsity of maximum curvature, both axes scaled to [0, 1].

    `performance` may be any monotone measure (accuracy, loss, log-perplexity); the curvature's magnitude does
    not depend on its sign."""
    x, y = np.asarray(sparsities, dtype=np.float64), np.asarray(performance, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 3:
        raise ValueError("essential_sparsity: needs >= 3 (sparsity, performance) pairs of equal length")
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    span_x, span_y = np.ptp(x), np.ptp(y)
    if span_x == 0:
        raise ValueError("essential_sparsity: the sparsities are all equal")
    if span_y == 0:  # a flat curve has no knee: the performance holds up to the largest sparsity
        return float(x[-1])
    kappa = menger_curvature((x - x.min()) / span_x, (y - y.min()) / span_y)
    return float(x[int(np.argmax(kappa))])


def plot_sparsity_curve(sparsities, values, knee: float | None, path: str | Path, ylabel: str = "validation loss",
                        title: str = "", extra: dict[str, tuple[list, list]] | None = None) -> Path:
    """The performance-vs-sparsity curve with its knee marked; `extra` adds labelled (x, y) curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = 100 * np.asarray(sparsities, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(x, values, marker="o", label="one-shot global magnitude")
    for label, (ex, ey) in (extra or {}).items():
        ax.plot(100 * np.asarray(ex, dtype=np.float64), ey, marker="s", ms=4, label=label)
    if knee is not None:
        ax.axvline(100 * knee, color="tab:red", ls="--", label=f"essential sparsity {100 * knee:.0f}%")
    ax.set(xlabel="sparsity (%)", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- the method
def _masked_grad(pruned: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The gradient with the pruned entries set to 0 (= grad ⊙ m, m the keep-mask)."""
    return grad.masked_fill(pruned.to(grad.device), 0)


class EssentialSparsity(Method):
    """One-shot global magnitude (or N:M) pruning of a trained model, then optional fine-tuning with the mask fixed
    (a train stage of the runner: `finetune_steps` optimizer steps of the runner's trainer and loader)."""

    needs_task = frozenset({"tokens"})
    needs_model = frozenset({"decoder-layers"})

    def __init__(self, name: str = "essential_sparsity", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 sparsity: float = 0.5, n_m: str | None = None, finetune_steps: int = 0, finetune_lr: float = 2e-5):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        if not 0.0 <= float(sparsity) <= 1.0:
            raise ValueError(f"method.sparsity: {sparsity} is not in [0, 1]")
        if int(finetune_steps) < 0 or float(finetune_lr) < 0:
            raise ValueError("method.finetune_steps and method.finetune_lr must be >= 0")
        self.sparsity = float(sparsity)
        self.n_m = parse_n_m(n_m)
        self.finetune_steps = int(finetune_steps)
        self.finetune_lr = float(finetune_lr)
        self.pruned: list[torch.Tensor] = []  # per prunable layer, in module order: True where the entry is pruned
        self._linears: list[nn.Linear] = []  # the layers whose weights the masks hold (and the hooks watch)
        self._hooks: list[Any] = []

    # -- stages ------------------------------------------------------------------------------
    @property
    def trains(self) -> bool:
        return self.finetune_steps > 0

    @property
    def needs_trained_model(self) -> bool:
        return True  # it prunes a trained model (fine-tuned or not)

    @property
    def stages(self) -> list[str]:
        return ["compress", "train", "evaluate"] if self.trains else ["compress", "evaluate"]

    @property
    def supports_fsdp(self) -> bool:
        # the fine-tune masks whole weight matrices (their gradients and values), which FSDP's flat shards are not
        return not self.trains

    def train_steps(self, configured: int) -> int:
        return self.finetune_steps

    # -- compress ----------------------------------------------------------------------------
    def masks(self, model: nn.Module) -> tuple[list[nn.Linear], list[torch.Tensor]]:
        linears = [lin for _, lin in prunable_linears(model)]
        if not linears:
            raise ValueError(f"{self.name}: the model has no attention/MLP nn.Linear layers to prune")
        if self.n_m is not None:
            return linears, [n_m_mask(lin.weight, *self.n_m) for lin in linears]
        return linears, global_magnitude_masks([lin.weight for lin in linears], self.sparsity)

    def compress(self, model: nn.Module, data: Any) -> nn.Module:
        """Prune `model` in place; keep the masks, and with a fine-tune to come, mask the pruned entries' gradients."""
        linears, masks = self.masks(model)
        apply_masks(linears, masks)
        self.pruned = [~m for m in masks]
        self._linears = linears
        if self.trains:
            self.hold_mask(model)
        return model

    def hold_mask(self, model: nn.Module) -> list[nn.Linear]:
        """Register the gradient hooks (grad <- grad ⊙ m) on the prunable weights of `model`, replacing any
        registered before: the train stage calls it on the model its optimizer steps, which need not hold the
        very parameter tensors compress pruned."""
        self.release_mask()
        linears = [lin for _, lin in prunable_linears(model)]
        if not self.pruned:
            raise ValueError(f"{self.name}: the fine-tune needs the masks of the compress stage (it runs after compress)")
        shapes = [tuple(lin.weight.shape) for lin in linears]
        if shapes != [tuple(p.shape) for p in self.pruned]:
            raise ValueError(f"{self.name}: the model's prunable weights {shapes} are not the pruned ones")
        self._linears = linears
        self._hooks = [lin.weight.register_hook(partial(_masked_grad, pruned)) for lin, pruned in zip(linears, self.pruned)]
        return linears

    def release_mask(self) -> None:
        """Remove the gradient hooks (the fine-tune is over)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # -- the fine-tune (the runner's train stage) ----------------------------------------------
    def configure_optimizers(self, module: Any) -> dict:
        """AdamW at the constant lr `finetune_lr`, no weight decay, the method's betas and eps, on every trainable
        parameter of the module's model (the pruned entries' moments stay 0: their gradients are 0)."""
        self.hold_mask(module.model)
        module.model.train()  # the compress stage leaves the model in eval mode
        params = [p for p in module.model.parameters() if p.requires_grad]
        return {"optimizer": torch.optim.AdamW(params, lr=self.finetune_lr, betas=self.betas, eps=self.eps,
                                               weight_decay=0.0)}

    def after_optimizer_step(self, module: Any) -> None:
        """w <- w ⊙ m on every pruned layer."""
        with torch.no_grad():
            for lin, pruned in zip(self._linears, self.pruned):
                lin.weight.masked_fill_(pruned.to(lin.weight.device), 0)

    # -- evaluate ----------------------------------------------------------------------------
    def evaluate(self, model: nn.Module, data: Any) -> dict[str, float]:
        """The sparsity of the final model (the fine-tune's last loss is the summary's train/loss)."""
        self.release_mask()
        return {"sparsity": sparsity_of(model)}
