"""Bit Cipher (Zhao & Williams, 2023) at small scale: (1) a POS probe on a seeded PCFG corpus (tags known by
construction): multinomial logistic regression on cipher / summation / concatenation vectors vs Gaussian random
vectors of the same dimension, on held-out sentences and on held-out word types; (2) convergence of llama-tiny on
stdlib-docs with its input embedding initialised from bit-cipher vectors of the run's BPE tokens (trainable, and
frozen) vs the default random init: validation loss every --val-every steps; plot docs/bit_cipher_convergence.png.

    .venv/bin/python bench/bit_cipher_repro.py --seeds 0,1            # both parts
    .venv/bin/python bench/bit_cipher_repro.py probe --seeds 0,1      # the probe only (~1 min)
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import REPO, fmt, run_one  # noqa: E402

ARMS = [("random init (adamw)", "random", ["method=adamw"]),
        ("bit cipher, trainable", "cipher", ["method=bit_cipher"]),
        ("bit cipher, frozen", "cipher-frozen", ["method=bit_cipher", "method.freeze=true"]),
        # control: Gaussian vectors of the same dimension through the same projection and scale (trainable)
        ("random vectors, same rank-65 init path", "random-lowrank", ["method=bit_cipher", "method.vectors=[random]"])]


def probe(seeds: list[int], sentences: int, window: int) -> None:
    import numpy as np

    from methods.embeddings.bit_cipher import cipher_table, contextual_vectors
    from methods.embeddings.pcfg import PCFG, pos_probe, tagged_stream

    rows: dict[str, list[list[float]]] = {}
    dims: dict[str, int] = {}
    for seed in seeds:
        sents = PCFG(seed).corpus(sentences)
        words, tags, sent = tagged_stream(sents)
        vocab = {w: i for i, w in enumerate(sorted(set(words)))}
        ids = np.array([vocab[w] for w in words])
        rng = np.random.default_rng(seed)
        seen = np.isin(np.array(sent), rng.permutation(len(sents))[: int(0.8 * len(sents))])  # 80/20 sentences
        held = {w for w in vocab if rng.random() < 0.5}  # half the word types never seen in training
        types = np.array([w not in held for w in words])
        table = cipher_table(ids, len(vocab))
        for name, m in [("cipher", table), ("summation", contextual_vectors(ids, table, window, "sum")),
                        ("concatenation", contextual_vectors(ids, table, window, "concat"))]:
            rnd = np.random.default_rng(1000 + seed).standard_normal(m.shape)
            dims[name] = m.shape[1]
            rows.setdefault(name, []).append([pos_probe(m, ids, tags, seen), pos_probe(rnd, ids, tags, seen),
                                              pos_probe(m, ids, tags, types), pos_probe(rnd, ids, tags, types)])
        print(f"  probe seed {seed}: {len(vocab)} word types, {len(words)} tokens, b = {table.shape[1]}", flush=True)
    print(f"\nPOS probe (PCFG, {sentences} sentences, window ±{window}; accuracy, mean ± half-range over seeds "
          f"{seeds})\n")
    print("| vectors | dim | held-out sentences | random, same dim | held-out word types | random, same dim |")
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        cols = [fmt([x[i] for x in r]) for i in range(4)]
        print(f"| {name} | {dims[name]} | " + " | ".join(cols) + " |")


def curve(run: Path) -> list[tuple[int, float]]:
    with (run / "csv" / "metrics.csv").open() as f:
        return [(int(r["step"]) + 1, float(r["val/loss"])) for r in csv.DictReader(f) if r.get("val/loss")]


def convergence(seeds: list[int], steps: int, val_every: int, runs_dir: Path, rerun: bool) -> None:
    curves: dict[str, list[list[tuple[int, float]]]] = {}
    for label, slug, overrides in ARMS:
        for seed in seeds:
            run = run_one(f"bitc-{slug}-s{seed}", [*overrides, f"seed={seed}", f"trainer.max_steps={steps}",
                                                   f"trainer.val_every_n_steps={val_every}", "logger=csv",
                                                   "hardware.threads=1"], runs_dir, rerun)
            curves.setdefault(label, []).append(curve(run))
    marks = sorted({s for c in curves.values() for s, _ in c[0]})
    print(f"\nllama-tiny on stdlib-docs, val/loss at steps (mean ± half-range over seeds {seeds})\n")
    print("| init | " + " | ".join(f"step {s}" for s in marks) + " |")
    print("|---|" + "---|" * len(marks))
    for label, cs in curves.items():
        vals = [fmt([dict(c).get(s) for c in cs]) for s in marks]
        print(f"| {label} | " + " | ".join(vals) + " |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, cs in curves.items():
        xs = [s for s, _ in cs[0]]
        ys = [statistics.fmean(dict(c)[s] for c in cs) for s in xs]
        ax.plot(xs, ys, marker="o", ms=3, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("val/loss")
    ax.set_title(f"llama-tiny on stdlib-docs: embedding init ({len(seeds)} seeds)", fontsize=10)
    ax.legend()
    fig.tight_layout()
    out = REPO / "docs" / "bit_cipher_convergence.png"
    fig.savefig(out, dpi=120)
    print(f"\nplot: {out.relative_to(REPO)}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("parts", nargs="*", default=["probe", "lm"], help="probe, lm (default: both)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--sentences", type=int, default=3000)
    ap.add_argument("--window", type=int, default=2)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--val-every", type=int, default=25)
    ap.add_argument("--runs-dir", type=Path, default=Path("runs/bench_bit_cipher"))
    ap.add_argument("--rerun", action="store_true")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    if "probe" in a.parts:
        probe(seeds, a.sentences, a.window)
    if "lm" in a.parts:
        convergence(seeds, a.steps, a.val_every, a.runs_dir, a.rerun)


if __name__ == "__main__":
    main()
