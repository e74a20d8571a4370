"""TOFU's evaluation metrics ("TOFU: A Task of Fictitious Unlearning for LLMs", Maini et al.,
arXiv:2401.06121, sec. 2.2; definitions as computed by the authors' code, locuslab/tofu
`evaluate_util.py` and `aggregate_eval_stat.py`; checked against the latter's get_forget_quality /
get_model_utility and the former's length-normalised `avg_gt_loss`: the same formulas as below).

Inputs are TOFU's per-question, length-normalised losses: L(a) = NLL(a | q) / |a| (mean over the answer
tokens; `losses.sequence_nll(..., reduction="mean")`).

- Probability (forget / retain set): mean over questions of exp(−L(answer)) = P(a|q)^(1/|a|).
  On the real-authors / world-facts sets: mean of P̃(true) / (P̃(true) + Σ P̃(perturbed)), P̃ = exp(−L).
- ROUGE-L recall of the greedy generation against the ground-truth answer: LCS(ref, gen) / |ref| in words,
  computed by the `rouge-score` package as TOFU does (`RougeScorer(["rougeL"], use_stemmer=True)`, the
  recall of `score(answer, generation)`): lower case, non-alphanumerics to spaces, and the Porter stemmer on
  words of more than 3 letters, so that "wrote"/"writes" differ but "writes"/"writing" ("write") match.
- Truth ratio statistic per question, as the code computes it:
      s = exp(mean_j L(perturbed_j) − L(paraphrased)) = P̃(paraphrased) / geomean_j P̃(perturbed_j)
  (the paper writes the inverse, R = mean_j P̃(pert_j) / P̃(para), with an arithmetic mean; the numbers
  TOFU reports come from the code's s). Reported as the mean over questions of
      min(s, 1/s)            on the forget set  (closer to 1 = the model cannot tell true from false)
      max(0, 1 − 1/s)        on retain / real-authors / world-facts (higher = prefers the truth)
- Forget quality: the p-value of the two-sample Kolmogorov–Smirnov test between the per-question statistics s
  of the unlearned model and of the retain-only model, both on the forget set: `scipy.stats.ks_2samp` with its
  defaults, the call TOFU makes (the exact test for samples of up to 10000, which computes the probability
  outside the band directly, so p-values far below 1e-16 keep their relative accuracy; papers plot forget
  quality on a log scale). The KS statistic only depends on the ordering of the pooled values, so s and the
  paper's R = 1/s give the same p-value.
- Model utility: the harmonic mean of the non-forget metrics (TOFU: probability, ROUGE-L and truth ratio on
  retain, real authors and world facts: 9 numbers; this benchmark has the retain set's 3).
"""

from __future__ import annotations

import functools

import numpy as np


def answer_probability(answer_losses) -> float:
    """Mean length-normalised probability exp(−L) over questions."""
    return float(np.mean(np.exp(-np.asarray(answer_losses, dtype=np.float64))))


def normalized_option_probability(true_losses, perturbed_losses) -> float:
    """TOFU's probability on real authors / world facts: P̃(true) / (P̃(true) + Σ_j P̃(perturbed_j)), averaged.
    true_losses (N,), perturbed_losses (N, K)."""
    p_true = np.exp(-np.asarray(true_losses, dtype=np.float64))
    p_all = np.concatenate([p_true[:, None], np.exp(-np.asarray(perturbed_losses, dtype=np.float64))], axis=1)
    return float(np.mean(p_true / p_all.sum(axis=1)))


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)  # TOFU's evaluate_util / eval_everything


def rouge_l_recall(reference: str, generated: str) -> float:
    """ROUGE-L recall = LCS / number of reference words, with rouge_score's tokenizer and Porter stemmer
    (0 for an empty reference or generation)."""
    return float(_rouge_scorer().score(reference, generated)["rougeL"].recall)


def truth_ratio_statistic(paraphrased_losses, perturbed_losses) -> np.ndarray:
    """Per question s = exp(mean_j L(perturbed_j) − L(paraphrased)). paraphrased (N,), perturbed (N, K)
    (or a list of N sequences of different lengths)."""
    para = np.asarray(paraphrased_losses, dtype=np.float64)
    pert = np.array([np.mean(np.asarray(p, dtype=np.float64)) for p in perturbed_losses])
    return np.exp(pert - para)


def truth_ratio(statistic, split: str) -> float:
    """TOFU's reported truth ratio: mean min(s, 1/s) on "forget", mean max(0, 1 − 1/s) otherwise."""
    s = np.asarray(statistic, dtype=np.float64)
    if split == "forget":
        return float(np.mean(np.minimum(s, 1 / s)))
    if split in ("retain", "real_authors", "world_facts"):
        return float(np.mean(np.maximum(0.0, 1 - 1 / s)))
    raise ValueError(f"split={split!r}: choose forget, retain, real_authors or world_facts")


def forget_quality(unlearned_statistic, retain_model_statistic) -> float:
    """KS-test p-value between the forget-set truth-ratio statistics of the two models (TOFU's
    `ks_2samp(unlearn_tr, retain_tr).pvalue`)."""
    from scipy.stats import ks_2samp

    x = np.asarray(unlearned_statistic, dtype=np.float64)
    y = np.asarray(retain_model_statistic, dtype=np.float64)
    return float(ks_2samp(x, y).pvalue)


def harmonic_mean(values) -> float:
    """scipy.stats.hmean: n / Σ 1/v (0 if any value is 0)."""
    v = np.asarray(list(values), dtype=np.float64)
    if np.any(v < 0):
        raise ValueError(f"harmonic_mean: values must be >= 0, got {v.tolist()}")
    if np.any(v == 0):
        return 0.0
    return float(len(v) / np.sum(1 / v))


def model_utility(metrics: dict[str, float]) -> float:
    """The harmonic mean of every metric whose name does not mention the forget set."""
    kept = [v for k, v in metrics.items() if "forget" not in k.lower()]
    if not kept:
        raise ValueError(f"model_utility: no non-forget metrics among {sorted(metrics)}")
    return harmonic_mean(kept)

