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

from runner import checkpoints
from runner.config import META_FILE, architecture, is_launched_rank, make_task, resume_candidates, validate
from runner.errors import ConfigError, RunInterrupted, TrainingStopped
from runner.trained import BASE, TrainedModels, ensure

log = logging.getLogger("methodbench")

_QUIET = (r".*weights_only.*", r".*LeafSpec.*", r".*does not have many workers.*", r".*srun.*",
          r".*predict_dataloader.*", r".*_pytree.*",
          r".*dataloader is not resumable.*",  # it is: batches are a function of the micro-batch index (tasks/common.py)
          r".*sync_dist=True.*when logging on epoch level.*")  # val/* are reduced over ranks by the modules themselves


def _hydra_info() -> tuple[Path, str, dict[str, str] | None]:
    """(run dir, identity, the sweep) from Hydra's runtime config. The sweep (None outside one): the `sweep`'s
    name (`+sweep=<name>`; None: a sweep from the command line), its start `time`, and this `job`'s label: the
    swept keys' values (a sweep file's hydra.sweeper.params), else the job's overrides, after its number
    (runner.loggers.wandb_names makes the W&B names of them)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir).resolve()
    if hc.mode != RunMode.MULTIRUN:
        return run_dir, hc.job.override_dirname, None
    swept = set((OmegaConf.select(hc, "sweeper.params", default=None) or {}).keys())
    task = [str(o) for o in hc.overrides.task]
    values = [o for o in task if o.split("=", 1)[0].lstrip("+~") in swept] or [hc.job.override_dirname]
    label = f"{hc.job.num}:{','.join(v for v in values if v)}"[:128]
    stamp = Path(hc.sweep.dir).name.removeprefix("multirun_")
    return run_dir, hc.job.override_dirname, {"sweep": hc.runtime.choices.get("sweep"), "time": stamp, "job": label}


def load_meta(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / META_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _fmt(v: Any, spec: str = ".4g") -> str:
    """A number for a log line; n/a for a missing one (None), nan and inf as such."""
    if v is None:
        return "n/a"
    try:
        return format(float(v), spec)
    except (TypeError, ValueError):
        return str(v)


def _fit(trainer, module, train_dl, val_dl, ckpt: Path | None, ckpt_cb, run_dir: Path, nonfinite: tuple) -> None:
    """trainer.fit from `ckpt`, the run's way: a non-finite loss or weights stop it with one line (TrainingStopped)
    naming the step and the last good checkpoint; Ctrl-C saves the current step first (RunCheckpoint) and ends
    it with RunInterrupted (exit 130)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if ckpt is not None and last.is_symlink() and last.resolve() == Path(ckpt).resolve():
        ckpt = last  # Lightning never rotates away the file a fit resumed from: let that be the link, not a step file
    try:
        trainer.fit(module, train_dataloaders=train_dl, val_dataloaders=val_dl, ckpt_path=str(ckpt) if ckpt else None)
    except nonfinite as e:
        good, _ = checkpoints.newest_intact(run_dir)
        where = f"the last good checkpoint is {good}" if good else "no checkpoint was written before it"
        advice = ("lower method.lr" if getattr(e, "in_a_row", 1) > 1 or module.on_nonfinite == "skip_batch"
                  else "lower method.lr or set trainer.on_nonfinite=skip_batch")
        raise TrainingStopped(f"{e}; {where}; {advice}") from e
    except SystemExit as e:  # Lightning's KeyboardInterrupt handler exits 1: a second Ctrl-C, or one before ours
        if ckpt_cb.sigints > 1:
            raise RunInterrupted("interrupted twice: stopped at once, without a checkpoint of this step") from e
        if trainer.interrupted:
            raise RunInterrupted("interrupted") from e
        raise
    finally:
        ckpt_cb.restore_signal()
    if ckpt_cb.interrupted_at is not None:
        saved = str(Path(ckpt_cb.last_model_path).resolve())  # last.ckpt's target: the step file
        raise RunInterrupted(f"interrupted at step {ckpt_cb.interrupted_at}; its checkpoint is {saved}",
                             step=ckpt_cb.interrupted_at, checkpoint=saved)


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
        run_dir, identity, sweep = _hydra_info()
    else:
        run_dir, identity, sweep = Path(run_dir).resolve(), identity or "", None
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.dry_run:
        from runner.dryrun import plan

        return plan(cfg, run_dir)
    primary = not is_launched_rank()
    if primary and not checkpoints.try_lock(run_dir):  # held for the run's life; nothing in run_dir is touched without it
        raise ConfigError(f"{'resume' if cfg.resume else 'run directory'}: {run_dir} is in use by another process "
                          f"({checkpoints.lock_holder(run_dir)}); wait for it to end, or start a new run without resume=")
    try:
        ckpt = _resume_point(cfg, run_dir, identity, primary)  # a resume that cannot be: an error before anything is written
        state: dict[str, Any] = {"logger": None}
        try:
            return _run(cfg, run_dir, identity, sweep, role, state, ckpt)
        except BaseException as e:  # the run is recorded as failed (or interrupted); finished work stays on disk
            status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            own = isinstance(e, (TrainingStopped, RunInterrupted))  # messages of the runner's own: no class name
            error = str(e) if own else "interrupted" if status == "interrupted" else f"{e.__class__.__name__}: {e}"
            if primary and ((run_dir / META_FILE).exists() or status == "failed"):
                write_json(run_dir / META_FILE, {**load_meta(run_dir), "status": status,
                                                 "error": (error.splitlines() or [""])[0]})
            from runner import loggers

            loggers.finish(state["logger"], {}, failed=True)
            raise
    finally:
        if primary:
            checkpoints.unlock(run_dir)


