"""One run: validate -> build task, model, method -> the method's stages -> summary.json.

Everything a method should not have to think about lives here: devices, precision, logging, checkpoints,
resume, progress, seeds, trained models on demand. Nothing here knows a kind of data, an architecture or a
method family: the task (tasks/base.py), the architecture (models/base.py) and the method (methods/base.py)
say what they are, and the stages are the method's (runner/stages.py).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.config import META_FILE, architecture, latest_checkpoint, make_task, validate
from runner.errors import ConfigError
from runner.trained import BASE, TrainedModels, ensure

log = logging.getLogger("methodbench")

_QUIET = (r".*weights_only.*", r".*LeafSpec.*", r".*does not have many workers.*", r".*srun.*",
          r".*predict_dataloader.*", r".*_pytree.*")


def _hydra_info() -> tuple[Path, str, str | None]:
    """(run dir, identity, sweep group) from Hydra's runtime config."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir).resolve()
    group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
    return run_dir, hc.job.override_dirname, group


def load_meta(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / META_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _progress_callbacks(cfg: DictConfig):
    from runner.callbacks import LineProgress, StepProgressBar

    want = cfg.trainer.enable_progress_bar
    if want is False:
        return []
    tty = sys.stdout.isatty() and not os.environ.get("CI")
    if want == "auto" and not tty:
        return [LineProgress(cfg.trainer.log_every_n_steps)]
    return [StepProgressBar(leave=True)]


def _strategy(hw: DictConfig, blocks: list):
    if hw.strategy != "fsdp":
        return hw.strategy
    from lightning.pytorch.strategies import FSDPStrategy

    layer_cls = {type(b) for b in blocks} or None  # an architecture without repeated blocks: one FSDP unit
    return FSDPStrategy(auto_wrap_policy=layer_cls, sharding_strategy=hw.fsdp.sharding_strategy,
                        activation_checkpointing_policy=layer_cls if hw.fsdp.activation_checkpointing else None)


def _resolve_base(cfg: DictConfig, method) -> tuple[DictConfig, int | None]:
    """`model.init_from=base`, or a method that needs a trained model and got none: the cached base model.
    Returns the config with init_from resolved and the base model's steps (None: not the runner's model)."""
    if cfg.model.init_from is None and method.needs_trained_model:
        log.info("method=%s needs a trained model: it runs on the cached base model (model.init_from=base); "
                 "give model.init_from=<run dir | .ckpt | HF dir> to use another", method.name)
    elif cfg.model.init_from != BASE:
        return cfg, None
    cfg = cfg.copy()
    cfg.model.init_from = str(ensure(cfg, run))
    return cfg, int(cfg.base_steps)


def _vocab_of(path: str) -> int | None:
    """The vocabulary of a model the runner trained (its summary.json), for loading it again."""
    p = Path(path).expanduser()
    for run_dir in (p, p.parent.parent):  # a run directory, or a checkpoint in its checkpoints/
        try:
            return int(json.loads((run_dir / "summary.json").read_text())["vocab_size"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def run(cfg: DictConfig, run_dir: Path | None = None, identity: str | None = None, role: str | None = None) -> dict:
    """Run `cfg`. Under Hydra the run directory and identity come from Hydra; a nested run (one of the runner's
    trained models, `role`) passes them."""
    for pattern in _QUIET:  # Lightning's advice that does not apply to this runner
        warnings.filterwarnings("ignore", message=pattern)
    validate(cfg)
    if run_dir is None:
        run_dir, identity, sweep_group = _hydra_info()
    else:
        run_dir, identity, sweep_group = Path(run_dir).resolve(), identity or "", None
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.dry_run:
        from runner.dryrun import plan

        return plan(cfg, run_dir)
    state: dict[str, Any] = {"logger": None}
    try:
        return _run(cfg, run_dir, identity, sweep_group, role, state)
    except BaseException as e:  # the run is recorded as failed (or interrupted); finished work stays on disk
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        if (run_dir / META_FILE).exists() or status == "failed":
            write_json(run_dir / META_FILE, {**load_meta(run_dir), "status": status,
                                             "error": f"{e.__class__.__name__}: {e}".splitlines()[0]})
        from runner import loggers

        loggers.finish(state["logger"], {}, failed=True)
        raise


def _run(cfg: DictConfig, run_dir: Path, identity: str, sweep_group: str | None, role: str | None,
         state: dict) -> dict:
    import lightning.pytorch as pl
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint

    from methods.module import MethodModule
    from runner import loggers, stages
    from runner.callbacks import AtomicCheckpointIO, StepProgressBar, Throughput
    from runner.models import build_model, count_params, model_vocab_size
    from tasks.base import BuildContext

    for name in ("lightning.pytorch", "lightning.fabric"):  # its banner and tips (set on import, so after it)
        logging.getLogger(name).setLevel(logging.WARNING)
    hw, tr = cfg.hardware, cfg.trainer
    if hw.threads:
        torch.set_num_threads(int(hw.threads))
    torch.set_float32_matmul_precision(hw.matmul_precision)

    # -- validate what the stages need; resolve the starting model ---------------------------------
    method = instantiate(cfg.method, _convert_="all")
    method.bind_kernels(dict(hw.kernels), hw.kernel_fallback)
    order = list(method.stages)
    prepare = [s for s in order if s.startswith("prepare_")]
    if order[:len(prepare)] != prepare:
        raise ConfigError(f"method: {method.name} lists {prepare} after other stages ({order}); "
                          "prepare_data and prepare_model come first")
    cfg, base_steps = _resolve_base(cfg, method)

    # -- resume: the run directory is the old one (hydra.run.dir); find its checkpoint -----------------
    meta = load_meta(run_dir)
    ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    if cfg.resume and cfg.resume != "auto" and ckpt is None:
        raise ConfigError(f"resume: no checkpoint in {run_dir}/checkpoints (nothing to resume)")
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
    run_id = (meta.get("wandb_id") if ckpt is not None else None) or uuid.uuid4().hex[:8]
    resolved = OmegaConf.to_container(cfg, resolve=True)
    write_json(run_dir / META_FILE, {"identity": identity, "wandb_id": run_id, "run_name": cfg.run_name,
                                     "status": "running", "resumed_from": str(ckpt) if ckpt else None})
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    t_start = time.perf_counter()

    # -- build: task, model, module, trainer -----------------------------------------------------
    data = None
    trained = TrainedModels(cfg, run, vocab_size=lambda p=None: (p and _vocab_of(p)) or getattr(data, "vocab_size", None))
    method.trained_model = trained
    ctx = BuildContext(seq_len=int(cfg.model.seq_len), cache_dir=Path(cfg.paths.cache_dir).expanduser(),
                       seed=int(cfg.seed), batch_size=int(cfg.dataset.batch_size), max_steps=int(tr.max_steps),
                       accumulate_grad_batches=int(tr.accumulate_grad_batches), needs=frozenset(method.needs_task),
                       role=role, base_steps=base_steps, trained_model=trained, load_model=trained.load)
    data = make_task(cfg.dataset).build(ctx)
    if "prepare_data" in order:
        data = method.prepare_data(data)
    arch = architecture(cfg.model)
    vocab = model_vocab_size(cfg.model, data.vocab_size)
    model = build_model(cfg.model, vocab)
    if "prepare_model" in order:
        model = method.prepare_model(model)
    n_params = count_params(model)
    data.save(run_dir / "tokenizer")
    counts = data.counts()
    log.info("model %s: %.2fM parameters | data: %s", cfg.model.name, n_params / 1e6,
             ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in counts.items()) or "-")

    module_cls = method.module_class or data.module_class or MethodModule
    module = module_cls(model, method, dict(hw.kernels), hw.kernel_fallback, data=data, seed=int(cfg.seed))
    max_steps = int(method.train_steps(int(tr.max_steps))) if "train" in order else 0
    micro_total = max(1, max_steps) * tr.accumulate_grad_batches
    logger = state["logger"] = loggers.make_logger(cfg.logger, run_dir, cfg.run_name, run_id, sweep_group, resolved)
    throughput = Throughput(tr.log_every_n_steps, skip=min(10, micro_total // 10))
    progress = _progress_callbacks(cfg)
    ckpt_cb = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step:06d}", auto_insert_metric_name=False,
                              every_n_train_steps=tr.checkpoint_every_n_steps, save_top_k=tr.keep_checkpoints,
                              monitor="step", mode="max", save_last="link")
    blocks = arch.blocks(module.model)
    trainer = pl.Trainer(
        accelerator=hw.accelerator, devices=hw.devices, num_nodes=hw.num_nodes, precision=hw.precision,
        strategy=_strategy(hw, blocks), max_steps=max_steps, max_epochs=-1,
        val_check_interval=tr.val_every_n_steps * tr.accumulate_grad_batches, check_val_every_n_epoch=None,
        limit_val_batches=1.0, log_every_n_steps=tr.log_every_n_steps, gradient_clip_val=tr.grad_clip,
        accumulate_grad_batches=tr.accumulate_grad_batches, deterministic=tr.deterministic,
        logger=logger, callbacks=[throughput, ckpt_cb, *progress],
        enable_progress_bar=any(isinstance(c, StepProgressBar) for c in progress),
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(run_dir),
        use_distributed_sampler=False, plugins=[AtomicCheckpointIO()],
    )
    if hw.compile:  # per repeated block, in place: checkpoints keep their keys
        for block in blocks:
            block.compile()
    train_dl, val_dl = data.make_loaders(cfg.dataset.batch_size, micro_total, cfg.seed,
                                         start=lambda: module.micro_batches_seen, rank=trainer.global_rank,
                                         world=trainer.world_size, val_batches=tr.val_batches,
                                         num_workers=cfg.dataset.num_workers)
    baselines = data.baselines(val_dl)

    # -- the method's stages, in its order -------------------------------------------------------
    results: dict[str, Any] = {}
    validated = False  # the module's val/* metrics describe the current model
    for stage in order:
        if stage == "train" and max_steps > 0:
            module.model.train()  # an earlier stage (compress) may have left it in eval mode
            trainer.fit(module, train_dataloaders=train_dl, val_dataloaders=val_dl,
                        ckpt_path=str(ckpt) if ckpt else None)
            trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
            validated = module.last_val_step == trainer.global_step
        elif stage == "compress":
            results.update(stages.compress(trainer, module, method, data, val_dl))
            validated = True
        elif stage == "evaluate":
            if not validated:
                stages.validate(trainer, module, val_dl)
                validated = True
            module.model.eval()
            results.update({f"eval/{k}": v for k, v in method.evaluate(module.model, data).items()})
        if logger:
            for row in method.stage_log(stage):  # a search's curve, one logger row per point
                logger.log_metrics({f"{stage}/{k}": float(v) for k, v in row.items()})
    if not validated:
        stages.validate(trainer, module, val_dl)
    val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    module.model.eval()
    results.update({f"eval/{k}": v for k, v in data.evaluate(module.model).items()})  # the task's own metrics
    if "compress" in order and trainer.is_global_zero:
        results.update(stages.save_compressed(module.model, data, run_dir))

    # -- summary --------------------------------------------------------------------------------
    summary = {
        "train/loss": module.last_train_loss,
        **val_metrics,
        **baselines,
        "params": n_params,
        "vocab_size": vocab,
        **{f"data/{k}": v for k, v in counts.items()},
        "tokens_seen": module.tokens_seen,
        "tokens_per_s": throughput.tokens_per_s,
        "steps": trainer.global_step,
        "wall_s": time.perf_counter() - t_start,
        "stages": order,
        **results,
    }
    if torch.cuda.is_available() and hw.accelerator != "cpu":
        summary["gpu/peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    numbers = {k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numbers and logger:
        logger.log_metrics({**numbers, **baselines}, step=trainer.global_step)
    summary = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
    if trainer.is_global_zero:
        write_json(run_dir / "summary.json", {**summary, "run_dir": str(run_dir), "wandb_id": run_id, "config": resolved})
        write_json(run_dir / META_FILE, {**load_meta(run_dir), "status": "finished"})
        shown = {k: v for k, v in {**val_metrics, **baselines}.items() if "/" in k and k.count("/") == 1}
        log.info("done: %s | %.0f tok/s -> %s", "  ".join(f"{k} {v:.4g}" for k, v in shown.items()),
                 summary["tokens_per_s"], run_dir / "summary.json")
    loggers.finish(logger, summary)
    state["logger"] = None
    return summary
