"""Lightning plumbing the runner owns: throughput, plain-line progress for logs, atomic checkpoints."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import RichProgressBar


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file, then rename: a run killed mid-save never leaves a torn checkpoint."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return super().load_checkpoint(path, map_location=map_location, weights_only=False)


class Throughput(pl.Callback):
    """Tokens per second of training (validation time excluded), logged as train/tokens_per_s. Tokens are what
    the module counts (`tokens_seen`: next-token targets of LM batches; a task's module may count otherwise).

    The run's figure (`tokens_per_s`) leaves out the first `skip` batches of each process: start-up,
    allocator warm-up and torch.compile's compilation are not throughput.
    """

    def __init__(self, log_every: int, skip: int = 0):
        self.log_every = log_every
        self.skip = skip
        self._batches = 0
        self.train_time = 0.0
        self.tokens = 0
        self._t0: float | None = None
        self._window_tokens = 0
        self._window_time = 0.0
        self.last_rate = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._t0 = time.perf_counter()
        self._seen = pl_module.tokens_seen

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self._t0 is None:
            return
        dt = time.perf_counter() - self._t0
        n = pl_module.tokens_seen - self._seen  # as the module counts them (all ranks)
        self._batches += 1
        if self._batches > self.skip:
            self.train_time += dt
            self.tokens += n
        self._window_time += dt
        self._window_tokens += n
        if trainer.global_step % self.log_every == 0 and self._window_time > 0:
            self.last_rate = self._window_tokens / self._window_time
            pl_module.log("train/tokens_per_s", self.last_rate, on_step=True, on_epoch=False)
            self._window_tokens, self._window_time = 0, 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.train_time if self.train_time else 0.0


class StepProgressBar(RichProgressBar):
    """Lightning's Rich bar, labelled by steps (runs are step-based: there is no epoch count to show)."""

    def _get_train_description(self, current_epoch: int) -> str:
        return "train (steps)"


class LineProgress(pl.Callback):
    """Progress as plain lines (CI logs, files): `step 40/200 | train/loss 4.812 | ...`."""

    def __init__(self, every: int, stream=None):
        self.every = every
        self.stream = stream or sys.stdout
        self._t0 = time.perf_counter()

    def _fmt(self, metrics: dict) -> str:
        parts = []
        for k in ("train/loss", "train/lr", "train/tokens_per_s"):
            if k in metrics:
                v = float(metrics[k])
                parts.append(f"{k} {v:.3g}" if k == "train/lr" else f"{k} {v:.4f}" if "loss" in k else f"{k} {v:.1f}")
        return " | ".join(parts)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step % self.every == 0 or step == trainer.max_steps:
            el = time.perf_counter() - self._t0
            print(f"step {step}/{trainer.max_steps} | {self._fmt(trainer.callback_metrics)} | {el:.0f}s",
                  file=self.stream, flush=True)

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        if "val/loss" in m:
            at = f"{trainer.global_step}/{trainer.max_steps}" if trainer.global_step else "step 0"
            shown = [f"{k} {float(m[k]):.4f}" for k in ("val/loss", "val/ppl") if k in m]
            print(f"val  {at} | {' | '.join(shown)}", file=self.stream, flush=True)
