"""The method protocol and the generic LightningModule every method runs in.

A method is a small object that overrides only the hooks it changes. The defaults are the baseline:
AdamW (decoupled weight decay on matrices only) with linear warmup and cosine decay, and plain
next-token cross-entropy through the kernel registry. A method whose training step differs (a frozen
reference model, a teacher, an inner loop) sets `module_class` to a subclass of `MethodModule`.

The runner calls, in order and only where a method overrides them (see `Method.stages`):
    prepare_data -> prepare_model -> train -> compress -> evaluate

`MethodModule` lives in methods/module.py (importing Lightning takes seconds; validating a config
needs only this file) and is importable from here too.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from methods.module import MethodModule


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

    module_class: type | None = None  # None: MethodModule
    # False where the method needs whole parameter matrices, which FSDP's flat shards are not (checked at
    # config time: hardware.strategy=fsdp is refused with a one-line error).
    supports_fsdp: bool = True
    # The dataset sources (dataset.source) the method runs on; empty: any. Checked at config time.
    datasets: tuple[str, ...] = ()

    # -- kernels -----------------------------------------------------------------------------
    # The runner binds the hardware config's `kernels:` map before any stage runs, so a method's own
    # ops (KV quantization, ...) follow `hardware=` like the training loss does.
    kernels_map: dict[str, str] = {}
    kernel_fallback: bool = True

    def bind_kernels(self, kernels_map: dict[str, str], fallback: bool = True) -> None:
        self.kernels_map, self.kernel_fallback = dict(kernels_map), bool(fallback)

    def kernel(self, op: str, backend: str | None = None):
        """The `op` kernel: `backend` if given, else the hardware's choice, else the plain-torch reference."""
        import kernels

        return kernels.get(op, backend or self.kernels_map.get(op, "reference"), fallback=self.kernel_fallback)

    # -- stages ------------------------------------------------------------------------------
    def prepare_data(self, data: Any) -> Any:
        """Data selection / mixing / sampling. `data` is the runner's TokenData."""
        return data

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Architecture or attention patches, adapters."""
        return model

    def compress(self, model: nn.Module, data: Any) -> nn.Module:
        """Post-training transform of a trained model. A search may leave its curve in `self.history` (a list
        of {name: number} rows, e.g. fitness per generation): the runner logs each row as compress/<name>."""
        return model

    def evaluate(self, model: nn.Module, data: Any) -> dict[str, float]:
        """The method's own metrics, logged beside validation loss/perplexity."""
        return {}

    @property
    def trains(self) -> bool:
        """Whether the run has a training stage (compression/inference methods may turn it off)."""
        return True

    @property
    def needs_trained_model(self) -> bool:
        """Whether the run starts from a trained model: with model.init_from unset, the runner then uses the
        cached base model (runner/basemodel.py). Post-training methods (compression, inference) and methods
        that train a trained model further (unlearning) say True."""
        return not self.trains

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


def __getattr__(name: str):
    if name == "MethodModule":
        from methods.module import MethodModule

        return MethodModule
    raise AttributeError(f"module 'methods.base' has no attribute {name!r}")
