"""EISL vs cross-entropy on noisy-copy with shuffled training targets: BLEU against the clean references.

The paper's claim (Liu et al., arXiv:2106.15078, noisy Multi30k): trained on targets corrupted by shuffling,
EISL beats CE. Each cell is one `python -m runner model=t5-tiny dataset=noisy-copy` run (fresh process,
same seed, data order, steps and AdamW warmup + cosine schedule), only `method=` and the noise changing:

    ce            method=adamw: teacher-forced cross-entropy on the noisy targets throughout
    eisl          method=eisl (its YAML): CE for the first 70% of the steps, then EISL alone: n-grams (1, 2),
                  weights (0.8, 0.2), gumbel selection, teacher forcing (as EISL.py / EISL_trainer.py)
    eisl-free     the same with the decoder reading its own greedy output in the EISL phase (tf_ratio 0, as
                  the official noisy-MT scripts fine-tune their CE model)

plus `ce` on clean targets (shuffle 0), the ceiling. Noise `shuffle k`: k chained random swaps per target
sentence (-1: a full shuffle). The table gives corpus BLEU (sacrebleu, word tokens) of greedy translations of
the 500 validation sources against their clean references, mean over seeds (± half the spread when there are
several), and the exact-match rate.

    python bench/eisl_repro.py [--steps 3000] [--shuffle 2] [--methods ce,eisl,eisl-free] [--seeds 0]
                               [--runs-dir /tmp/eisl_repro] [--rerun] [-- extra runner overrides]

Runs that finished before (a summary.json under <runs-dir>/<run name>) are reused unless --rerun.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import run_one  # noqa: E402

METHODS = {"ce": ["method=adamw"],
           "eisl": ["method=eisl"],
           "eisl-free": ["method=eisl", "method.teacher_forcing=0.0"]}


def cell(values: list[float], fmt: str = "{:.1f}") -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return fmt.format(mean)
    return f"{fmt.format(mean)} ± {fmt.format((max(values) - min(values)) / 2)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--shuffle", default="2", help="training-target shuffle levels (swaps; -1 = full shuffle)")
    ap.add_argument("--methods", default="ce,eisl,eisl-free", help=f"of: {', '.join(METHODS)}")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--runs-dir", type=Path, default=Path("/tmp/eisl_repro"))
    ap.add_argument("--rerun", action="store_true")
    ap.add_argument("extra", nargs="*", help="runner overrides for every run (after --)")
    args = ap.parse_args()
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from: {', '.join(METHODS)}")
    levels = [int(s) for s in args.shuffle.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    base = ["model=t5-tiny", "dataset=noisy-copy", f"trainer.max_steps={args.steps}",
            f"trainer.val_every_n_steps={args.steps}", "trainer.val_batches=4", "hardware.threads=1",
            "logger=none", *args.extra]

    grid = [("ce", 0)] + [(m, k) for k in levels for m in methods]
    results: dict[tuple[str, int], list[dict]] = {}
    t0 = time.time()
    for method, k in grid:
        for seed in seeds:
            name = f"eisl-repro-{method}-shuffle{k}-seed{seed}-steps{args.steps}"
            overrides = [*base, *METHODS[method], f"dataset.generator.shuffle={k}", f"seed={seed}"]
            results.setdefault((method, k), []).append(
                json.loads((run_one(name, overrides, args.runs_dir, args.rerun) / "summary.json").read_text()))

    def row(method: str, k: int) -> tuple[str, str]:
        runs = results[(method, k)]
        return cell([r["eval/bleu"] for r in runs]), cell([r["eval/exact_match"] for r in runs], "{:.3f}")

    print(f"\nnoisy-copy, t5-tiny, {args.steps} steps, seeds {args.seeds}; clean-reference BLEU (exact match) "
          f"[{time.time() - t0:.0f}s]\n")
    ce_clean = row("ce", 0)
    print(f"ceiling: ce on clean targets: BLEU {ce_clean[0]} (exact {ce_clean[1]})\n")
    header = "| training-target noise | " + " | ".join(methods) + " | " + \
        " | ".join(f"{m} − ce" for m in methods if m != "ce") + " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for k in levels:
        cells = [f"{row(m, k)[0]} ({row(m, k)[1]})" for m in methods]
        ce = statistics.fmean(r["eval/bleu"] for r in results[("ce", k)]) if "ce" in methods else None
        deltas = [f"{statistics.fmean(r['eval/bleu'] for r in results[(m, k)]) - ce:+.1f}" if ce is not None else "n/a"
                  for m in methods if m != "ce"]
        label = "shuffle all" if k == -1 else f"shuffle {k}"
        print(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(deltas) + " |")


if __name__ == "__main__":
    main()
