"""textTOvec (ctx-DocNADE, ICLR 2019) against DocNADE at small scale, on dataset=stdlib-topics (2561 training and 641
validation standard-library docstrings, 11 package labels, K = 2000 topic words), the same steps and seeds.

Every arm is one `python -m runner` run (bench/common.py run_one); the script prints one markdown table per
experiment (mean ± half-range over seeds) and writes the IR precision curves to docs/ctx_docnade_ir.png.

  ppl   the code's perplexity setting: g = sigmoid, λ = 0.1, H = 200, Adam 1e-3, batch 32
  ir    the code's IR setting: g = tanh, λ = 0.5 (the same otherwise)

Paper's claim: ctx-DocNADE ≤ DocNADE in held-out perplexity, and better IR precision and classification.

    python bench/ctx_docnade_repro.py [ppl ir] [--seeds 0,1] [--steps 400] [--runs-dir /tmp/ctx_docnade_repro] [--rerun]
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import run_tables  # noqa: E402

THREADS = ["hardware.threads=1", "logger=csv"]
FRACTIONS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
KEYS = ["eval/ppl", "eval/ir_precision@0.002", "eval/ir_precision@0.02", "eval/ir_precision@0.1",
        "eval/classification/accuracy", "eval/classification/macro_f1", "wall_s"]


def steps_arg(argv: list[str]) -> tuple[int, list[str]]:
    if "--steps" in argv:
        i = argv.index("--steps")
        return int(argv[i + 1]), argv[:i] + argv[i + 2:]
    return 400, argv


def experiments(steps: int) -> dict:
    common = ["method=ctx_docnade", "dataset=stdlib-topics", f"trainer.max_steps={steps}",
              f"trainer.val_every_n_steps={steps}"]
    return {
        "ppl": ([("DocNADE", [*common, "model=docnade", "model.activation=sigmoid"]),
                 ("ctx-DocNADE (λ=0.1)", [*common, "model=ctx-docnade", "model.activation=sigmoid", "model.lam=0.1"])],
                KEYS),
        "ir": ([("DocNADE tanh", [*common, "model=docnade", "model.activation=tanh"]),
                ("ctx-DocNADE tanh (λ=0.5)", [*common, "model=ctx-docnade", "model.activation=tanh", "model.lam=0.5"])],
               KEYS),
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, (exp, rows) in zip(axes[0], results.items()):
        for label, summaries in rows.items():
            prec = np.array([[s[f"eval/ir_precision@{f:g}"] for f in FRACTIONS] for s in summaries])
            ax.errorbar(FRACTIONS, prec.mean(0), yerr=(prec.max(0) - prec.min(0)) / 2, marker="o", ms=3, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("fraction of training documents retrieved")
        ax.set_ylabel("precision (same package)")
        ax.set_title(f"stdlib-topics, {exp} setting")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"\nwrote {path}")


def main() -> None:
    steps, argv = steps_arg(sys.argv[1:])
    exps = experiments(steps)
    if not any(a in exps for a in argv):  # argparse checks a list default against its choices: name them all
        argv = [*exps, *argv]
    results = run_tables(exps, __doc__, "/tmp/ctx_docnade_repro", THREADS, argv=argv,
                         slug=lambda label: label.split(" (")[0].replace(" ", "-").lower())
    plot(results, REPO / "docs" / "ctx_docnade_ir.png")


if __name__ == "__main__":
    main()
