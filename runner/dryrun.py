"""Dry run: build the model on the meta device and print a per-GPU memory plan. Nothing is allocated.

The model is the run's: its architecture (models/base.py) at the configured shapes, or the shapes of
`model.init_from` (an HF checkpoint's config, a saved model.pt, memory-mapped). Parameters, gradients and
optimizer state (asked of the method, so memory-saving optimizers report their own) are exact and sharded as
the strategy shards them; activations and logits are the architecture's estimates (models/llama.py says how
the Llama one is made and how well it held on an H200). An architecture without an estimate shows none.
"""

from __future__ import annotations

import json
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

GiB = 1024**3


def _bytes_per(precision: str) -> tuple[int, int, int]:
    """(parameter bytes, gradient bytes, activation bytes) per element for a Lightning precision."""
    p = str(precision)
    if p in ("bf16-true", "16-true"):
        return 2, 2, 2
    if p in ("bf16-mixed", "16-mixed"):
        return 4, 4, 2
    if p in ("64-true",):
        return 8, 8, 8
    return 4, 4, 4


def estimate(cfg: DictConfig, model, arch, method) -> dict:
    m, hw, d = cfg.model, cfg.hardware, cfg.dataset
    world = hw.devices * hw.num_nodes
    shard = world if hw.strategy == "fsdp" else 1
    n = sum(p.numel() for p in model.parameters())
    pb, gb, ab = _bytes_per(hw.precision)
    b, s = d.batch_size, m.seq_len
    acts = arch.activation_bytes(model, b, s, ab, bool(hw.fsdp.activation_checkpointing))
    rows = {
        "parameters": n * pb / shard,
        "gradients": n * gb / shard,
        "optimizer state": method.optimizer_state_bytes(model) / shard,
        "activations (estimate)": acts,
        "logits + grads": arch.logits_bytes(model, b, s, ab, hw.kernels.get("cross_entropy", "reference")),
    }
    rows["total (estimate)"] = sum(v for v in rows.values() if v is not None)
    vocab = model.get_output_embeddings().weight.shape[0] if hasattr(model, "get_output_embeddings") else None
    return {"params": n, "world_size": world, "sharded_over": shard, "micro_batch": b, "seq_len": s,
            "vocab_size": vocab, "blocks": len(arch.blocks(model)), "bytes_per_gpu": rows}


def _vocab(cfg: DictConfig) -> int:
    """model.vocab_size, else the task's (its hint, or its tokenizer: built and cached like a run's)."""
    from runner.config import make_task
    from runner.models import model_vocab_size

    if cfg.model.vocab_size is not None:
        return int(cfg.model.vocab_size)
    task = make_task(cfg.dataset)
    hint = task.vocab_size_hint()
    if hint is None:
        from runner.data import build_task_data

        hint = build_task_data(cfg).vocab_size
    return model_vocab_size(cfg.model, hint)


def plan(cfg: DictConfig, run_dir: Path) -> dict:
    from rich.console import Console
    from rich.table import Table

    from runner.config import architecture
    from runner.models import build_model

    m = cfg.model
    if m.init_from == "base":  # the base model has the configured shapes
        m = OmegaConf.merge(m, {"init_from": None})
    from runner.models import is_hf_source

    arch = architecture(m)
    whole = is_hf_source(m.init_from) or str(m.init_from or "").endswith(".pt")  # its own shapes and vocabulary
    model = build_model(m, 0 if whole else _vocab(cfg), device="meta")
    method = instantiate(cfg.method, _convert_="all")
    est = estimate(cfg, model, arch, method)
    hw = cfg.hardware
    table = Table()
    table.add_column("per GPU", style="bold")
    table.add_column("GiB", justify="right")
    for k, v in est["bytes_per_gpu"].items():
        table.add_row(k, "no estimate" if v is None else f"{v / GiB:,.2f}")
    console = Console(width=110)
    console.print(f"dry run: model={cfg.model.name} method={cfg.method.name} hardware={hw.name} "
                  f"({est['world_size']} x {hw.accelerator}, {hw.precision}, strategy={hw.strategy})")
    console.print(f"parameters: {est['params']:,} ({est['params'] / 1e6:,.1f}M) in {est['blocks']} repeated blocks | "
                  f"micro-batch {est['micro_batch']} x seq {est['seq_len']} | vocab {est['vocab_size'] or '?'}")
    console.print(table)
    (run_dir / "dry_run.json").write_text(json.dumps(est, indent=2) + "\n")
    console.print(f"the plan as JSON: {run_dir / 'dry_run.json'} (nothing was allocated or trained)")
    return {"params": est["params"], **{f"dry_run/{k}": v for k, v in est["bytes_per_gpu"].items()}}
