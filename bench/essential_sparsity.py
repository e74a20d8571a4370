"""Essential sparsity at small scale: the performance-vs-sparsity curve of one-shot global magnitude pruning of
the trained base model, its knee, and a plot (docs/essential_sparsity.png).

The runner's cached base model (`model.init_from=base`: the configured model, default llama-tiny, trained
`base_steps` steps on the configured corpus, once) is pruned at every sparsity of the grid (default 0, 10,
..., 90%, as `sweeps/essential_sparsity.yaml`), in process, and scored on the first `--val-blocks`
validation blocks: loss, perplexity and next-token KL to the dense model. With `--finetune-steps N` a second
curve fine-tunes each pruned model N steps with its mask fixed (`method.finetune_steps=N`, `method.finetune_lr`)
through the pieces of the runner's train stage: the method's MethodModule in a Lightning trainer on the task's
training loader (dataset.batch_size blocks, the run's seed, trainer.grad_clip), without logger or checkpoints.
The knee (the "essential sparsity") is the point of maximum curvature of the validation-loss curve.

`--via-runner` runs the same grid as one `python -m runner -m +sweep=essential_sparsity` multirun instead
(each job: before/after evaluation, KL and the saved model, in the runner's summary.json) and reads back
`compress/val_loss_after` of every job; with `--finetune-steps N` a second multirun with
`method.finetune_steps=N` (the runner's train stage) and its `val/loss` (the runner's validation batches).

    python bench/essential_sparsity.py [--grid 0,0.1,...,0.9] [--val-blocks 64] [--finetune-steps 0]
                                       [--via-runner] [--plot docs/essential_sparsity.png] [-- runner overrides]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from runner.api import load_base  # noqa: E402
from runner.config import compose  # noqa: E402
from runner.stages import loss_and_kl  # noqa: E402

GRID = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"


def finetune(method, model, data, cfg):
    """`method`'s train stage on `model` (pruned by `method.compress`), in process and on the CPU: what the
    runner's trainer.fit runs (MethodModule, the method's optimizer, loss and after_optimizer_step, the task's
    resumable training loader), without its logger, validation and checkpoints. Returns the model, eval mode."""
    import logging

    import lightning.pytorch as pl

    from methods.module import MethodModule

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    tr = cfg.trainer
    steps = int(method.train_steps(int(tr.max_steps)))
    module = MethodModule(model, method, dict(cfg.hardware.kernels), cfg.hardware.kernel_fallback, data=data,
                          seed=int(cfg.seed))
    train_dl, _ = data.make_loaders(int(cfg.dataset.batch_size), steps * int(tr.accumulate_grad_batches), int(cfg.seed),
                                    start=lambda: module.micro_batches_seen)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         gradient_clip_val=tr.grad_clip, accumulate_grad_batches=int(tr.accumulate_grad_batches),
                         limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False)
    trainer.fit(module, train_dataloaders=train_dl)
    return module.model.eval()


def sweep_in_process(grid: list[float], args) -> tuple[dict, dict | None, object]:
    import torch
    from hydra.utils import instantiate

    torch.set_num_threads(args.threads)
    dense, data, cfg = load_base(args.overrides)
    val = data.blocks("val")[: args.val_blocks]
    one_shot, tuned = {}, ({} if args.finetune_steps else None)
    for s in grid:
        t0 = time.perf_counter()
        for steps, curve in ((0, one_shot), (args.finetune_steps, tuned)):
            if curve is None:
                continue
            mcfg = compose([*args.overrides, "method=essential_sparsity", f"method.sparsity={s}",
                            f"method.finetune_steps={steps}", *args.method]).method
            method = instantiate(mcfg, _convert_="all")
            with torch.random.fork_rng():
                model = method.compress(copy.deepcopy(dense), data).eval()
                if method.trains:  # the fine-tune with the mask fixed: the runner's train stage, in process
                    model = finetune(method, model, data, cfg)
            loss, kl = loss_and_kl(dense, model, val.split(16))
            curve[s] = {"loss": loss, "kl": kl, "sparsity": method.evaluate(model, data)["sparsity"]}
        print(f"  s={s:.2f}: val loss {one_shot[s]['loss']:.4f}"
              + (f", fine-tuned {tuned[s]['loss']:.4f}" if tuned else "") + f"  ({time.perf_counter() - t0:.1f}s)",
              flush=True)
    return one_shot, tuned, cfg


def sweep_via_runner(grid: list[float], args) -> tuple[dict, dict | None, object]:
    runs = Path(args.runs_dir)
    curves = []
    for steps in (0, args.finetune_steps) if args.finetune_steps else (0,):
        cmd = [sys.executable, "-m", "runner", "-m", "+sweep=essential_sparsity",
               f"method.sparsity={','.join(map(str, grid))}", f"method.finetune_steps={steps}", "logger=none",
               f"paths.runs_dir={runs}", *args.method, *args.overrides]
        print("  " + " ".join(cmd[2:]), flush=True)
        t0 = time.time()
        subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "CI": "1"})
        curve = {}
        for path in runs.glob("*/multirun_*/*/summary.json"):
            if path.stat().st_mtime < t0:
                continue
            summary = json.loads(path.read_text())
            s = float(summary["config"]["method"]["sparsity"])
            # one-shot: the compress stage's evaluation; fine-tuned: the validation after the train stage
            curve[s] = {"loss": summary["val/loss"] if steps else summary["compress/val_loss_after"],
                        "kl": None if steps else summary["compress/kl_to_dense"],
                        "sparsity": summary.get("eval/sparsity", s)}
        if sorted(curve) != sorted(grid):
            raise SystemExit(f"expected summaries for {grid}, found {sorted(curve)} under {runs}")
        curves.append(dict(sorted(curve.items())))
    return curves[0], (curves[1] if len(curves) > 1 else None), compose(args.overrides)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grid", default=GRID, help="comma-separated sparsities (default 0..0.9 by 0.1)")
    ap.add_argument("--val-blocks", type=int, default=64, help="validation blocks scored (in-process mode)")
    ap.add_argument("--finetune-steps", type=int, default=0, help="also fine-tune each pruned model, mask fixed")
    ap.add_argument("--method", nargs="*", default=[], help="method overrides, e.g. method.finetune_lr=1e-4")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--via-runner", action="store_true", help="one runner multirun instead of in process")
    ap.add_argument("--runs-dir", default="/tmp/essential_sparsity_runs")
    ap.add_argument("--plot", type=Path, default=REPO / "docs" / "essential_sparsity.png")
    ap.add_argument("overrides", nargs="*", help="runner overrides (after --)")
    args = ap.parse_args()

    from methods.compression.essential_sparsity import essential_sparsity, plot_sparsity_curve

    grid = [float(s) for s in args.grid.split(",")]
    one_shot, tuned, cfg = (sweep_via_runner if args.via_runner else sweep_in_process)(grid, args)
    xs = list(one_shot)
    knee = essential_sparsity(xs, [one_shot[s]["loss"] for s in xs])
    knee_tuned = essential_sparsity(xs, [tuned[s]["loss"] for s in xs]) if tuned else None

    print(f"\n{cfg.model.name} (hidden {cfg.model.hidden_size}, {cfg.model.num_layers} layers) trained "
          f"{cfg.base_steps} steps on {cfg.dataset.name}; one-shot global magnitude pruning of the attention/MLP "
          f"weights{'' if args.via_runner else f'; {args.val_blocks} val blocks'}\n")
    head = "| sparsity | val loss | val ppl | KL to dense |" + (f" fine-tuned ({args.finetune_steps} steps) val ppl |" if tuned else "")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for s in xs:
        r = one_shot[s]
        row = f"| {100 * r['sparsity']:.0f}% | {r['loss']:.4f} | {math.exp(r['loss']):.2f} | {r['kl']:.4f} |"
        if tuned:
            row += f" {math.exp(tuned[s]['loss']):.2f} |"
        print(row)
    print(f"\nessential sparsity (maximum curvature of val loss vs sparsity): {100 * knee:.0f}%"
          + (f"; fine-tuned curve: {100 * knee_tuned:.0f}%" if tuned else ""))
    extra = {f"fine-tuned {args.finetune_steps} steps, mask fixed": (xs, [tuned[s]["loss"] for s in xs])} if tuned else None
    path = plot_sparsity_curve(xs, [one_shot[s]["loss"] for s in xs], knee, args.plot, ylabel="validation loss",
                               title=f"{cfg.model.name}, {cfg.base_steps} steps on {cfg.dataset.name}: essential sparsity",
                               extra=extra)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
