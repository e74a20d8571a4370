"""Lightning plumbing the runner owns: throughput, plain-line progress for logs, checkpoints (atomic, hashed,
finite, the final step and a Ctrl-C's step always saved; runner/checkpoints.py says what a run keeps)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar

from runner import checkpoints


class NonFiniteWeights(ArithmeticError):
    """A checkpoint about to be written holds nan or inf weights: it is not written (nor an older one removed)."""

    def __init__(self, names: list[str], step: int):
        self.names, self.step = names, step
        more = f" and {len(names) - 1} more" if len(names) > 1 else ""
        super().__init__(f"non-finite weights after step {step} ({names[0]}{more}); not saved")


def _nonfinite_weights(state_dict: dict) -> list[str]:
    """The names of the floating-point tensors of `state_dict` that hold a nan or inf: max |t| per tensor (a nan
    propagates through it), one device sync; ~8 ms for the 5.3M weights of the default model on one CPU core."""
    floats = [(k, t) for k, t in state_dict.items() if torch.is_tensor(t) and t.is_floating_point() and t.numel()]
    if not floats:
        return []
    peaks = torch.stack([t.detach().abs().amax().float().to(floats[0][1].device) for _, t in floats])
    finite = torch.isfinite(peaks)
    if bool(finite.all()):
        return []
    return [k for (k, _), ok in zip(floats, finite.tolist()) if not ok]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Serialize, write to a temporary file, check its size, rename, then record its sha256 in
    checkpoints/SHA256SUMS: a run killed mid-save never leaves a torn checkpoint, and one torn later (a full
    disk, a bad copy) is found on resume. A checkpoint whose weights are not finite is not written."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        bad = _nonfinite_weights(checkpoint.get("state_dict", {}))
        if bad:
            raise NonFiniteWeights(bad, int(checkpoint.get("global_step", -1)))
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        data = buf.getbuffer()
        digest = hashlib.sha256(data).hexdigest()  # ~0.1 s for the 63 MB of the default model
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            if tmp.stat().st_size != len(data):
                raise OSError(f"{tmp}: wrote {tmp.stat().st_size:,} of {len(data):,} bytes")
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        checkpoints.record_sum(path, digest)

    def remove_checkpoint(self, path) -> None:
        super().remove_checkpoint(path)
        checkpoints.forget_sum(Path(path))

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return super().load_checkpoint(path, map_location=map_location, weights_only=False)


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint as the runner keeps checkpoints: the newest `save_top_k` step files (by step) and
    last.ckpt, a link to the newest; the final step is always saved (not only a multiple of
    every_n_train_steps), and Ctrl-C (SIGINT) saves the current step at its end and stops the fit
    (`interrupted_at`); a second Ctrl-C stops at once. last.ckpt is a symlink, or where the filesystem has
    none a hard link, or at worst one copy."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.interrupted_at: int | None = None  # the step whose checkpoint a Ctrl-C saved (the fit then stopped)
        self.sigints = 0
        self._previous_handler = None
        self._step: int | None = None

    # -- Ctrl-C ------------------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._step = trainer.global_step
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        self.sigints += 1
        if self.sigints > 1:
            self.restore_signal()
            raise KeyboardInterrupt
        print("\ninterrupted: saving a checkpoint at the end of this step, then stopping "
              "(Ctrl-C again stops at once, without it)", file=sys.stderr, flush=True)

    def restore_signal(self) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGINT, self._previous_handler)
            self._previous_handler = None

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        self.restore_signal()

    def on_exception(self, trainer, pl_module, exception) -> None:
        super().on_exception(trainer, pl_module, exception)
        self.restore_signal()

    # -- saving ------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.global_step == self._step:  # within a step's gradient accumulation
            return
        self._step = trainer.global_step
        stop = self.sigints > 0
        if trainer.world_size > 1:  # every rank stops at the same step
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop or 0 < trainer.max_steps <= trainer.global_step:
            self.save_now(trainer)
        if stop:
            self.interrupted_at = trainer.global_step
            trainer.should_stop = True

    def save_now(self, trainer) -> None:
        """Save the current step as a step file and point last.ckpt at it, unless it is saved already."""
        if self._last_global_step_saved == trainer.global_step:
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    @staticmethod
    def _link_checkpoint(trainer, filepath: str, linkpath: str) -> None:
        """last.ckpt -> the newest step file: a symlink; a hard link where symlinks fail; at worst a copy."""
        if trainer.is_global_zero and os.path.abspath(filepath) != os.path.abspath(linkpath):
            if os.path.islink(linkpath) or os.path.isfile(linkpath):
                os.remove(linkpath)
                checkpoints.forget_sum(Path(linkpath))
            try:
                os.symlink(os.path.relpath(filepath, os.path.dirname(linkpath)), linkpath)
            except OSError:
                try:
                    os.link(filepath, linkpath)
                except OSError:
                    shutil.copy(filepath, linkpath)
                digest = checkpoints.read_sums(Path(filepath).parent).get(Path(filepath).name)
                if digest:
                    checkpoints.record_sum(Path(linkpath), digest)
        trainer.strategy.barrier()


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
    """Progress as plain lines (CI logs, files): `step 40/200 | train/loss 4.812 | ...`, from rank 0 only (its
    train/loss is the mean over ranks)."""

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
        if trainer.is_global_zero and (step % self.every == 0 or step == trainer.max_steps):
            el = time.perf_counter() - self._t0
            print(f"step {step}/{trainer.max_steps} | {self._fmt(trainer.callback_metrics)} | {el:.0f}s",
                  file=self.stream, flush=True)

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        if "val/loss" in m:
            # a run that does not train (compress, evaluate) validates its model: no step to show
            at = (f"{trainer.global_step}/{trainer.max_steps}" if trainer.global_step else
                  "step 0" if trainer.max_steps > 0 else "(no training)")
            shown = [f"{k} {float(m[k]):.4f}" for k in ("val/loss", "val/ppl") if k in m]
            print(f"val  {at} | {' | '.join(shown)}", file=self.stream, flush=True)
