"""eTok vs a BPE LM vs a character LM at small scale ("Learn Your Tokens", Thawani et al., EMNLP Findings 2023):
next-word exact match, overall and on rare words, on the embedded corpus split into words (tasks/words.py).

Three arms, each one `python -m runner` run per seed (bench/common.py run_one), the same text and the same words:

  eTok       model=etok (n_embd 64, main 4 layers, word encoder 2 + word decoder 2, 4 heads, canvas 12, 1 CLS)
             dataset=stdlib-words, blocks of --words words
  BPE LM     model=llama-tiny (hidden 64, 8 layers, 4 heads, SwiGLU 172) dataset=stdlib-words-bpe (BPE 1024)
  char LM    the same Llama, dataset=stdlib-words-chars

Equal compute is matched as: the same number of optimizer steps (--steps) of the same batch size, each block the
same amount of text (--words words; the char and BPE block lengths are --words x the training split's
characters/word incl. the space, resp. BPE tokens/word, rounded), and similar non-embedding parameter counts
(eTok's 2 + 4 + 2 blocks vs the Llama's 8). The same optimizer for all three: AdamW (0.9, 0.95), weight decay 0.1,
lr --lr with 20 warmup steps and cosine decay to 0.1 lr (eTok's own recipe is a constant 3e-4: too slow for a few
hundred steps; not tuned per arm). The table also shows an estimate of each arm's training FLOPs per step (matmuls
and attention, forward + backward = 3 x forward): equal text per step is not equal FLOPs (eTok's encoder and
decoder run over padded canvases of 13 slots per word). "val nats/word" is the validation loss per word (eTok: its
per-slot loss x canvas_size, PAD slots included; the LMs: per-unit loss x units per word, the space included).

The evaluator (tasks/words.py NextWordEval) draws --eval-words positions of the validation documents, the same
for the three arms; each model gets the same preceding --context-words (16) words (cut from the left only where
they overflow a model's window: rare at 16) and predicts the next word greedily; right only if
all characters match and the word ends. Rare: at most 9 occurrences in the training words (unseen included).

    python bench/word_pooled_tok_repro.py [--seeds 0,1] [--steps 250] [--context-words 16] [--runs-dir /tmp/wpt_repro] [--rerun]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import fmt, run_one  # noqa: E402

LLAMA = {"hidden_size": 64, "intermediate_size": 172, "num_layers": 8, "num_heads": 4}
ETOK = {"n_embd": 64, "n_layer": 4, "n_head": 4, "n_e2e_layer": 2, "n_e2e_head": 4, "canvas_size": 12, "num_prefix": 1}
METRICS = ["eval/next_word_acc", "eval/next_word_acc_rare", "eval/next_word_acc_unseen", "eval/next_word_acc_frequent"]


def units_per_word() -> dict[str, float]:
    """Characters (incl. the space) and BPE tokens per training word."""
    from tasks.base import BuildContext
    from tasks.words import WordCorpusBPE, WordCorpusChars

    ctx = BuildContext(seq_len=64, cache_dir=Path(os.environ["METHODBENCH_CACHE"]), seed=0, batch_size=1, max_steps=1,
                       accumulate_grad_batches=1)
    out = {}
    for name, cls in (("chars", WordCorpusChars), ("bpe", WordCorpusBPE)):
        c = cls(eval={"words": 1}).build(ctx).counts()
        out[name] = c["train_units"] / c["train_words"]
    return out


def llama_flops(B: int, S: int, V: int) -> float:
    d, inner, L = LLAMA["hidden_size"], LLAMA["intermediate_size"], LLAMA["num_layers"]
    fwd = 2 * (4 * d * d + 3 * d * inner) * L * B * S + 4 * S * S * d * L * B + 2 * d * V * B * S
    return 3 * fwd


def etok_flops(B: int, T: int, V: int) -> float:
    d, L, Le, c, p = ETOK["n_embd"], ETOK["n_layer"], ETOK["n_e2e_layer"], ETOK["canvas_size"], ETOK["num_prefix"]
    n = T + 1
    enc = 2 * 12 * d * d * Le * B * n * (p + c) + 4 * (p + c) ** 2 * d * Le * B * n
    main = 2 * 12 * d * d * L * B * T * p + 4 * (T * p) ** 2 * d * L * B
    dec = 2 * 12 * d * d * Le * B * T * (p + c) + 4 * (p + c) ** 2 * d * Le * B * T
    head = 2 * d * V * B * T * c
    return 3 * (enc + main + dec + head)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--words", type=int, default=32, help="words per training block (eTok's model.seq_len)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--eval-words", type=int, default=2000)
    ap.add_argument("--context-words", type=int, default=16, help="preceding words every model is given")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs-dir", type=Path, default=Path("/tmp/wpt_repro"))
    ap.add_argument("--rerun", action="store_true")
    args = ap.parse_args(argv)
    os.environ.setdefault("METHODBENCH_CACHE", str(REPO / ".cache" / "methodbench"))

    per_word = units_per_word()
    S_char, S_bpe = round(args.words * per_word["chars"]), round(args.words * per_word["bpe"])
    opt = [f"method.lr={args.lr}", "method.warmup_steps=20", "method.min_lr_ratio=0.1", "method.betas=[0.9,0.95]",
           "method.weight_decay=0.1"]
    common = [f"trainer.max_steps={args.steps}", f"trainer.val_every_n_steps={args.steps}", "trainer.val_batches=8",
              "trainer.checkpoint_every_n_steps=100000", "trainer.export=none", f"dataset.batch_size={args.batch}",
              f"dataset.eval.words={args.eval_words}", f"dataset.eval.context_words={args.context_words}",
              f"hardware.threads={args.threads}", "logger=csv"]
    llama = ["model=llama-tiny", *(f"model.{k}={v}" for k, v in LLAMA.items())]
    arms = {
        "eTok": (["method=word_pooled_tok", "model=etok", "dataset=stdlib-words", f"model.seq_len={args.words}",
                  *(f"model.{k}={v}" for k, v in ETOK.items())], "words", args.words),
        "BPE LM": (["method=adamw", "dataset=stdlib-words-bpe", *llama, f"model.seq_len={S_bpe}"], "BPE tokens", S_bpe),
        "char LM": (["method=adamw", "dataset=stdlib-words-chars", *llama, f"model.seq_len={S_char}"], "chars", S_char),
    }
    results: dict[str, list[dict]] = {}
    for name, (overrides, _, _) in arms.items():
        results[name] = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            slug = name.split()[0].lower()
            run = run_one(f"{slug}-s{seed}", [*overrides, *opt, *common, f"seed={seed}"], args.runs_dir, args.rerun)
            results[name].append(json.loads((run / "summary.json").read_text()))

    print(f"\nnext-word exact match, {args.steps} steps x batch {args.batch} x {args.words} words of text per block "
          f"(chars/word {per_word['chars']:.2f}, BPE tokens/word {per_word['bpe']:.2f}); seeds {args.seeds}; "
          f"{args.eval_words} val positions\n")
    print("| model | block | params (non-emb.) | est. train GFLOP/step | run s | val nats/word | next-word acc | rare acc "
          "| unseen acc | frequent acc |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, (_, unit, length) in arms.items():
        rs = results[name]
        vocab = int(rs[0]["vocab_size"])
        d = LLAMA["hidden_size"] if name != "eTok" else ETOK["n_embd"]
        emb = (vocab + ETOK["num_prefix"]) * d + vocab * d if name == "eTok" else 2 * vocab * d
        flops = etok_flops(args.batch, length, vocab) if name == "eTok" else llama_flops(args.batch, length, vocab)
        row = [name, f"{length} {unit}", f"{rs[0]['params'] / 1e3:.0f}k ({(rs[0]['params'] - emb) / 1e3:.0f}k)",
               f"{flops / 1e9:.1f}", fmt([r["wall_s"] for r in rs])]
        # val/loss per word: eTok's is a mean over canvas_size slots per word, the LMs' over units
        per = ETOK["canvas_size"] if name == "eTok" else per_word["bpe" if name == "BPE LM" else "chars"]
        row += [fmt([r["val/loss"] * per for r in rs])] + [fmt([r.get(k) for r in rs]) for k in METRICS]
        print("| " + " | ".join(row) + " |")
    n = results["eTok"][0]
    print(f"\nbucket sizes (of {int(n['eval/next_word_n'])}): rare {int(n['eval/next_word_n_rare'])}, unseen "
          f"{int(n['eval/next_word_n_unseen'])}, frequent {int(n['eval/next_word_n_frequent'])}")
    for k in ("eval/next_word_acc", "eval/next_word_acc_rare"):
        e = [r[k] for r in results["eTok"]]
        for other in ("BPE LM", "char LM"):
            o = [r[k] for r in results[other]]
            ratio = [f"{a / b:.2f}" if b else "n/a (0 / 0)" if not a else "inf" for a, b in zip(e, o)]
            print(f"{k.split('/')[-1]}: eTok / {other} = " + ", ".join(ratio) + " (per seed)")


if __name__ == "__main__":
    main()
