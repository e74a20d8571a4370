"""Trained models on demand: the runner trains a model for a role once and caches it.

Post-training methods (compression, KV-cache, long context, unlearning) need a trained model, and tasks may
need reference models (TOFU's retain-only model); later papers need teachers, readers and membership-attack
targets. On a cluster that is a checkpoint or hub weights; on the CPU path the runner trains one: the run's
model and task with the baseline (AdamW + cross-entropy, `configs/trainer/default.yaml`, `base_steps` steps),
the task's arguments changed as the role asks (e.g. `{"generator": {"train_on": "retain"}}`); a role may also
name another model and task altogether (`model=`, `dataset=`: option names of configs/model and configs/dataset
with overrides of their keys, e.g. the causal LM that writes the machine side of AI-text detection data for an
encoder's classification run) and a seed of its own. It is cached
under `<paths.cache_dir>/trained/<role>-<model>-<key>`, the key a hash of everything that decides its weights;
a file lock makes concurrent runs wait instead of training it twice. Every later run with the same key loads
it in seconds.

Tasks and methods get the models through `TrainedModels` (handed in as `BuildContext.trained_model` and
`Method.trained_model`); they never import the runner.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config import CONFIG_DIR, import_target, latest_checkpoint

log = logging.getLogger("methodbench")
BASE = "base"
# Dataset keys that do not change what a model learns (the task's own such arguments: Task.eval_only_args).
_NOT_LEARNED = ("name", "num_workers")


Option = str | tuple[str, dict] | None  # an option name of its config group, optionally with key overrides


def _option(group: str, option, depth: int = 0) -> DictConfig:
    """configs/<group>/<name>.yaml with overrides: `option` is a name or (name, {key: value, ...}). Options of the
    same group that its defaults list names come first (method=dupmae lists adamw), as Hydra composes them."""
    name, overrides = (option, {}) if isinstance(option, str) else option
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.exists() or depth > 8:
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        raise ValueError(f"{group}={name}: no such option for a trained model; choose one of: {', '.join(options)}")
    node = OmegaConf.load(path)
    parents = [e for e in node.pop("defaults", None) or [] if isinstance(e, str) and e != "_self_"]
    return OmegaConf.merge(*(_option(group, p, depth + 1) for p in parents), node, overrides or {})


def role_config(cfg: DictConfig, role: str = BASE, changes: dict | None = None, model: Option = None,
                dataset: Option = None, seed: int | None = None, method: Option = None,
                steps: int | None = None) -> DictConfig:
    """The config of the run that trains `role`'s model for `cfg`: same model, task (with `changes` merged into
    its arguments), hardware and seed, unless the role names its own `model`, `dataset` or `seed`; the baseline
    method (or the role's own `method`: a pre-training stage, e.g. DupMAE's before its fine-tuning) for
    `base_steps` steps (or `steps`) of the default trainer; no logger."""
    out = cfg.copy()
    OmegaConf.set_struct(out, False)
    if model is not None:
        out.model = _option("model", model)
    if dataset is not None:
        out.dataset = _option("dataset", dataset)
    if seed is not None:
        out.seed = int(seed)
    out.method = _option("method", "adamw" if method is None else method)
    out.trainer = OmegaConf.merge(OmegaConf.load(CONFIG_DIR / "trainer" / "default.yaml"),
                                  {"max_steps": int(cfg.base_steps if steps is None else steps),
                                   "enable_progress_bar": cfg.trainer.enable_progress_bar})
    out.logger = OmegaConf.load(CONFIG_DIR / "logger" / "none.yaml")
    if changes:
        out.dataset = OmegaConf.merge(out.dataset, changes)
    out.model.init_from = None
    out.run_name = f"{role}-{cfg.model.name}"
    out.resume = None
    out.dry_run = False
    return out


def _drop(tree: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.get(p) if isinstance(tree, dict) else None
        if tree is None:
            return
    if isinstance(tree, dict):
        tree.pop(leaf, None)


def role_key(cfg: DictConfig, role: str = BASE, changes: dict | None = None, **other) -> str:
    b = role_config(cfg, role, changes, **other)
    dataset = OmegaConf.to_container(b.dataset, resolve=True)
    for k in _NOT_LEARNED:
        dataset.pop(k, None)
    for dotted in getattr(import_target(str(b.dataset._target_)), "eval_only_args", ()):
        _drop(dataset, dotted)
    spec = {
        "model": {k: v for k, v in OmegaConf.to_container(b.model, resolve=True).items() if k not in ("name", "init_from")},
        "dataset": dataset,
        "method": OmegaConf.to_container(b.method, resolve=True),
        "trainer": {k: v for k, v in OmegaConf.to_container(b.trainer, resolve=True).items() if k != "enable_progress_bar"},
        "precision": str(cfg.hardware.precision),
        "seed": int(b.seed),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def model_dir(cfg: DictConfig, role: str = BASE, changes: dict | None = None, **other) -> Path:
    """Where `role`'s model for `cfg` is cached (a run directory: checkpoints/last.ckpt, summary.json, ...).
    `other`: the role's own model=, dataset=, seed=, method=, steps= (role_config)."""
    b = role_config(cfg, role, changes, **other)
    return Path(cfg.paths.cache_dir).expanduser() / "trained" / f"{role}-{b.model.name}-{role_key(cfg, role, changes, **other)}"


