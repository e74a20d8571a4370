"""FRUGAL at small scale: AdamW, FRUGAL (ρ=0.25 and ρ=0), GaLore and BAdam at equal steps through the runner.

Each method is one `python -m runner` run (sequential, fresh process) of llama-tiny on the embedded default
corpus with the same seed, data order, steps, warmup + cosine schedule and logger=csv; only `method=`
changes (plus `method.update_gap` for the subspace methods, below). The script then reads each run's
summary.json and <run dir>/csv/metrics.csv and prints a table (final validation loss / perplexity, mean
over seeds; the optimizer state the dry-run planner gives for the model; throughput) and writes a plot of
validation and training loss against step, one line per method (mean over seeds).

The subspace re-selection gap T scales with the run: the paper's T=200 is 1-2% of a 10k-200k-step run;
with T >= the run length FRUGAL and BAdam would never leave their first window (BAdam would train only the
top layer). `--update-gap` (default 20: ten re-selections in 200 steps, each llama-tiny layer visited two to
three times by the descending walk) is applied to FRUGAL, GaLore and BAdam alike. Everything else is the
method YAMLs' values: the AdamW baseline's lr/betas/weight decay for FRUGAL and BAdam, the FRUGAL README's
GaLore settings (lr 0.01, scale 0.25), and the paper's state-free lr scale 1.0 (pre-training).

GaLore's recipe gives the embeddings, norms and lm_head lr 0.01 and the matrices 0.01 x 0.25. To compare
the algorithms rather than the lr recipes, `--lr 0.01 --proj-lr-scale 0.25` gives AdamW, FRUGAL and
BAdam the same two learning rates (AdamW then runs as FRUGAL with ρ=1 and no re-selection, which is AdamW
with a second lr on the matrices; FRUGAL's state-free lr is 0.01 x 0.25 x 1.0).

    python bench/frugal_repro.py [--steps 200] [--update-gap 20] [--seeds 0,1] [--runs-dir /tmp/frugal_repro]
                                 [--lr 0.01 --proj-lr-scale 0.25] [--plot docs/frugal_small_scale.png]
                                 [--rerun] [-- extra runner overrides, e.g. hardware.threads=1]

Runs that finished before (a summary.json under <runs-dir>/<run name>) are reused unless --rerun.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import run_one  # noqa: E402

# (label, slug, method overrides); "{T}" is the update gap
METHODS = [("adamw", "adamw", ["method=adamw"]),
           ("frugal ρ=0.25", "frugal", ["method=frugal", "method.update_gap={T}"]),
           ("frugal ρ=0", "frugal-rho0", ["method=frugal", "method.density=0.0", "method.update_gap={T}"]),
           ("galore", "galore", ["method=galore", "method.update_gap={T}"]),
           ("badam", "badam", ["method=badam", "method.update_gap={T}"])]


def curves(run: Path) -> dict[str, list[tuple[int, float]]]:
    """val/loss and train/loss against optimizer steps done (Lightning logs step = steps done - 1)."""
    out: dict[str, list[tuple[int, float]]] = {"val/loss": [], "train/loss": []}
    with (run / "csv" / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            for key in out:
                if row.get(key):
                    out[key].append((int(row["step"]) + 1, float(row[key])))
    return out


def state_bytes(cfg: dict) -> int:
    """Optimizer state of the run's model and method, as the dry run plans it (meta tensors)."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from runner.models import build_model

    c = OmegaConf.create(cfg)
    model = build_model(OmegaConf.merge(c.model, {"init_from": None}), cfg["vocab_size"], device="meta")
    return instantiate(c.method, _convert_="all").optimizer_state_bytes(model)


