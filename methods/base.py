"""The method protocol and the generic LightningModule every method runs in.

A method is a small object that overrides only the hooks it changes. The defaults are the baseline:
AdamW (decoupled weight decay on matrices only) with linear warmup and cosine decay, and plain
next-token cross-entropy through the kernel registry. A method whose training step differs (a frozen
reference model, a teacher, an inner loop) sets `module_class` to a subclass of `MethodModule`.

The runner runs the stages `Method.stages` lists, in that order; by default those the method overrides, in
the order prepare_data -> prepare_model -> train -> compress -> evaluate. A method may reorder them (compress
-> train: a fine-tune of the compressed model); every train stage runs in the runner's Lightning trainer
(logged, checkpointed, resumable). What a method needs of the task and the model is declared here too
(`needs_task`, `needs_model`) and checked when the config is validated, before any work.

`MethodModule` lives in methods/module.py (importing Lightning takes seconds; validating a config needs only
this file); this file does not import it, and imports torch only where a hook runs: validating a config builds a
Method (its __init__ checks its arguments) without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

# The runner's trained models on demand: (role, changes to the task's arguments) -> that model, trained once
# and cached by everything that decides its weights, in eval mode (e.g. ("base", {}): the baseline trained on
# this run's task; ("retain-only", {"generator": {"train_on": "retain"}}): tasks/qa.py's reference model).
TrainedModel = Callable[..., "nn.Module"]
STAGES = ("prepare_data", "prepare_model", "train", "compress", "evaluate")


class Method:
    """Baseline: AdamW + cross-entropy. Subclass and override hooks; the YAML names the class in `_target_`."""

    def __init__(self, name: str = "adamw", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20,
                 min_lr_ratio: float = 0.1):
        problems = [f"method.{k}: must be {want}, got {v}" for k, v, want, ok in (
            ("lr", lr, "positive", lr > 0), ("eps", eps, ">= 0", eps >= 0),
            ("weight_decay", weight_decay, ">= 0", weight_decay >= 0),
            ("warmup_steps", warmup_steps, ">= 0", warmup_steps >= 0),
            ("min_lr_ratio", min_lr_ratio, "in [0, 1]", 0 <= min_lr_ratio <= 1)) if not ok]
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            problems.append(f"method.betas: must be two numbers in [0, 1), got {list(betas)}")
        if problems:  # one line each before any work (runner/config.py builds the method to check its config)
            raise ValueError("; ".join(problems))
        self.name = name
        self.lr = float(lr)
        self.betas = tuple(float(b) for b in betas)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.warmup_steps = int(warmup_steps)
        self.min_lr_ratio = float(min_lr_ratio)

    module_class: type | None = None  # None: the task's module (tasks/base.py), else methods.module.MethodModule
    # False where the method needs whole parameter matrices, which FSDP's flat shards are not (checked at
    # config time: hardware.strategy=fsdp is refused with a one-line error).
    supports_fsdp: bool = True
    # What the method needs of the task (capabilities a Task `provides`: "tokens", "domains", "forget-retain",
    # "seq2seq", ...) and of the model (its Architecture.kind or a capability it `provides`: "causal-lm",
    # "decoder-layers", ...); empty: anything. Checked at config time, one line naming both sides.
    needs_task: frozenset[str] = frozenset()
    needs_model: frozenset[str] = frozenset()
    # Set by the runner before any stage: trained, cached models by role (see TrainedModel above), and the steps the
    # base role trains for (base_steps), for methods that ask for models at other step counts (PreSelect).
    trained_model: TrainedModel | None = None
    base_steps: int | None = None

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
        """Post-training transform of a trained model. The runner evaluates before and after with the same
        evaluator, measures the KL to the dense model and saves the result (runner/stages.py)."""
        return model

    def stage_log(self, stage: str) -> list[dict[str, float]]:
        """Rows the runner logs under `<stage>/` after `stage` ran, one logger step each: a search's curve
        (EvoPress: fitness per generation). Default: none."""
        return []

    def evaluate(self, model: nn.Module, data: Any) -> dict[str, float]:
        """The method's own metrics, logged beside validation loss/perplexity."""
        return {}

    def figures(self, model: nn.Module, data: Any, directory: Any) -> dict[str, Any]:
        """The method's own figures of the final model, written under `directory` (a Path): {name: image file},
        kept in the run directory, logged to W&B as images and listed in summary.json. Default: none."""
        return {}

    @property
    def trains(self) -> bool:
        """Whether the run has a training stage (compression/inference methods may turn it off)."""
        return True

    @property
    def needs_trained_model(self) -> bool:
        """Whether the run starts from a trained model: with model.init_from unset, the runner then uses the
        cached base model (runner/trained.py). Post-training methods (compression, inference) and methods
        that train a trained model further (unlearning) say True."""
        return not self.trains

    @property
    def stages(self) -> list[str]:
        """The stages the runner runs, in order (names from STAGES). Default: the hooks this method overrides,
        and train where `trains`, in the order of STAGES."""
        overridden = {s for s in STAGES if s != "train" and getattr(type(self), s) is not getattr(Method, s)}
        return [s for s in STAGES if s in overridden or (s == "train" and self.trains)]

    def train_steps(self, configured: int) -> int:
        """Optimizer steps of the train stage; default trainer.max_steps (a fine-tune may set its own)."""
        return configured

    def after_optimizer_step(self, module: Any) -> None:
        """Called after every optimizer step of a train stage (e.g. re-apply a pruning mask)."""

    # -- training ----------------------------------------------------------------------------
    def loss(self, module: Any, batch: torch.Tensor) -> torch.Tensor:
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
        import torch

        return torch.optim.AdamW(self.param_groups(model), lr=self.lr, betas=self.betas, eps=self.eps)

    def lr_lambda(self, total_steps: int):
        warm, floor = self.warmup_steps, self.min_lr_ratio

        def f(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = min(1.0, (step - warm) / max(1, total_steps - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

        return f

    def configure_optimizers(self, module: Any) -> dict:
        import torch

        opt = self.build_optimizer(module.model)
        total = max(1, int(module.trainer.max_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_lambda(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def optimizer_state_bytes(self, model: nn.Module) -> int:
        """Optimizer state size, for dry runs (works on meta tensors). AdamW: two fp32 moments."""
        return sum(2 * 4 * p.numel() for p in model.parameters() if p.requires_grad)