def ensure(cfg: DictConfig, run: Callable[..., dict], role: str = BASE, changes: dict | None = None, **other) -> Path:
    """The run directory of `role`'s model for `cfg`, trained first with `run` (runner.train.run) if no finished
    one is cached. The caller's RNG states are left as they were."""
    final = model_dir(cfg, role, changes, **other)
    if (final / "summary.json").exists() and latest_checkpoint(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.with_name(final.name + ".lock"), "w") as lock, _rng_kept():
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "summary.json").exists() and latest_checkpoint(final):
            return final
        tmp = final.with_name(final.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        b = role_config(cfg, role, changes, **other)
        log.info("training the %s model once (%d steps of %s on %s, method=%s); cached at %s", role,
                 b.trainer.max_steps, b.model.name, b.dataset.name, b.method.name, final)
        run(b, run_dir=tmp, identity=f"{role}:{role_key(cfg, role, changes, **other)}", role=role)
        # keep one real last.ckpt (it may be a link to a step file), not the periodic ones
        last = tmp / "checkpoints" / "last.ckpt"
        if last.is_symlink():
            target = last.resolve()
            last.unlink()
            shutil.copy2(target, last)
        for p in (tmp / "checkpoints").glob("step*.ckpt"):
            p.unlink()
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp / "wandb")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        log.info("%s model ready: %s", role, final)
    return final


@contextlib.contextmanager
def _rng_kept():
    import numpy as np
    import torch

    py, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        yield
    random.setstate(py)
    np.random.set_state(np_state)


class TrainedModels:
    """The provider tasks and methods are handed: `trained(role, changes)` -> that model, loaded, eval mode.
    `vocab_size(path)`: the vocabulary of the model saved at `path` (a runner run's summary.json says it)."""

    def __init__(self, cfg: DictConfig, run: Callable[..., dict], vocab_size: Callable[[str], int | None]):
        self.cfg, self.run, self.vocab_size = cfg, run, vocab_size
        self._loaded: dict[str, Any] = {}

    def __call__(self, role: str = BASE, changes: dict | None = None, **other):
        """`role`'s model, trained once; `other`: its own model=, dataset=, seed=, method=, steps= (role_config)."""
        return self.load(str(self.path(role, changes, **other)))

    def path(self, role: str = BASE, changes: dict | None = None, **other) -> Path:
        """`role`'s run directory (trained first if need be): its checkpoints, summary.json, tokenizer/."""
        return ensure(self.cfg, self.run, role, changes, **other)

    def load(self, path: str):
        """The model `path` holds (anything model.init_from takes), built as the model config of the run that
        trained it says (its config.yaml), else as this run's."""
        from runner.models import build_model, model_vocab_size

        if path not in self._loaded:
            m = self.cfg.model.copy()
            saved = Path(path) / "config.yaml"
            if saved.is_file():
                m = OmegaConf.load(saved).model
            m.init_from = str(path)
            with _rng_kept():  # its random init (overwritten by the weights) must not move the caller's RNG
                self._loaded[path] = build_model(m, model_vocab_size(m, self.vocab_size(path))).float().eval()
        return self._loaded[path]
