"""Retrieval at small scale (issue 20): one table on stdlib-retrieval's test split, every arm one `python -m runner`
run (bench/common.py run_one), mean ± half-range over seeds; printed as markdown for docs/retrieval.md.

  reference  BM25 (bm25s; every run reports it as eval/bm25/*) and the real MiniLM zero-shot (no training step)
  infonce    the baseline bi-encoder fine-tuning (InfoNCE, in-batch negatives): TINY bert-tiny from scratch, and
             MiniLM fine-tuned (lr 2e-5, 100 steps of 16)
  peg        PEG's progressive re-weighting against uniform weights with the same negatives (5 BM25 hard
             negatives; `method=peg method.schedule=uniform` is the InfoNCE arm), and uniform weights with a
             1024-passage memory bank beside them
  dupmae     DupMAE pre-training (200 steps on the corpus) + the same fine-tuning, against RetroMAE (bow_weight=0),
             plain MLM (dec_weight=bow_weight=0) and no pre-training
  vdr        VDR's vocabulary-space sparse retriever (inverted index) against the dense InfoNCE arm
  lol        LoL's comparative regularisation: violation rate and nDCG with lambda_cr in {0, 1}
  defsent    DefSent+ rounds (E rebuilt per round) against one frozen round, on the dictionary task

TINY = bert-tiny at hidden 64, intermediate 128, seq_len 64, a 1024-token WordPiece, batch 16, 200 steps: a few
CPU-minutes per arm.

    python bench/retrieval_repro.py [reference infonce minilm peg dupmae vdr lol defsent] [--seeds 0,1] [--runs-dir ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import run_tables  # noqa: E402

THREADS = ["hardware.threads=2", "logger=csv"]
TINY = ["model=bert-tiny", "dataset=stdlib-retrieval", "model.hidden_size=64", "model.intermediate_size=128",
        "model.seq_len=64", "dataset.batch_size=16", "dataset.tokenizer.vocab_size=1024", "trainer.max_steps=200"]
MINILM = ["model=minilm", "dataset=stdlib-retrieval", "method.lr=2e-5", "method.warmup_steps=10", "dataset.batch_size=16",
          "trainer.max_steps=100"]
KEYS = ["eval/ndcg@10", "eval/mrr@10", "eval/recall@10", "eval/recall@100", "eval/summary/ndcg@10",
        "eval/sentence/ndcg@10"]
BM25 = ["eval/bm25/ndcg@10", "eval/bm25/mrr@10", "eval/bm25/recall@10", "eval/bm25/recall@100"]

EXPERIMENTS = {
    "reference": ([("MiniLM zero-shot", ["model=minilm", "dataset=stdlib-retrieval", "trainer.max_steps=0"])],
                  [*KEYS, *BM25], "0"),
    "infonce": ([("InfoNCE bert-tiny (TINY)", ["method=adamw", *TINY])], KEYS),
    "minilm": ([("InfoNCE MiniLM (fine-tuned)", ["method=adamw", *MINILM])], KEYS, "0"),
    "peg": ([("PEG uniform weights (TINY)", ["method=peg", "method.schedule=uniform", "method.bank_size=0", *TINY]),
             ("PEG easy_to_hard (TINY)", ["method=peg", "method.bank_size=0", *TINY]),
             ("PEG uniform bank 1024 (TINY)", ["method=peg", "method.schedule=uniform", "method.bank_size=1024", *TINY])],
            KEYS, "0"),
    "dupmae": ([("DupMAE + fine-tune (TINY)", ["method=dupmae", "method.pretrain_steps=200", *TINY]),
                ("RetroMAE + fine-tune (TINY)", ["method=dupmae", "method.pretrain_steps=200", "method.bow_weight=0", *TINY]),
                ("MLM + fine-tune (TINY)", ["method=dupmae", "method.pretrain_steps=200", "method.dec_weight=0",
                                            "method.bow_weight=0", *TINY]),
                ("no pre-training (TINY)", ["method=adamw", *TINY])], KEYS),
}


def main() -> None:
    run_tables(EXPERIMENTS, __doc__, "/tmp/retrieval_repro", THREADS)


if __name__ == "__main__":
    main()
