"""Predictive Data Selection: The Data That Predicts Is the Data That Teaches (Shum, Huang, Zhu, Lou, He et al.,
arXiv:2503.00808, 2025): PreSelect.

With N reference LMs ranked by a benchmark (best first), a document d is predictive when its loss ranks the models
the way the benchmark does. Its predictive strength counts the model pairs it orders like the benchmark:

    BPC_i(d) = NLL_i(d) / (chars(d) · ln 2)                       model i's bits per character on d
    S(d)     = #{ (i, j), i < j : sign(b_i − b_j) = sign(BPC_j(d) − BPC_i(d)) }  ∈ [0, C(N, 2)]

(b_i: model i's benchmark score, higher is better). S(d) = C(N, 2) exactly when d's losses rank the models in the
reverse of their benchmark order, i.e. in the benchmark's order of quality. Documents with S = C(N, 2) are the
positives, as many of the lowest-S documents the negatives; a classifier trained on them scores the whole pool, and
the documents of highest score are kept until they hold `char_fraction` (the paper: 10 %) of the pool's characters.
Training then uses the selection only (methods/data/zip_fit.py's machinery: `prepare_data`, the cached selection).

Here (a multi-domain task, dataset=mixture-*): the reference LMs are the run's own model trained by the runner for
each of `reference_steps` (graded quality by training length, cached like every trained model); the "benchmark" is
each one's BPC on the held-out target domain (a `sample: false` domain's first target_size train documents, the
same target set ZIP-FIT aligns to), b_i = −BPC_i(target); the pool is the sampled domains' train documents.

Deviations (also in configs/method/preselect.yaml and the README row):
- Reference models of one architecture at different step counts (separate runs with their own schedules), not
  public LMs of different sizes; the benchmark is the target domain's BPC, not downstream accuracy.
- Losses over non-overlapping windows of model.seq_len tokens (the code: blocks of 1900 with stride 512); the first
  token of each window is not scored.
- The classifier is scikit-learn's logistic regression on hashed word uni- and bigrams (the paper: fastText, 3
  epochs, lr 0.1, wordNgrams 2): no new dependency, the same kind of bag-of-n-grams linear model.
- When no document reaches S = C(N, 2) the positives are those at the highest S reached (logged); when every
  document reaches the top S (references ranked alike everywhere: no negatives), the pool is ranked by the
  correlation of −BPC with the benchmark instead (logged, `selection/fallback_concordance`); neither is the paper's.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from itertools import combinations
from typing import Any

import numpy as np

from methods.data.zip_fit import ZipFit

log = logging.getLogger(__name__)


def predictive_strength(bpc: np.ndarray, benchmark: Sequence[float]) -> np.ndarray:
    """S(d) for every document: bpc (N models, D documents); benchmark (N,) scores, higher better. A tie on either
    side orders no pair (it counts as disagreement)."""
    bpc = np.asarray(bpc, dtype=np.float64)
    b = np.asarray(benchmark, dtype=np.float64)
    if bpc.ndim != 2 or bpc.shape[0] != len(b):
        raise ValueError(f"predictive_strength: bpc must be (N models, documents) with N = {len(b)}, got {bpc.shape}")
    s = np.zeros(bpc.shape[1], dtype=np.int64)
    for i, j in combinations(range(len(b)), 2):
        s += (np.sign(b[i] - b[j]) * np.sign(bpc[j] - bpc[i]) > 0).astype(np.int64)
    return s


def concordance(bpc: np.ndarray, benchmark: Sequence[float]) -> np.ndarray:
    """Per document, the Pearson correlation over the models of −BPC_i(d) with the benchmark scores b_i (0 where
    either is constant): a continuous agreement, used only when no document falls below the top strength."""
    x = -np.asarray(bpc, dtype=np.float64)
    b = np.asarray(benchmark, dtype=np.float64)
    xc, bc = x - x.mean(0, keepdims=True), (b - b.mean())[:, None]
    den = np.sqrt((xc**2).sum(0) * (bc**2).sum())
    return np.where(den > 0, (xc * bc).sum(0) / np.where(den > 0, den, 1.0), 0.0)


def keep_by_characters(scores: np.ndarray, lengths: Sequence[int], fraction: float,
                       texts: Sequence[str] | None = None) -> np.ndarray:
    """Indices of the highest-scoring documents whose characters add up to `fraction` of all characters: taken in
    score order (ties by the text's SHA-256 when `texts` is given, else by index) up to the document whose inclusion
    brings the kept share closest to `fraction`."""
    from methods.data.zip_fit import content_hash

    lengths = np.asarray(lengths, dtype=np.int64)
    keys = [content_hash(t) for t in texts] if texts is not None else list(range(len(scores)))
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), keys[i]))
    total = float(lengths.sum())
    cum = np.cumsum(lengths[order]) / total
    n = int(np.argmin(np.abs(cum - fraction))) + 1
    return np.array(sorted(order[:n]), dtype=np.int64)


def document_bpc(model: Any, tokenizer: Any, docs: Sequence[str], seq_len: int, batch_size: int = 16) -> np.ndarray:
    """Bits per character of each document under a causal LM: the summed next-token NLL over non-overlapping
    windows of seq_len + 1 tokens (each window's first token unscored), over the document's characters · ln 2."""
    import torch

    device = next(model.parameters()).device
    windows, owner = [], []
    for d, text in enumerate(docs):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, max(1, len(ids) - 1), seq_len):
            chunk = ids[start:start + seq_len + 1]
            if len(chunk) >= 2:
                windows.append(chunk)
                owner.append(d)
    nll = np.zeros(len(docs), dtype=np.float64)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for k in range(0, len(windows), batch_size):
            rows = windows[k:k + batch_size]
            width = max(map(len, rows))
            x = torch.zeros(len(rows), width, dtype=torch.long)
            mask = torch.zeros(len(rows), width, dtype=torch.bool)
            for r, w in enumerate(rows):
                x[r, :len(w)] = torch.tensor(w)
                mask[r, :len(w)] = True
            x, mask = x.to(device), mask.to(device)
            out = model(input_ids=x[:, :-1], attention_mask=mask[:, :-1])
            logits = getattr(out, "logits", out).float()
            lp = torch.log_softmax(logits, -1).gather(-1, x[:, 1:, None]).squeeze(-1)
            per_row = -(lp * mask[:, 1:]).sum(1).double().cpu().numpy()
            for r, v in zip(owner[k:k + batch_size], per_row):
                nll[r] += v
    model.train(was_training)
    chars = np.array([max(1, len(t)) for t in docs], dtype=np.float64)
    return nll / (chars * math.log(2))


def train_classifier(positives: Sequence[str], negatives: Sequence[str], seed: int = 0):
    """A bag-of-n-grams (hashed word uni- and bigrams) logistic regression of positive vs negative documents; its
    predict_proba(texts)[:, 1] scores documents."""
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    clf = make_pipeline(HashingVectorizer(ngram_range=(1, 2), n_features=2**18, alternate_sign=False, norm="l2"),
                        LogisticRegression(max_iter=1000, random_state=seed))
    clf.fit([*positives, *negatives], [1] * len(positives) + [0] * len(negatives))
    return clf


class PreSelect(ZipFit):
    """PreSelect (the module docstring), or `selector: random` at the same share of characters."""

    selectors = ("preselect", "random")

    def __init__(self, name: str = "preselect", selector: str = "preselect", reference_steps: Sequence[int] | None = None,
                 char_fraction: float = 0.1, target_domain: str | None = None, target_size: int = 50,
                 progress: bool = True, seed: int | None = None, **kw: Any):
        if selector not in self.selectors:
            raise ValueError(f"method.selector: {selector!r} is not valid; choose one of: {', '.join(self.selectors)}")
        steps = None if reference_steps is None else list(reference_steps)
        problems = []
        if steps is not None and (len(steps) < 2 or len(set(steps)) != len(steps)
                                  or any(not (isinstance(s, int) and s >= 1) for s in steps)):
            problems.append(f"method.reference_steps: at least two distinct positive step counts or null, got {steps}")
        if not 0.0 < float(char_fraction) < 1.0:
            problems.append(f"method.char_fraction: the share of the pool's characters kept, in (0, 1), got {char_fraction}")
        if problems:
            raise ValueError("; ".join(problems))
        super().__init__(name=name, selector="random", target_domain=target_domain, target_size=target_size,
                         progress=progress, seed=seed, **kw)
        self.selector, self.reference_steps, self.char_fraction = selector, steps, float(char_fraction)

    def steps(self) -> list[int]:
        """The reference models' step counts: reference_steps, or base_steps / 8, / 4, / 2 and base_steps itself (the
        last is the runner's cached base model)."""
        if self.reference_steps is not None:
            return list(self.reference_steps)
        base = int(self.base_steps)
        return sorted({max(1, base // 8), max(1, base // 4), max(1, base // 2), base})

    def selection_spec(self, k: int, seed: int) -> dict:
        return {"v": 1, "selector": self.selector, "char_fraction": self.char_fraction,
                "reference_steps": self.steps() if self.selector == "preselect" else None, "seed": seed}

    def select(self, source: Sequence[str], target: Sequence[str], k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(indices of the selection, their classifier scores): `char_fraction` of the pool's characters."""
        lengths = [len(t) for t in source]
        if self.selector == "random":
            scores = np.random.Generator(np.random.PCG64(seed)).random(len(source))
            return keep_by_characters(scores, lengths, self.char_fraction, source), scores
        data = self.data
        bpc, bench = [], []
        for steps in self.steps():
            model = self.trained_model("base", steps=steps)
            bench.append(-float(np.average(document_bpc(model, data.tokenizer, target, data.seq_len),
                                           weights=[len(t) for t in target])))
            bpc.append(document_bpc(model, data.tokenizer, source, data.seq_len))
            log.info("preselect: reference of %d steps: target-domain BPC %.3f", steps, -bench[-1])
        strength = predictive_strength(np.stack(bpc), bench)
        top = int(strength.max())
        positives = np.flatnonzero(strength == top)
        rest = np.flatnonzero(strength < top)
        if len(rest) == 0:  # no negative to learn from: the continuous agreement ranks the pool instead
            log.warning("preselect: every document orders the %d reference models as the benchmark does (S = %d): no "
                        "negatives for the classifier; ranking by the correlation of -BPC with the benchmark instead "
                        "(use references that differ more: sizes, data)", len(bench), top)
            scores = concordance(np.stack(bpc), bench)
            chosen = keep_by_characters(scores, lengths, self.char_fraction, source)
            self.stats.update({"selection/fallback_concordance": 1, "selection/positives": int(len(positives)),
                               "selection/negatives": 0, "selection/k": int(len(chosen))})
            return chosen, scores
        negatives = rest[np.argsort(strength[rest], kind="stable")][: len(positives)]
        if len(negatives) < 0.05 * len(positives):
            log.warning("preselect: %d positives but only %d negatives (documents below S = %d): the reference models "
                        "are ranked alike by nearly every document, so the classifier has little to learn; use "
                        "references that differ more (sizes, data)", len(positives), len(negatives), top)
        clf = train_classifier([source[i] for i in positives], [source[i] for i in negatives], seed)
        scores = clf.predict_proba(list(source))[:, 1]
        chosen = keep_by_characters(scores, lengths, self.char_fraction, source)
        pairs = len(bench) * (len(bench) - 1) // 2
        self.stats.update({"selection/max_strength": pairs, "selection/positive_strength": top,
                           "selection/positives": int(len(positives)), "selection/negatives": int(len(negatives)),
                           "selection/mean_strength": float(strength.mean()),
                           "selection/k": int(len(chosen)),
                           "selection/kept_char_share": float(sum(lengths[i] for i in chosen) / sum(lengths)),
                           **{f"selection/benchmark_bpc/{s}": -b for s, b in zip(self.steps(), bench)}})
        if top < pairs:
            log.info("preselect: no document reaches S = %d; positives are the %d at S = %d", pairs, len(positives), top)
        return chosen, scores
