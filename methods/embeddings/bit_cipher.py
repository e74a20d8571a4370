"""Bit Cipher — A Simple yet Powerful Word Representation System that Integrates Efficiently with Language Models.
Haoran Zhao and Jake Ryland Williams, arXiv:2311.11012 (2023). Cipher enumeration read from the authors'
`jakerylandwilliams/IaMaN`, src/IaMaN/types.py (`Cipher.update`, `encipher`, `decipher`).

1. Cipher. Sort the vocabulary by unigram frequency (rank r = 0 most frequent). With b bits,
   b >= floor(log2 |V|) + 1 (so 2^b - 1 >= |V| non-zero bit vectors exist), assign distinct binary vectors u_r in
   order of increasing number of active bits: ranks 0..b-1 are one-hot, then 2-hot, 3-hot, ... . The order inside a
   level is the code's: level 1 is e_0, e_1, ..., e_{b-1}; then the basis is reversed (e_{b-1}, ..., e_0) for good,
   and level k is enumerated as "for each basis vector e_i (reversed order), for each level-(k-1) vector p (in the
   reverse of its assignment order): v = |p - e_i| (flip bit i); take v if it has k active bits and is new".
        encipher(w) = u_r / sum(u_r)        (L1-normalised)
        decipher(v) = argmax_r  U v          (U: the binary u_r as rows; ties -> the lowest rank, which is the
                                              right word: a superset of w's bits has more bits, so a higher rank)
2. Contextual vectors over a window +-m of the token stream x_1..x_N (train split):
        C_d(w) = sum_{t : x_t = w} encipher(x_{t+d}),   d in {-m..-1, 1..m}
        summation:     S(w) = sum_d C_d(w)                        (dimension b)
        concatenation: K(w) = [C_{-m}(w), ..., C_{-1}(w), C_1(w), ..., C_m(w)]   (dimension 2m*b)
   then a log co-occurrence transform of each b-block (`transform`): "pmi" (default)
        log P(j | w) - log P(j),   P(j | w) = (C_wj + 1) / (sum_j' C_wj' + b),   P(j) = sum_w C_wj / sum_wj C_wj
   i.e. GloVe's log X_wc less its row and column terms (the PMI that word2vec/GloVe converge to); "log": log(1 + C);
   "none": C.
3. LM use: the chosen parts (`vectors`: any of cipher, sum, concat; each part divided by its own std, then joined;
   `random`, a control: seeded Gaussian vectors of the dimension of [cipher, concat], same projection and scale)
   become the input embedding of the model (methods/embeddings/init.py: frozen or trainable, projected to the
   hidden size by a fixed random map, a learned linear map or zero-padding, scaled to the replaced init's std).

Choices and deviations (the paper text beyond the abstract was not read; step 2's weights/normalisation are ours):
- Tokens are the BPE tokens of the run's tokenizer (the paper ciphers words); the frequencies are counts over the
  run's train split (prepare_data keeps data.train and the tokenizer's vocabulary; prepare_model uses them). Tokens
  that never occur rank last; ties in frequency are broken by token id (the code: first occurrence order).
- `bits` below the minimum is an error (the code silently raises it to the minimum); null: the minimum.
- Windows run over the concatenated train stream, across document boundaries.
- The transform (pmi/log/none) and the per-part std scaling are our choices (catalog: "unverified").
- The LM embedding default is [cipher, concat] (identity + context; the paper's exact LM recipe was not read),
  trainable, random projection: the cipher part keeps the map injective, the context part carries distribution.
- The code's "noise"/"Edgevec" extras of `Represent` (IaMaN's own model) are not part of this method.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from methods.base import Method
from methods.embeddings.init import check_init_args

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

TRANSFORMS = ("pmi", "log", "none")
PARTS = ("cipher", "sum", "concat", "random")


def min_bits(vocab_size: int) -> int:
    """floor(log2 |V|) + 1: the fewest bits whose 2^b - 1 non-zero vectors cover |V| words."""
    return int(math.floor(math.log2(max(1, vocab_size)))) + 1


def enumerate_codes(bits: int):
    """The active-bit tuples in the code's order (IaMaN Cipher.update), one per rank, until all 2^b - 1 are out."""
    basis = list(range(bits))
    level = [(i,) for i in basis]
    yield from level
    basis.reverse()
    seen = set(level)
    for k in range(2, bits + 1):
        prev, level = list(reversed(level)), []
        for i in basis:
            for p in prev:
                v = tuple(sorted(set(p) ^ {i}))
                if len(v) == k and v not in seen:
                    seen.add(v)
                    level.append(v)
                    yield v


class Cipher:
    """The bit cipher of a vocabulary given in rank order (most frequent first)."""

    def __init__(self, n_words: int, bits: int | None = None):
        import numpy as np

        need = min_bits(n_words)
        self.bits = need if bits is None else int(bits)
        if self.bits < need:
            raise ValueError(f"bit_cipher.bits: must be >= floor(log2 |V|) + 1 = {need} for |V| = {n_words}, "
                             f"got {self.bits}")
        codes = enumerate_codes(self.bits)
        self.active = [next(codes) for _ in range(n_words)]
        self.U = np.zeros((n_words, self.bits))
        for r, idx in enumerate(self.active):
            self.U[r, list(idx)] = 1.0
        self.V = self.U / self.U.sum(1, keepdims=True)  # encipher: L1-normalised rows

    def encipher(self, rank: int) -> np.ndarray:
        return self.V[rank].copy()

    def decipher(self, v: np.ndarray) -> int:
        return int((self.U @ v).argmax())  # first maximum: the lowest rank


