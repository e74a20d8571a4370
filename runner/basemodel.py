"""The cached base model: `model.init_from=base`.

Post-training methods (compression, KV-cache, long context, unlearning) need a trained model. On a
cluster that is a checkpoint or hub weights; on the CPU smoke path the runner trains the configured
model once with the baseline (AdamW + cross-entropy, `configs/trainer/default.yaml`, `base_steps`
steps) on the configured corpus, and caches it under `<paths.cache_dir>/base/`, keyed by everything that
determines its weights. Every later run with the same key loads it in seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from runner.config import CONFIG_DIR, latest_checkpoint

log = logging.getLogger("methodbench")
BASE = "base"
# Keys that change what the base model learns. Everything else (threads, workers, progress) does not.
_DATASET_KEYS = ("source", "path", "subset", "split", "text_field", "max_documents", "val_fraction", "tokenizer",
                 "batch_size")


def base_config(cfg: DictConfig) -> DictConfig:
    """The config of the run that trains the base model for `cfg`: same model, data, hardware and seed; the
    baseline method and the default trainer; no logger."""
    out = cfg.copy()
    OmegaConf.set_struct(out, False)
    out.method = OmegaConf.load(CONFIG_DIR / "method" / "adamw.yaml")
    out.trainer = OmegaConf.merge(OmegaConf.load(CONFIG_DIR / "trainer" / "default.yaml"),
                                  {"max_steps": int(cfg.base_steps), "enable_progress_bar": cfg.trainer.enable_progress_bar})
    out.logger = OmegaConf.load(CONFIG_DIR / "logger" / "none.yaml")
    out.model.init_from = None
    out.run_name = f"base-{cfg.model.name}"
    out.resume = None
    out.dry_run = False
    return out


def base_key(cfg: DictConfig) -> str:
    b = base_config(cfg)
    generator = b.dataset.get("generator") or {}
    if "retain_model" in generator:  # runner/qa.py: the model forget quality compares with; not what the base learns
        b.dataset.generator = {k: v for k, v in generator.items() if k != "retain_model"}
    spec = {
        "model": {k: v for k, v in OmegaConf.to_container(b.model, resolve=True).items() if k not in ("name", "init_from")},
        "dataset": {k: v for k, v in OmegaConf.to_container(b.dataset, resolve=True).items()
                    if k in _DATASET_KEYS or (k in ("generator", "domains") and v)},
        "method": OmegaConf.to_container(b.method, resolve=True),
        "trainer": {k: v for k, v in OmegaConf.to_container(b.trainer, resolve=True).items() if k != "enable_progress_bar"},
        "precision": str(cfg.hardware.precision),
        "seed": int(cfg.seed),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def base_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.cache_dir).expanduser() / "base" / f"{cfg.model.name}-{base_key(cfg)}"


def ensure_base(cfg: DictConfig) -> Path:
    """The run directory of the base model for `cfg`, training it first if no finished one is cached.
    Concurrent runs wait for one another (a file lock) instead of training it twice."""
    final = base_dir(cfg)
    if (final / "summary.json").exists() and latest_checkpoint(final):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.with_name(final.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "summary.json").exists() and latest_checkpoint(final):
            return final
        from runner.train import run

        tmp = final.with_name(final.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("model.init_from=base: training the base model once (%d steps of %s on %s); cached at %s",
                 cfg.base_steps, cfg.model.name, cfg.dataset.name, final)
        run(base_config(cfg), run_dir=tmp, identity=f"base:{base_key(cfg)}")
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
        log.info("base model ready: %s", final)
    return final


def load_base(overrides: list[str]):
    """(model in eval mode, TokenData, config) of the cached base model for `python -m runner <overrides>`,
    training it first if needed; `config.model.init_from` is its run directory."""
    import torch

    from runner.config import compose
    from runner.data import build_data
    from runner.models import build_model, model_vocab_size

    cfg = compose([*overrides, "model.init_from=base"])
    with torch.random.fork_rng():
        cfg.model.init_from = str(ensure_base(cfg))
    data = build_data(cfg.dataset, cfg.model.seq_len, cfg.paths.cache_dir)
    model = build_model(cfg.model, model_vocab_size(cfg.model, data.vocab_size)).float().eval()
    return model, data, cfg
