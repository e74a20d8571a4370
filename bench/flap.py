"""FLAP vs magnitude structured pruning (mag_sp) on the trained base model: perplexity, KL and forward speed.

The runner's cached base model (`model.init_from=base`: the configured model, default llama-tiny, trained
`base_steps` steps on the configured corpus, once) is pruned at each ratio with `method=flap` and
`method=mag_sp` (their YAMLs' settings, plus `--flap` overrides), in process. For each pruned model the
table gives validation perplexity and next-token KL to the dense model on the first `--val-blocks`
validation blocks, the attention/MLP parameters kept, and the forward-pass speedup over the dense model,
measured in the same run: dense and pruned forward passes alternate `--repeats` times on one batch of
`--batch` blocks and the ratio of the median CPU times (process time: steadier than wall time where other
processes share the cores; on a GPU use wall time with synchronization instead) is reported, for the whole model ("forward", logits
included) and for the decoder stack alone ("decoder": the part pruning shrinks).

    python bench/flap.py [--ratios 0.2,0.5] [--val-blocks 64] [--batch 8] [--repeats 20] [--threads 1]
                         [--flap method.calibration_blocks=256 ...] [-- runner overrides, e.g. model.num_layers=2]

The paper's claim to check: at the same ratio FLAP's perplexity is <= mag_sp's.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from runner.api import load_base  # noqa: E402
from runner.config import compose  # noqa: E402
from runner.stages import loss_and_kl  # noqa: E402


def forward_speedup(dense, pruned, ids, repeats: int) -> tuple[float, float]:
    """(whole-model, decoder-only) median time of dense / pruned, alternating the two."""
    import torch

    def timed(fn) -> float:  # CPU time of this process: steadier than wall time on a shared machine
        t0 = time.process_time()
        fn()
        return time.process_time() - t0

    ratios = []
    for part in ("model", "decoder"):
        fns = [(lambda m=m: m(input_ids=ids)) if part == "model" else (lambda m=m: m.get_decoder()(input_ids=ids))
               for m in (dense, pruned)]
        times: list[list[float]] = [[], []]
        with torch.no_grad():
            for fn in fns:  # warm-up
                fn()
            for _ in range(repeats):
                for k, fn in enumerate(fns):
                    times[k].append(timed(fn))
        ratios.append(statistics.median(times[0]) / statistics.median(times[1]))
    return ratios[0], ratios[1]


def projection_params(model) -> int:
    from torch import nn

    return sum(m.weight.numel() for layer in model.get_decoder().layers for m in layer.modules()
               if isinstance(m, nn.Linear))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratios", default="0.2,0.5")
    ap.add_argument("--val-blocks", type=int, default=64, help="validation blocks scored (from the start of val)")
    ap.add_argument("--batch", type=int, default=8, help="blocks per timed forward pass")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--flap", nargs="*", default=[], help="extra method overrides for flap (method.key=value)")
    ap.add_argument("overrides", nargs="*", help="runner overrides (after --)")
    args = ap.parse_args()

    import torch
    from hydra.utils import instantiate

    torch.set_num_threads(args.threads)
    dense, data, cfg = load_base(args.overrides)
    val = data.blocks("val")[: args.val_blocks]
    ids = data.blocks("val")[: args.batch, :-1]
    loss0, _ = loss_and_kl(dense, dense, val.split(16))
    params0 = projection_params(dense)
    print(f"\n{cfg.model.name} ({sum(p.numel() for p in dense.parameters()) / 1e6:.2f}M parameters; hidden "
          f"{cfg.model.hidden_size}, {cfg.model.num_layers} layers x {cfg.model.num_heads} heads, MLP "
          f"{cfg.model.intermediate_size}) trained {cfg.base_steps} steps on {cfg.dataset.name}; "
          f"{len(val)} val blocks x {data.seq_len} tokens; timing: batch {args.batch} x {data.seq_len}, "
          f"median of {args.repeats}, {args.threads} thread(s)\n")
    print("| ratio | method | val ppl | KL to dense | attn+MLP params kept | heads kept | forward × | decoder × | compress s |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| 0 | dense | {math.exp(loss0):.2f} | 0 | 1.000 | {cfg.model.num_layers * cfg.model.num_heads} | 1.00 | 1.00 | |")
    for ratio in (float(r) for r in args.ratios.split(",")):
        for name in ("flap", "mag_sp"):
            extra = args.flap if name == "flap" else []
            mcfg = compose([*args.overrides, f"method={name}", f"method.pruning_ratio={ratio}", *extra]).method
            method = instantiate(mcfg, _convert_="all")
            t0 = time.perf_counter()
            with torch.random.fork_rng():
                pruned = method.compress(copy.deepcopy(dense), data).eval()
            seconds = time.perf_counter() - t0
            loss, kl = loss_and_kl(dense, pruned, val.split(16))
            fwd, dec = forward_speedup(dense, pruned, ids, args.repeats)
            stats = method.plan.stats
            print(f"| {ratio:g} | {name} | {math.exp(loss):.2f} | {kl:.4f} | {projection_params(pruned) / params0:.3f} | "
                  f"{int(stats['heads_kept'])} | {fwd:.2f} | {dec:.2f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
