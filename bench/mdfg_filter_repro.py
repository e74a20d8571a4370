"""MDFG-tool (ChineseWebText 2.0) on synthetic Chinese web text with planted labels: per-stage keep rates and
precision/recall of each stage against the planted truth, over seeds (methods/data/mdfg_filter.py,
methods/data/mdfg_corpus.py); with --lm-steps N also an LM trained N steps through the runner on the unfiltered
web documents (method=adamw) and on what MDFG keeps (method=mdfg_filter), compared on the held-out clean
documents (val/loss/clean) and on the web val split (val/loss/web, unfiltered).

    python bench/mdfg_filter_repro.py [--seeds 0 1 2] [--documents 300] [--labelled 100] [--lm-steps 150]

Per seed: a corpus of `--documents` generated documents + the 12 rule probes (web_corpus(seed)); classifiers
trained on labelled examples from another seed (labelled_lines(seed=1000+seed)). Measured:
  stage 1  probes judged right (of 12), generated documents wrongly dropped
  stage 2  line-level precision/recall of "segment kept" (score > T) against the planted prose/boilerplate label
  stage 3  micro precision/recall over the five categories, keyword rules vs the model, on texts from documents
           with planted domains (planted "general": no category)
  stage 4  text-level precision/recall of toxicity.label (score >= 0.99) and of score >= 0.5, truth: the text
           contains a planted insult
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import json  # noqa: E402

from bench.common import run_one  # noqa: E402
from methods.data import mdfg_filter as mf  # noqa: E402
from methods.data.mdfg_corpus import TOXIC_WORDS, labelled_lines, web_corpus  # noqa: E402


def pr(pred: np.ndarray, true: np.ndarray) -> tuple[float, float]:
    tp = float((pred & true).sum())
    return (tp / pred.sum() if pred.sum() else float("nan")), (tp / true.sum() if true.sum() else float("nan"))


def one_seed(seed: int, documents: int, labelled: int, threshold: float) -> dict[str, float]:
    docs = web_corpus(documents, seed)
    lab = labelled_lines(labelled, seed=1000 + seed)
    pipe = mf.MdfgPipeline(quality_threshold=threshold, seed=seed).fit(lab["quality"], lab["toxicity"])
    t0 = time.perf_counter()
    records, trace = pipe.run([d["text"] for d in docs])
    out = {"seconds": time.perf_counter() - t0, **{k: float(v) for k, v in pipe.stats.items()}}
    probes = [(d, t) for d, t in zip(docs, trace) if d["probe"] is not None]
    out["stage1/probes_right"] = sum((t["rule"] is None) == d["probe"]["keep"] and
                                     (d["probe"]["keep"] or t["rule"] == d["probe"]["rule"]) for d, t in probes)
    out["stage1/false_drops"] = sum(t["rule"] is not None for d, t in zip(docs, trace) if d["probe"] is None)
    # stage 2 on planted line labels; document keep rate per kind
    yt, yp = [], []
    for d, t in zip(docs, trace):
        if d["probe"] is None:
            yt += d["quality"]
            yp += [s > threshold for s in t["scores"]]
    out["stage2/precision"], out["stage2/recall"] = pr(np.array(yp, bool), np.array(yt, bool))
    for kind in ("clean", "mixed", "low", "toxic"):
        ts = [t for d, t in zip(docs, trace) if d["kind"] == kind]
        out[f"stage2/keep/{kind}"] = sum(bool(t["runs"]) for t in ts) / max(1, len(ts))
    # the source document of every record (records follow documents, then runs, in order)
    src = [i for i, t in enumerate(trace) for _ in t["runs"]]
    cats = list(mf.DOMAIN_KEYWORDS)
    truth = np.array([[c in (docs[i]["domains"] or []) for c in cats] for i in src], bool)
    rule = np.array([[c in labs for c in cats] for labs in pipe.rule_labels], bool)
    model = np.array([[c in r["domain"]["multi_label"] for c in cats] for r in records], bool)
    planted = np.array([docs[i]["probe"] is None for i in src])
    out["stage3/rule_precision"], out["stage3/rule_recall"] = pr(rule[planted], truth[planted])
    out["stage3/model_precision"], out["stage3/model_recall"] = pr(model[planted], truth[planted])
    tox_true = np.array([any(w in r["text"] for w in TOXIC_WORDS) for r in records], bool)
    score = np.array([r["toxicity"]["score"] for r in records])
    label = np.array([r["toxicity"]["label"] for r in records], bool)
    out["stage4/precision@0.99"], out["stage4/recall@0.99"] = pr(label, tox_true)
    out["stage4/precision@0.5"], out["stage4/recall@0.5"] = pr(score >= 0.5, tox_true)
    kept = [r for r in records if r["toxicity"]["label"] == 0]
    raw_chars = sum(len(d["text"]) for d in docs)
    out["final/char_keep_rate"] = sum(len(r["text"]) for r in kept) / raw_chars
    out["final/toxic_share_before"] = float(np.mean([d["toxic"] == 1 for d in docs if d["probe"] is None]))
    out["final/toxic_share_after"] = float(np.mean([any(w in r["text"] for w in TOXIC_WORDS) for r in kept]))
    return out


ROWS = [("stage 1", "rule probes judged right (of 12)", "stage1/probes_right"),
        ("stage 1", "generated documents wrongly dropped", "stage1/false_drops"),
        ("stage 1", "document keep rate", "stage1/keep_rate"),
        ("stage 2", "document keep rate (>= 1 run > T)", "stage2/doc_keep_rate"),
        ("stage 2", "segment keep rate", "stage2/segment_keep_rate"),
        ("stage 2", "keep rate: clean / mixed / low / toxic docs",
         ("stage2/keep/clean", "stage2/keep/mixed", "stage2/keep/low", "stage2/keep/toxic")),
        ("stage 2", "line precision / recall (planted quality)", ("stage2/precision", "stage2/recall")),
        ("stage 3", "keyword rules: micro precision / recall", ("stage3/rule_precision", "stage3/rule_recall")),
        ("stage 3", "model (trained on rules): micro P / R", ("stage3/model_precision", "stage3/model_recall")),
        ("stage 4", "non-toxic rate of output texts", "stage4/nontoxic_rate"),
        ("stage 4", "label (score >= 0.99): precision / recall", ("stage4/precision@0.99", "stage4/recall@0.99")),
        ("stage 4", "score >= 0.5: precision / recall", ("stage4/precision@0.5", "stage4/recall@0.5")),
        ("all", "characters kept for training", "final/char_keep_rate"),
        ("all", "toxic share: documents in / texts out", ("final/toxic_share_before", "final/toxic_share_after"))]


def cell(results: list[dict], key) -> str:
    keys = key if isinstance(key, tuple) else (key,)
    parts = []
    for k in keys:
        v = np.array([r[k] for r in results], dtype=float)
        parts.append(f"{v.mean():.3g}" if len(v) == 1 or v.std() == 0 else f"{v.mean():.3g} ± {v.std():.2g}")
    return " / ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--documents", type=int, default=300)
    ap.add_argument("--labelled", type=int, default=100, help="labelled examples per class for each classifier")
    ap.add_argument("--quality-threshold", type=float, default=0.5)
    ap.add_argument("--lm-steps", type=int, default=0, help="also train an LM this many steps per arm (0: no)")
    ap.add_argument("--runs-dir", type=Path, default=Path("/tmp/mdfg_filter_repro"))
    ap.add_argument("--rerun", action="store_true")
    args = ap.parse_args()
    results = [one_seed(s, args.documents, args.labelled, args.quality_threshold) for s in args.seeds]
    print(f"MDFG-tool on {args.documents} synthetic documents + 12 rule probes, seeds {args.seeds} "
          f"(mean ± std), T = {args.quality_threshold}, {args.labelled} labelled examples per class\n")
    print("| stage | measure | value |\n|---|---|---|")
    for stage, label, key in ROWS:
        print(f"| {stage} | {label} | {cell(results, key)} |")
    print(f"\npipeline seconds per seed: {cell(results, 'seconds')}")
    if args.lm_steps:
        lm = {}
        for seed in args.seeds:
            common = ["dataset=zh-web-synthetic", f"dataset.documents={args.documents}", f"dataset.seed={seed}",
                      f"dataset.labelled={args.labelled}", f"seed={seed}", f"trainer.max_steps={args.lm_steps}",
                      f"trainer.val_every_n_steps={args.lm_steps}", "logger=csv", "hardware.threads=1",
                      "model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2", "model.num_heads=2",
                      "model.seq_len=64", "dataset.tokenizer.vocab_size=1024", "trainer.val_batches=50"]
            for arm in ("adamw", "mdfg_filter"):
                run = run_one(f"mdfg_repro-{arm}-s{seed}", [*common, f"method={arm}"], args.runs_dir, args.rerun)
                lm.setdefault(arm, []).append(json.loads((run / "summary.json").read_text()))
        print(f"\nLM ({args.lm_steps} steps, llama-tiny at d=64, 2 layers, seq 64, seeds {args.seeds}): mean ± std\n")
        print("| trained on | val/loss/clean | val/loss/web (unfiltered) |\n|---|---|---|")
        for arm, label in (("adamw", "all web documents"), ("mdfg_filter", "MDFG-kept texts")):
            print(f"| {label} | {cell(lm[arm], 'val/loss/clean')} | {cell(lm[arm], 'val/loss/web')} |")


if __name__ == "__main__":
    main()