def frequency_ranks(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """rank_of[token id]: 0 for the most frequent token (ties by id; unseen tokens last)."""
    import numpy as np

    counts = np.bincount(np.asarray(ids, dtype=np.int64), minlength=vocab_size)[:vocab_size]
    order = np.argsort(-counts, kind="stable")
    rank = np.empty(vocab_size, dtype=np.int64)
    rank[order] = np.arange(vocab_size)
    return rank


def cipher_table(ids: np.ndarray, vocab_size: int, bits: int | None = None) -> np.ndarray:
    """encipher(token) for every token id (rows in id order), ranks from the frequencies of `ids`."""
    cipher = Cipher(vocab_size, bits)
    return cipher.V[frequency_ranks(ids, vocab_size)]


def transform_block(c: np.ndarray, transform: str) -> np.ndarray:
    import numpy as np

    if transform == "none":
        return c
    if transform == "log":
        return np.log1p(c)
    p_cond = (c + 1.0) / (c.sum(1, keepdims=True) + c.shape[1])
    p = c.sum(0) / max(c.sum(), 1e-12)
    return np.log(p_cond) - np.log(np.maximum(p, 1e-12))


def context_blocks(ids: np.ndarray, table: np.ndarray, window: int) -> list[np.ndarray]:
    """[C_d for d = -m..-1, 1..m]: per relative position, the sum of the neighbours' cipher vectors (V x b each)."""
    import numpy as np

    ids = np.asarray(ids, dtype=np.int64)
    n, out = len(ids), []
    for d in [*range(-window, 0), *range(1, window + 1)]:
        c = np.zeros_like(table)
        lo, hi = max(0, -d), min(n, n - d)
        np.add.at(c, ids[lo:hi], table[ids[lo + d:hi + d]])
        out.append(c)
    return out


def contextual_vectors(ids: np.ndarray, table: np.ndarray, window: int, mode: str = "sum",
                       transform: str = "pmi") -> np.ndarray:
    """Summation (V x b) or concatenation (V x 2m*b) contextual vectors, each b-block transformed."""
    import numpy as np

    blocks = context_blocks(ids, table, window)
    if mode == "sum":
        return transform_block(sum(blocks), transform)
    if mode == "concat":
        return np.concatenate([transform_block(c, transform) for c in blocks], axis=1)
    raise ValueError(f"bit_cipher: mode must be sum or concat, got {mode!r}")


def embedding_matrix(ids: np.ndarray, vocab_size: int, bits: int | None, window: int, parts: list[str],
                     transform: str) -> np.ndarray:
    """The joined parts (each divided by its own std) over token ids 0..vocab_size-1."""
    import numpy as np

    table = cipher_table(ids, vocab_size, bits)
    got = []
    for part in parts:
        if part == "random":  # the control: Gaussian vectors of the dimension of [cipher, concat], seeded
            m = np.random.default_rng(0).standard_normal((vocab_size, table.shape[1] * (1 + 2 * window)))
        else:
            m = table if part == "cipher" else contextual_vectors(ids, table, window, part, transform)
        got.append(m / max(float(m.std()), 1e-12))
    return np.concatenate(got, axis=1)


class BitCipher(Method):
    """Bit-cipher (+ contextual) vectors as the initial, frozen or trainable, input embedding of a causal LM."""

    needs_task = frozenset({"tokens"})
    needs_model = frozenset({"causal-lm"})

    def __init__(self, name: str = "bit_cipher", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 bits: int | None = None, window: int = 2, vectors: list[str] = ("cipher", "concat"),
                 transform: str = "pmi", freeze: bool = False, projection: str = "random", scale: str = "match",
                 seed: int = 0):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        if bits is not None and (isinstance(bits, bool) or int(bits) < 1):
            raise ValueError(f"bit_cipher.bits: must be a positive integer or null (the minimum), got {bits}")
        if isinstance(window, bool) or int(window) < 1:
            raise ValueError(f"bit_cipher.window: must be an integer >= 1, got {window}")
        vectors = [vectors] if isinstance(vectors, str) else list(vectors)
        if not vectors or any(v not in PARTS for v in vectors):
            raise ValueError(f"bit_cipher.vectors: must be a non-empty list of {', '.join(PARTS)}, got {vectors}")
        if transform not in TRANSFORMS:
            raise ValueError(f"bit_cipher.transform: must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
        check_init_args("bit_cipher", projection, scale)
        self.bits = None if bits is None else int(bits)
        self.window, self.vectors, self.transform = int(window), vectors, transform
        self.freeze, self.projection, self.scale, self.seed = bool(freeze), projection, scale, int(seed)
        self.train_ids: Any = None
        self.tokens: list[str] | None = None

    def prepare_data(self, data: Any) -> Any:
        """Keep what prepare_model needs: the train token stream (frequencies, windows) and the token strings."""
        import numpy as np

        from methods.embeddings.init import vocabulary_tokens

        self.train_ids = np.asarray(data.train, dtype=np.int64)
        self.tokens = vocabulary_tokens(data.tokenizer)
        return data

    def prepare_model(self, model: nn.Module) -> nn.Module:
        from methods.embeddings.init import init_input_embeddings

        if self.train_ids is None or self.tokens is None:
            raise ValueError("bit_cipher: prepare_data must run before prepare_model (it keeps the corpus)")
        m = embedding_matrix(self.train_ids, len(self.tokens), self.bits, self.window, self.vectors, self.transform)
        return init_input_embeddings(model, m, source_tokens=self.tokens, target_tokens=self.tokens,
                                     projection=self.projection, freeze=self.freeze, scale=self.scale,
                                     seed=self.seed)
