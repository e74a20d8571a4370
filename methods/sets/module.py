"""The LightningModule of set tasks (tasks/sets.py): dict batches {x (B, N), y (B, K), index (B,)}, the pointer
cross-entropy of a pointer model (models/rpw.py), greedy-decoding accuracy at validation."""

from __future__ import annotations

import torch

from methods.module import MethodModule
from methods.sets.pointer import correct, pointer_nll, restricted_greedy


class PointerModule(MethodModule):
    """The baseline's loss (`lm_loss`, what method=adamw trains) is the mean over examples and output steps of
    -log p(y_t | y_<t, X) of the targets in the order the data gives them; a method changes the ordering through
    `Method.loss(module, batch)` and `pointer_loss`. tokens_seen counts output steps. Validation logs val/loss
    (per output step), val/sequence_accuracy and val/position_accuracy (greedy decoding; methods/sets/pointer.py
    `correct`). For target=set the validation loss is that of restricted_greedy's ordering (tasks/sets.py)."""

    reports_perplexity = False

    def __init__(self, model, method, kernels_map=None, kernel_fallback=True, data=None, seed=0):
        if not all(hasattr(data, k) for k in ("n", "k", "target")):
            raise TypeError(f"PointerModule needs tasks.sets.SetData as data, got {type(data).__name__}")
        super().__init__(model, method, kernels_map, kernel_fallback, data=data, seed=seed)
        self._val_whole = torch.zeros((), dtype=torch.float64)
        self._val_steps = torch.zeros((), dtype=torch.float64)
        self._val_sets = torch.zeros((), dtype=torch.float64)

    def pointer_loss(self, x: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """-log p(y_t | y_<t, X) of `targets` (B, T): mean, sum, or none ((B, T))."""
        nll = pointer_nll(self.model(x, targets).float(), targets)
        return nll.mean() if reduction == "mean" else nll.sum() if reduction == "sum" else nll

    def lm_loss(self, batch: dict, reduction: str = "mean") -> torch.Tensor:
        return self.pointer_loss(batch["x"], batch["y"], reduction)

    def batch_tokens(self, batch: dict) -> int:
        return int(batch["y"].numel())

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._val_whole = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_steps = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_sets = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x, y = batch["x"], batch["y"]
        ordered = restricted_greedy(self.model, x, y) if self.data.target == "set" else y
        self._val_sum += self.pointer_loss(x, ordered, reduction="sum").double()
        self._val_count += y.numel()
        whole, steps = correct(self.model.greedy(x, y.shape[1]), y, self.data.target, x.shape[1])
        self._val_whole += whole.sum().double()
        self._val_steps += steps.sum().double()
        self._val_sets += y.shape[0]

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        sets = self._val_sets.clamp_min(1)
        self.log("val/sequence_accuracy", (self._val_whole / sets).float(), sync_dist=False)
        self.log("val/position_accuracy", (self._val_steps / (sets * self.data.k)).float(), sync_dist=False)
