"""GNMT on cipher-mt: BLEU of greedy decoding, beam search, beam + length penalty, beam + length + coverage penalty,
and of int8 weights, from one trained model per seed.

The paper's claim (Wu et al. 2016, Table 2, WMT'14 En->Fr): beam search with the length penalty α and the coverage
penalty β (both 0.2) scores more BLEU than plain beam search (α = β = 0), which beats greedy decoding; 8-bit
quantized inference (with clipping during training, section 6) loses no BLEU. Here: `python -m runner method=gnmt
model=gnmt dataset=cipher-mt` (a 4 + 4-layer GNMT of width 64 on 12k cipher-mt pairs with a shared BPE of 4000
pieces), evaluated by method=gnmt under each decoding (beam 4) on the 500 held-out sentences; `clipped` trains
with the quantization-aware clipping (cells and gates in [-8, 8], logits in [-25, 25]).

    python bench/gnmt_repro.py [cipher-mt] [--seeds 0,1] [--runs-dir /tmp/gnmt_repro] [--rerun]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import run_tables  # noqa: E402

COMMON = ["method=gnmt", "model=gnmt", "dataset=cipher-mt", "trainer.max_steps=3000", "trainer.val_every_n_steps=1000",
          "trainer.checkpoint_every_n_steps=1000", "logger=csv"]
KEYS = [f"eval/{d}/{m}" for m in ("bleu", "chrf") for d in ("greedy", "beam", "beam_lp", "beam_lp_cp")]
EXPERIMENTS = {
    "cipher-mt": ([("gnmt", COMMON),
                   ("gnmt clipped", [*COMMON, "model.clip_cell=8", "model.clip_logits=25"])],
                  [*KEYS, "eval/int8_greedy/bleu", "eval/int8_max_abs_logprob_change"]),
}

if __name__ == "__main__":
    run_tables(EXPERIMENTS, __doc__, "/tmp/gnmt_repro", ["hardware.threads=1"])
