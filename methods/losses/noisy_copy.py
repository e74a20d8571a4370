"""noisy-copy: a seeded synthetic translation task with noisy training targets, for EISL (eisl.py).

Source sentences are words of a synthetic vocabulary s0 … s{V-1}, drawn with Zipfian frequencies
(p(s_r) ∝ 1/(r+1)^zipf) and uniform lengths in [min_words, max_words]. The target is a fixed deterministic
mapping of the source: `substitute` replaces every word by its image under a seeded bijection onto t0 …
t{V-1} (word-for-word translation, order kept); `copy` keeps the source words.

Only the training targets are corrupted, with the noise of the EISL paper's noisy Multi30k experiments
(official code: guangyliu/EISL, fairseq/examples/translation/noise_data*.ipynb), applied in its order:

    repetition p   after each word, with probability p, the same word again
    blank p        each word replaced by <blank> with probability p (the paper's `unk`)
    shuffle k      k chained swaps: draw a random order π of the positions, swap π(i) and π(i+1) for
                   i < k (k is capped at length − 1); k = −1 shuffles the whole sentence

Validation sources get their clean targets: the references BLEU is computed against. Everything is a pure
function of the parameters (numpy PCG64 streams spawned from `seed`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAD, EOS, UNK, BLANK = "<pad>", "</s>", "<unk>", "<blank>"
SPECIALS = (PAD, EOS, UNK, BLANK)  # ids 0..3: T5's pad = decoder start (0) and EOS (1)
MAPPINGS = ("substitute", "copy")


@dataclass
class NoisyCopyCorpus:
    """Sentences as word lists. train_target is noisy; train_clean and val_target are the clean mapping."""

    train_source: list[list[str]]
    train_target: list[list[str]]
    train_clean: list[list[str]]
    val_source: list[list[str]]
    val_target: list[list[str]]
    vocabulary: list[str]  # SPECIALS, then source words, then target words (for `copy`: none extra)


class NoisyCopy:
    """The generator; every argument is a key of `dataset.generator` (configs/dataset/noisy-copy.yaml)."""

    def __init__(self, words: int = 100, min_words: int = 4, max_words: int = 12, zipf: float = 1.0,
                 mapping: str = "substitute", train_size: int = 20000, val_size: int = 500,
                 shuffle: int = 0, repetition: float = 0.0, blank: float = 0.0, seed: int = 0):
        if words < 2:
            raise ValueError(f"dataset.generator.words: need at least 2 words, got {words}")
        if not 1 <= min_words <= max_words:
            raise ValueError(f"dataset.generator.min_words/max_words: need 1 <= min_words <= max_words, got {min_words}, {max_words}")
        if mapping not in MAPPINGS:
            raise ValueError(f"dataset.generator.mapping: {mapping!r} is not valid; choose one of: {', '.join(MAPPINGS)}")
        if train_size < 1 or val_size < 1:
            raise ValueError(f"dataset.generator.train_size/val_size: must be positive, got {train_size}, {val_size}")
        if shuffle < -1:
            raise ValueError(f"dataset.generator.shuffle: a number of swaps >= 0, or -1 (whole sentence), got {shuffle}")
        for key, p in (("repetition", repetition), ("blank", blank)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"dataset.generator.{key}: a probability in [0, 1], got {p}")
        if zipf < 0:
            raise ValueError(f"dataset.generator.zipf: must be >= 0, got {zipf}")
        self.words, self.min_words, self.max_words, self.zipf = int(words), int(min_words), int(max_words), float(zipf)
        self.mapping, self.train_size, self.val_size = mapping, int(train_size), int(val_size)
        self.shuffle, self.repetition, self.blank, self.seed = int(shuffle), float(repetition), float(blank), int(seed)

    @property
    def max_target_words(self) -> int:
        """The longest noisy target: every word repeated."""
        return self.max_words * (2 if self.repetition > 0 else 1)

    def source_words(self) -> list[str]:
        return [f"s{i}" for i in range(self.words)]

    def target_of(self) -> dict[str, str]:
        """The deterministic source -> target word mapping."""
        src = self.source_words()
        if self.mapping == "copy":
            return {w: w for w in src}
        perm = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self.seed, 0]))).permutation(self.words)
        return {w: f"t{int(j)}" for w, j in zip(src, perm)}

    def sentences(self, n: int, rng: np.random.Generator) -> list[list[str]]:
        src = self.source_words()
        p = 1.0 / np.arange(1, self.words + 1) ** self.zipf
        p /= p.sum()
        lengths = rng.integers(self.min_words, self.max_words + 1, size=n)
        return [[src[i] for i in rng.choice(self.words, size=int(k), p=p)] for k in lengths]

    def corrupt(self, words: list[str], rng: np.random.Generator) -> list[str]:
        """Repetition, then blank, then shuffle (the official order)."""
        out = []
        for w in words:
            out.append(w)
            if self.repetition and rng.random() < self.repetition:
                out.append(w)
        if self.blank:
            out = [BLANK if rng.random() < self.blank else w for w in out]
        if self.shuffle == -1:
            out = [out[i] for i in rng.permutation(len(out))]
        elif self.shuffle > 0:
            order = rng.permutation(len(out))
            for i in range(min(self.shuffle, len(out) - 1)):
                a, b = order[i], order[i + 1]
                out[a], out[b] = out[b], out[a]
        return out

    def generate(self) -> NoisyCopyCorpus:
        streams = [np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence([self.seed, 1]).spawn(3)]
        train_rng, val_rng, noise_rng = streams
        to_target = self.target_of()
        train_source = self.sentences(self.train_size, train_rng)
        val_source = self.sentences(self.val_size, val_rng)
        train_clean = [[to_target[w] for w in s] for s in train_source]
        train_target = [self.corrupt(t, noise_rng) for t in train_clean]
        val_target = [[to_target[w] for w in s] for s in val_source]
        extra = [] if self.mapping == "copy" else sorted(set(to_target.values()), key=lambda w: int(w[1:]))
        return NoisyCopyCorpus(train_source, train_target, train_clean, val_source, val_target,
                               [*SPECIALS, *self.source_words(), *extra])
