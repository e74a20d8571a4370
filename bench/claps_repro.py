"""ClaPS at small scale (methods/inference/claps.py): does searching a clustered and pruned token space find prompts as
good as greedy over the whole vocabulary and better than random prompts, with fewer model queries?

Per seed: the runner's base t5-tiny trained `--base-steps` steps on dataset=trigger-cls (seed = the run's seed;
cached on disk), then the search (method seed 42 + seed: few-shot draws, k-means, GA, random prompts) twice:
ClaPS as the official code runs it (k-means `--clusters` representatives, then prune to the top 10%) and pruning
alone (no clustering). Each run also scores the baselines: greedy over all candidate tokens and random prompts at
that run's ClaPS-greedy budget (pruning + greedy queries). A query = one prompt scored on one batch (the 32-example
few-shot train set). Test = the 536 validation pairs left after the few-shot sets.

    python bench/claps_repro.py --seeds 0 1            # ~2.5 min per new base model, ~30 s per search, 1 thread
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
ROWS = [("ClaPS greedy (k-means + prune)", "km", "greedy"), ("ClaPS genetic (k-means + prune)", "km", "genetic"),
        ("prune-only greedy", "prune", "greedy"), ("prune-only genetic", "prune", "genetic"),
        ("greedy, whole vocabulary", "prune", "greedy_full"),
        ("random @ ClaPS-greedy budget", "km", "random"), ("random @ prune-only-greedy budget", "prune", "random"),
        ("empty prompt", "km", "empty")]


def run(seed: int, base_steps: int, clusters: int) -> dict[str, dict[str, float]]:
    import torch

    from methods.inference.claps import ClaPS
    from runner.api import load_base

    torch.set_num_threads(1)
    model, data, _ = load_base(["method=claps", "model=t5-tiny", "dataset=trigger-cls", "hardware.threads=1",
                                f"base_steps={base_steps}", "model.init_from=base", f"seed={seed}",
                                f"paths.runs_dir={REPO / '.cache' / 'runs'}"])
    out = {}
    for label, k in (("km", clusters), ("prune", 0)):
        t0 = time.time()
        method = ClaPS(clusters=k, seed=42 + seed)
        m = {key.removeprefix("claps/"): v for key, v in method.evaluate(model, data).items()}
        m["seconds"] = time.time() - t0
        m["prompts"] = {key: " ".join(data.tokenizer.convert_ids_to_tokens(p)) for key, p in method.found.items()}
        out[label] = m
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--base-steps", type=int, default=1500)
    ap.add_argument("--clusters", type=int, default=100)
    ap.add_argument("--plot", default=str(REPO / "docs" / "claps_queries.png"))
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = {s: run(s, args.base_steps, args.clusters) for s in args.seeds}
    for s, r in results.items():
        print(f"seed {s}: kept {int(r['km']['representatives'])} representatives of {int(r['km']['candidates'])} "
              f"candidates, pruned to {int(r['km']['pruned'])}; prune-only kept {int(r['prune']['pruned'])}")
        for label, m in r.items():
            print(f"  {label}: " + "; ".join(f"{k}: {v!r}" for k, v in m["prompts"].items()))
    print(f"\n| search | test acc ({', '.join(f'seed {s}' for s in args.seeds)}) | mean test | mean val | queries "
          "(prompts) | LM examples read |")
    print("|---|---|---|---|---|---|")
    points = {}
    for name, run_key, key in ROWS:
        test = [results[s][run_key][f"{key}_test_acc"] for s in args.seeds]
        val = [results[s][run_key][f"{key}_val_acc"] for s in args.seeds]
        q = [results[s][run_key].get(f"{key}_queries", 0.0) for s in args.seeds]
        ex = [results[s][run_key].get(f"{key}_examples", 0.0) for s in args.seeds]
        points[name] = (q, test)
        print(f"| {name} | {' / '.join(f'{t:.3f}' for t in test)} | {np.mean(test):.3f} | {np.mean(val):.3f} | "
              f"{' / '.join(str(int(x)) for x in q)} | {int(np.mean(ex)):,} |")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, (q, test) in points.items():
        if name != "empty prompt":
            ax.scatter(q, test, label=name)
    ax.axhline(np.mean(points["empty prompt"][1]), color="grey", ls="--", label="empty prompt")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("model queries (prompts scored on the 32-example batch)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"ClaPS on trigger-cls, t5-tiny, seeds {args.seeds}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
