"""Upsample or Upweight? at small scale: natural sampling, temperature sampling (upsample), scalarization
(upweight) and Cooldown on three heavily imbalanced synthetic domains (configs/dataset/mixture-markov.yaml:
three random Markov chains, 100 : 10 : 1 documents), through the runner.

Each arm is one `python -m runner` run (fresh process) of the same tiny Llama, seed, steps, warmup + cosine
schedule and logger=csv; only `method=` changes:

    natural        method=adamw                   domains drawn with q (their natural shares)
    upsample       method=temperature_sampling    domains drawn with p(τ)
    upweight       method=scalarization           drawn with q, example losses weighted by p(τ)/q
    cooldown@f     method=cooldown                p(τ) for the first fraction f of training, then q (τ → 1);
                                                  f from `--switch` (default 0.25 and 0.5, the YAML's default)

The script reads the per-domain validation losses (val/loss/<domain>, every `--val-every` steps) from each
run's metrics.csv, prints a table (final loss per domain; for the small domain its best loss, the step of
the best and how much it rose after it: the over-fitting) with ratios to natural sampling, and plots the
per-domain curves (`--plot`). The paper's claim: sampling converges faster but over-fits the small domain;
Cooldown keeps the fast start without the over-fitting.

    python bench/mixing_repro.py [--steps 800] [--val-every 50] [--tau 5] [--switch 0.25,0.5] [--seeds 0]
                                 [--runs-dir /tmp/mixing_repro]
                                 [--plot docs/mixing_curves.png] [--rerun] [-- extra runner overrides]
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import run_one  # noqa: E402

DOMAINS = ("high", "mid", "low")
MODEL = ["model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2", "model.num_heads=2",
         "model.seq_len=64", "dataset.batch_size=16", "hardware.threads=1"]


def arms(tau: float, switches: list[float]) -> list[tuple[str, list[str]]]:
    return [("natural", ["method=adamw"]),
            ("upsample", ["method=temperature_sampling", f"method.tau={tau}"]),
            ("upweight", ["method=scalarization", f"method.tau={tau}"]),
            *[(f"cooldown@{s:g}", ["method=cooldown", f"method.taus=[{tau},1.0]", f"method.switch_steps=[{s}]"])
              for s in switches]]


def curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    """val/loss/<domain> against optimizer steps done (Lightning logs step = steps done - 1)."""
    out: dict[str, list[tuple[int, float]]] = {d: [] for d in DOMAINS}
    with (run / "csv" / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            for d in DOMAINS:
                if row.get(f"val/loss/{d}"):
                    out[d].append((int(row["step"]) + 1, float(row[f"val/loss/{d}"])))
    return out


def mean_curve(runs: list[dict[str, list[tuple[int, float]]]], domain: str) -> list[tuple[int, float]]:
    steps = [s for s, _ in runs[0][domain]]
    return [(s, statistics.mean(dict(r[domain])[s] for r in runs)) for s in steps]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--val-every", type=int, default=50)
    ap.add_argument("--tau", type=float, default=5.0)
    ap.add_argument("--switch", default="0.25,0.5", help="Cooldown switch points (fractions of training)")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--runs-dir", type=Path, default=Path("/tmp/mixing_repro"))
    ap.add_argument("--plot", type=Path, default=REPO / "docs" / "mixing_curves.png")
    ap.add_argument("--rerun", action="store_true")
    ap.add_argument("extra", nargs="*", help="extra runner overrides (after --)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    common = ["dataset=mixture-markov", *MODEL, f"trainer.max_steps={args.steps}",
              f"trainer.val_every_n_steps={args.val_every}", "trainer.val_batches=null",
              f"trainer.checkpoint_every_n_steps={args.steps}", "logger=csv", *args.extra]
    results: dict[str, list[dict]] = {}
    switches = [float(s) for s in args.switch.split(",")]
    for label, overrides in arms(args.tau, switches):
        results[label] = []
        for seed in seeds:
            run = run_one(f"mixing-{label}-s{seed}", [*common, *overrides, f"seed={seed}"], args.runs_dir, args.rerun)
            summary = json.loads((run / "summary.json").read_text())
            results[label].append({"curves": curves(run), "summary": summary})

    early_step = min(s for s, _ in results["natural"][0]["curves"]["low"] if s >= args.steps // 4)
    rows = []
    for label, runs in results.items():
        low = mean_curve([r["curves"] for r in runs], "low")
        best_step, best = min(low, key=lambda sv: sv[1])
        final = {d: statistics.mean(r["summary"][f"val/loss/{d}"] for r in runs) for d in DOMAINS}
        rows.append((label, final, best, best_step, dict(low)[early_step],
                     statistics.mean(r["summary"]["wall_s"] for r in runs)))
    base = rows[0][1]
    print(f"\n{len(DOMAINS)} Markov domains (100:10:1 documents), llama-tiny (hidden 64, 2 layers), "
          f"{args.steps} steps x 16 x 64 tokens, τ={args.tau}, seeds {seeds}; val loss per domain "
          "(ratio to natural sampling)\n")
    print("| arm | " + " | ".join(f"final {d}" for d in DOMAINS)
          + f" | low at step {early_step} | low best (step) | low rise after best | wall s |")
    print("|" + "---|" * (len(DOMAINS) + 5))
    for label, final, best, best_step, early, wall in rows:
        cells = " | ".join(f"{final[d]:.3f} ({final[d] / base[d]:.3f})" for d in DOMAINS)
        print(f"| {label} | {cells} | {early:.3f} | {best:.3f} ({best_step}) | {final['low'] - best:+.3f} | {wall:.0f} |")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(DOMAINS), figsize=(5 * len(DOMAINS), 4))
    for ax, d in zip(axes, DOMAINS):
        for label, runs in results.items():
            pts = mean_curve([r["curves"] for r in runs], d)
            ax.plot([s for s, _ in pts], [v for _, v in pts], label=label)
        ax.set_title(f"val loss: {d} domain")
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val loss (nats/token)")
    axes[-1].legend()
    fig.suptitle(f"Upsample vs upweight vs Cooldown (τ={args.tau:g} → 1) on 100:10:1 Markov domains")
    fig.tight_layout()
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=110)
    print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
