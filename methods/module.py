"""The generic LightningModule every method trains in (see methods/base.py for the protocol)."""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import kernels
from methods.base import Method

log = logging.getLogger(__name__)


class NonFiniteLoss(ArithmeticError):
    """A training loss that is nan or inf, seen before the optimizer step (`MethodModule.on_nonfinite`)."""

    def __init__(self, value: float, step: int, in_a_row: int = 1):
        self.value, self.step, self.in_a_row = value, step, in_a_row
        where = f"at step {step}" if in_a_row <= 1 else f"at steps {step - in_a_row + 1}-{step} ({in_a_row} in a row)"
        super().__init__(f"non-finite train loss ({value}) {where}")


class _SkipStep(Exception):
    """Raised inside the optimizer's closure: the step's loss is not finite and on_nonfinite is skip_batch."""


class MethodModule(pl.LightningModule):
    """The generic LightningModule: a model, a method, the kernels the hardware chose.

    It counts tokens and micro-batches and saves RNG states with each checkpoint, so that a resumed run
    continues exactly where it stopped. Its batches are next-token LM blocks (B, T+1), or (tokens, domain)
    tuples; a task with other batches names a subclass (TaskData.module_class). `data` is the run's task data
    and `seed` the run's seed, for modules whose steps draw (masks, noise) from a generator of their own.
    """

    reports_perplexity = True  # val/ppl = exp(val/loss): true of next-token losses only
    # A non-finite training loss (any micro-batch of a step), checked before the optimizer step (one device sync
    # per step): "stop" raises NonFiniteLoss; "skip_batch" skips that step's optimizer update and the method's
    # after_optimizer_step (weights and optimizer state untouched; the step still counts, as the LR schedule does)
    # and raises NonFiniteLoss after `max_nonfinite_in_a_row` non-finite steps in a row. The runner sets it from
    # trainer.on_nonfinite.
    on_nonfinite = "stop"
    max_nonfinite_in_a_row = 20

    def __init__(self, model: nn.Module, method: Method, kernels_map: dict[str, str] | None = None,
                 kernel_fallback: bool = True, data: Any = None, seed: int = 0):
        super().__init__()
        self.model = model
        self.method = method
        self.data = data
        self.seed = int(seed)
        self.kernels_map = dict(kernels_map or {"cross_entropy": "reference"})
        self.kernel_fallback = kernel_fallback
        self._kernels: dict[str, Any] = {}
        self.micro_batches_seen = 0
        self.tokens_seen = 0
        self._last_loss: torch.Tensor | None = None
        self.last_val_step = -1
        self._val_sum = torch.zeros((), dtype=torch.float64)
        self._val_count = torch.zeros((), dtype=torch.float64)
        self.batch_domains: torch.Tensor | None = None
        self._val_domain_sum: torch.Tensor | None = None  # per-domain val loss sums and token counts
        self._val_domain_count: torch.Tensor | None = None
        self._val_domain_names_now: list[str] | None = None
        self.skipped_batches = 0  # optimizer steps skipped for a non-finite loss (on_nonfinite=skip_batch)
        self._nonfinite_in_a_row = 0
        self._step_losses: list[torch.Tensor] = []  # the losses of the current step's micro-batches

    def kernel(self, op: str):
        if op not in self._kernels:
            self._kernels[op] = kernels.get(op, self.kernels_map.get(op, "reference"), fallback=self.kernel_fallback)
        return self._kernels[op]

    # -- losses ------------------------------------------------------------------------------
    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_decoder()(input_ids=input_ids).last_hidden_state

    def lm_loss(self, batch: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Next-token cross-entropy of (B, T+1) blocks: through the cross_entropy kernel from the last hidden
        states where the model has a decoder and an output layer (transformers LMs), else from its logits."""
        inputs, targets = batch[:, :-1], batch[:, 1:]
        if not (hasattr(self.model, "get_decoder") and hasattr(self.model, "get_output_embeddings")):
            out = self.model(input_ids=inputs)
            logits = getattr(out, "logits", out).float()
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=reduction)
            return loss.view_as(targets) if reduction == "none" else loss
        hidden = self.hidden_states(inputs)
        weight = self.model.get_output_embeddings().weight
        return self.kernel("cross_entropy")(hidden, weight, targets, reduction=reduction)

    # -- steps -------------------------------------------------------------------------------
    @staticmethod
    def split_domains(batch: torch.Tensor | tuple | list) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(tokens, domain per example or None): multi-domain data (runner/mixture.py) gives (tokens, domain) tuples."""
        if isinstance(batch, (tuple, list)):
            return batch[0], batch[1]
        return batch, None

    def training_step(self, batch: torch.Tensor | tuple, batch_idx: int) -> torch.Tensor:
        self.micro_batches_seen += 1
        # the domain of every example (B,), for methods that weight or route by domain; None for plain batches
        batch, self.batch_domains = self.split_domains(batch)
        loss = self.step_loss(batch)
        self.tokens_seen += self.batch_tokens(batch) * self.trainer.world_size
        self._last_loss = loss.detach()  # a tensor: no device sync per step
        # the mean over ranks (one scalar all-reduce a step under DDP; nothing on one process)
        self.log("train/loss", self._last_loss, prog_bar=True, on_step=True, on_epoch=False, sync_dist=True)
        if self._logging_step():
            self.log("train/tokens_seen", float(self.tokens_seen), on_step=True, on_epoch=False)
            if self.skipped_batches:
                self.log("train/skipped_batches", float(self.skipped_batches), on_step=True, on_epoch=False)
        return loss

    def step_loss(self, batch) -> torch.Tensor:
        """The training loss of a micro-batch: the method's (a module for other batches may route it elsewhere)."""
        return self.method.loss(self, batch)

    def batch_tokens(self, batch) -> int:
        """Tokens a micro-batch trains on, for tokens_seen and throughput: the next-token targets of (B, T+1) blocks."""
        return batch[:, 1:].numel()

    def _logging_step(self) -> bool:
        """Whether Lightning sends this step's metrics to the logger (logging costs ~1 ms a call)."""
        return (self.trainer.global_step + 1) % self.trainer.log_every_n_steps == 0

    @property
    def last_train_loss(self) -> float:
        return float(self._last_loss) if self._last_loss is not None else float("nan")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._logging_step():
            grads = [p.grad.detach().norm() for p in self.model.parameters() if p.grad is not None]
            if grads:
                self.log("train/grad_norm", torch.stack(grads).norm(), on_step=True, on_epoch=False)
            self.log("train/lr", optimizer.param_groups[0]["lr"], prog_bar=True, on_step=True, on_epoch=False)

    def _val_domain_names(self) -> list[str] | None:
        """The domain names of a multi-domain validation loader (runner/mixture.py's DomainBlocks), else None."""
        loaders = self.trainer.val_dataloaders
        loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
        for dl in loaders:
            names = getattr(getattr(dl, "dataset", None), "domain_names", None)
            if names:
                return list(names)
        return None

    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_count = torch.zeros((), dtype=torch.float64, device=self.device)
        names = self._val_domain_names()
        self._val_domain_names_now = names
        self._val_domain_sum = torch.zeros(len(names), dtype=torch.float64, device=self.device) if names else None
        self._val_domain_count = torch.zeros(len(names), dtype=torch.float64, device=self.device) if names else None

    def validation_step(self, batch: torch.Tensor | tuple, batch_idx: int) -> None:
        batch, domains = self.split_domains(batch)
        if domains is None or self._val_domain_sum is None:
            self._val_sum += self.lm_loss(batch, reduction="sum").double()
            self._val_count += batch[:, 1:].numel()
            return
        per_example = self.lm_loss(batch, reduction="none").double().sum(dim=1)  # (B,)
        self._val_domain_sum.index_add_(0, domains, per_example)
        self._val_domain_count.index_add_(0, domains, torch.full_like(per_example, batch.shape[1] - 1))
        self._val_sum += per_example.sum()
        self._val_count += batch[:, 1:].numel()

    def on_validation_epoch_end(self) -> None:
        total = self.trainer.strategy.reduce(self._val_sum, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._val_count, reduce_op="sum")
        loss = (total / count.clamp_min(1)).float()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        if self.reports_perplexity:
            self.log("val/ppl", torch.exp(loss), sync_dist=False)
        if self._val_domain_sum is not None:  # val/loss/<domain>: the token-weighted mean of these is val/loss
            sums = self.trainer.strategy.reduce(self._val_domain_sum, reduce_op="sum")
            counts = self.trainer.strategy.reduce(self._val_domain_count, reduce_op="sum")
            for name, s, c in zip(self._val_domain_names_now, sums, counts):
                if c > 0:
                    self.log(f"val/loss/{name}", (s / c).float(), sync_dist=False)
        self.last_val_step = self.trainer.global_step

    def configure_optimizers(self):
        return self.method.configure_optimizers(self)

    # -- non-finite losses -------------------------------------------------------------------
    def on_before_backward(self, loss: torch.Tensor) -> None:
        """Every micro-batch's loss (whatever training_step computed it), before its backward: no sync here."""
        self._step_losses.append(loss.detach())

    def _take_nonfinite(self) -> float | None:
        """The first non-finite loss of this step's micro-batches (nan where another rank's was), or None when every
        one was finite on every rank: one device sync per optimizer step. Starts the next step's list."""
        losses, self._step_losses = self._step_losses, []
        if not losses:  # no backward ran (training_step returned None)
            return None
        stacked = torch.stack([x.float().reshape(()) for x in losses])
        ok = bool(torch.isfinite(stacked).all())
        if self.trainer.world_size > 1:
            ok = bool(self.trainer.strategy.reduce_boolean_decision(ok, all=True))
        if ok:
            return None
        bad = stacked[~torch.isfinite(stacked)]
        return float(bad[0]) if bad.numel() else float("nan")

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        """The optimizer step, unless the step's loss is not finite: the check runs inside the closure that the
        optimizer calls before it touches anything (forward and backward), so a bad step never reaches the update."""
        bad: list[float] = []

        def checked_closure():
            out = optimizer_closure()
            value = self._take_nonfinite()
            if value is not None:
                if self.on_nonfinite != "skip_batch":
                    raise NonFiniteLoss(value, self.trainer.global_step + 1)
                bad.append(value)
                raise _SkipStep
            return out

        try:
            super().optimizer_step(epoch, batch_idx, optimizer, checked_closure if optimizer_closure else None)
        except _SkipStep:
            optimizer.zero_grad(set_to_none=True)
            self.skipped_batches += 1
            self._nonfinite_in_a_row += 1
            step = self.trainer.global_step + 1
            if self._nonfinite_in_a_row >= self.max_nonfinite_in_a_row:
                raise NonFiniteLoss(bad[0], step, self._nonfinite_in_a_row) from None
            log.warning("non-finite train loss (%s) at step %d: its optimizer step is skipped "
                        "(trainer.on_nonfinite=skip_batch; %d skipped so far)", bad[0], step, self.skipped_batches)
            return
        self._nonfinite_in_a_row = 0
        self.method.after_optimizer_step(self)

    # -- exact resume ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        np_state = np.random.get_state()
        checkpoint["methodbench"] = {
            "micro_batches_seen": self.micro_batches_seen,
            "tokens_seen": self.tokens_seen,
            "skipped_batches": self.skipped_batches,
            "nonfinite_in_a_row": self._nonfinite_in_a_row,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
                "python": random.getstate(),
            },
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("methodbench")
        if not state:
            return
        self.micro_batches_seen = int(state["micro_batches_seen"])
        self.tokens_seen = int(state["tokens_seen"])
        self.skipped_batches = int(state.get("skipped_batches", 0))
        self._nonfinite_in_a_row = int(state.get("nonfinite_in_a_row", 0))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        n = rng["numpy"]
        np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
        py = rng["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
