"""GEAR vs KIVI at small scale: how close each compressed KV cache stays to the fp32 cache, at 4 and 2 bits.

The runner's cached base model (`model.init_from=base`: the configured model, default llama-tiny, trained
`base_steps` steps with AdamW on the embedded corpus; trained here first if it is not cached) generates
greedily from seeded validation prompts with an fp32 `DynamicCache` (the reference) and with each
compressed cache (methods/inference/kv_cache.py). Per configuration, in one run:

    KL      next-token KL(fp32 || compressed), teacher-forced along the reference's greedy tokens, averaged
            over the positions that read compressed entries (every generated token after the first)
    match   fraction of generated tokens equal to the reference's (free-running greedy)
    bits    stored bits per cached K/V element (codes, scales/zeros, low-rank factors, outliers with their
            positions, the full-precision window) and the compression ratio against an fp16 cache

Configurations: KIVI (b bits, group G, residual R), GEAR-L (+ low-rank error, r at prefill / r_stream per
chunk), GEAR (+ 2% outliers), both GEAR variants streamed in chunks of n_b = R tokens and built as
`--construction` says (gear: the official code's rows, the method's default; per_head: each head alone).
The paper's claim: at equal bits b, GEAR is closer to lossless than KIVI. The paper's settings (G = 64, n_b = 64, head dim 128,
thousands of tokens) do not fit a 128-token model, so G and R / n_b are scaled down here (flags); the
low-rank factors and outliers then cost more bits per element than at the paper's scale, which the bits
column shows. `--backend triton` runs the kv_quant Triton kernels (CUDA, or the interpreter: slow).

    python bench/kv_cache.py [--bits 4,2] [--group-size 32] [--buffer 32] [--rank 4] [--stream-rank 2]
                             [--outlier-ratio 0.02] [--construction gear] [--prompts 16] [--new-tokens 32]
                             [--prompt-len null] [--threads 1] [-- runner overrides, e.g. model.num_layers=2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from runner.api import load_base  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bits", default="4,2")
    ap.add_argument("--group-size", type=int, default=32)
    ap.add_argument("--buffer", type=int, default=32, help="KIVI's residual length R = GEAR's streaming buffer n_b")
    ap.add_argument("--rank", type=int, default=4, help="GEAR: low-rank rank of the prefill chunk")
    ap.add_argument("--stream-rank", type=int, default=2, help="GEAR: rank of every streamed chunk")
    ap.add_argument("--outlier-ratio", type=float, default=0.02)
    ap.add_argument("--construction", default="gear", choices=["gear", "per_head"], help="GEAR's chunk construction")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=None, help="default: the model's context - new tokens")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--backend", default="reference")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="runner overrides (after --)")
    args = ap.parse_args()

    import torch

    import kernels
    from methods.inference.kv_cache import KVCompression, compare_with_full_cache, seeded_prompts

    torch.set_num_threads(args.threads)
    t0 = time.time()
    model, data, cfg = load_base(args.overrides)
    base = cfg.model.init_from
    cfg = model.config
    length = args.prompt_len or cfg.max_position_embeddings - args.new_tokens
    prompts = seeded_prompts(data.val, args.prompts, length, args.seed)
    quantizer = kernels.get("kv_quant", args.backend, fallback=True)
    print(f"base model {base} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, "
          f"{cfg.num_hidden_layers} layers, {cfg.num_key_value_heads} KV heads of {cfg.head_dim}); "
          f"{args.prompts} prompts x {length} tokens + {args.new_tokens} greedy; kv_quant/{args.backend}; "
          f"loaded in {time.time() - t0:.0f} s\n")

    G, R, s = args.group_size, args.buffer, args.outlier_ratio
    low_rank = dict(value_window="chunk", rank=args.rank, stream_rank=args.stream_rank, construction=args.construction)
    rows = []
    for bits in (int(b) for b in args.bits.split(",")):
        kivi = None
        for label, spec in [("KIVI", KVCompression(bits=bits, group_size=G, buffer=R, seed=args.seed)),
                            ("GEAR-L", KVCompression(bits=bits, group_size=G, buffer=R, seed=args.seed, **low_rank)),
                            ("GEAR", KVCompression(bits=bits, group_size=G, buffer=R, seed=args.seed, outlier_ratio=s,
                                                   **low_rank))]:
            t = time.time()
            m = compare_with_full_cache(model, prompts, args.new_tokens, spec, quantizer)
            kivi = kivi or m
            rows.append((label, bits, spec, m, m["kl"] / kivi["kl"] if kivi["kl"] else float("nan"), time.time() - t))

    head = ("| method | b | G | R / n_b | r (prefill/chunk) | s | bits/elt | ×fp16 | compressed | KL(fp32‖c) | "
            "KL / KIVI | token match | s/run |")
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for label, bits, spec, m, ratio, secs in rows:
        print(f"| {label} | {bits} | {spec.group_size} | {spec.buffer} | {spec.rank}/{spec.stream_rank} | "
              f"{spec.outlier_ratio:g} | {m['bits_per_element']:.2f} | {m['compression_ratio']:.2f} | "
              f"{m['compressed_fraction']:.2f} | {m['kl']:.2e} | {ratio:.2f} | {m['token_match']:.3f} | {secs:.1f} |")
    print(f"\n(total {time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
