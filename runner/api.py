"""The runner in process, for tests, benches and notebooks: compose a config, get the cached trained model."""

from __future__ import annotations

from runner.config import compose
from runner.data import build_task_data
from runner.train import run
from runner.trained import BASE, ensure

__all__ = ["compose", "load_base", "load_trained"]


def load_trained(overrides: list[str], role: str = BASE, changes: dict | None = None):
    """(model in eval mode, task data, config) of the runner's trained `role` model for `python -m runner
    <overrides>`, training it first if needed; `config.model.init_from` is its run directory."""
    import torch

    from runner.models import build_model, model_vocab_size

    cfg = compose([*overrides, "model.init_from=base"])
    with torch.random.fork_rng():
        cfg.model.init_from = str(ensure(cfg, run, role, changes))
    data = build_task_data(cfg)
    model = build_model(cfg.model, model_vocab_size(cfg.model, data.vocab_size)).float().eval()
    return model, data, cfg


def load_base(overrides: list[str]):
    """load_trained for the base model (the baseline trained on the run's task)."""
    return load_trained(overrides)