def _resume_point(cfg: DictConfig, run_dir: Path, identity: str, primary: bool = True) -> Path | None:
    """The checkpoint the run starts from (None: from scratch), decided holding the run's lock: the newest intact
    one (runner/checkpoints.py). A finished run is resumed only by `resume=<dir>` with a larger trainer.max_steps
    (it trains on; its summary.json stays until the new one replaces it); `resume=auto` starts a new run instead
    of resuming a finished one or one another process holds, and says so."""
    if primary:
        checkpoints.remove_partial_writes(run_dir)
    if not cfg.resume:
        return None
    if checkpoints.is_finished(run_dir):
        done_at = checkpoints.finished_max_steps(run_dir)
        if cfg.resume == "auto" or done_at is None or int(cfg.trainer.max_steps) <= done_at:
            raise ConfigError(f"resume: {run_dir} has finished (trainer.max_steps={done_at}): nothing to resume; "
                              "give a larger trainer.max_steps to train it further, or drop resume= for a new run")
        log.info("resume: %s finished at trainer.max_steps=%d; training it on to %d", run_dir, done_at,
                 int(cfg.trainer.max_steps))
    ckpt = checkpoints.resume_checkpoint(run_dir)
    if ckpt is None and cfg.resume != "auto":
        raise ConfigError(f"resume: no checkpoint in {run_dir}/checkpoints (nothing to resume)")
    if ckpt is None:  # resume=auto found nothing to resume: say what it passed over
        runs = Path(str(cfg.paths.runs_dir)).expanduser().resolve()
        for d in resume_candidates(runs, str(cfg.run_name), identity):
            if d == run_dir:
                continue
            if checkpoints.is_finished(d):
                log.info("resume=auto: the newest run with these overrides, %s, has finished; starting a new run "
                         "(resume=%s with a larger trainer.max_steps trains it further)", d, d)
                break
            if checkpoints.held_by_another(d):
                log.info("resume=auto: %s is being run by another process (%s); starting a new run",
                         d, checkpoints.lock_holder(d))
    return ckpt


