"""The method protocol and the generic LightningModule every method runs in.

A method is a small object that overrides only the hooks it changes. The defaults are the baseline:
AdamW (decoupled weight decay on matrices only) with linear warmup and cosine decay, and plain
next-token cross-entropy through the kernel registry. A method whose training step differs (a frozen
reference model, a teacher, an inner loop) sets `module_class` to a subclass of `MethodModule`.

The runner calls, in order and only where a method overrides them (see `Method.stages`):
    prepare_data -> prepare_model -> train -> compress -> evaluate
"""

from __future__ import annotations

import math
import random
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from torch import nn

import kernels


class Method:
    """Baseline: AdamW + cross-entropy. Subclass and override hooks; the YAML names the class in `_target_`."""

    def __init__(self, name: str = "adamw", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20,
                 min_lr_ratio: float = 0.1):
        self.name = name
        self.lr = float(lr)
        self.betas = tuple(float(b) for b in betas)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.warmup_steps = int(warmup_steps)
        self.min_lr_ratio = float(min_lr_ratio)

    module_class: Optional[type] = None  # None: MethodModule

    # -- stages ------------------------------------------------------------------------------
    def prepare_data(self, data: Any) -> Any:
        """Data selection / mixing / sampling. `data` is the runner's TokenData."""
        return data

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Architecture or attention patches, adapters."""
        return model

    def compress(self, model: nn.Module, data: Any) -> nn.Module:
        """Post-training transform of a trained model."""
        return model

    def evaluate(self, model: nn.Module, data: Any) -> dict[str, float]:
        """The method's own metrics, logged beside validation loss/perplexity."""
        return {}

    @property
    def trains(self) -> bool:
        """Whether the run has a training stage (compression/inference methods may turn it off)."""
        return True

    @property
    def stages(self) -> list[str]:
        base = Method
        out = [s for s in ("prepare_data", "prepare_model") if getattr(type(self), s) is not getattr(base, s)]
        if self.trains:
            out.append("train")
        out += [s for s in ("compress", "evaluate") if getattr(type(self), s) is not getattr(base, s)]
        return out

    # -- training ----------------------------------------------------------------------------
    def loss(self, module: MethodModule, batch: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy of `batch` (B, T+1 token ids)."""
        return module.lm_loss(batch)

    def param_groups(self, model: nn.Module) -> list[dict]:
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        return [{"params": decay, "weight_decay": self.weight_decay},
                {"params": no_decay, "weight_decay": 0.0}]

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.param_groups(model), lr=self.lr, betas=self.betas, eps=self.eps)

    def lr_lambda(self, total_steps: int):
        warm, floor = self.warmup_steps, self.min_lr_ratio

        def f(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = min(1.0, (step - warm) / max(1, total_steps - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

        return f

    def configure_optimizers(self, module: MethodModule) -> dict:
        opt = self.build_optimizer(module.model)
        total = max(1, int(module.trainer.max_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_lambda(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def optimizer_state_bytes(self, model: nn.Module) -> int:
        """Optimizer state size, for dry runs (works on meta tensors). AdamW: two fp32 moments."""
        return sum(2 * 4 * p.numel() for p in model.parameters() if p.requires_grad)


class MethodModule(pl.LightningModule):
    """The generic LightningModule: a model, a method, the kernels the hardware chose.

    It counts tokens and micro-batches and saves RNG states with each checkpoint, so that a resumed run
    continues exactly where it stopped.
    """

    def __init__(self, model: nn.Module, method: Method, kernels_map: dict[str, str] | None = None,
                 kernel_fallback: bool = True):
        super().__init__()
        self.model = model
        self.method = method
        self.kernels_map = dict(kernels_map or {"cross_entropy": "reference"})
        self.kernel_fallback = kernel_fallback
        self._kernels: dict[str, Any] = {}
        self.micro_batches_seen = 0
        self.tokens_seen = 0
        self.last_train_loss = float("nan")
        self.last_val_step = -1
        self._val_sum = torch.zeros((), dtype=torch.float64)
        self._val_count = torch.zeros((), dtype=torch.float64)

    def kernel(self, op: str):
        if op not in self._kernels:
            self._kernels[op] = kernels.get(op, self.kernels_map.get(op, "reference"), fallback=self.kernel_fallback)
        return self._kernels[op]

    # -- losses ------------------------------------------------------------------------------
    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_decoder()(input_ids=input_ids).last_hidden_state

    def lm_loss(self, batch: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        inputs, targets = batch[:, :-1], batch[:, 1:]
        hidden = self.hidden_states(inputs)
        weight = self.model.get_output_embeddings().weight
        return self.kernel("cross_entropy")(hidden, weight, targets, reduction=reduction)

    # -- steps -------------------------------------------------------------------------------
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.micro_batches_seen += 1
        loss = self.method.loss(self, batch)
        n_tokens = batch[:, 1:].numel() * self.trainer.world_size
        self.tokens_seen += n_tokens
        self.last_train_loss = float(loss.detach())
        self.log("train/loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False)
        self.log("train/tokens_seen", float(self.tokens_seen), on_step=True, on_epoch=False)
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if (self.trainer.global_step + 1) % self.trainer.log_every_n_steps == 0:
            grads = [p.grad.detach().norm() for p in self.model.parameters() if p.grad is not None]
            if grads:
                self.log("train/grad_norm", torch.stack(grads).norm(), on_step=True, on_epoch=False)
        self.log("train/lr", optimizer.param_groups[0]["lr"], prog_bar=True, on_step=True, on_epoch=False)

    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val_count = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._val_sum += self.lm_loss(batch, reduction="sum").double()
        self._val_count += batch[:, 1:].numel()

    def on_validation_epoch_end(self) -> None:
        total = self.trainer.strategy.reduce(self._val_sum, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._val_count, reduce_op="sum")
        loss = (total / count.clamp_min(1)).float()
        self.log("val/loss", loss, prog_bar=True, sync_dist=False)
        self.log("val/ppl", torch.exp(loss), sync_dist=False)
        self.last_val_step = self.trainer.global_step

    def configure_optimizers(self):
        return self.method.configure_optimizers(self)

    # -- exact resume ------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        np_state = np.random.get_state()
        checkpoint["methodbench"] = {
            "micro_batches_seen": self.micro_batches_seen,
            "tokens_seen": self.tokens_seen,
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
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        n = rng["numpy"]
        np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
        py = rng["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
