"""AES Systems Are Both Overstable And Oversensitive: Explaining Why And Proposing Defenses
(Kumar Singla, Parekh, Singh, Li, Shah & Chen; arXiv:2109.11728, Dialogue & Discourse 2023).

Train an automatic-essay-scoring regressor f (the task's MSE loss; QWK of the rounded scores), then explain
and attack it through its input embeddings x = embed(ids):

    Integrated Gradients   IG_t = Σ_e (x_te − x'_te) · ∫₀¹ ∂f(x' + α(x − x'))/∂x_te dα      (Sundararajan et al.)
    completeness           Σ_t IG_t = f(x) − f(x')
    word attribution       A_w = Σ_{t ∈ tokens(w)} IG_t          (special tokens belong to no word)

with the baseline x' = 0 (all-zero input embeddings, every position, special tokens included; `baseline: pad`
uses the pad token's embedding instead) and Captum's Gauss–Legendre quadrature at `n_steps` = 64 points.

Suites on `eval_essays` validation essays (each clipped to the words the model sees in seq_len tokens):
  overstability    delete the bottom-p% words by |A_w| vs the top-p% (and a random p%), shuffle the bottom-p%
                   among their positions, shuffle the whole essay: mean |f(x̃) − f(x)| and the share of rounded
                   scores left unchanged. Overstable = big edits, small moves (bag-of-words behaviour).
  oversensitivity  insert k class-associated words at random positions: the words whose rate in a training essay
                   (count / length) correlates most (least) with its score (`class_words: train`), or those with
                   the highest (lowest) mean attribution over training essays (`class_words: attribution`). Flip
                   rate = share of essays whose rounded score changes; shift = mean signed score change.
  detector         a scikit-learn classifier (logistic regression or random forest) on attribution features
                   (`attribution_features`, shape (n, bins + top_m + 6)) tells original essays from adversarial
                   ones (k-word insertions and bottom-p% deletions); ROC-AUC on held-out essays (an essay and its
                   perturbations are on the same side of the split).

Deviations from the paper (also in the YAML and the README row):
- No official code; the suites follow the paper's descriptions. The paper attacks ASAP-trained memory-network,
  SkipFlow and BERT scorers with many more perturbation kinds (sentence deletion/shuffling/repetition, false
  facts, synonym and song-lyric insertions, ...): here word deletion, word shuffling and word insertion only.
- IG baseline: all-zero input embeddings (the catalog's reading of the paper: "zero or pad"; which one the
  paper used is unverified). Position/type embeddings of a BERT stay on along the path (they are added inside
  the encoder): IG explains the word embeddings.
- Class-associated words come from the training data by the correlation of their rate with the score (or from
  attributions);
  how the paper picked its words is not specified beyond "high co-occurrence with a score class".
- The detector's architecture and features are unverified (the paper: detection models that flag "unusual
  attribution patterns"): ours is logistic regression / random forest on a histogram of normalised word
  attributions, the top shares and summary statistics. Essay length is deliberately not a feature (it alone
  would flag deletions).
- Words are whitespace-separated strings; inserted words are lower-cased and stripped of punctuation.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from methods.base import Method
from methods.batching import pad_right

log = logging.getLogger(__name__)

BASELINES = ("zero", "pad")
IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")
CLASS_WORDS = ("train", "attribution")
DETECTORS = ("logistic", "random_forest")
DETECTOR_STATS = ("sum", "mean", "std", "max", "min", "frac_positive")  # the summary part of the features


# -- words and tokens ----------------------------------------------------------------------------------------------
def split_words(text: str) -> list[str]:
    return text.split()


def join_words(words: Sequence[str]) -> str:
    return " ".join(words)


def normalise_word(word: str) -> str:
    """Lower-cased, punctuation stripped at both ends ("Good," -> "good"); "" for pure punctuation."""
    return re.sub(r"^\W+|\W+$", "", word.lower())


def tokenize_words(tokenizer, words: Sequence[str], seq_len: int) -> tuple[list[int], list[int]]:
    """Token ids of " ".join(words) (special tokens added, truncated to seq_len) and, per token, the index of the
    word it belongs to (-1 for special tokens), from the fast tokenizer's character offsets."""
    text = join_words(words)
    char_word = np.full(len(text) + 1, -1, dtype=np.int64)
    pos = 0
    for i, w in enumerate(words):
        char_word[pos:pos + len(w)] = i
        pos += len(w) + 1
    enc = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True, truncation=True,
                    max_length=seq_len, add_special_tokens=True)
    word_of = []
    for (start, end), special in zip(enc["offset_mapping"], enc["special_tokens_mask"]):
        hit = char_word[start:max(end, start + 1)] if not special and end > start else np.array([-1])
        hit = hit[hit >= 0]
        word_of.append(int(hit[0]) if len(hit) else -1)
    return list(enc["input_ids"]), word_of


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, L) input_ids and attention_mask (methods.batching.pad_right) on `device`."""
    ids, mask = pad_right(rows, pad_id)
    return ids.to(device), mask.to(device)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict_scores(model: nn.Module, rows: Sequence[Sequence[int]], pad_id: int, batch_size: int = 32) -> np.ndarray:
    """The model's (unrounded) scores of token-id rows."""
    device, out = model_device(model), []
    for s in range(0, len(rows), batch_size):
        ids, mask = pad_batch(rows[s:s + batch_size], pad_id, device)
        out.append(model(ids, mask).float().reshape(-1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


# -- Integrated Gradients ------------------------------------------------------------------------------------------
def integrated_gradients(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_steps: int = 64,
                         baseline: str = "zero", pad_id: int = 0, method: str = "gausslegendre",
                         internal_batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token IG (B, L) of the score model.from_embeddings(embeds, mask) w.r.t. the input embeddings, summed over
    the embedding dimension (0 on padding), Captum's convergence delta Σ_t IG_t − (f(x) − f(x')) (B,), and
    f(x) − f(x') (B,)."""
    from captum.attr import IntegratedGradients

    if baseline not in BASELINES:
        raise ValueError(f"baseline: {baseline!r}; choose one of: {', '.join(BASELINES)}")

    def forward(embeds, mask):
        return model.from_embeddings(embeds, mask).reshape(-1)

    with torch.enable_grad():
        embeds = model.embed(input_ids).detach()
        base = torch.zeros_like(embeds) if baseline == "zero" else model.embed(torch.full_like(input_ids, pad_id)).detach()
        ig = IntegratedGradients(forward)
        attr, delta = ig.attribute(embeds, baselines=base, additional_forward_args=(attention_mask,),
                                   n_steps=int(n_steps), method=method, internal_batch_size=internal_batch_size,
                                   return_convergence_delta=True)
    with torch.no_grad():
        gap = forward(embeds, attention_mask) - forward(base, attention_mask)
    token_attr = attr.sum(-1) * attention_mask.to(attr.dtype)
    return token_attr.detach(), delta.detach().reshape(-1), gap.detach()


def word_attributions(token_attr: Sequence[float], word_of: Sequence[int], n_words: int) -> np.ndarray:
    """A_w = Σ of the attributions of word w's tokens (tokens of word -1, the special ones, are left out)."""
    t = np.asarray(token_attr, dtype=np.float64)[:len(word_of)]
    w = np.asarray(word_of, dtype=np.int64)
    keep = w >= 0
    return np.bincount(w[keep], weights=t[keep], minlength=n_words)[:n_words]


def attribute_essays(model: nn.Module, tokenizer, essays: Sequence[Sequence[str]], seq_len: int, pad_id: int,
                     n_steps: int = 64, baseline: str = "zero", method: str = "gausslegendre", batch_size: int = 8,
                     internal_batch_size: int | None = None) -> dict:
    """IG word attributions of each essay (a list of words): {"words": per-essay arrays, "scores": f(x),
    "delta": completeness error, "gap": f(x) − f(x')}."""
    enc = [tokenize_words(tokenizer, words, seq_len) for words in essays]
    device = model_device(model)
    attrs, deltas, gaps, scores = [], [], [], []
    for s in range(0, len(essays), batch_size):
        chunk = enc[s:s + batch_size]
        ids, mask = pad_batch([e[0] for e in chunk], pad_id, device)
        tok, delta, gap = integrated_gradients(model, ids, mask, n_steps, baseline, pad_id, method,
                                               internal_batch_size)
        with torch.no_grad():
            scores.append(model(ids, mask).float().reshape(-1).cpu())
        for i, (_, word_of) in enumerate(chunk):
            attrs.append(word_attributions(tok[i].float().cpu().numpy(), word_of, len(essays[s + i])))
        deltas.append(delta.float().cpu())
        gaps.append(gap.float().cpu())
    cat = lambda xs: torch.cat(xs).numpy() if xs else np.zeros(0)  # noqa: E731
    return {"words": attrs, "scores": cat(scores), "delta": cat(deltas), "gap": cat(gaps)}


# -- perturbations -------------------------------------------------------------------------------------------------
def n_of(pct: float, n: int) -> int:
    """How many of n words p% is: round(p·n/100), at least 1 (of a non-empty essay), at most n."""
    return 0 if n == 0 else min(n, max(1, int(round(pct * n / 100.0))))


def ranked_by_attribution(attr: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Word indices by ascending |A_w| (ties broken at random when rng is given, else by position)."""
    a = np.abs(np.asarray(attr, dtype=np.float64))
    tie = rng.random(len(a)) if rng is not None else np.arange(len(a))
    return np.lexsort((tie, a))


def delete_words(words: Sequence[str], idx) -> list[str]:
    drop = set(int(i) for i in idx)
    return [w for i, w in enumerate(words) if i not in drop]


def shuffle_words(words: Sequence[str], idx, rng: np.random.Generator) -> list[str]:
    """The words at positions idx permuted among those positions; the others stay where they are."""
    out, idx = list(words), np.asarray(sorted(int(i) for i in idx), dtype=np.int64)
    for src, dst in zip(rng.permutation(idx), idx):
        out[dst] = words[src]
    return out


def insert_words(words: Sequence[str], new: Sequence[str], rng: np.random.Generator) -> tuple[list[str], list[int]]:
    """`words` with each of `new` inserted at a uniformly random position: len(new) more words. Returns the essay
    and the positions the inserted words occupy in it (deleting them gives `words` back)."""
    out, flags = list(words), [False] * len(words)
    for w in new:
        at = int(rng.integers(0, len(out) + 1))
        out.insert(at, w)
        flags.insert(at, True)
    return out, [i for i, f in enumerate(flags) if f]


def class_words_from_data(texts: Sequence[str], labels: Sequence[float], n: int, min_df: int = 5
                          ) -> tuple[list[str], list[str]]:
    """The n words whose rate in an essay (occurrences / words) correlates most with its score (Pearson's r over
    the essays), and the n with the most negative r: words that co-occur with high (low) score classes. The rate,
    not the presence, so that words common in every essay do not look high-class because long essays score high.
    Words in fewer than min_df essays are skipped."""
    y = np.asarray(labels, dtype=np.float64)
    counts: dict[str, dict[int, int]] = {}
    lengths = np.zeros(len(texts))
    for i, t in enumerate(texts):
        words = split_words(t)
        lengths[i] = max(1, len(words))
        for w in words:
            w = normalise_word(w)
            if w:
                row = counts.setdefault(w, {})
                row[i] = row.get(i, 0) + 1
    yc = y - y.mean()
    scored = []
    for w, row in counts.items():
        if len(row) < min_df:
            continue
        rate = np.zeros(len(texts))
        idx = np.fromiter(row.keys(), dtype=np.int64)
        rate[idx] = np.fromiter(row.values(), dtype=np.float64) / lengths[idx]
        rc = rate - rate.mean()
        denom = math.sqrt(float((rc ** 2).sum() * (yc ** 2).sum()))
        if denom > 0:
            scored.append((float((rc * yc).sum()) / denom, w))
    scored.sort()
    return [w for _, w in scored[::-1][:n]], [w for _, w in scored[:n]]


def class_words_from_attributions(essays: Sequence[Sequence[str]], attrs: Sequence[np.ndarray], n: int,
                                  min_df: int = 5) -> tuple[list[str], list[str]]:
    """The n word types with the highest mean attribution over the essays (min_df occurrences), and the n lowest."""
    sums: dict[str, list[float]] = {}
    for words, a in zip(essays, attrs):
        for w, v in zip(words, a):
            w = normalise_word(w)
            if w:
                sums.setdefault(w, []).append(float(v))
    scored = sorted((float(np.mean(v)), w) for w, v in sums.items() if len(v) >= min_df)
    return [w for _, w in scored[::-1][:n]], [w for _, w in scored[:n]]


def pick_words(pool: Sequence[str], k: int, rng: np.random.Generator) -> list[str]:
    """k words of the pool: distinct while the pool has k, else drawn with replacement."""
    if not pool:
        raise ValueError("no class-associated words to insert (lower min_df?)")
    return [pool[i] for i in rng.choice(len(pool), size=k, replace=k > len(pool))]


# -- scores --------------------------------------------------------------------------------------------------------
def round_scores(scores, lo: int, hi: int) -> np.ndarray:
    """Scores rounded halves up and clipped to [lo, hi] (the task's rounding: metrics.round_scores)."""
    from methods.classification.metrics import round_scores as rounded

    return rounded(scores, (lo, hi))


def qwk(true, pred, lo: int, hi: int) -> float:
    """Quadratic weighted kappa of the rounded, clipped predictions against the integer scores in [lo, hi]
    (methods.classification.metrics.regression_metrics: sklearn's cohen_kappa_score, weights="quadratic")."""
    from methods.classification.metrics import regression_metrics

    return float(regression_metrics(np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64),
                                    (lo, hi))["qwk"])


# -- detector ------------------------------------------------------------------------------------------------------
def attribution_features(attrs: Sequence[np.ndarray], bins: int = 10, top_m: int = 5) -> np.ndarray:
    """(n, bins + top_m + len(DETECTOR_STATS)) features of per-essay word attributions: the histogram (shares) of
    A_w / max|A| on `bins` equal bins of [-1, 1]; the top_m largest |A_w| / Σ|A| (0-padded); and Σ A, mean, std,
    max, min and the share of positive A_w. No length feature."""
    rows = []
    edges = np.linspace(-1.0, 1.0, bins + 1)
    for a in attrs:
        a = np.asarray(a, dtype=np.float64)
        if len(a) == 0:
            rows.append(np.zeros(bins + top_m + len(DETECTOR_STATS)))
            continue
        scale = np.abs(a).max() or 1.0
        hist = np.histogram(np.clip(a / scale, -1, 1), bins=edges)[0] / len(a)
        mag = np.sort(np.abs(a))[::-1]
        top = np.zeros(top_m)
        top[:min(top_m, len(a))] = mag[:top_m] / (mag.sum() or 1.0)
        stats = [a.sum(), a.mean(), a.std(), a.max(), a.min(), float((a > 0).mean())]
        rows.append(np.concatenate([hist, top, stats]))
    return np.asarray(rows, dtype=np.float64).reshape(len(rows), bins + top_m + len(DETECTOR_STATS))


def make_detector(kind: str, seed: int = 0):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "logistic":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    if kind == "random_forest":
        return RandomForestClassifier(n_estimators=200, random_state=seed)
    raise ValueError(f"detector: {kind!r}; choose one of: {', '.join(DETECTORS)}")


def detector_auc(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, kind: str = "logistic",
                 test_frac: float = 0.5, seed: int = 0, attack: np.ndarray | None = None) -> dict[str, float]:
    """Train the detector on the essays (groups) of one side of a random split, score the other: ROC-AUC of
    adversarial (label 1) vs original (0), accuracy at 0.5, and the AUC per attack name (originals vs that
    attack's samples) where `attack` names each row's perturbation."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    ids = np.unique(groups)
    test_ids = set(rng.permutation(ids)[:max(1, int(round(test_frac * len(ids))))].tolist())
    test = np.array([g in test_ids for g in groups])
    train = ~test
    if len(set(labels[train].tolist())) < 2 or len(set(labels[test].tolist())) < 2:
        return {"detector_auc": float("nan"), "detector_accuracy": float("nan")}
    det = make_detector(kind, seed).fit(features[train], labels[train])
    prob = det.predict_proba(features[test])[:, 1]
    y = labels[test]
    out = {"detector_auc": float(roc_auc_score(y, prob)), "detector_accuracy": float(((prob >= 0.5) == y).mean()),
           "detector_test_samples": float(test.sum())}
    if attack is not None:
        at = attack[test]
        for name in sorted(set(at[y == 1].tolist())):
            sel = (y == 0) | (at == name)
            out[f"detector_auc_{name}"] = float(roc_auc_score(y[sel], prob[sel]))
    return out


# -- the method ----------------------------------------------------------------------------------------------------
class AESRobust(Method):
    """Train the essay-score regressor (the task's MSE), then the IG / overstability / oversensitivity / detector
    suites in `evaluate`."""

    needs_task = frozenset({"text-regression"})

    def __init__(self, name: str = "aes_robust", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 eval_essays: int = 64, n_steps: int = 64, baseline: str = "zero", ig_method: str = "gausslegendre",
                 ig_batch_size: int = 8, ig_internal_batch_size: int | None = 512,
                 delete_pcts: Sequence[float] = (10, 50), insert_ks: Sequence[int] = (1, 3, 5, 10),
                 class_words: str = "train", n_class_words: int = 10, min_df: int = 5, class_word_essays: int = 128,
                 detector: str = "logistic", detector_insert_k: int = 5, detector_delete_pct: float = 50,
                 detector_bins: int = 10, detector_top_m: int = 5, detector_test_frac: float = 0.5, seed: int = 0):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        self.eval_essays, self.n_steps = int(eval_essays), int(n_steps)
        self.baseline, self.ig_method = baseline, ig_method
        self.ig_batch_size = int(ig_batch_size)
        self.ig_internal_batch_size = None if ig_internal_batch_size is None else int(ig_internal_batch_size)
        self.delete_pcts = tuple(float(p) for p in delete_pcts)
        self.insert_ks = tuple(int(k) for k in insert_ks)
        self.class_words, self.n_class_words, self.min_df = class_words, int(n_class_words), int(min_df)
        self.class_word_essays = int(class_word_essays)
        self.detector, self.detector_insert_k = detector, int(detector_insert_k)
        self.detector_delete_pct = float(detector_delete_pct)
        self.detector_bins, self.detector_top_m = int(detector_bins), int(detector_top_m)
        self.detector_test_frac, self.seed = float(detector_test_frac), int(seed)
        problems = [f"{k} must be {want}, got {v}" for k, v, want, ok in (
            ("eval_essays", eval_essays, ">= 4", self.eval_essays >= 4),
            ("n_steps", n_steps, ">= 2", self.n_steps >= 2),
            ("ig_batch_size", ig_batch_size, ">= 1", self.ig_batch_size >= 1),
            ("n_class_words", n_class_words, ">= 1", self.n_class_words >= 1),
            ("min_df", min_df, ">= 1", self.min_df >= 1),
            ("detector_insert_k", detector_insert_k, ">= 1", self.detector_insert_k >= 1),
            ("detector_delete_pct", detector_delete_pct, "in (0, 100)", 0 < self.detector_delete_pct < 100),
            ("detector_bins", detector_bins, ">= 2", self.detector_bins >= 2),
            ("detector_top_m", detector_top_m, ">= 1", self.detector_top_m >= 1),
            ("detector_test_frac", detector_test_frac, "in (0, 1)", 0 < self.detector_test_frac < 1)) if not ok]
        for key, value, choices in (("baseline", baseline, BASELINES), ("ig_method", ig_method, IG_METHODS),
                                    ("class_words", class_words, CLASS_WORDS), ("detector", detector, DETECTORS)):
            if value not in choices:
                problems.append(f"{key} {value!r} is not one of {', '.join(choices)}")
        if not self.delete_pcts or not all(0 < p < 100 for p in self.delete_pcts):
            problems.append(f"delete_pcts must be percentages in (0, 100), got {list(delete_pcts)}")
        if not self.insert_ks or min(self.insert_ks) < 1:
            problems.append(f"insert_ks must be integers >= 1, got {list(insert_ks)}")
        if problems:
            raise ValueError("aes_robust: " + "; ".join(problems))

    # -- pieces of evaluate ----------------------------------------------------------------------------------------
    def _attribute(self, model, data, essays):
        return attribute_essays(model, data.tokenizer, essays, int(data.seq_len), int(data.pad_id), self.n_steps,
                                self.baseline, self.ig_method, self.ig_batch_size, self.ig_internal_batch_size)

    def _scores(self, model, data, essays) -> np.ndarray:
        rows = [tokenize_words(data.tokenizer, w, int(data.seq_len))[0] for w in essays]
        return predict_scores(model, rows, int(data.pad_id), batch_size=max(8, 4 * self.ig_batch_size))

    def _class_words(self, model, data) -> tuple[list[str], list[str]]:
        if self.class_words == "train":
            return class_words_from_data(data.train_texts, data.train_labels, self.n_class_words, self.min_df)
        essays = [self._visible(data, t) for t in data.train_texts[:self.class_word_essays]]
        attrs = self._attribute(model, data, essays)["words"]
        return class_words_from_attributions(essays, attrs, self.n_class_words, self.min_df)

    @staticmethod
    def _visible(data, text: str) -> list[str]:
        """The essay's words that the model sees (at least one token inside seq_len)."""
        words = split_words(text)
        _, word_of = tokenize_words(data.tokenizer, words, int(data.seq_len))
        return words[:max([w + 1 for w in word_of if w >= 0], default=0)]

    def evaluate(self, model: nn.Module, data) -> dict[str, float]:
        if getattr(data, "task_type", "regression") != "regression" or data.score_range is None:
            raise ValueError("aes_robust: needs a regression task with integer scores (data.score_range)")
        lo, hi = (int(v) for v in data.score_range)
        was_training = model.training
        model.eval()
        try:
            return self._evaluate(model, data, lo, hi)
        finally:
            model.train(was_training)

    def _evaluate(self, model, data, lo: int, hi: int) -> dict[str, float]:
        rng = np.random.default_rng(self.seed)
        out: dict[str, float] = {}
        # QWK of the regressor on the whole validation split
        val_rows = data.encode(list(data.val_texts))
        val_pred = predict_scores(model, val_rows, int(data.pad_id), batch_size=32)
        out["aes_qwk"] = qwk(data.val_labels, val_pred, lo, hi)

        # the essays of the suites: the first eval_essays of the validation split, clipped to what the model sees
        pick = np.arange(min(self.eval_essays, len(data.val_texts)))
        essays = [self._visible(data, data.val_texts[i]) for i in pick]
        keep = [i for i, e in enumerate(essays) if len(e) >= 2]
        essays = [essays[i] for i in keep]
        if len(essays) < 4:
            raise ValueError(f"aes_robust: {len(essays)} validation essays of 2+ words; need at least 4")
        check = tokenize_words(data.tokenizer, split_words(data.val_texts[int(pick[keep[0]])]), int(data.seq_len))[0]
        if list(check) != list(data.encode([data.val_texts[int(pick[keep[0]])]])[0]):
            log.warning("aes_robust: the tokenizer's offsets encoding differs from data.encode; scores of the suites "
                        "use the former")
        ig = self._attribute(model, data, essays)
        base, attrs = ig["scores"], ig["words"]
        base_round = round_scores(base, lo, hi)
        out["suite_essays"] = float(len(essays))
        gap = np.abs(ig["gap"])
        out["ig_completeness_rel_err"] = float(np.mean(np.abs(ig["delta"]) / np.maximum(gap, 1e-8)))
        out["ig_completeness_abs_err"] = float(np.mean(np.abs(ig["delta"])))

        def moved(perturbed: list[list[str]], tag: str) -> np.ndarray:
            s = self._scores(model, data, perturbed)
            out[f"{tag}_abs_change"] = float(np.mean(np.abs(s - base)))
            out[f"{tag}_unchanged"] = float(np.mean(round_scores(s, lo, hi) == base_round))
            return s

        # overstability: delete / shuffle the low-attribution words vs the high-attribution ones
        order = [ranked_by_attribution(a, rng) for a in attrs]
        for p in self.delete_pcts:
            tag = f"{p:g}"
            bottom = [o[:n_of(p, len(o))] for o in order]
            top = [o[len(o) - n_of(p, len(o)):] for o in order]
            rand = [rng.permutation(len(o))[:n_of(p, len(o))] for o in order]
            moved([delete_words(e, b) for e, b in zip(essays, bottom)], f"overstable_delete_bottom{tag}")
            moved([delete_words(e, t) for e, t in zip(essays, top)], f"overstable_delete_top{tag}")
            moved([delete_words(e, r) for e, r in zip(essays, rand)], f"overstable_delete_random{tag}")
            moved([shuffle_words(e, b, rng) for e, b in zip(essays, bottom)], f"overstable_shuffle_bottom{tag}")
        moved([shuffle_words(e, range(len(e)), rng) for e in essays], "overstable_shuffle_all")

        # oversensitivity: insert k class-associated words
        high, low = self._class_words(model, data)
        inserted: dict[int, list[list[str]]] = {}
        for k in sorted(set(self.insert_ks) | {self.detector_insert_k}):
            for direction, pool in (("", high), ("low_", low)) if k in self.insert_ks else (("", high),):
                pert = [insert_words(e, pick_words(pool, k, rng), rng)[0] for e in essays]
                if direction == "":
                    inserted[k] = pert
                if k in self.insert_ks:
                    s = self._scores(model, data, pert)
                    flips = round_scores(s, lo, hi) != base_round
                    out[f"oversensitive_{direction}flip_rate@{k}"] = float(np.mean(flips))
                    out[f"oversensitive_{direction}shift@{k}"] = float(np.mean(s - base))
        out["oversensitive_class_words"] = float(len(high))

        # the detector: original vs adversarial from attribution patterns
        p = self.detector_delete_pct
        deleted = [delete_words(e, o[:n_of(p, len(o))]) for e, o in zip(essays, order)]
        adv_ins = self._attribute(model, data, inserted[self.detector_insert_k])["words"]
        adv_del = self._attribute(model, data, deleted)["words"]
        n = len(essays)
        feats = attribution_features([*attrs, *adv_ins, *adv_del], self.detector_bins, self.detector_top_m)
        labels = np.concatenate([np.zeros(n), np.ones(2 * n)]).astype(np.int64)
        groups = np.concatenate([np.arange(n)] * 3)
        attack = np.array(["original"] * n + ["insert"] * n + ["delete_bottom"] * n)
        out.update(detector_auc(feats, labels, groups, self.detector, self.detector_test_frac, self.seed, attack))
        return {k: float(v) for k, v in out.items()}
