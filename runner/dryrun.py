"""Dry run: build the model on the meta device and print a per-GPU memory plan. Nothing is allocated.

Activations are counted per token and decoder layer in the manner of Korthikanti et al. (2022),
"Reducing Activation Recomputation in Large Transformer Models", for a Llama block in eager mode with
fused attention (SDPA keeps no s x s matrix): the tensors saved for backward are about 11 h-sized
(norm outputs, q/k/v, attention output, projections, residuals) and 4 intermediate-sized (gate, up,
SiLU, product) in the activation dtype, plus two fp32 RMSNorm inputs. With activation checkpointing a
layer keeps only its input and one layer is recomputed at a time. The logits cost b*s*V*(2a + 8) bytes:
logits and their gradient in the activation dtype (a bytes each) plus the fp32 upcast and its gradient
inside the loss, when `hardware.kernels.cross_entropy=naive`; the chunked `reference` and the Cut
Cross-Entropy `triton` backends never hold them, so they count nothing there. torch.compile
fuses some of these away, so compiled runs use less. Checked on an H200 (llama-60m, batch 64 x 256,
bf16-mixed): estimate within 5% of torch.cuda.max_memory_allocated for the eager run.
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
    b, s, h, L = d.batch_size, m.seq_len, m.hidden_size, m.num_layers
    i, V = m.intermediate_size, model.get_output_embeddings().weight.shape[0]
    per_layer = s * b * (ab * (11 * h + 4 * i) + 2 * 4 * h)
    if hw.fsdp.activation_checkpointing:
        acts = L * s * b * h * ab + per_layer
    else:
        acts = L * per_layer
    naive_ce = hw.kernels.get("cross_entropy", "reference") == "naive"
    logits = b * s * V * (2 * ab + 8) if naive_ce else 0
    rows = {
        "parameters": n * pb / shard,
        "gradients": n * gb / shard,
        "optimizer state": method.optimizer_state_bytes(model) / shard,
        "activations (estimate)": acts,
        "logits + grads (naive CE only)": logits,
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
    table = Table()
    table.add_column("per GPU", style="bold")
    table.add_column("GiB", justify="right")
    for k, v in est["bytes_per_gpu"].items():
        table.add_row(k, f"{v / GiB:,.2f}")
    console = Console(width=110)
    console.print(f"dry run: model={cfg.model.name} method={cfg.method.name} hardware={hw.name} "
                  f"({est['world_size']} x {hw.accelerator}, {hw.precision}, strategy={hw.strategy})")
    console.print(f"parameters: {est['params']:,} ({est['params'] / 1e6:,.1f}M) | micro-batch {est['micro_batch']} x "
                  f"seq {est['seq_len']} | vocab {est['vocab_size']:,}")
    console.print(table)
    (run_dir / "dry_run.json").write_text(json.dumps(est, indent=2) + "\n")
    return {"params": est["params"], **{f"dry_run/{k}": v for k, v in est["bytes_per_gpu"].items()}}

