"""A dataset config's task, built outside a run: for tests, benches and notebooks (a run builds its own in
runner/train.py, with the trained models on demand)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from runner.config import make_task
from tasks.base import BuildContext, TaskData


def build_data(d: DictConfig, seq_len: int, cache_dir: str, needs: frozenset[str] = frozenset(), seed: int = 0,
               max_steps: int = 0, model_source: str | None = None) -> TaskData:
    """The data `d` (a dataset config) builds at `seq_len`; `needs`: what a method would ask of it;
    `model_source`: the model's model.init_from (a pretrained model's tokenizer)."""
    ctx = BuildContext(seq_len=int(seq_len), cache_dir=Path(cache_dir).expanduser(), seed=seed,
                       batch_size=int(d.batch_size), max_steps=max_steps, accumulate_grad_batches=1, needs=needs,
                       model_source=model_source)
    return make_task(d).build(ctx)


def build_task_data(cfg: DictConfig) -> TaskData:
    """The data of a composed run config."""
    return build_data(cfg.dataset, cfg.model.seq_len, cfg.paths.cache_dir, seed=int(cfg.seed),
                      max_steps=int(cfg.trainer.max_steps), model_source=cfg.model.init_from)
