"""Retrieval: dense and sparse bi-encoders on BEIR-layout data (tasks/retrieval.py), and the shared machinery the
retrieval papers reuse.

    corpora.py   the sources in BEIR layout: stdlib-retrieval (generated from the embedded corpus), keyword-pairs
                 (a generated smoke set), local BEIR directories and BEIR datasets by hub name
    encoder.py   DualEncoder: an encoder with pooling (CLS or mean) that maps queries and passages to vectors
    losses.py    InfoNCE with in-batch, hard and memory-bank negatives; all-gather across ranks
    module.py    DualEncoderModule: the LightningModule of retrieval fine-tuning (the baseline's contrastive loss)
    index.py     exact dense search and an inverted index for sparse (vocabulary-space) vectors
    bm25.py      BM25 (bm25s) for first-pass runs and hard-negative mining
    metrics.py   nDCG@k, Recall@k, MRR@k with trec_eval's conventions (checked against pytrec_eval in tests)

The methods: dupmae.py, vdr.py, peg.py, lol_prf.py, defsent_plus.py (one file each; see the README's table).
"""
