"""One run: validate -> build data, model, method -> the method's stages -> summary.json.

Everything a method should not have to think about lives here: devices, precision, logging,
checkpoints, resume, progress, seeds.
"""

from __future__ import annotations

import functools
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

from runner.config import META_FILE, latest_checkpoint, validate
from runner.errors import ConfigError

log = logging.getLogger("methodbench")


def _hydra_info() -> tuple[Path, str, str | None]:
    """(run dir, identity, sweep group) from Hydra's runtime config."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir).resolve()
    group = Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
    return run_dir, hc.job.override_dirname, group


def _load_meta(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / META_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_json(path: Path, obj: Any) -> None:
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


def _strategy(hw: DictConfig, model):
    if hw.strategy != "fsdp":
        return hw.strategy
    from lightning.pytorch.strategies import FSDPStrategy

    layer_cls = {type(layer) for layer in model.get_decoder().layers}
    return FSDPStrategy(auto_wrap_policy=layer_cls, sharding_strategy=hw.fsdp.sharding_strategy,
                        activation_checkpointing_policy=layer_cls if hw.fsdp.activation_checkpointing else None)


_QUIET = (r".*weights_only.*", r".*LeafSpec.*", r".*does not have many workers.*", r".*srun.*",
          r".*predict_dataloader.*", r".*_pytree.*")


def _resolve_base(cfg: DictConfig, method) -> DictConfig:
    """`model.init_from=base`, or a method that does not train on a random model: the cached base model."""
    if cfg.model.init_from is None and method.needs_trained_model:
        log.info("method=%s needs a trained model: it runs on the cached base model (model.init_from=base); "
                 "give model.init_from=<run dir | .ckpt | HF dir> to use another", method.name)
    elif cfg.model.init_from != "base":
        return cfg
    from runner.basemodel import ensure_base

    path = ensure_base(cfg)
    cfg = cfg.copy()
    cfg.model.init_from = str(path)
    return cfg


def _val_loss(trainer, module, val_dl) -> float:
    trainer.validate(module, dataloaders=val_dl, verbose=False)
    return float(trainer.callback_metrics["val/loss"])


def _compress_stage(trainer, module, method, data, val_dl, run_dir: Path) -> dict[str, Any]:
    """Evaluate, compress, evaluate again with the same evaluator; KL to the dense model; save the result."""
    import copy

    import torch

    from runner.models import count_params

    module.model.eval()
    dense = copy.deepcopy(module.model)
    loss_before = _val_loss(trainer, module, val_dl)
    params_before, nnz_before = count_params(dense), _nonzeros(dense)
    t0 = time.perf_counter()
    with torch.random.fork_rng():
        module.model = method.compress(module.model, data)
    compress_s = time.perf_counter() - t0
    if trainer.logger is not None:  # a search's curve (EvoPress: fitness per generation), one row per point
        for row in getattr(method, "history", None) or []:
            trainer.logger.log_metrics({f"compress/{k}": float(v) for k, v in row.items()})
    module.model.eval()
    loss_after = _val_loss(trainer, module, val_dl)
    _, kl = loss_and_kl(dense.to(module.device), module.model, val_dl, module.device)
    out_dir = run_dir / "compressed"
    out_dir.mkdir(exist_ok=True)
    torch.save(module.model, out_dir / "model.pt")
    data.tokenizer.save_pretrained(str(out_dir / "tokenizer"))
    out = {
        "compress/val_loss_before": loss_before, "compress/val_ppl_before": math.exp(loss_before),
        "compress/val_loss_after": loss_after, "compress/val_ppl_after": math.exp(loss_after),
        "compress/kl_to_dense": kl,
        "compress/params_before": params_before, "compress/params_after": count_params(module.model),
        "compress/nonzeros_before": nnz_before, "compress/nonzeros_after": _nonzeros(module.model),
        "compress/file_mib": (out_dir / "model.pt").stat().st_size / 2**20,
        "compress/seconds": compress_s,
        "compress/saved": str(out_dir / "model.pt"),
    }
    log.info("compress: val ppl %.2f -> %.2f | KL to dense %.4f | params %.2fM -> %.2fM | non-zeros %.2fM -> %.2fM "
             "| saved %s (load it with model.init_from=)", out["compress/val_ppl_before"], out["compress/val_ppl_after"],
             kl, params_before / 1e6, out["compress/params_after"] / 1e6, nnz_before / 1e6,
             out["compress/nonzeros_after"] / 1e6, out["compress/saved"])
    return out


def _nonzeros(model) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


def loss_and_kl(dense, model, batches, device=None) -> tuple[float, float]:
    """(mean next-token cross-entropy of `model`, mean KL(p_dense || p_model)) over the tokens of `batches`,
    an iterable of (B, T+1) token blocks: the compress stage's KL to the dense model, and the benches'."""
    import torch
    import torch.nn.functional as F

    ce = kl = 0.0
    count = 0
    with torch.no_grad():
        for batch in batches:
            ids, targets = batch[:, :-1].to(device), batch[:, 1:].to(device)
            lp = torch.log_softmax(dense(input_ids=ids).logits.float(), -1)
            lq = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
            ce += float(F.nll_loss(lq.flatten(0, 1), targets.flatten(), reduction="sum"))
            kl += float((lp.exp() * (lp - lq)).sum())
            count += targets.numel()
    return ce / max(count, 1), kl / max(count, 1)


def run(cfg: DictConfig, run_dir: Path | None = None, identity: str | None = None) -> dict:
    """Run `cfg`. Under Hydra the run directory and identity come from Hydra; a nested run (the cached base
    model) passes them."""
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

    import lightning.pytorch as pl
    import torch
    from hydra.utils import instantiate

    from methods.module import MethodModule
    from runner import loggers
    from runner.callbacks import AtomicCheckpointIO, StepProgressBar, Throughput
    from runner.data import build_data, eval_targets, make_loaders
    from runner.models import build_model, count_params, model_vocab_size

    seq2seq = cfg.model.arch == "t5"
    if seq2seq or cfg.dataset.source == "noisy-copy":  # encoder-decoder: (B, 2, L) batches, BLEU (runner/seq2seq.py)
        from runner.seq2seq import Seq2SeqModule as MethodModule  # noqa: F811
        from runner.seq2seq import check_pairing, eval_targets, make_loaders  # noqa: F811

        check_pairing(cfg)

    for name in ("lightning.pytorch", "lightning.fabric"):  # its banner and tips (set on import, so after it)
        logging.getLogger(name).setLevel(logging.WARNING)
    hw, tr = cfg.hardware, cfg.trainer
    if hw.threads:
        torch.set_num_threads(int(hw.threads))
    torch.set_float32_matmul_precision(hw.matmul_precision)

    method = instantiate(cfg.method, _convert_="all")
    method.bind_kernels(dict(hw.kernels), hw.kernel_fallback)
    cfg = _resolve_base(cfg, method)

    # -- resume: the run directory is the old one (hydra.run.dir); find its checkpoint -----------------
    meta = _load_meta(run_dir)
    ckpt = latest_checkpoint(run_dir) if cfg.resume else None
    if cfg.resume and cfg.resume != "auto" and ckpt is None:
        raise ConfigError(f"resume: no checkpoint in {run_dir}/checkpoints (nothing to resume)")
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
    run_id = meta.get("wandb_id") if ckpt is not None else None
    run_id = run_id or uuid.uuid4().hex[:8]
    resolved = OmegaConf.to_container(cfg, resolve=True)
    _write_json(run_dir / META_FILE, {"identity": identity, "wandb_id": run_id, "run_name": cfg.run_name,
                                      "status": "running", "resumed_from": str(ckpt) if ckpt else None})
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    t_start = time.perf_counter()

    # -- build -------------------------------------------------------------------------------
    data = build_data(cfg.dataset, cfg.model.seq_len, cfg.paths.cache_dir)
    if hasattr(data, "bind_run"):  # data that needs the run's config (the unlearning benchmark's retain model)
        data.bind_run(cfg, is_base=str(identity).startswith("base:"))
    if "prepare_data" in method.stages:
        data = method.prepare_data(data)
    vocab = model_vocab_size(cfg.model, data.vocab_size)
    model = build_model(cfg.model, vocab)
    if "prepare_model" in method.stages:
        model = method.prepare_model(model)
    n_params = count_params(model)
    data.tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    log.info("model %s: %.2fM parameters | data: %d train / %d val tokens", cfg.model.name, n_params / 1e6,
             len(data.train), len(data.val))

    module_cls = method.module_class or MethodModule
    module = module_cls(model, method, dict(hw.kernels), hw.kernel_fallback)
    micro_total = tr.max_steps * tr.accumulate_grad_batches
    logger = loggers.make_logger(cfg.logger, run_dir, cfg.run_name, run_id, sweep_group, resolved)
    throughput = Throughput(tr.log_every_n_steps, skip=min(10, micro_total // 10))
    from lightning.pytorch.callbacks import ModelCheckpoint

    progress = _progress_callbacks(cfg)
    ckpt_cb = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="step{step:06d}", auto_insert_metric_name=False,
                              every_n_train_steps=tr.checkpoint_every_n_steps, save_top_k=tr.keep_checkpoints,
                              monitor="step", mode="max", save_last="link")
    trainer = pl.Trainer(
        accelerator=hw.accelerator, devices=hw.devices, num_nodes=hw.num_nodes, precision=hw.precision,
        strategy=_strategy(hw, model), max_steps=tr.max_steps, max_epochs=-1,
        val_check_interval=tr.val_every_n_steps * tr.accumulate_grad_batches, check_val_every_n_epoch=None,
        limit_val_batches=1.0, log_every_n_steps=tr.log_every_n_steps, gradient_clip_val=tr.grad_clip,
        accumulate_grad_batches=tr.accumulate_grad_batches, deterministic=tr.deterministic,
        logger=logger, callbacks=[throughput, ckpt_cb, *progress],
        enable_progress_bar=any(isinstance(c, StepProgressBar) for c in progress),
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(run_dir),
        use_distributed_sampler=False, plugins=[AtomicCheckpointIO()],
    )
    if hw.compile:  # per decoder block, in place: checkpoints keep their keys
        for layer in module.model.get_decoder().layers:
            layer.compile()
    # data with its own batches (QA pairs, domain-labelled mixtures) makes its own loaders
    loaders = data.make_loaders if hasattr(data, "make_loaders") else functools.partial(make_loaders, data)
    eval_targets = getattr(data, "eval_targets", eval_targets)  # noqa: F811
    train_dl, val_dl = loaders(cfg.dataset.batch_size, micro_total, cfg.seed,
                               start=lambda: module.micro_batches_seen, rank=trainer.global_rank,
                               world=trainer.world_size, val_batches=tr.val_batches,
                               num_workers=cfg.dataset.num_workers)
    unigram = data.unigram_ppl(eval_targets(val_dl))

    # -- stages ------------------------------------------------------------------------------
    if method.trains and tr.max_steps > 0:
        trainer.fit(module, train_dataloaders=train_dl, val_dataloaders=val_dl,
                    ckpt_path=str(ckpt) if ckpt else None)
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    compressed: dict[str, Any] = {}
    if "compress" in method.stages:
        compressed = _compress_stage(trainer, module, method, data, val_dl, run_dir)
    elif module.last_val_step != trainer.global_step:
        trainer.validate(module, dataloaders=val_dl, verbose=False)
    val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    module.model.eval()
    extra = method.evaluate(module.model, data) if "evaluate" in method.stages else {}
    if hasattr(data, "evaluate"):  # the dataset's own metrics (BLEU, TOFU's forget quality, ...)
        extra = {**data.evaluate(module.model), **extra}

    summary = {
        "train/loss": module.last_train_loss,
        "val/loss": float(val_metrics["val/loss"]),
        "val/ppl": float(val_metrics["val/ppl"]),
        **{k: v for k, v in val_metrics.items() if k.startswith("val/loss/")},  # per domain (runner/mixture.py)
        "val/unigram_ppl": unigram,
        "params": n_params,
        "vocab_size": vocab,
        "data/train_docs": data.train_docs,
        "data/val_docs": data.val_docs,
        "data/train_tokens": len(data.train),
        "tokens_seen": module.tokens_seen,
        "tokens_per_s": throughput.tokens_per_s,
        "steps": trainer.global_step,
        "wall_s": time.perf_counter() - t_start,
        "stages": method.stages,
        **compressed,
        **{f"eval/{k}": v for k, v in extra.items()},
    }
    if torch.cuda.is_available() and hw.accelerator != "cpu":
        summary["gpu/peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if (extra or compressed) and logger:
        numbers = {k: v for k, v in compressed.items() if isinstance(v, (int, float))}
        logger.log_metrics({**numbers, **{f"eval/{k}": v for k, v in extra.items()}}, step=trainer.global_step)
    summary = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in summary.items()}
    if trainer.is_global_zero:
        _write_json(run_dir / "summary.json", {**summary, "run_dir": str(run_dir), "wandb_id": run_id,
                                               "config": resolved})
        _write_json(run_dir / META_FILE, {**_load_meta(run_dir), "status": "finished"})
        log.info("done: val/loss %.4f  val/ppl %.2f (unigram %.1f)  %.0f tok/s  -> %s", summary["val/loss"],
                 summary["val/ppl"], unigram, summary["tokens_per_s"], run_dir / "summary.json")
    loggers.finish(logger, summary)
    return summary
