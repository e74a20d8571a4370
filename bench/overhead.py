"""Runner overhead: `python -m runner` against a plain hand-written PyTorch loop.

Both sides train the same model (runner.models.build_model from the same composed config) on the same
token blocks with the same batch size, AdamW param groups, LR schedule, fp32 linear cross-entropy, grad
clipping and thread count, for the same number of steps, each in a fresh process. The sides alternate
(runner, plain, runner, plain, ...) and the median of each is reported, under three definitions:

  step  tokens / sum of per-step times, leaving out the first min(10, steps // 10) steps. The runner's
        number is summary.json's tokens_per_s (runner.callbacks.Throughput: on_train_batch_start -> _end);
        the plain loop times forward, loss, backward, clip, optimizer and scheduler step, zero_grad.
  wall  tokens / wall clock from the start of step `--warmup`+1 to the end of the last step: also counts
        data loading, Lightning's loop, logger writes and callbacks between steps.
  cpu   as wall, but over the process's CPU time (all its threads; not the wandb-core subprocess):
        steadier than wall clock where other processes compete for the cores.

    python bench/overhead.py [--steps N] [--rounds R] [--threads T] [--loggers none,wandb] [-- overrides]
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ("step", "wall", "cpu")


def now() -> tuple[float, float]:
    """(wall clock, CPU time of this process: all its threads)."""
    return time.perf_counter(), time.process_time()


def runner_child(out: str, overrides: list[str]) -> None:
    """`python -m runner`, with the Throughput callback also recording when each training batch starts/ends."""
    import runpy

    sys.path.insert(0, str(REPO))
    from runner.callbacks import Throughput

    stamps: dict[str, list] = {"start": [], "end": [], "tokens": []}
    on_start, on_end = Throughput.on_train_batch_start, Throughput.on_train_batch_end

    def start(self, trainer, pl_module, batch, batch_idx):
        stamps["start"].append(now())
        on_start(self, trainer, pl_module, batch, batch_idx)

    def end(self, trainer, pl_module, outputs, batch, batch_idx):
        on_end(self, trainer, pl_module, outputs, batch, batch_idx)
        stamps["end"].append(now())
        stamps["tokens"].append(batch[:, 1:].numel())

    Throughput.on_train_batch_start, Throughput.on_train_batch_end = start, end
    atexit.register(lambda: Path(out).write_text(json.dumps(stamps)))
    sys.argv = ["runner", *overrides]
    runpy.run_module("runner", run_name="__main__", alter_sys=True)


def plain_child(out: str, overrides: list[str]) -> None:
    """The hand-written baseline: one loop, no framework."""
    sys.path.insert(0, str(REPO))
    import torch
    import torch.nn.functional as F
    from hydra import compose, initialize_config_dir

    from runner.config import CONFIG_DIR, register_resolvers
    from runner.data import build_data
    from runner.models import build_model, model_vocab_size

    register_resolvers()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="bench"):
        cfg = compose(config_name="config", overrides=overrides)
    hw, mc, tr, bs = cfg.hardware, cfg.method, cfg.trainer, cfg.dataset.batch_size
    if (mc._target_, hw.accelerator, hw.precision, hw.compile, tr.accumulate_grad_batches) != \
            ("methods.base.Method", "cpu", "32-true", False, 1):
        sys.exit("the plain loop mirrors only the baseline method on hardware=cpu (fp32, no compile, no accumulation)")
    if hw.threads:
        torch.set_num_threads(int(hw.threads))
    torch.set_float32_matmul_precision(hw.matmul_precision)
    torch.manual_seed(cfg.seed)

    data = build_data(cfg.dataset, cfg.model.seq_len, cfg.paths.cache_dir)
    model = build_model(cfg.model, model_vocab_size(cfg.model, data.vocab_size)).train()
    blocks = data.blocks("train")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": mc.weight_decay},
                             {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
                            lr=mc.lr, betas=tuple(mc.betas), eps=mc.eps)
    total, warm, floor = tr.max_steps, mc.warmup_steps, mc.min_lr_ratio

    def lr_factor(step: int) -> float:  # linear warmup, cosine decay to floor (as methods.base.Method)
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    perm, per_epoch = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(cfg.seed)), len(blocks) // bs
    stamps: dict[str, list] = {"start": [], "end": [], "tokens": []}
    for step in range(total):
        i = step % per_epoch
        batch = blocks[perm[i * bs:(i + 1) * bs]]
        stamps["start"].append(now())
        hidden = model.model(input_ids=batch[:, :-1]).last_hidden_state
        logits = (hidden.reshape(-1, hidden.shape[-1]) @ model.lm_head.weight.t()).float()
        loss = F.cross_entropy(logits, batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, tr.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())  # what a hand-written loop keeps for its log line
        stamps["end"].append(now())
        stamps["tokens"].append(batch[:, 1:].numel())
    Path(out).write_text(json.dumps(stamps))


def rates(stamps: dict, warmup: int) -> dict[str, float]:
    """tokens/s: `step` as the runner's Throughput callback (which leaves out the first min(10, steps // 10)
    steps); `wall` and `cpu` from the start of step warmup+1 to the end of the last step."""
    tok, start, end = stamps["tokens"], stamps["start"], stamps["end"]
    skip, n = min(10, len(tok) // 10), sum(tok[warmup:])
    return {"step": sum(tok[skip:]) / sum(e[0] - s[0] for s, e in zip(start[skip:], end[skip:])),
            "wall": n / (end[-1][0] - start[warmup][0]), "cpu": n / (end[-1][1] - start[warmup][1])}


def run_side(side: str, overrides: list[str], warmup: int, tmp: Path) -> dict:
    out = tmp / f"{side.replace(':', '-')}-{time.monotonic_ns()}.json"
    runs_dir = tmp / out.stem
    child, extra = ("plain", []) if side == "plain" else ("runner", [f"logger={side.split(':')[1]}"])
    cmd = [sys.executable, __file__, "--child", child, "--out", str(out), "--",
           *overrides, *extra, f"paths.runs_dir={runs_dir}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "WANDB_SILENT": "true"})
    if proc.returncode != 0 or not out.exists():
        sys.exit(f"{side} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    stamps = json.loads(out.read_text())
    res = rates(stamps, warmup)
    if side != "plain":  # the runner's own number, from its summary.json
        res["step"] = json.loads(next(runs_dir.glob("*/*/summary.json")).read_text())["tokens_per_s"]
    return {**res, "steps": len(stamps["end"]), "proc_s": time.perf_counter() - t0, "load": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30, help="training steps per run (default 30)")
    ap.add_argument("--rounds", type=int, default=2, help="runs per side, alternating (default 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: torch's)")
    ap.add_argument("--warmup", type=int, default=3, help="steps left out of the wall-clock rate (default 3)")
    ap.add_argument("--loggers", default="none", help="runner logger(s) to measure, comma-separated (none,wandb,csv)")
    ap.add_argument("--child", choices=["runner", "plain"], help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for both sides (after --)")
    args = ap.parse_args()
    if args.child:
        return (runner_child if args.child == "runner" else plain_child)(args.out, args.overrides)

    import torch

    threads = args.threads or torch.get_num_threads()
    if args.steps <= args.warmup + 1:
        ap.error("--steps must be more than --warmup + 1")
    overrides = ["model=llama-tiny", "dataset=stdlib-docs", f"trainer.max_steps={args.steps}",
                 f"trainer.val_every_n_steps={args.steps + 1}", f"trainer.checkpoint_every_n_steps={args.steps + 1}",
                 "trainer.val_batches=1", f"hardware.threads={threads}", *args.overrides]
    sides = [f"runner:{lg}" for lg in args.loggers.split(",")] + ["plain"]
    print(f"{len(sides)} sides x {args.rounds} rounds, {args.steps} steps, {threads} threads | {' '.join(overrides)}")
    results: dict[str, list[dict]] = {s: [] for s in sides}
    with tempfile.TemporaryDirectory(prefix="methodbench-overhead-") as tmp:
        for r in range(args.rounds):
            for side in sides:
                res = run_side(side, overrides, args.warmup, Path(tmp))
                results[side].append(res)
                print(f"  round {r + 1} {side:13s} " + " | ".join(f"{c} {res[c]:7.0f}" for c in COLUMNS) +
                      f" tok/s | {res['steps']} steps, process {res['proc_s']:.0f}s, load {res['load']:.1f}", flush=True)
    med = {s: {c: statistics.median(x[c] for x in v) for c in COLUMNS} for s, v in results.items()}
    print(f"\n{'side':13s} | " + " | ".join(f"{c + ' tok/s (median)':>18s}" for c in COLUMNS) + " | runs")
    for s in sides:
        print(f"{s:13s} | " + " | ".join(f"{med[s][c]:18.0f}" for c in COLUMNS) + f" | {len(results[s])}")
    for s in sides[:-1]:
        ratios = "  ".join(f"{c} {med[s][c] / med['plain'][c]:.3f}" for c in COLUMNS)
        rounds = " ".join(f"{a['wall'] / b['wall']:.2f}" for a, b in zip(results[s], results["plain"]))
        print(f"ratio {s}/plain: {ratios}  (target >= 0.95; wall, round by round: {rounds})")

if __name__ == "__main__":
    main()