def plot(results: dict[str, list[dict]], path: Path, n_steps: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def mean_curve(runs: list[dict], key: str) -> tuple[list[int], list[float]]:
        by_step: dict[int, list[float]] = {}
        for r in runs:
            for step, v in r["curves"][key]:
                by_step.setdefault(step, []).append(v)
        steps = sorted(s for s, vs in by_step.items() if len(vs) == len(runs))
        return steps, [statistics.mean(by_step[s]) for s in steps]

    fig, (ax_val, ax_train) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, runs in results.items():
        steps, val = mean_curve(runs, "val/loss")
        (line,) = ax_val.plot(steps, val, marker="o", ms=3, label=label)
        steps, train = mean_curve(runs, "train/loss")
        ema, smooth = None, []
        for v in train:
            ema = v if ema is None else 0.8 * ema + 0.2 * v
            smooth.append(ema)
        ax_train.plot(steps, smooth, color=line.get_color(), label=label)
    ax_val.set(xlabel="step", ylabel="validation loss", title="validation loss")
    ax_train.set(xlabel="step", ylabel="training loss (EMA 0.8)", title="training loss")
    for ax in (ax_val, ax_train):
        ax.grid(alpha=0.3)
        ax.set_xlim(0, n_steps)
    lo = min(v for runs in results.values() for r in runs for _, v in r["curves"]["val/loss"])
    ax_val.set_ylim(lo - 0.1, lo + 2.5)
    ax_train.set_ylim(lo - 0.3, lo + 2.5)
    ax_val.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"\nplot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--update-gap", type=int, default=20, help="T for FRUGAL, GaLore and BAdam (default 20)")
    ap.add_argument("--lr", type=float, default=None,
                    help="base lr of AdamW, FRUGAL and BAdam (default: the method YAMLs'); GaLore keeps its 0.01")
    ap.add_argument("--proj-lr-scale", type=float, default=None,
                    help="proj_params_lr_scale of FRUGAL and BAdam (default: the YAMLs' 1.0); AdamW then runs as "
                         "FRUGAL with ρ=1 and no re-selection (= AdamW with that lr on the matrices)")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; the table gives mean (and spread)")
    ap.add_argument("--val-every", type=int, default=20)
    ap.add_argument("--runs-dir", type=Path, default=Path("/tmp/frugal_repro"))
    ap.add_argument("--plot", type=Path, default=REPO / "docs" / "frugal_small_scale.png")
    ap.add_argument("--rerun", action="store_true", help="run again even where a finished run exists")
    ap.add_argument("overrides", nargs="*", help="extra runner overrides (after --)")
    args = ap.parse_args()

    seeds = [int(s) for s in args.seeds.split(",")]
    tag = (f"-lr{args.lr:g}" if args.lr is not None else "") + \
        (f"-ps{args.proj_lr_scale:g}" if args.proj_lr_scale is not None else "")
    common = ["model=llama-tiny", "logger=csv", f"trainer.max_steps={args.steps}",
              f"trainer.val_every_n_steps={args.val_every}", *args.overrides]
    results: dict[str, list[dict]] = {}
    for seed in seeds:
        for label, slug, ov in METHODS:
            ov = [o.format(T=args.update_gap) for o in ov]
            if slug != "galore":  # GaLore keeps the FRUGAL README's recipe
                if args.lr is not None:
                    ov.append(f"method.lr={args.lr}")
                if args.proj_lr_scale is not None:
                    if slug == "adamw":
                        ov = ["method=frugal", "method.density=1.0", f"method.update_gap={args.steps + 1}", *ov[1:]]
                        label = "adamw (as FRUGAL ρ=1)"
                    ov.append(f"method.proj_params_lr_scale={args.proj_lr_scale}")
            name = f"repro-{slug}{tag if slug != 'galore' else ''}-s{seed}"
            run = run_one(name, [*common, f"seed={seed}", *ov], args.runs_dir, args.rerun)
            summary = json.loads((run / "summary.json").read_text())
            results.setdefault(label, []).append({"summary": summary, "curves": curves(run), "run": run})

    base = next(iter(results.values()))[0]["summary"]  # AdamW's
    base_state = state_bytes({**base["config"], "vocab_size": base["vocab_size"]})
    cfg0 = base["config"]
    print(f"\nllama-tiny ({base['params'] / 1e6:.2f}M parameters), {cfg0['dataset']['name']}, "
          f"{args.steps} steps x {cfg0['dataset']['batch_size']} x {cfg0['model']['seq_len']} tokens, "
          f"T={args.update_gap}, seeds {args.seeds}\n")
    print("| method | lr | lr scale on matrices | optimizer state ×AdamW | val loss | val ppl | train loss | tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    for label, runs in results.items():
        s0 = runs[0]["summary"]
        state = state_bytes({**s0["config"], "vocab_size": s0["vocab_size"]})
        vl = [r["summary"]["val/loss"] for r in runs]
        spread = f" ± {statistics.stdev(vl):.3f}" if len(vl) > 1 else ""
        ppl = statistics.mean(math.exp(v) for v in vl)
        tl = statistics.mean(r["summary"]["train/loss"] for r in runs)
        tps = statistics.mean(r["summary"]["tokens_per_s"] or float("nan") for r in runs)
        scale = s0["config"]["method"].get("proj_params_lr_scale", 1.0)
        print(f"| {label} | {s0['config']['method']['lr']:g} | {scale:g} | {state / base_state:.2f} | "
              f"{statistics.mean(vl):.3f}{spread} | {ppl:.1f} | {tl:.3f} | {tps:,.0f} |")
    plot(results, args.plot, args.steps,
         f"llama-tiny on {cfg0['dataset']['name']}: {args.steps} steps, T={args.update_gap}, "
         f"lr {'YAML' if args.lr is None else args.lr}"
         f"{'' if args.proj_lr_scale is None else f' x {args.proj_lr_scale} on matrices'}, mean over seed{'s' if len(seeds) > 1 else ''} {args.seeds}")


if __name__ == "__main__":
    main()
