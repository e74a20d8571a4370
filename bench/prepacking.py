"""Prepacking vs padded batching: time to the first generated token and peak memory of the prefill, on
prompts of skewed lengths, in one run (methods/inference/prepacking.py; Zhao et al., arXiv:2404.09529).

Both sides start from the same list of token tensors and end with next-token logits for every prompt:

  padded     left-pad to the longest prompt, one forward over (B, max_len)      (transformers' usual batching)
  prepacked  FFD-pack the prefixes into rows of <= max_len - 1 tokens, one forward with the block-diagonal
             mask, unpack the KV caches into a left-padded batch cache, one decode step on the B last tokens

Time is wall clock (median over --repeats; the sides alternate, after one warm-up each) including the batch
construction, packing and unpacking. Peak memory is the most bytes allocated at once above what was allocated
before the call: torch.cuda.max_memory_allocated on a GPU, the profiler's allocation events on the CPU (torch's
CPU allocator keeps no peak counter; tracemalloc does not see tensors). The model is built from
configs/model/<--model>.yaml with random weights (timing and memory do not depend on them); the check line
compares the two sides' first logits and --new-tokens greedy tokens.

    python bench/prepacking.py                                   # llama-tiny, 32 prompts up to 128 tokens, CPU
    python bench/prepacking.py --model llama-1b --num-prompts 64  # on a GPU (bf16 there by default)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def model_config(name: str, vocab: int | None):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from runner.config import CONFIG_DIR, architecture, register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="bench"):
        cfg = compose(config_name="config", overrides=[f"model={name}"])
    GlobalHydra.instance().clear()
    seq_len = int(cfg.model.seq_len)
    return architecture(cfg.model).hf_config(vocab or cfg.model.vocab_size or 32000, seq_len), seq_len


def cpu_peak_bytes(fn) -> int:
    """Peak of the running sum of CPU tensor allocations (minus frees) while fn() runs."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()

    def walk(nodes):
        for n in nodes:
            yield n
            yield from walk(n.children)

    allocation = torch._C._profiler._EventType.Allocation
    events = sorted((n for n in walk(prof.profiler.kineto_results.experimental_event_tree()) if n.tag == allocation),
                    key=lambda n: n.start_time_ns)
    current = peak = 0
    for e in events:
        if e.extra_fields.device.type == "cpu":
            current += e.extra_fields.alloc_size
            peak = max(peak, current)
    return peak


def peak_bytes(fn, device) -> int:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    return cpu_peak_bytes(fn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="llama-tiny", help="configs/model/<name>.yaml (random weights)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: the model's, else 32000)")
    ap.add_argument("--num-prompts", type=int, default=32)
    ap.add_argument("--min-len", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=None, help="longest prompt (default: the model's seq_len)")
    ap.add_argument("--skew", type=float, default=3.0, help="lengths min + (max - min) * u**skew; larger: more short")
    ap.add_argument("--packer", default="ffd", choices=["ffd", "binpacking"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=8, help="greedy tokens compared in the check line")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--dtype", default="auto", help="auto (float32 on cpu, bfloat16 on cuda) | float32 | bfloat16 | float16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from transformers import LlamaForCausalLM

    from methods.inference.prepacking import (
        median_times,
        pack_prompts,
        packed_slots,
        padded_generate,
        padded_slots,
        prepacked_generate,
        skewed_lengths,
    )

    torch.set_num_threads(args.threads)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dtype = getattr(torch, args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32"))
    config, seq_len = model_config(args.model, args.vocab)
    max_len = args.max_len or seq_len
    config.max_position_embeddings = max(config.max_position_embeddings, max_len + args.new_tokens)
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()

    g = torch.Generator().manual_seed(args.seed)
    lengths = skewed_lengths(args.num_prompts, args.min_len, max_len, args.skew, g)
    prompts = [torch.randint(0, config.vocab_size, (n,), generator=g) for n in lengths]
    packed = pack_prompts(prompts, packer=args.packer)

    sides = {"padded": lambda: padded_generate(model, prompts, 1),
             "prepacked": lambda: prepacked_generate(model, prompts, 1, packer=args.packer)}
    with torch.no_grad():
        med = median_times(sides, args.repeats, sync=device.type == "cuda")
        peaks = {name: peak_bytes(fn, device) for name, fn in sides.items()}
        new_pad, logits_pad = padded_generate(model, prompts, args.new_tokens, return_logits=True)
        new_pack, logits_pack = prepacked_generate(model, prompts, args.new_tokens, packer=args.packer,
                                                   return_logits=True)

    real = sum(lengths)
    slots = {"padded": padded_slots(prompts), "prepacked": packed_slots(packed)}
    shape = {"padded": f"{len(prompts)} x {max(lengths)}",
             "prepacked": f"{packed.input_ids.shape[0]} x {packed.input_ids.shape[1]} + {len(prompts)} x 1"}
    params = sum(p.numel() for p in model.parameters())
    print(f"model {args.model} ({params / 1e6:.1f}M params, {dtype}, {device.type}, {args.threads} thread(s)); "
          f"{len(prompts)} prompts, lengths {min(lengths)}..{max(lengths)} (mean {real / len(lengths):.1f}, "
          f"skew {args.skew}), {args.repeats} repeats\n")
    print("| batching | forward shape | token slots | padding | time to 1st token (s) | x padded | peak mem (MiB) | x padded |")
    print("|---|---|---|---|---|---|---|---|")
    for s in sides:
        print(f"| {s} | {shape[s]} | {slots[s]} | {(slots[s] - real) / slots[s]:.1%} | {med[s]:.4f} | "
              f"{med[s] / med['padded']:.2f} | {peaks[s] / 2**20:.1f} | {peaks[s] / max(peaks['padded'], 1):.2f} |")
    diff = (logits_pack[:, 0].float() - logits_pad[:, 0].float()).abs().max().item()
    agree = (logits_pack[:, 0].argmax(-1) == logits_pad[:, 0].argmax(-1)).float().mean().item()
    print(f"\ncheck: first logits max |diff| {diff:.2e}; first tokens agree {agree:.0%}; "
          f"{args.new_tokens} greedy tokens identical for {(new_pack == new_pad).all(-1).float().mean().item():.0%} "
          "of prompts")


if __name__ == "__main__":
    main()
