"""An n-gram lexicon by t-statistic, and maximum-matching segmentation of a token stream (ERNIE-Gram, step 1).

For an n-gram g = w_1 .. w_n of a corpus of N tokens, with relative frequencies p(g) = c(g) / N and
p(w_i) = c(w_i) / N, the t-statistic of the hypothesis "the words occur independently" is

    t(g) = (p(g) - prod_i p(w_i)) / sqrt(p(g) / N)

(the sample mean p(g) of N Bernoulli draws against the independence mean, with the Bernoulli variance
p(1 - p) ~ p for small p). Collocations, whose words co-occur far more often than chance, score high. The lexicon
keeps the `size` n-grams (2 <= n <= max_n, count >= min_count, no excluded token such as EOS inside) of highest t,
ties broken by the n-gram's ids (deterministic). Orders are ranked together: t grows like sqrt(c(g)) for strong
collocations of any order. N counts every token of the stream, the excluded ones too.

Segmentation is forward maximum matching: at each position, the longest lexicon n-gram that starts there
(max_n first) is one unit, else the single token. Units never contain an excluded token, so they never cross a
document boundary (EOS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The masking objectives over the segmentation's units (methods/pretraining/ngram_mlm.py build_batch).
OBJECTIVES = ("explicit", "span", "token")


def _keys(tokens: np.ndarray, n: int, base: int) -> np.ndarray:
    """The n-grams of `tokens` (length L) as L - n + 1 integers sum_i w_{t+i} base^(n-1-i)."""
    t = np.asarray(tokens, dtype=np.int64)
    key = t[: len(t) - n + 1].copy()
    for i in range(1, n):
        key = key * base + t[i: len(t) - n + 1 + i]
    return key


def _decode(key: int, n: int, base: int) -> tuple[int, ...]:
    out = []
    for _ in range(n):
        key, r = divmod(int(key), base)
        out.append(r)
    return tuple(reversed(out))


def t_statistics(tokens: np.ndarray, n: int, vocab_size: int, exclude: tuple[int, ...] = (),
                 min_count: int = 1) -> tuple[list[tuple[int, ...]], np.ndarray, np.ndarray]:
    """Every n-gram of `tokens` seen at least `min_count` times without an `exclude`d token: (n-grams, their
    counts, their t-statistics), in increasing key order."""
    t = np.asarray(tokens, dtype=np.int64)
    N = len(t)
    if N < n or vocab_size ** n >= 2 ** 63:
        if vocab_size ** n >= 2 ** 63:
            raise ValueError(f"t_statistics: {n}-grams of a {vocab_size}-token vocabulary overflow int64 keys")
        return [], np.zeros(0, dtype=np.int64), np.zeros(0)
    keys = _keys(t, n, vocab_size)
    if exclude:
        bad = np.isin(t, np.asarray(exclude, dtype=np.int64))
        hit = np.zeros(len(keys), dtype=bool)
        for i in range(n):
            hit |= bad[i: len(t) - n + 1 + i]
        keys = keys[~hit]
    uniq, counts = np.unique(keys, return_counts=True)
    keep = counts >= min_count
    uniq, counts = uniq[keep], counts[keep]
    p_word = np.bincount(t, minlength=vocab_size).astype(np.float64) / N
    grams = [_decode(k, n, vocab_size) for k in uniq]
    p = counts / N
    indep = np.ones(len(uniq))
    for i in range(n):
        indep *= p_word[[g[i] for g in grams]] if grams else 1.0
    stat = (p - indep) / np.sqrt(p / N) if len(p) else np.zeros(0)
    return grams, counts, stat


@dataclass
class NgramLexicon:
    """The lexicon V_N: its n-grams (ids of the base vocabulary), their t-statistics and counts. Index i of
    `ngrams` is n-gram id i (the model's label vocab_size + i)."""

    ngrams: list[tuple[int, ...]]
    scores: np.ndarray
    counts: np.ndarray
    vocab_size: int

    def __post_init__(self):
        self.index = {g: i for i, g in enumerate(self.ngrams)}
        self.max_n = max((len(g) for g in self.ngrams), default=1)

    def __len__(self) -> int:
        return len(self.ngrams)

    @classmethod
    def build(cls, tokens: np.ndarray, vocab_size: int, size: int = 500, max_n: int = 3, min_count: int = 5,
              exclude: tuple[int, ...] = ()) -> NgramLexicon:
        """The `size` n-grams (2 <= n <= max_n) of highest t-statistic in `tokens` (see the module docstring)."""
        grams: list[tuple[int, ...]] = []
        counts, stats = [], []
        for n in range(2, max_n + 1):
            g, c, s = t_statistics(tokens, n, vocab_size, exclude, min_count)
            grams += g
            counts.append(c)
            stats.append(s)
        if not grams:
            return cls([], np.zeros(0), np.zeros(0, dtype=np.int64), vocab_size)
        c, s = np.concatenate(counts), np.concatenate(stats)
        # highest t first; ties by (n, ids)
        order = sorted(range(len(grams)), key=lambda i: (-s[i], len(grams[i]), grams[i]))[:size]
        return cls([grams[i] for i in order], s[order], c[order], vocab_size)

    def segment(self, tokens) -> list[tuple[int, int]]:
        """Forward maximum matching of a token sequence: units (start, length), covering it in order."""
        seq = [int(x) for x in tokens]
        units, i, L = [], 0, len(seq)
        while i < L:
            n = 1
            for m in range(min(self.max_n, L - i), 1, -1):
                if tuple(seq[i:i + m]) in self.index:
                    n = m
                    break
            units.append((i, n))
            i += n
        return units
