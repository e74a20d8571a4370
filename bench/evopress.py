"""EvoPress at small scale: evolutionary search vs uniform 3 bits vs DP at an average of 3 bits.

The runner's cached base model (`model.init_from=base`: the configured model trained `base_steps` steps with
AdamW on the embedded corpus, trained here first if it is not cached) is compressed with
`methods.compression.evopress.EvoPress` at the same budget (the same RTN database at {2, 3, 4, 8} bits, the
same calibration blocks drawn from the train split) by

    uniform    every decoder linear at 3 bits
    dp-nmse    the DP on summed per-layer output NMSE (the official code's compute_layer_errors)
    dp-kl      the DP on summed per-layer KL (each layer compressed alone, the model's KL to the dense one)
    evopress   the (1+λ) search from uniform 3 bits, KL fitness on the calibration set

and every result is scored on the same validation blocks: next-token KL to the dense model and perplexity
(the paper's claim: EvoPress <= uniform and <= DP in KL). The table gives the ratios to uniform; the plot
(docs/evopress.png) draws the search's fitness (calibration KL of the parent) per generation, with the
baselines' calibration KL as lines. The last selection stage scores the whole calibration set, so the
curves and the lines are on the same tokens.

    python bench/evopress.py [--generations 30] [--offspring 16] [--val-blocks 64] [--threads 1]
                             [--plot docs/evopress.png] [-- runner overrides, e.g. model.num_layers=2]
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from runner.api import load_base  # noqa: E402
from runner.stages import loss_and_kl  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generations", type=int, default=30)
    ap.add_argument("--offspring", type=int, default=16)
    ap.add_argument("--target-bits", type=float, default=3.0)
    ap.add_argument("--val-blocks", type=int, default=64, help="validation blocks scored (each seq_len tokens)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plot", default=str(REPO / "docs" / "evopress.png"))
    ap.add_argument("overrides", nargs="*", help="runner overrides (after --)")
    args = ap.parse_args()

    import torch

    from methods.compression.evopress import EvoPress

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, data, cfg = load_base(args.overrides)
    path = cfg.model.init_from
    val = data.blocks("val")[: args.val_blocks]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"base model {cfg.model.name} ({n_params / 1e6:.2f}M parameters, {cfg.model.num_layers} layers, "
          f"hidden {cfg.model.hidden_size}, vocab {data.vocab_size}, seq {cfg.model.seq_len}) from {path} "
          f"[{time.perf_counter() - t0:.0f}s]", flush=True)

    common = dict(target_bits=args.target_bits, generations=args.generations, offspring=args.offspring, seed=args.seed)
    inputs = EvoPress(**common).calibration(data)
    dense_ppl = math.exp(loss_and_kl(model, model, val.split(8))[0])
    runs = [("uniform", dict(search="uniform")), ("dp-nmse", dict(search="dp", dp_error="nmse")),
            ("dp-kl", dict(search="dp", dp_error="kl")), ("evopress", dict(search="evo"))]
    rows, history = [], []
    for label, kw in runs:
        method = EvoPress(**common, **kw)
        t = time.perf_counter()
        compressed = method.compress_on(copy.deepcopy(model), inputs)
        seconds = time.perf_counter() - t
        loss, kl = loss_and_kl(model, compressed, val.split(8))
        ppl = math.exp(loss)
        bits = sorted(method.levels.values())
        spread = {b: bits.count(b) for b in sorted(set(bits))}
        rows.append((label, method.result["avg_bits"], method.result["fitness"], kl, ppl, seconds, spread))
        if label == "evopress":
            history = [h["fitness"] for h in method.history]
        print(f"  {label}: done in {seconds:.0f}s", flush=True)

    uniform_kl, uniform_cal = rows[0][3], rows[0][2]
    print(f"\nval: {len(val)} blocks x {val.shape[1] - 1} tokens; calibration: {inputs.numel()} train tokens; "
          f"dense val ppl {dense_ppl:.3f}; {args.generations} generations x {args.offspring} offspring\n")
    print("| search | avg bits | calib KL | val KL | val KL / uniform | val ppl | ppl / dense | levels (bits: layers) | time |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, avg, cal, kl, ppl, seconds, spread in rows:
        levels = ", ".join(f"{b:g}: {n}" for b, n in spread.items())
        print(f"| {label} | {avg:.3f} | {cal:.5f} | {kl:.5f} | {kl / uniform_kl:.3f} | {ppl:.3f} | "
              f"{ppl / dense_ppl:.4f} | {levels} | {seconds:.0f}s |")
    evo, dps = rows[-1], [r for r in rows if r[0].startswith("dp")]
    print(f"\nevopress <= uniform in val KL: {evo[3] <= uniform_kl};  <= every DP in val KL: "
          f"{all(evo[3] <= r[3] for r in dps)};  calibration KL too: {evo[2] <= uniform_cal and all(evo[2] <= r[2] for r in dps)}")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.4, 4.0))
        ax.plot(range(len(history)), history, marker="o", ms=3, label="evopress (parent)")
        for (label, _, cal, *_), style, color in zip(rows[:-1], (":", "--", "-."), ("gray", "C1", "C2")):
            ax.axhline(cal, ls=style, color=color, label=label)
        ax.set_xlabel("generation")
        ax.set_ylabel("KL to dense (calibration tokens)")
        ax.set_title(f"EvoPress, {cfg.model.name} at {args.target_bits:g} bits on average (RTN {{2,3,4,8}})")
        ax.legend()
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=120)
        print(f"plot: {args.plot}")
    print(f"total {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
