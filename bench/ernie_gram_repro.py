"""ERNIE-Gram (Xiao et al., NAACL 2021) at small scale: bert-tiny pre-trained by masked LM on stdlib-docs
(dataset=stdlib-docs-mlm) with the same budget under each objective, then a frozen-feature linear probe on real
labelled texts (stdlib docstrings by package, eval/probe_*) and BERT's token-level masked-LM validation loss with
fixed masks (val/loss, the same for every arm).

The paper's claim (its Tables 1-3, ablation Table 6): explicit n-gram MLM beats contiguous-span MLM and token MLM on
downstream tasks after the same pre-training, and comprehensive prediction + enhanced relation modelling add to it.

    PYTHONPATH=. .venv/bin/python bench/ernie_gram_repro.py --seeds 0,1 --steps 300      # ~20 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, fmt, run_one  # noqa: E402

BASE = ["method=ernie_gram", "dataset=stdlib-docs-mlm", "model=bert-tiny", "hardware.threads=1", "logger=none"]
ARMS = [
    ("untrained encoder (0 steps)", "untrained", ["method.objective=token", "method.generator=false"], 0),
    ("token MLM (BERT, 100% [MASK])", "token", ["method.objective=token", "method.generator=false"], None),
    ("contiguous span MLM", "span", ["method.objective=span", "method.generator=false"], None),
    ("explicit n-gram MLM, no fine stream", "explicit-coarse",
     ["method.objective=explicit", "method.comprehensive=false", "method.generator=false"], None),
    ("explicit + comprehensive", "explicit-fine", ["method.objective=explicit", "method.generator=false"], None),
    ("ERNIE-Gram (+ generator, RTD)", "ernie-gram", ["method.objective=explicit"], None),
]
KEYS = [("eval/probe_accuracy", "probe accuracy"), ("eval/probe_macro_f1", "probe macro-F1"),
        ("val/loss", "token MLM val/loss"), ("wall_s", "wall s")]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--runs-dir", default=str(REPO / "runs" / "bench-ernie-gram"))
    p.add_argument("--rerun", action="store_true")
    a = p.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    runs = Path(a.runs_dir)
    table: dict[str, dict[str, list[float]]] = {}
    majority = []
    for label, slug, overrides, steps in ARMS:
        n = a.steps if steps is None else steps
        for seed in seeds:
            run = run_one(f"ernie-{slug}-n{n}-s{seed}", [*BASE, *overrides, f"seed={seed}", f"trainer.max_steps={n}",
                                                          f"trainer.val_every_n_steps={max(1, n)}"], runs, a.rerun)
            s = json.loads((run / "summary.json").read_text())
            for key, _ in KEYS:
                table.setdefault(label, {}).setdefault(key, []).append(s.get(key))
            majority.append(s.get("eval/probe_majority"))
    print(f"\nbert-tiny on stdlib-docs-mlm, {a.steps} steps (batch 16 x 128 tokens), mask budget 15%; linear probe on "
          f"stdlib docstrings by package (10 classes, majority baseline {fmt(majority)}); mean ± half-range over "
          f"seeds {seeds}\n")
    print("| objective | " + " | ".join(name for _, name in KEYS) + " |")
    print("|---|" + "---|" * len(KEYS))
    for label, cols in table.items():
        print(f"| {label} | " + " | ".join(fmt(cols[k]) for k, _ in KEYS) + " |")


if __name__ == "__main__":
    main()
