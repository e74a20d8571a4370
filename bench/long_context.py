"""LM-Infinite at small scale: perplexity beyond the training length, vanilla attention vs LM-Infinite.

The paper's claim (arXiv:2308.16137, Fig. 1 and Table 2): with the Λ-shaped attention a RoPE model keeps
its perplexity flat far beyond its pre-training length L, while plain attention blows up past L.

Both sides evaluate the same trained base model (`model.init_from=base`: the runner trains the configured
model once with the baseline and caches it), on the same windows of the validation tokens, in one process: `methods.inference.lm_infinite.LongContext`
(vanilla) and `LMInfinite` (the same evaluation after the patch) with the YAMLs' settings, so the
numbers are those of `python -m runner method=long_context|lm_infinite`. The script prints

- perplexity of windows of m x L tokens (every token scored with the whole window as context) and the
  ratio LM-Infinite / vanilla, for m in --multiples;
- passkey accuracy by prompt length (greedy answer == the hidden passkey);
- the mean NLL by position inside the longest windows (buckets of L/2 tokens): where vanilla breaks;

and saves a plot of the three (default docs/lm_infinite.png).

The default base model is the tests' tiny Llama (hidden 64, 2 layers, 2 heads, L = 64, 1024-token
vocabulary) trained 2000 steps (~4 min on one core the first time, then cached): trained for the 300 steps
of the tests, or as the 200-step default llama-tiny, the models hardly use context beyond a few tokens
and plain attention degrades only mildly past L. Runner overrides after `--` replace the default ones
(`python bench/long_context.py -- hardware.threads=1` evaluates the default llama-tiny, L = 128).

    python bench/long_context.py [--multiples 1,4,8,16] [--sequences 4] [--passkey-samples 20]
                                 [--n-global N] [--n-local N] [--threads 1] [--plot docs/lm_infinite.png]
                                 [-- runner overrides for the base model, replacing DEFAULT_BASE]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from runner.api import load_base  # noqa: E402
from runner.config import compose  # noqa: E402

DEFAULT_BASE = ["model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2", "model.num_heads=2",
                "model.seq_len=64", "dataset.batch_size=16", "dataset.tokenizer.vocab_size=1024", "base_steps=2000"]


def nll_by_position(model, data, length: int, sequences: int, bucket: int) -> list[float]:
    from methods.inference.evaluation import token_nll, windows

    nll = token_nll(model, windows(data.val, length, sequences)).mean(0)  # (length - 1,)
    return [float(nll[i:i + bucket].mean()) for i in range(0, len(nll), bucket)]


def plot(path: Path, L: int, multiples, rows, curves, bucket: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    lengths = [m * L for m in multiples]
    for key, label, style in (("vanilla", "vanilla attention", "o-"), ("lm_infinite", "LM-Infinite", "s-")):
        axes[0].plot(lengths, [rows[key][f"ppl_{m}x"] for m in multiples], style, label=label)
        pk = [m for m in multiples if f"passkey_{m}x" in rows[key]]
        axes[1].plot([m * L for m in pk], [rows[key][f"passkey_{m}x"] for m in pk], style, label=label)
        xs = [(i + 0.5) * bucket for i in range(len(curves[key]))]
        axes[2].plot(xs, curves[key], style[0] + "-", label=label, markersize=3)
    for ax in axes:
        ax.axvline(L, color="gray", ls=":", lw=1)
        ax.legend()
    axes[0].set(xscale="log", yscale="log", xlabel="sequence length (tokens)", ylabel="perplexity",
                title="perplexity vs length")
    axes[0].set_xticks(lengths, [f"{m}x" for m in multiples])
    plain = matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}")
    axes[0].yaxis.set_major_formatter(plain)
    axes[0].yaxis.set_minor_formatter(plain)
    axes[1].set(xscale="log", xlabel="prompt length (tokens)", ylabel="accuracy", ylim=(-0.05, 1.05),
                title="passkey retrieval")
    axes[1].set_xticks(lengths, [f"{m}x" for m in multiples])
    if not any(v for r in rows.values() for k, v in r.items() if k.startswith("passkey_")):
        axes[1].text(0.5, 0.5, "accuracy 0 for both at every length", transform=axes[1].transAxes, ha="center")
    for ax in axes[:2]:
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    axes[2].set(xlabel="position in the sequence", ylabel="mean NLL (nats)",
                title=f"NLL by position, {multiples[-1]}x windows")
    fig.suptitle(title + "   (dotted: training length L)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--multiples", default="1,4,8,16", help="lengths as multiples of the training length")
    ap.add_argument("--sequences", type=int, default=4, help="perplexity windows per length")
    ap.add_argument("--passkey-samples", type=int, default=20, help="passkey prompts per length")
    ap.add_argument("--n-global", type=int, default=None, help="LM-Infinite n_global (default: the YAML's)")
    ap.add_argument("--n-local", type=int, default=None, help="LM-Infinite n_local (default: the training length)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plot", default=str(REPO / "docs" / "lm_infinite.png"))
    ap.add_argument("overrides", nargs="*", help="runner overrides for the base model (after --)")
    args = ap.parse_args()

    import torch
    from hydra.utils import instantiate

    torch.set_num_threads(args.threads)
    os.environ.setdefault("WANDB_SILENT", "true")
    multiples = [int(m) for m in args.multiples.split(",")]
    t0 = time.perf_counter()
    model, data, cfg = load_base(args.overrides or DEFAULT_BASE)
    path = cfg.model.init_from
    L = data.seq_len
    print(f"base model: {path} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"L = {L}; ready in {time.perf_counter() - t0:.0f} s); {len(data.val)} val tokens", flush=True)

    settings = [f"method.ppl_multiples=[{args.multiples}]", f"method.passkey_multiples=[{args.multiples}]",
                f"method.ppl_sequences={args.sequences}", f"method.passkey_samples={args.passkey_samples}"]
    extra = ([f"method.n_global={args.n_global}"] if args.n_global is not None else []) + \
            ([f"method.n_local={args.n_local}"] if args.n_local is not None else [])
    methods = {"vanilla": instantiate(compose(["method=long_context", *settings]).method, _convert_="all"),
               "lm_infinite": instantiate(compose(["method=lm_infinite", *settings, *extra]).method, _convert_="all")}
    rows, curves, seconds = {}, {}, {}
    bucket = max(1, L // 2)
    for key, method in methods.items():
        m = method.prepare_model(copy.deepcopy(model)).eval()
        t = time.perf_counter()
        with torch.no_grad():
            rows[key] = method.evaluate(m, data)
            seconds[key] = time.perf_counter() - t
            curves[key] = nll_by_position(m, data, multiples[-1] * L, args.sequences, bucket)
        print(f"  {key}: evaluated in {seconds[key]:.1f} s", flush=True)
        if key == "lm_infinite":
            shape = m.get_decoder().layers[0].self_attn.lm_infinite
            lmi = f"n_global={shape.n_global}, n_local={shape.n_local}, {shape.implementation}"

    van, lmi_rows = rows["vanilla"], rows["lm_infinite"]
    print(f"\nperplexity on {args.sequences} windows of the val tokens per length (L = {L}; LM-Infinite: {lmi})")
    print("| length | tokens | vanilla ppl | LM-Infinite ppl | LM-Inf / vanilla | passkey vanilla | passkey LM-Inf |")
    print("|---|---|---|---|---|---|---|")
    for m in multiples:
        v, x = van[f"ppl_{m}x"], lmi_rows[f"ppl_{m}x"]
        print(f"| {m}x | {m * L} | {v:.2f} | {x:.2f} | {x / v:.3f} | {van[f'passkey_{m}x']:.2f} "
              f"| {lmi_rows[f'passkey_{m}x']:.2f} |")
    print(f"\nmean NLL by position in the {multiples[-1]}x windows (buckets of {bucket} tokens; L = {L}):")
    print("| positions | vanilla | LM-Infinite |")
    print("|---|---|---|")
    for i, (a, b) in enumerate(zip(curves["vanilla"], curves["lm_infinite"])):
        if i < 4 or i % max(1, len(curves["vanilla"]) // 8) == 0 or i == len(curves["vanilla"]) - 1:
            print(f"| {i * bucket}-{(i + 1) * bucket - 1} | {a:.3f} | {b:.3f} |")
    print(f"\nevaluation time: vanilla {seconds['vanilla']:.1f} s, LM-Infinite {seconds['lm_infinite']:.1f} s "
          f"(ratio {seconds['lm_infinite'] / seconds['vanilla']:.2f}); total {time.perf_counter() - t0:.0f} s")
    if args.plot:
        plot(Path(args.plot), L, multiples, rows, curves, bucket,
             f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M-parameter Llama, L = {L}, LM-Infinite {lmi}")
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
