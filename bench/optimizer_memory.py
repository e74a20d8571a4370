"""Optimizer state and step time: AdamW against FRUGAL (ρ=0.25, ρ=0), GaLore and BAdam, on the CPU.

For each model (default llama-60m and llama-130m: the paper's sizes), every method is composed from
configs/ exactly as `python -m runner method=<name>` would (method YAML + overrides), the model is built by
runner.models.build_model from the same config (one random init shared by all methods), and a few
training steps run on random tokens. Reported per method, as ratios to AdamW in the same run:

  state        bytes of every tensor the optimizer holds after the timed steps (moments, bases, indices)
  proj. state  the part held for the projectable weights (attention/MLP matrices); target at ρ=0.25: ≤ 0.30×
  opt.step     CPU time of optimizer.step() (median over timed steps and rounds);        target: ≤ 1.25×
  train step   CPU time of forward + backward + optimizer.step() (median)
  re-select    CPU time of the optimizer step that chooses the subspace (first step; every T=200 steps
               later: GaLore's SVD lives here), shown apart because the median leaves it out

Times are process CPU time with one torch thread by default (--threads), so other processes competing
for the cores move them less than wall-clock time; methods run in a different order in every round.

    python bench/optimizer_memory.py [--models llama-60m,llama-130m] [--steps 4] [--rounds 2] [--batch 1]
                                     [--seq 128] [--threads 1]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from runner.config import compose, validate  # noqa: E402

# (label, method overrides): the five methods the issue compares
METHODS = [("adamw", ["method=adamw"]), ("frugal ρ=0.25", ["method=frugal"]),
           ("frugal ρ=0", ["method=frugal", "method.density=0.0"]), ("galore", ["method=galore"]),
           ("badam", ["method=badam"])]


def tensor_bytes(state: dict) -> int:
    import torch

    return sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))


def run_method(model, init: dict, method, batch, steps: int) -> dict:

    from methods.optimizers.frugal import projectable_parameters

    model.load_state_dict(init)
    opt = method.build_optimizer(model)
    cpu = {"opt": [], "train": []}
    for s in range(steps + 1):
        t0 = time.process_time()
        opt.zero_grad(set_to_none=True)
        model(input_ids=batch, labels=batch).loss.backward()
        t1 = time.process_time()
        opt.step()
        t2 = time.process_time()
        if s == 0:
            reselect = t2 - t1
        else:
            cpu["opt"].append(t2 - t1)
            cpu["train"].append(t2 - t0)
    proj = {id(p) for _, p in projectable_parameters(model)}
    state = sum(tensor_bytes(st) for st in opt.state.values())
    proj_state = sum(tensor_bytes(opt.state[p]) for p in model.parameters() if id(p) in proj and p in opt.state)
    out = {"state": state, "proj_state": proj_state, "reselect": reselect, **cpu,
           "plan": method.optimizer_state_bytes(model), "proj_numel": sum(p.numel() for _, p in projectable_parameters(model))}
    del opt
    gc.collect()
    return out


def bench_model(name: str, args) -> list[tuple[str, dict]]:
    import torch
    from hydra.utils import instantiate

    from runner.models import build_model

    cfgs = {label: compose([f"model={name}", *ov]) for label, ov in METHODS}
    for c in cfgs.values():
        validate(c)
    first = next(iter(cfgs.values()))
    torch.manual_seed(0)
    model = build_model(first.model, first.model.vocab_size)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    batch = torch.randint(0, first.model.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    results: dict[str, list[dict]] = {label: [] for label, _ in METHODS}
    labels = [label for label, _ in METHODS]
    for r in range(args.rounds):
        order = labels[r % len(labels):] + labels[:r % len(labels)]
        for label in order:
            method = instantiate(cfgs[label].method, _convert_="all")
            res = run_method(model, init, method, batch, args.steps)
            results[label].append(res)
            print(f"  {name} round {r + 1} {label:14s} opt.step {1e3 * statistics.median(res['opt']):7.1f} ms"
                  f"  train step {1e3 * statistics.median(res['train']):7.1f} ms", flush=True)
    merged = []
    for label in labels:
        rs = results[label]
        merged.append((label, {"state": rs[-1]["state"], "proj_state": rs[-1]["proj_state"], "plan": rs[-1]["plan"],
                               "proj_numel": rs[-1]["proj_numel"],
                               "opt": statistics.median(x for r in rs for x in r["opt"]),
                               "train": statistics.median(x for r in rs for x in r["train"]),
                               "reselect": statistics.median(r["reselect"] for r in rs)}))
    return merged


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="llama-60m,llama-130m")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per method and round (after one re-selection step)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    MiB = 2**20
    rows = []
    for name in args.models.split(","):
        res = bench_model(name, args)
        base = dict(res)["adamw"]
        for label, r in res:
            rows.append((name, label, r, base))
    print(f"\nCPU, {args.threads} thread(s), batch {args.batch} x {args.seq} tokens, {args.steps} timed steps x "
          f"{args.rounds} rounds; torch {torch.__version__}\n")
    head = ("| model | method | state MiB | state ×AdamW | proj. state ×AdamW | plan MiB | opt.step ms | ×AdamW "
            "| train step ms | ×AdamW | re-select ms |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name, label, r, b in rows:
        print(f"| {name} | {label} | {r['state'] / MiB:,.1f} | {r['state'] / b['state']:.3f} | "
              f"{r['proj_state'] / b['proj_state']:.3f} | {r['plan'] / MiB:,.1f} | {1e3 * r['opt']:.1f} | "
              f"{r['opt'] / b['opt']:.2f} | {1e3 * r['train']:.1f} | {r['train'] / b['train']:.2f} | "
              f"{1e3 * r['reselect']:.1f} |")


if __name__ == "__main__":
    main()
