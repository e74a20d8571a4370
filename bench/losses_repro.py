"""Training objectives at small scale: the Z-loss vs cross-entropy, and EMO vs cross-entropy, through the runner.

Each arm is one `python -m runner` run (sequential, fresh process) of llama-tiny on the embedded default corpus
with the same seed, data order, steps and warmup + cosine schedule; only `method.objective` changes, so both
arms of a comparison are trained by the same method class and evaluated the same way.

- Z-loss vs CE (`--part z_loss`): `method=z_loss`, objective z_loss | cross_entropy, from scratch for `--steps`.
  Table: top-1 / top-5 next-token accuracy on the first `eval_tokens` validation tokens (the paper's claim:
  the Z-loss matches or beats log-softmax on top-k), the runner's val loss (CE of the scores: meaningless for
  the Z-loss, whose scores are not probabilities) and throughput, with ratios to CE.
- EMO vs CE (`--part emo`): the paper fine-tunes a pre-trained LM, so a base model is trained first with the
  baseline (`method=adamw`, `--base-steps`), then both arms continue from it (`model.init_from=<base run>`, the
  frozen cost embedding is the base model's lm_head) for `--finetune-steps` at `--finetune-lr`. With
  `--base-steps 0` both start from scratch (EMO's cost embedding is then the runner's cached base model's head;
  `-- method.cost_embedding=model` gives the random initialisation's).
  Table: val perplexity, mean DEMD on validation tokens, distinct-1/2/3 and repetition (seq-rep-4) of sampled
  continuations of validation prompts, beside the same measures of the real continuations ("reference").
- Loss-head cost (`--part speed`, no runner): forward + backward time and the largest tensor of each loss on
  random hidden states (N tokens, width d, vocabulary V), against the runner's cross-entropy (the chunked
  reference kernel) in the same process: the Z-loss factored (O(V·d² + N·d²), never N×V) and naive (the
  N×V scores), and EMO (CE kernel + chunked DEMD).

    python bench/losses_repro.py [--part all|z_loss|emo|speed] [--steps 200] [--base-steps 200] [--finetune-steps 100]
                                 [--finetune-lr 1e-3] [--seeds 0,1] [--z-a 0.1 --z-b 10] [--runs-dir /tmp/losses_repro]
                                 [--rerun] [-- extra runner overrides, e.g. hardware.threads=1]

Runs that finished before (a summary.json under <runs-dir>/<run name>; the name encodes the settings) are
reused unless --rerun.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import run_one  # noqa: E402


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def mean_sd(values: list[float], fmt: str = "{:.3f}") -> str:
    text = fmt.format(statistics.mean(values))
    return text + (" ± " + fmt.format(statistics.stdev(values)) if len(values) > 1 else "")


def tag(overrides: list[str]) -> str:
    return hashlib.sha1(" ".join(overrides).encode()).hexdigest()[:6] if overrides else "default"


def z_loss_part(args, seeds: list[int]) -> None:
    arms = {"cross_entropy": [], "z_loss": []}
    for seed in seeds:
        for objective in arms:
            ov = ["method=z_loss", f"method.objective={objective}", f"method.a={args.z_a}", f"method.b={args.z_b}",
                  f"trainer.max_steps={args.steps}", f"seed={seed}", *args.common]
            name = f"zrepro-{objective}-{args.steps}st-{tag(args.overrides)}-s{seed}"
            arms[objective].append(summary(run_one(name, ov, args.runs_dir, args.rerun)))
    s0 = arms["cross_entropy"][0]
    print(f"\nZ-loss vs cross-entropy: {s0['config']['model']['name']} ({s0['params'] / 1e6:.2f}M parameters), "
          f"{args.steps} steps x {s0['config']['dataset']['batch_size']} x {s0['config']['model']['seq_len']} tokens, "
          f"a={args.z_a}, b={args.z_b}, seeds {args.seeds}; top-k on {int(s0['eval/topk_tokens'])} val tokens\n")
    print("| objective | top-1 | top-5 | top-1 ×CE | top-5 ×CE | val loss (CE of scores) | tokens/s ×CE |")
    print("|---|---|---|---|---|---|---|")
    base = {k: statistics.mean(r[k] for r in arms["cross_entropy"]) for k in ("eval/top1", "eval/top5", "tokens_per_s")}
    for objective, runs in arms.items():
        top1, top5 = [r["eval/top1"] for r in runs], [r["eval/top5"] for r in runs]
        tps = statistics.mean(r["tokens_per_s"] or float("nan") for r in runs)
        print(f"| {objective} | {mean_sd(top1, '{:.4f}')} | {mean_sd(top5, '{:.4f}')} | "
              f"{statistics.mean(top1) / base['eval/top1']:.2f} | {statistics.mean(top5) / base['eval/top5']:.2f} | "
              f"{mean_sd([r['val/loss'] for r in runs])} | {tps / base['tokens_per_s']:.2f} |")


def emo_part(args, seeds: list[int]) -> None:
    arms = {"cross_entropy": [], "emo": []}
    for seed in seeds:
        init = []
        if args.base_steps > 0:
            base_name = f"emorepro-base-{args.base_steps}st-{tag(args.overrides)}-s{seed}"
            base = run_one(base_name, ["method=adamw", f"trainer.max_steps={args.base_steps}", f"seed={seed}",
                                       *args.common], args.runs_dir, args.rerun)
            init = [f"model.init_from={base}", f"method.lr={args.finetune_lr}"]
        for objective in arms:
            ov = ["method=emo", f"method.objective={objective}", f"trainer.max_steps={args.finetune_steps}",
                  f"seed={seed}", *init, *args.common]
            name = (f"emorepro-{objective}-{args.base_steps}then{args.finetune_steps}st-lr{args.finetune_lr:g}-"
                    f"{tag(args.overrides)}-s{seed}")
            arms[objective].append(summary(run_one(name, ov, args.runs_dir, args.rerun)))
    s0 = arms["cross_entropy"][0]
    start = (f"from a {args.base_steps}-step cross-entropy base, {args.finetune_steps} steps at lr {args.finetune_lr:g}"
             if args.base_steps > 0 else f"{args.finetune_steps} steps from scratch")
    print(f"\nEMO vs cross-entropy: {s0['config']['model']['name']} ({s0['params'] / 1e6:.2f}M parameters), {start}, "
          f"seeds {args.seeds}; {s0['config']['method']['eval_prompts']} sampled continuations of "
          f"{s0['config']['method']['new_tokens']} tokens after {s0['config']['method']['prompt_tokens']}-token val prompts\n")
    print("| objective | val ppl | val ppl ×CE | DEMD | distinct-1 | distinct-2 | distinct-3 | rep-4 | tokens/s ×CE |")
    print("|---|---|---|---|---|---|---|---|---|")
    base_ppl = statistics.mean(r["val/ppl"] for r in arms["cross_entropy"])
    base_tps = statistics.mean(r["tokens_per_s"] or float("nan") for r in arms["cross_entropy"])
    keys = ("eval/distinct_1", "eval/distinct_2", "eval/distinct_3", "eval/rep_4")
    for objective, runs in arms.items():
        ppl = [r["val/ppl"] for r in runs]
        tps = statistics.mean(r["tokens_per_s"] or float("nan") for r in runs)
        cells = " | ".join(mean_sd([r[k] for r in runs]) for k in keys)
        print(f"| {objective} | {mean_sd(ppl, '{:.2f}')} | {statistics.mean(ppl) / base_ppl:.3f} | "
              f"{mean_sd([r['eval/demd'] for r in runs])} | {cells} | {tps / base_tps:.2f} |")
    ref = " | ".join(f"{statistics.mean(r[k.replace('eval/', 'eval/ref_')] for r in arms['cross_entropy']):.3f}"
                     for k in keys)
    print(f"| reference (real continuations) | | | | {ref} | |")


def speed_part(args) -> None:
    import torch

    sys.path.insert(0, str(REPO))
    from kernels.cross_entropy.reference import linear_cross_entropy
    from kernels.tracking import LargestAllocation
    from methods.losses.emo import cost_embedding, emo_combine, expected_cost
    from methods.losses.z_loss import z_loss, z_loss_from_scores

    losses = {
        "cross-entropy (reference kernel)": lambda h, w, t, e: linear_cross_entropy(h, w, t),
        "z-loss factored": lambda h, w, t, e: z_loss(h, w, t, args.z_a, args.z_b).mean(),
        "z-loss naive (N×V scores)": lambda h, w, t, e: z_loss_from_scores(h @ w.T, t, args.z_a, args.z_b).mean(),
        "emo (CE kernel + chunked DEMD)": lambda h, w, t, e: emo_combine(
            linear_cross_entropy(h, w, t, reduction="none"), expected_cost(h, w, t, e)).mean(),
    }
    torch.set_num_threads(args.speed_threads)
    n, d = args.speed_tokens, args.speed_width
    print(f"\nLoss heads, forward + backward on {torch.get_num_threads()} CPU thread(s), N={n} tokens, d={d}, fp32; "
          f"median of {args.speed_reps}\n")
    print("| V | loss | ms | ×CE | largest tensor MiB | ×CE |")
    print("|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for V in args.speed_vocab:
        h = torch.randn(n, d, generator=g)
        w = torch.randn(V, d, generator=g) / d**0.5
        t = torch.randint(0, V, (n,), generator=g)
        e = cost_embedding(w)
        rows = []
        for label, fn in losses.items():
            times = []
            for _ in range(args.speed_reps + 1):  # the first is a warm-up
                hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
                with LargestAllocation() as tracker:
                    t0 = time.perf_counter()
                    fn(hh, ww, t, e).backward()
                    times.append(time.perf_counter() - t0)
            rows.append((label, statistics.median(times[1:]) * 1e3, tracker.largest_bytes / 2**20))
        base_ms, base_mib = rows[0][1], rows[0][2]
        for label, ms, mib in rows:
            print(f"| {V} | {label} | {ms:.1f} | {ms / base_ms:.2f} | {mib:.1f} | {mib / base_mib:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("all", "z_loss", "emo", "speed"), default="all")
    ap.add_argument("--steps", type=int, default=200, help="Z-loss vs CE: training steps of each arm")
    ap.add_argument("--z-a", type=float, default=0.1, help="Z-loss sharpness a (default: the YAML's)")
    ap.add_argument("--z-b", type=float, default=10.0, help="Z-loss offset b (default: the YAML's)")
    ap.add_argument("--base-steps", type=int, default=200, help="EMO vs CE: steps of the CE base model (0: none)")
    ap.add_argument("--finetune-steps", type=int, default=100, help="EMO vs CE: steps of each arm")
    ap.add_argument("--finetune-lr", type=float, default=1e-3, help="EMO vs CE: peak lr of each arm after a base")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds; the tables give mean (± spread)")
    ap.add_argument("--speed-tokens", type=int, default=1024, help="speed: tokens N")
    ap.add_argument("--speed-width", type=int, default=128, help="speed: hidden width d")
    ap.add_argument("--speed-vocab", type=int, nargs="+", default=[4096, 32768], help="speed: vocabulary sizes V")
    ap.add_argument("--speed-reps", type=int, default=3, help="speed: repetitions (median, after a warm-up)")
    ap.add_argument("--speed-threads", type=int, default=1, help="speed: torch CPU threads")
    ap.add_argument("--runs-dir", type=Path, default=Path("/tmp/losses_repro"))
    ap.add_argument("--rerun", action="store_true", help="run again even where a finished run exists")
    ap.add_argument("overrides", nargs="*", help="extra runner overrides (after --)")
    args = ap.parse_args()
    args.common = ["model=llama-tiny", "logger=csv", *args.overrides]
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.part in ("all", "z_loss"):
        z_loss_part(args, seeds)
    if args.part in ("all", "emo"):
        emo_part(args, seeds)
    if args.part in ("all", "speed"):
        speed_part(args)


if __name__ == "__main__":
    main()
