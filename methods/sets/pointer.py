"""Pointer losses and metrics of set tasks (tasks/sets.py): what the module, the task's evaluate and the methods
share. A pointer model (models/rpw.py) maps (x (B, N), targets (B, T)) to (B, T, N) teacher-forced log-probabilities
and has greedy(x, steps, allowed=None) -> (B, steps) pointers."""

from __future__ import annotations

import numpy as np
import torch


def pointer_nll(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, T) -log p(y_t | y_<t, X) of the targets from the (B, T, N) log-probabilities."""
    return -logp.gather(2, targets.unsqueeze(-1)).squeeze(-1)


def target_mask(targets: torch.Tensor, n: int) -> torch.Tensor:
    """(B, N) bool: the elements the targets (B, T) point to."""
    mask = torch.zeros(targets.shape[0], n, dtype=torch.bool, device=targets.device)
    return mask.scatter(1, targets, True)


def restricted_greedy(model, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The ordering of each row's target elements that greedy decoding picks when the pointer may only point at
    them: (B, T), a permutation of each row of `targets`."""
    return model.greedy(x, targets.shape[1], allowed=target_mask(targets, x.shape[1]))


def correct(pred: torch.Tensor, targets: torch.Tensor, target: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(whole output right (B,), each step right (B, T)) of greedy pointers against the targets. `sorted`: the
    exact sequence and position by position; `set`: the emitted set equals the target set, and each emitted
    element belongs to it."""
    if target == "sorted":
        steps = pred == targets
        return steps.all(dim=1), steps
    steps = target_mask(targets, n).gather(1, pred)
    whole = (target_mask(pred, n) == target_mask(targets, n)).all(dim=1)
    return whole, steps


@torch.no_grad()
def greedy_accuracy(model, x: np.ndarray, y: np.ndarray, target: str, batch_size: int = 512) -> dict[str, float]:
    """{sequence_accuracy, position_accuracy} of greedy pointer decoding over the (x, y) split."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    whole, steps = [], []
    for i in range(0, len(x), batch_size):
        xb = torch.as_tensor(x[i:i + batch_size], device=device)
        yb = torch.as_tensor(y[i:i + batch_size], device=device, dtype=torch.long)
        w, s = correct(model.greedy(xb, yb.shape[1]), yb, target, xb.shape[1])
        whole.append(w.cpu())
        steps.append(s.cpu())
    model.train(was_training)
    return {"sequence_accuracy": float(torch.cat(whole).float().mean()),
            "position_accuracy": float(torch.cat(steps).float().mean())}


@torch.no_grad()
def order_statistics(model, x: np.ndarray, y: np.ndarray, batch_size: int = 512) -> dict[str, float]:
    """Which ordering of each output set the model prefers (restricted_greedy over the (x, y) split): the fraction
    in ascending / descending order of value, in ascending order of index, and its loss per output step."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    asc, desc, index, nll = [], [], [], []
    for i in range(0, len(x), batch_size):
        xb = torch.as_tensor(x[i:i + batch_size], device=device)
        yb = torch.as_tensor(y[i:i + batch_size], device=device, dtype=torch.long)
        order = restricted_greedy(model, xb, yb)
        values = xb.gather(1, order).diff(dim=1)
        asc.append((values > 0).all(dim=1).cpu())
        desc.append((values < 0).all(dim=1).cpu())
        index.append((order.diff(dim=1) > 0).all(dim=1).cpu())
        nll.append(-model.log_prob(xb, order).cpu() / order.shape[1])
    model.train(was_training)
    mean = lambda parts: float(torch.cat(parts).float().mean())  # noqa: E731
    return {"chosen_order/ascending_value": mean(asc), "chosen_order/descending_value": mean(desc),
            "chosen_order/ascending_index": mean(index), "chosen_order/loss": mean(nll)}
