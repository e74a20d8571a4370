"""DGA vs uniform mixing vs importance sampling, through the runner: the specific-set loss at equal steps,
and DGA's mixture trajectory.

Synthetic generic domains (random Markov chains over `--states` made-up words, runner/mixture.py):
    a        chain 1, only `--small` documents: the domain closest to the specific set, but token-limited
    a+b      a mix of chains 1 and 2 (each document from one of them), `--large` documents
    b, c     chains 2 and 3, `--large` documents each
    specific chain 1, `--specific` documents, never trained on (sample: false): DGA's specific set; its val
             split gives the specific-set loss val/loss/specific
Arms, same model, seed and steps (all `method=dga`):
    uniform     α = 1/4 for every domain, never updated (alpha_lr=0)
    importance  α from the importance-sampling baseline (each specific document assigned to its most likely
                domain under hashed n-gram models, Laplace-smoothed), never updated
    dga         α from uniform, updated every `--update-every` steps by DGA (defaults: η_α = 1, β = 0.9)
    dga-fast    the same with a larger step and less smoothing (η_α = 5, β = 0.5): sensitivity to both
This is the paper's scenario (i): importance sampling puts nearly all its mass on the small domain `a` and
over-fits it; DGA is expected to follow the gradients toward `a` while it helps and then toward `a+b`.

    python bench/dga_repro.py [--steps 300] [--without-mix] [--runs-dir /tmp/dga_repro] [--rerun]

`--without-mix` drops a+b: chain 1 is then only in the token-limited domain a.
Plots: docs/dga_alpha.png (DGA's α per domain over steps), docs/dga_specific_loss.png (with --without-mix:
docs/dga_alpha-without-mix.png, docs/dga_specific_loss-without-mix.png).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, run_one  # noqa: E402

ARMS = {"uniform": ["method.alpha_lr=0", "method.init=uniform"],
        "importance": ["method.alpha_lr=0", "method.init=importance"],
        "dga": ["method.init=uniform"],
        "dga-fast": ["method.init=uniform", "method.alpha_lr=5", "method.ema=0.5"]}


def domains(args) -> str:
    """The dataset.domains override (a Hydra list of mappings)."""
    chain = f"kind:markov,states:{args.states},length:100"
    mix = "" if args.without_mix else f"{{name:'a+b',{chain},documents:{args.large},seed:[1,2]}},"
    return ("dataset.domains=["
            f"{{name:a,{chain},documents:{args.small},seed:1}},{mix}"
            f"{{name:b,{chain},documents:{args.large},seed:2}},"
            f"{{name:c,{chain},documents:{args.large},seed:3}},"
            f"{{name:specific,{chain},documents:{args.specific},seed:1,sample:false}}]")


def metric_rows(run_dir: Path, prefix: str) -> dict[int, dict[str, float]]:
    """{steps trained: {metric: value}} of the metrics starting with `prefix` in the run's CSV log."""
    out: dict[int, dict[str, float]] = {}
    for r in csv.DictReader(open(run_dir / "csv" / "metrics.csv")):
        vals = {k: float(v) for k, v in r.items() if k.startswith(prefix) and v}
        if vals:
            out.setdefault(int(r["step"]) + 1, {}).update(vals)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--states", type=int, default=200, help="words per Markov chain")
    ap.add_argument("--small", type=int, default=30, help="documents of domain a")
    ap.add_argument("--large", type=int, default=400, help="documents of domains a+b, b, c")
    ap.add_argument("--specific", type=int, default=60, help="documents of the specific set (train + val)")
    ap.add_argument("--update-every", type=int, default=10)
    ap.add_argument("--without-mix", action="store_true", help="no a+b domain: chain 1 only in the small domain a")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs-dir", type=Path, default=Path("/tmp/dga_repro"))
    ap.add_argument("--rerun", action="store_true", help="train again even where a finished run exists")
    args = ap.parse_args()
    generic = ("a", "b", "c") if args.without_mix else ("a", "a+b", "b", "c")
    suffix = "-without-mix" if args.without_mix else ""

    common = ["method=dga", "dataset=mixture-dga", domains(args), "dataset.val_fraction=0.2",
              "dataset.tokenizer.vocab_size=2048", "model.hidden_size=128", "model.intermediate_size=256",
              "model.num_layers=2", "model.num_heads=2", "model.seq_len=128", "dataset.batch_size=16",
              "hardware.threads=1", f"seed={args.seed}", f"trainer.max_steps={args.steps}",
              f"trainer.val_every_n_steps={max(1, args.steps // 10)}", "trainer.val_batches=8",
              f"trainer.log_every_n_steps={args.update_every}", f"method.update_every={args.update_every}",
              "logger=csv"]
    runs = {arm: run_one(f"dga_repro{suffix}-{arm}", [*common, *extra], args.runs_dir, rerun=args.rerun)
            for arm, extra in ARMS.items()}
    summaries = {arm: json.loads((d / "summary.json").read_text()) for arm, d in runs.items()}
    curves = {arm: {s: v["val/loss/specific"] for s, v in metric_rows(d, "val/loss/").items()
                    if "val/loss/specific" in v} for arm, d in runs.items()}
    final = {arm: c[max(c)] for arm, c in curves.items()}
    best = {arm: min(c.values()) for arm, c in curves.items()}

    print(f"\nDGA vs static mixtures: {args.steps} steps, seed {args.seed}; domains a ({args.small} docs, chain 1), "
          f"{'' if args.without_mix else f'a+b ({args.large}, chains 1+2), '}b, c ({args.large} each); "
          "specific set: chain 1\n")
    head = (f"{'arm':<11} " + " ".join(f"{'α ' + d:>7}" for d in generic)
            + f" {'specific loss':>13} {'vs uniform':>10} {'best':>7} {'a loss':>7} {'b loss':>7}")
    print(head)
    print("-" * len(head))
    for arm in ARMS:
        s = summaries[arm]
        alpha = [s.get(f"eval/dga/alpha/{d}", float("nan")) for d in generic]
        last = metric_rows(runs[arm], "val/loss/")
        last = last[max(last)]
        print(f"{arm:<11} " + " ".join(f"{a:>7.3f}" for a in alpha)
              + f" {final[arm]:>13.4f} {final[arm] / final['uniform']:>9.3f}x {best[arm]:>7.4f}"
              f" {last.get('val/loss/a', float('nan')):>7.4f} {last.get('val/loss/b', float('nan')):>7.4f}")
    print("\nα: the final mixture (static arms: their fixed one); specific loss: val/loss/specific at the last step;\n"
          "best: its minimum over the validations; a/b loss: the generic domains' own val losses at the end.")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, style in (("dga", "-"), ("dga-fast", "--")):
        alpha_rows = metric_rows(runs[arm], "dga/alpha/")
        steps = sorted(alpha_rows)
        for color, d in enumerate(generic):
            ax.plot([0, *steps], [1 / len(generic), *[alpha_rows[s][f"dga/alpha/{d}"] for s in steps]], style,
                    color=f"C{color}", label=f"{d} ({arm})")
    ax.set_xlabel("step")
    ax.set_ylabel("α (DGA mixture weight)")
    ax.set_title("DGA mixture; specific set = chain 1 (domain a's)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(REPO / "docs" / f"dga_alpha{suffix}.png", dpi=120)

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm, c in curves.items():
        ax.plot(sorted(c), [c[s] for s in sorted(c)], marker="o", label=arm)
    ax.set_xlabel("step")
    ax.set_ylabel("specific-set val loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(REPO / "docs" / f"dga_specific_loss{suffix}.png", dpi=120)
    print(f"plots: {REPO / 'docs' / f'dga_alpha{suffix}.png'}, {REPO / 'docs' / f'dga_specific_loss{suffix}.png'}")


if __name__ == "__main__":
    main()
