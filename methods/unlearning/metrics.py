"""TOFU's evaluation metrics ("TOFU: A Task of Fictitious Unlearning for LLMs", Maini et al.,
arXiv:2401.06121, sec. 2.2; definitions as computed by the authors' code, locuslab/tofu
`evaluate_util.py` and `aggregate_eval_stat.py`; checked against the latter's get_forget_quality /
get_model_utility and the former's length-normalised `avg_gt_loss`: the same formulas as below).

Inputs are TOFU's per-question, length-normalised losses: L(a) = NLL(a | q) / |a| (mean over the answer
tokens; `losses.sequence_nll(..., reduction="mean")`).

- Probability (forget / retain set): mean over questions of exp(−L(answer)) = P(a|q)^(1/|a|).
  On the real-authors / world-facts sets: mean of P̃(true) / (P̃(true) + Σ P̃(perturbed)), P̃ = exp(−L).
- ROUGE-L recall of the greedy generation against the ground-truth answer: LCS(ref, gen) / |ref| in words.
  rouge_score's tokenizer (lower case, non-alphanumerics to spaces, split on whitespace) is reproduced here;
  its Porter stemmer (TOFU passes use_stemmer=True) is not: words that differ only in their suffix count as
  different here.
- Truth ratio statistic per question, as the code computes it:
      s = exp(mean_j L(perturbed_j) − L(paraphrased)) = P̃(paraphrased) / geomean_j P̃(perturbed_j)
  (the paper writes the inverse, R = mean_j P̃(pert_j) / P̃(para), with an arithmetic mean; the numbers
  TOFU reports come from the code's s). Reported as the mean over questions of
      min(s, 1/s)            on the forget set  (closer to 1 = the model cannot tell true from false)
      max(0, 1 − 1/s)        on retain / real-authors / world-facts (higher = prefers the truth)
- Forget quality: the p-value of the two-sample Kolmogorov–Smirnov test between the per-question statistics s
  of the unlearned model and of the retain-only model, both on the forget set (scipy.stats.ks_2samp, whose
  default for samples of up to 10000 is the exact test; implemented below). The KS statistic only depends on
  the ordering of the pooled values, so s and the paper's R = 1/s give the same p-value.
- Model utility: the harmonic mean of the non-forget metrics (TOFU: probability, ROUGE-L and truth ratio on
  retain, real authors and world facts: 9 numbers; this benchmark has the retain set's 3).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

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


def rouge_tokens(text: str) -> list[str]:
    """rouge_score's default tokenisation, without stemming."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def lcs_length(a: Sequence, b: Sequence) -> int:
    """Length of the longest common subsequence (dynamic programming, O(|a|·|b|))."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l_recall(reference: str, generated: str) -> float:
    """ROUGE-L recall = LCS / number of reference words (0 for an empty reference)."""
    ref, gen = rouge_tokens(reference), rouge_tokens(generated)
    return lcs_length(ref, gen) / len(ref) if ref else 0.0


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


def ks_statistic(x, y) -> float:
    """D = sup_t |F_x(t) − F_y(t)| of the two empirical distribution functions."""
    x, y = np.sort(np.asarray(x, dtype=np.float64)), np.sort(np.asarray(y, dtype=np.float64))
    pooled = np.concatenate([x, y])
    cdf_x = np.searchsorted(x, pooled, side="right") / len(x)
    cdf_y = np.searchsorted(y, pooled, side="right") / len(y)
    return float(np.max(np.abs(cdf_x - cdf_y)))


def ks_pvalue_exact(d: float, n: int, m: int) -> float:
    """Two-sided exact p-value P(D ≥ d) of the two-sample KS test under H0 (continuous distributions).

    Under H0 the merged order is a uniformly random lattice path from (0, 0) to (n, m); D < d iff the path
    stays in |i/n − j/m| < d. The probability of staying inside is propagated along the path (the next point
    comes from x with probability (n−i)/(n+m−i−j)), which never over- or underflows.
    """
    tol = 1e-12  # D takes values k/lcm(n, m): the same tolerance scipy uses to compare against it

    def inside(i: int, j: int) -> bool:
        return abs(i / n - j / m) < d - tol

    prob = np.zeros(m + 1)
    prob[0] = 1.0
    for i in range(n + 1):
        row = np.zeros(m + 1)
        for j in range(m + 1):
            if i == 0 and j == 0:
                row[0] = 1.0
                continue
            if not inside(i, j):
                continue
            total = 0.0
            if i > 0:
                total += prob[j] * (n - i + 1) / (n + m - i - j + 1)
            if j > 0:
                total += row[j - 1] * (m - j + 1) / (n + m - i - j + 1)
            row[j] = total
        prob = row
    return float(min(1.0, max(0.0, 1.0 - prob[m])))


def forget_quality(unlearned_statistic, retain_model_statistic) -> float:
    """KS-test p-value between the forget-set truth-ratio statistics of the two models."""
    x, y = np.asarray(unlearned_statistic), np.asarray(retain_model_statistic)
    return ks_pvalue_exact(ks_statistic(x, y), len(x), len(y))


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

