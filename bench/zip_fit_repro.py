"""ZIP-FIT vs random vs DSIR-style selection at equal k, through the runner: the target-set loss after equal
training steps, and the selection time per 1000 source examples.

Dataset `mixture-zipfit` (configs/dataset/mixture-zipfit.yaml) with a larger pool: the source pool is
`--code` stdlib functions/classes and `--prose` stdlib docstrings; the target set is `--target-size` of 200
documents of a held-out code domain (`code_target`, never trained on), whose val split gives the target-set
loss val/loss/code_target. Every arm trains the same model with the same seed and steps on its k selected
documents (`method=zip_fit method.selector=...`); `all` trains on the whole pool (no selection) for reference.

    python bench/zip_fit_repro.py [--k 300] [--steps 300] [--runs-dir /tmp/zip_fit_repro] [--rerun]

The paper's claims to check at small scale: ZIP-FIT's selection is better aligned (lower target loss at
equal steps, reached sooner) and faster to compute than DSIR's. Plot: docs/zip_fit_target_loss.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, run_one  # noqa: E402

ARMS = ("zip_fit", "dsir", "random", "all")


def val_curve(run_dir: Path, key: str) -> dict[int, float]:
    """{steps trained: value} of a validation metric from the run's CSV log (which logs the 0-based step)."""
    rows = csv.DictReader(open(run_dir / "csv" / "metrics.csv"))
    return {int(r["step"]) + 1: float(r[key]) for r in rows if r.get(key)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--k", type=int, default=300, help="documents selected by every selector")
    ap.add_argument("--code", type=int, default=1000, help="code documents in the source pool (before the val split)")
    ap.add_argument("--prose", type=int, default=1000, help="prose documents in the source pool")
    ap.add_argument("--target-size", type=int, default=50)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs-dir", type=Path, default=Path("/tmp/zip_fit_repro"))
    ap.add_argument("--rerun", action="store_true", help="train again even where a finished run exists")
    args = ap.parse_args()

    common = ["dataset=mixture-zipfit", "dataset.domains.0.documents=200", f"dataset.domains.1.documents={args.code}",
              f"dataset.domains.2.documents={args.prose}", "dataset.tokenizer.vocab_size=2048",
              "model.hidden_size=128", "model.intermediate_size=256", "model.num_layers=2", "model.num_heads=2",
              "model.seq_len=128", "dataset.batch_size=16", "hardware.threads=1", f"seed={args.seed}",
              f"trainer.max_steps={args.steps}", f"trainer.val_every_n_steps={max(1, args.steps // 6)}",
              "trainer.val_batches=8", "trainer.log_every_n_steps=10", "logger=csv"]
    selection = ["method=zip_fit", f"method.k={args.k}", f"method.target_size={args.target_size}", "method.progress=false"]
    runs = {}
    for arm in ARMS:
        overrides = [*common, "method=adamw"] if arm == "all" else [*common, *selection, f"method.selector={arm}"]
        runs[arm] = run_one(f"zip_fit_repro-{arm}", overrides, args.runs_dir, rerun=args.rerun)

    summaries = {arm: json.loads((d / "summary.json").read_text()) for arm, d in runs.items()}
    curves = {arm: val_curve(d, "val/loss/code_target") for arm, d in runs.items()}
    final = {arm: c[max(c)] for arm, c in curves.items()}
    best_ref = min(final["random"], final["dsir"])
    reach = {}  # first validation step at which the arm is at or below the better baseline's final loss
    for arm, c in curves.items():
        reach[arm] = next((s for s in sorted(c) if c[s] <= best_ref), None)

    zf_time = summaries["zip_fit"].get("eval/selection/seconds_per_1000")
    print(f"\nZIP-FIT vs baselines: k={args.k} of a pool of ~{args.code}+{args.prose} (code+prose) documents, "
          f"target = {args.target_size} held-out code documents, {args.steps} steps, seed {args.seed}\n")
    head = (f"{'selector':<9} {'code share':>10} {'blocks':>6} {'select s/1000':>13} {'×ZIP-FIT':>8} "
            f"{'best target loss':>16} {'final':>6} {'final ×random':>13} {'steps to baseline':>17}")
    print(head)
    print("-" * len(head))
    for arm in ARMS:
        s = summaries[arm]
        share, blocks = s.get("eval/selection/share/code"), s.get("eval/selection/train_blocks")
        t = s.get("eval/selection/seconds_per_1000")
        best_step = min(curves[arm], key=curves[arm].get)
        print(f"{arm:<9} {'' if share is None else f'{share:.1%}':>10} {'' if blocks is None else int(blocks):>6} "
              f"{'' if t is None else f'{t:.3f}':>13} {'' if t is None or not zf_time else f'{t / zf_time:.2f}':>8} "
              f"{f'{curves[arm][best_step]:.4f} @{best_step}':>16} {final[arm]:>6.3f} "
              f"{final[arm] / final['random']:>13.3f} {'' if reach[arm] is None else reach[arm]:>17}")
    print("\nblocks: training blocks (seq_len + 1 tokens) of the selection; select s/1000: seconds of selection per\n"
          "1000 source documents (one process), ×ZIP-FIT its ratio; best target loss: the lowest val/loss/code_target\n"
          "over the validations @ its step; final: at the last step; steps to baseline: first validation step at\n"
          "which the arm's target loss is at or below the better of random's and DSIR's final target loss.")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in ARMS:
        c = curves[arm]
        ax.plot(sorted(c), [c[s] for s in sorted(c)], marker="o", label=arm)
    ax.set_xlabel("step")
    ax.set_ylabel("target-set val loss (code_target)")
    ax.set_title(f"ZIP-FIT vs baselines, k={args.k}")
    ax.legend()
    fig.tight_layout()
    out = REPO / "docs" / "zip_fit_target_loss.png"
    fig.savefig(out, dpi=120)
    print(f"plot: {out}")


if __name__ == "__main__":
    main()