def _run(cfg: DictConfig, run_dir: Path, identity: str, sweep: dict | None, role: str | None,
         state: dict, ckpt: Path | None) -> dict:
    import lightning.pytorch as pl
    import torch
    from hydra.utils import instantiate

    from methods.module import MethodModule, NonFiniteLoss
    from runner import loggers, stages
    from runner.callbacks import (
        AtomicCheckpointIO,
        NonFiniteWeights,
        RunCheckpoint,
        StepProgressBar,
        Throughput,
    )
    from runner.models import (
        build_model,
        check_vocabulary,
        count_params,
        export_hf,
        loaded_model_config,
        model_vocab_size,
    )
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
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
    run_id = (meta.get("wandb_id") if ckpt is not None else None) or uuid.uuid4().hex[:8]
    resolved = OmegaConf.to_container(cfg, resolve=True)
    primary = not is_launched_rank()  # a launched rank leaves the run directory to rank 0
    if primary:
        write_json(run_dir / META_FILE, {"identity": identity, "wandb_id": run_id, "run_name": cfg.run_name,
                                         "status": "running", "resumed_from": str(ckpt) if ckpt else None})
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    t_start = time.perf_counter()

    # -- build: task, model, module, trainer -----------------------------------------------------
    data = None
    trained = TrainedModels(cfg, run, vocab_size=lambda p=None: (p and _vocab_of(p)) or getattr(data, "vocab_size", None))
    method.trained_model = trained
    method.base_steps = int(cfg.base_steps)
    ctx = BuildContext(seq_len=int(cfg.model.seq_len), cache_dir=Path(cfg.paths.cache_dir).expanduser(),
                       seed=int(cfg.seed), batch_size=int(cfg.dataset.batch_size), max_steps=int(tr.max_steps),
                       accumulate_grad_batches=int(tr.accumulate_grad_batches), needs=frozenset(method.needs_task),
                       role=role, base_steps=base_steps, trained_model=trained, load_model=trained.load,
                       model_source=cfg.model.init_from)
    data = make_task(cfg.dataset).build(ctx)
    if "prepare_data" in order:
        data = method.prepare_data(data)
    arch = architecture(cfg.model)
    vocab = model_vocab_size(cfg.model, data.vocab_size)
    model = build_model(cfg.model, vocab)
    check_vocabulary(model, data.vocab_size, cfg)
    if (loaded := loaded_model_config(model, cfg.model.init_from)) is not None:  # the YAML's sizes do not apply
        resolved["model"]["loaded"] = loaded
    if "prepare_model" in order:
        model = method.prepare_model(model)
    n_params = count_params(model)
    data.save(run_dir / "tokenizer")
    counts = data.counts()
    log.info("model %s: %.2fM parameters | data: %s", cfg.model.name, n_params / 1e6,
             ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in counts.items()) or "-")

    module_cls = method.module_class or data.module_class or MethodModule
    module = module_cls(model, method, dict(hw.kernels), hw.kernel_fallback, data=data, seed=int(cfg.seed))
    module.on_nonfinite = str(tr.get("on_nonfinite", "stop"))
    max_steps = int(method.train_steps(int(tr.max_steps))) if "train" in order else 0
    micro_total = max(1, max_steps) * tr.accumulate_grad_batches
    name, group = loggers.wandb_names(str(cfg.run_name), sweep)
    job_type = "train" if "train" in order and max_steps > 0 else "compress" if "compress" in order else "evaluate"
    logger = state["logger"] = primary and loggers.make_logger(
        cfg.logger, run_dir, name, run_id, group, resolved, job_type=job_type,
        tags=loggers.method_tags(str(cfg.method._target_), method.name))
    throughput = Throughput(tr.log_every_n_steps, skip=min(10, micro_total // 10))
    progress = _progress_callbacks(cfg)
    ckpt_cb = RunCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step:06d}", auto_insert_metric_name=False,
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
    said = []

    def start() -> int:  # where the train loader starts: the micro-batches seen (restored from a checkpoint)
        if ckpt is not None and not said:
            log.info("resuming exactly at micro-batch %d", module.micro_batches_seen)
            said.append(True)
        return module.micro_batches_seen

    train_dl, val_dl = data.make_loaders(cfg.dataset.batch_size, micro_total, cfg.seed,
                                         start=start, rank=trainer.global_rank,
                                         world=trainer.world_size, val_batches=tr.val_batches,
                                         num_workers=cfg.dataset.num_workers)
    baselines = data.baselines(val_dl)

    # -- the method's stages, in its order -------------------------------------------------------
    results: dict[str, Any] = {}
    validated = False  # the module's val/* metrics describe the current model
    for stage in order:
        if stage == "train" and max_steps > 0:
            module.model.train()  # an earlier stage (compress) may have left it in eval mode
            _fit(trainer, module, train_dl, val_dl, ckpt, ckpt_cb, run_dir, (NonFiniteLoss, NonFiniteWeights))
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
    if trainer.is_global_zero:  # the task's and the method's figures: files in the run dir, images in W&B
        figures = {**data.figures(module.model, run_dir / "figures"),
                   **method.figures(module.model, data, run_dir / "figures")}
        if figures:
            results["figures"] = {k: str(v) for k, v in figures.items()}
            loggers.log_figures(logger, figures, step=trainer.global_step)
    if "compress" in order and trainer.is_global_zero:
        results.update(stages.save_compressed(module.model, data, run_dir))
    elif str(tr.get("export", "hf")) == "hf" and trainer.is_global_zero:
        if str(hw.strategy) == "fsdp":  # rank 0 holds a shard: the checkpoint is the model (model.init_from=<run dir>)
            log.info("trainer.export=hf: skipped under FSDP (model.init_from=%s loads the checkpoint)", run_dir)
        elif (hf := export_hf(module.model, run_dir / "hf", run_dir / "tokenizer")) is not None:
            results["hf_export"] = str(hf)

    # -- summary --------------------------------------------------------------------------------
    summary = {
        # under DDP the mean over ranks (the logged value); on one process the last step's loss itself
        "train/loss": (float(trainer.callback_metrics["train/loss"]) if trainer.world_size > 1 and
                       "train/loss" in trainer.callback_metrics else module.last_train_loss),
        **val_metrics,
        **baselines,
        "params": n_params,
        "vocab_size": vocab,
        **{f"data/{k}": v for k, v in counts.items()},
        "tokens_seen": module.tokens_seen,
        "tokens_per_s": throughput.tokens_per_s,
        "train/skipped_batches": getattr(module, "skipped_batches", 0),
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
        skipped = f" | {summary['train/skipped_batches']} non-finite batches skipped" if summary["train/skipped_batches"] else ""
        log.info("done: %s | %s tok/s%s -> %s", "  ".join(f"{k} {_fmt(v)}" for k, v in shown.items()),
                 _fmt(summary["tokens_per_s"], ".0f"), skipped, run_dir / "summary.json")
    loggers.finish(logger, summary)
    state["logger"] = None
    return summary
