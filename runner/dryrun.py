"""Dry run: build the model on the meta device and print a per-GPU memory plan. Nothing is allocated.

The activation estimate follows Korthikanti et al. (2022), "Reducing Activation Recomputation in Large
Transformer Models": a decoder layer stores about s*b*h*34 bytes of 16-bit activations, plus
5*a*s^2*b bytes for the attention matrix when attention is not fused (SDPA/flash attention keep no
such matrix, which is what the runner uses). fp32 activations double the first term. With
activation checkpointing a layer keeps only its input (2*s*b*h bytes) and one layer is recomputed at a
time. The logits and their gradient, in fp32, add 2*4*b*s*V bytes, which a fused linear-cross-entropy
kernel (Cut Cross-Entropy) removes.
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


def estimate(cfg: DictConfig, model, method) -> dict:
    m, hw, d = cfg.model, cfg.hardware, cfg.dataset
    world = hw.devices * hw.num_nodes
    shard = world if hw.strategy == "fsdp" else 1
    n = sum(p.numel() for p in model.parameters())
    pb, gb, ab = _bytes_per(hw.precision)
    b, s, h, L, V = d.batch_size, m.seq_len, m.hidden_size, m.num_layers, model.get_output_embeddings().weight.shape[0]
    per_layer = s * b * h * 34 * (ab / 2)
    if hw.fsdp.activation_checkpointing:
        acts = L * 2 * s * b * h * (ab / 2) + per_layer
    else:
        acts = L * per_layer
    logits = 2 * 4 * b * s * V
    rows = {
        "parameters": n * pb / shard,
        "gradients": n * gb / shard,
        "optimizer state": method.optimizer_state_bytes(model) / shard,
        "activations (estimate)": acts,
        "logits + grad, fp32": logits,
    }
    rows["total (estimate)"] = sum(rows.values())
    return {"params": n, "world_size": world, "sharded_over": shard, "micro_batch": b, "seq_len": s,
            "vocab_size": V, "bytes_per_gpu": rows}


def plan(cfg: DictConfig, run_dir: Path) -> dict:
    from rich.console import Console
    from rich.table import Table

    from runner.models import build_model, model_vocab_size

    vocab = model_vocab_size(cfg.model, None if cfg.model.vocab_size else cfg.dataset.tokenizer.vocab_size)
    shapes_only = OmegaConf.merge(cfg.model, {"init_from": None})  # weights do not change the plan
    model = build_model(shapes_only, vocab, device="meta")
    method = instantiate(cfg.method, _convert_="all")
    est = estimate(cfg, model, method)
    hw = cfg.hardware
    table = Table(title=f"dry run: model={cfg.model.name} method={cfg.method.name} hardware={hw.name} "
                        f"({est['world_size']} x {hw.accelerator}, {hw.precision}, strategy={hw.strategy})")
    table.add_column("per GPU", style="bold")
    table.add_column("GiB", justify="right")
    for k, v in est["bytes_per_gpu"].items():
        table.add_row(k, f"{v / GiB:,.2f}")
    console = Console(width=110)
    console.print(f"parameters: {est['params']:,} ({est['params'] / 1e6:,.1f}M) | micro-batch {est['micro_batch']} x "
                  f"seq {est['seq_len']} | vocab {est['vocab_size']:,}")
    console.print(table)
    (run_dir / "dry_run.json").write_text(json.dumps(est, indent=2) + "\n")
    return {"params": est["params"], **{f"dry_run/{k}": v for k, v in est["bytes_per_gpu"].items()}}

