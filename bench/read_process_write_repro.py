"""Order Matters (Vinyals, Bengio & Kudlur, ICLR 2016) at small scale: Read-Process-Write against the Ptr-Net.

Every arm is one `python -m runner` run (bench/common.py run_one) of method=read_process_write on dataset=sort-sets,
hidden 64, batch 64, single-threaded; the script prints one markdown table per experiment (mean ± half-range over
seeds) and writes docs/read_process_write.png (validation loss per output step of each arm).

  sort5   N = 5 sorting, 3000 steps: model=rpw with P = 0, 1, 5 Process steps and model=ptr-lstm (the paper's
          Ptr-Net baseline). The paper's claim: RPW beats Ptr-Net and improves with P.
  sort10  the same at N = 10 (harder: where differences can show when N = 5 saturates), 2000 steps, seed 0.
  set     target=set: the 4 smallest of N = 8, any order right; model=rpw P = 1, 1500 steps; method.order =
          given (ascending index), uniform (random orderings throughout) and search (the paper's rule: uniform for
          20 %, then the most probable of 8 sampled orderings + restricted greedy), seed 0. Accuracy is order-free;
          chosen_order/*: the fraction of validation sets whose preferred ordering is ascending in value / index.

    python bench/read_process_write_repro.py [sort5 sort10 set] [--seeds 0,1] [--runs-dir /tmp/rpw_repro] [--rerun]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import arm_slug, run_tables  # noqa: E402

THREADS = ["hardware.threads=1", "logger=csv"]
COMMON = ["method=read_process_write", "dataset=sort-sets", "dataset.batch_size=64", "model.hidden_size=64",
          "trainer.val_every_n_steps=1000", "trainer.checkpoint_every_n_steps=1000", "trainer.val_batches=null"]
KEYS = ["eval/sequence_accuracy", "eval/position_accuracy", "val/loss", "wall_s"]


def sorting(n: int, steps: int) -> list[tuple[str, list[str]]]:
    base = [*COMMON, f"dataset.generator.n={n}", f"trainer.max_steps={steps}"]
    return [*[(f"RPW P={p}", [*base, "model=rpw", f"model.process_steps={p}"]) for p in (0, 1, 5)],
            ("Ptr-Net (LSTM encoder)", [*base, "model=ptr-lstm"])]


SET = [*COMMON, "model=rpw", "model.process_steps=1", "dataset.target=set", "dataset.generator.n=8",
       "dataset.generator.k=4", "trainer.max_steps=1500"]
EXPERIMENTS = {
    "sort5": (sorting(5, 3000), KEYS),
    "sort10": (sorting(10, 2000), KEYS, "0"),
    "set": ([(f"order={o}", [*SET, f"method.order={o}"]) for o in ("given", "uniform", "search")],
            [*KEYS[:3], "eval/chosen_order/ascending_value", "eval/chosen_order/ascending_index", "wall_s"], "0"),
}


def plot(results: dict, path: Path) -> None:
    """Validation loss per output step of each arm (log scale; dots: seeds): accuracy saturates at this scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), squeeze=False)
    for ax, (exp, arms) in zip(axes[0], results.items()):
        labels = list(arms)
        values = [[s["val/loss"] for s in arms[a]] for a in labels]
        ax.bar(range(len(labels)), [sum(v) / len(v) for v in values], color="#4c72b0")
        for i, v in enumerate(values):
            ax.scatter([i] * len(v), v, color="k", s=10, zorder=3)
        ax.set_xticks(range(len(labels)), [a.replace(" (LSTM encoder)", "") for a in labels], rotation=20)
        ax.set_yscale("log")
        ax.set_title(exp)
        ax.set_ylabel("val loss per output step" + (" (preferred order)" if exp == "set" else ""))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"\nwrote {path}")


def main() -> None:
    results = run_tables(EXPERIMENTS, __doc__, "/tmp/rpw_repro", THREADS, slug=lambda a: arm_slug(a).replace("=", "-"))
    plot(results, REPO / "docs" / "read_process_write.png")
    print(json.dumps({e: {a: [s["eval/sequence_accuracy"] for s in ss] for a, ss in arms.items()}
                      for e, arms in results.items()}))


if __name__ == "__main__":
    main()
