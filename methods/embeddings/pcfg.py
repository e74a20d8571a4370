"""A seeded probabilistic context-free grammar whose part-of-speech tags are known by construction (the POS probe of
Bit Cipher, bench/bit_cipher_repro.py and tests/methods/test_bit_cipher.py).

Grammar (probabilities in brackets):
    S   -> NP VP [0.85] | S CONJ S [0.15, depth-capped]
    NP  -> DET N' [0.7] | PRON [0.15] | DET N' PP [0.15]
    N'  -> NOUN [0.6] | ADJ N' [0.4, at most 3 ADJ]
    VP  -> VERB NP [0.5] | VERB [0.2] | VERB ADV [0.15] | VERB NP PP [0.15]
    PP  -> PREP NP
Each tag has its own small lexicon of made-up words (disjoint across tags), drawn with Zipf(1) weights, so
frequency varies within a tag and a word's tag is a function of the word.
"""

from __future__ import annotations

import random

LEXICON_SIZES = {"DET": 6, "PRON": 8, "NOUN": 120, "ADJ": 60, "VERB": 80, "ADV": 30, "PREP": 10, "CONJ": 4}
_SYLL = ["ba", "ko", "ri", "mu", "te", "za", "lo", "pi", "ne", "su", "da", "fe", "gu", "hi", "ja", "vo"]


def lexicon(seed: int = 0) -> dict[str, list[str]]:
    """{tag: words}: distinct random syllable strings, disjoint across tags."""
    rng, used, out = random.Random(seed), set(), {}
    for tag, n in LEXICON_SIZES.items():
        words = []
        while len(words) < n:
            w = "".join(rng.choice(_SYLL) for _ in range(rng.randint(1, 3)))
            if w not in used:
                used.add(w)
                words.append(w)
        out[tag] = words
    return out


class PCFG:
    """Sentences as [(word, tag)], a pure function of the seed."""

    def __init__(self, seed: int = 0):
        self.rng = random.Random(seed)
        self.lex = lexicon(seed)
        self.weights = {t: [1.0 / (i + 1) for i in range(len(ws))] for t, ws in self.lex.items()}

    def word(self, tag: str) -> tuple[str, str]:
        return self.rng.choices(self.lex[tag], self.weights[tag])[0], tag

    def nbar(self, adj: int = 0) -> list:
        if adj < 3 and self.rng.random() < 0.4:
            return [self.word("ADJ"), *self.nbar(adj + 1)]
        return [self.word("NOUN")]

    def np_(self, depth: int = 0) -> list:
        r = self.rng.random()
        if r < 0.15:
            return [self.word("PRON")]
        out = [self.word("DET"), *self.nbar()]
        if r > 0.85 and depth < 2:
            out += self.pp(depth + 1)
        return out

    def pp(self, depth: int) -> list:
        return [self.word("PREP"), *self.np_(depth)]

    def vp(self) -> list:
        r, v = self.rng.random(), [self.word("VERB")]
        if r < 0.5:
            return v + self.np_()
        if r < 0.7:
            return v
        if r < 0.85:
            return v + [self.word("ADV")]
        return v + self.np_() + self.pp(1)

    def sentence(self, depth: int = 0) -> list[tuple[str, str]]:
        if depth < 1 and self.rng.random() < 0.15:
            return [*self.sentence(depth + 1), self.word("CONJ"), *self.sentence(depth + 1)]
        return [*self.np_(), *self.vp()]

    def corpus(self, n_sentences: int) -> list[list[tuple[str, str]]]:
        return [self.sentence() for _ in range(n_sentences)]


def tagged_stream(sentences: list[list[tuple[str, str]]]) -> tuple[list[str], list[str], list[int]]:
    """(words, tags, sentence index of each token) of the corpus as one stream."""
    words, tags, sent = [], [], []
    for i, s in enumerate(sentences):
        for w, t in s:
            words.append(w)
            tags.append(t)
            sent.append(i)
    return words, tags, sent


def pos_probe(vectors, word_ids, tags, train_mask, seed: int = 0) -> float:
    """Token-level accuracy of a multinomial logistic regression (scikit-learn) from vectors[word] to the tag,
    fit on the tokens of `train_mask`, scored on the rest. Features are standardised on the training tokens."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(vectors, dtype=np.float64)[np.asarray(word_ids)]
    y, m = np.asarray(tags), np.asarray(train_mask, dtype=bool)
    scaler = StandardScaler().fit(x[m])
    clf = LogisticRegression(max_iter=2000, random_state=seed).fit(scaler.transform(x[m]), y[m])
    return float(clf.score(scaler.transform(x[~m]), y[~m]))
