"""AI-Generated Text Detection and Classification Based on BERT Deep Learning Algorithm
(Wang, Li & Li, arXiv:2405.16422).

A plain fine-tuned BERT detector behind a fixed text-cleaning pipeline, evaluated on a 60/40 train/test split:

    x' = clean(x) = collapse_ws ∘ remove_digits ∘ stem ∘ remove_stop_words ∘ tokenise ∘ lowercase (x)
    h  = BERT(x')[CLS],    p(y | x) = softmax(W h + b),    L = −(1/N) Σ_i log p(y_i | x_i)

The model and the loss are the task's own classifier (methods/classification/classifier.py: [CLS] pooling ->
linear -> softmax cross-entropy, `module.lm_loss`); what this method adds is the paper's preprocessing
(`prepare_data`, each step a YAML key), the check that the split is the paper's 60/40 per class, and a
TF-IDF + logistic-regression baseline fitted on the same cleaned training split (`evaluate`):
eval/tfidf_lr/{accuracy,macro_f1,roc_auc} beside eval/bert/{...} of the trained model's probabilities on the same
cleaned validation texts (data.predict), scored by the same function (scikit-learn's accuracy_score, f1_score
macro, roc_auc_score), and eval/bert_minus_tfidf_lr/accuracy (catalog property 3: BERT beats the baseline, or
the run says it does not). The task's own eval/accuracy, eval/macro_f1, eval/roc_auc score the same model.

The pipeline, step by step (`clean`):
  lowercase            str.lower() of the whole text
  tokenise             words (\\w+) and runs of punctuation ([^\\w\\s]+) as tokens, re-joined by single spaces;
                       off: the text's own whitespace-separated words, whitespace kept as it was
  remove_stop_words    drop tokens in scikit-learn's ENGLISH_STOP_WORDS (318 words)
  stem                 nltk's PorterStemmer (its default NLTK_EXTENSIONS mode; needs no downloaded data)
  remove_digits        delete every Unicode decimal digit (\\d); a token of digits leaves an empty gap
  collapse_whitespace  runs of whitespace -> one space, stripped at both ends

Deviations from the paper (which has no code and names none of its tools):
  - Idempotence. The paper applies the steps once. One pass is not idempotent: nltk's Porter stemmer is not
    (cause -> caus -> cau; of the 3,118 distinct words of pydoc's topics, 153 need a second stemming pass and 4
    a third), a stem can be a stop word (called -> call, ones -> one), and removing digits can leave one
    (a1 -> a). With `fixed_point: true` (default) the per-token steps (stop-word removal, stemming, digit
    removal) are repeated on each token until it no longer changes, so clean(clean(x)) == clean(x);
    `fixed_point: false` is the paper's single pass.
  - Tools. Stop words are scikit-learn's list, not nltk's (which needs a download); tokenisation is the regex
    above, not nltk's word_tokenize (which needs the punkt data): "don't" is don ' t, not do n't.
  - Split. The paper splits the data 60/40 into train and test; here the task's validation split is the test
    set, and prepare_data refuses a split that is not 60/40 within one example per class (run with
    dataset.val_fraction=0.4; `val_fraction: null` skips the check). The paper does not say it stratifies.
  - Hyper-parameters. The paper (abstract) gives no learning rate, epochs, sequence length or BERT size: the
    optimisation settings are the AdamW baseline's (configs/method/adamw.yaml). For a pretrained BERT the BERT
    paper's fine-tuning range (lr 2e-5 to 5e-5) is the usual choice: pass method.lr=2e-5 (our suggestion).
  - Baseline. The paper reports no baseline; TF-IDF + logistic regression is the catalog's.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

from methods.base import Method

STEPS = ("lowercase", "tokenize", "remove_stop_words", "stem", "remove_digits", "collapse_whitespace")
TOKEN = re.compile(r"\w+|[^\w\s]+")
DIGITS = re.compile(r"\d+")
WHITESPACE = re.compile(r"\s+")
SPLIT_WS = re.compile(r"(\s+)")
MAX_PASSES = 32  # per token; Porter never lengthens a word and never maps i back to y, so this is never reached


@functools.cache
def stop_words() -> frozenset[str]:
    """scikit-learn's English stop words (imported here: scikit-learn takes seconds to import)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


@functools.cache
def _stemmer():
    from nltk.stem.porter import PorterStemmer

    return PorterStemmer()


@functools.lru_cache(maxsize=1 << 18)
def stem_word(word: str, lowercase: bool = True) -> str:
    """nltk's Porter stem of `word` (to_lowercase: whether nltk lowercases it first)."""
    return _stemmer().stem(word, to_lowercase=lowercase) if word else word


@functools.lru_cache(maxsize=1 << 18)
def clean_token(token: str, remove_stop_words: bool = True, stem: bool = True, remove_digits: bool = True,
                lowercase: bool = True, fixed_point: bool = True) -> str | None:
    """The per-token steps on one token: None where it is (or becomes) a stop word and is dropped, "" where
    removing digits leaves nothing (a gap), else the cleaned token. fixed_point: repeat them until the token no
    longer changes; else once, in the paper's order (stop words, stem, digits)."""
    for _ in range(MAX_PASSES):
        if remove_stop_words and token in stop_words():
            return None
        new = stem_word(token, lowercase) if stem else token
        if remove_digits:
            new = DIGITS.sub("", new)
        if not fixed_point or new == token or not new:
            return new
        token = new
    return token


def clean(text: str, lowercase: bool = True, tokenize: bool = True, remove_stop_words: bool = True,
          stem: bool = True, remove_digits: bool = True, collapse_whitespace: bool = True,
          fixed_point: bool = True) -> str:
    """The paper's preprocessing of one text; every step can be switched off (see the module docstring)."""
    if lowercase:
        text = text.lower()

    def one(token: str) -> str | None:
        return clean_token(token, remove_stop_words, stem, remove_digits, lowercase, fixed_point)

    if tokenize:
        text = " ".join(t for t in map(one, TOKEN.findall(text)) if t is not None)
    elif remove_stop_words or stem or remove_digits:
        parts = SPLIT_WS.split(text)  # words at even positions, the whitespace between them at odd ones
        text = "".join(p if i % 2 else (one(p) or "") if p else p for i, p in enumerate(parts))
    if collapse_whitespace:
        text = WHITESPACE.sub(" ", text).strip()
    return text


# -- the split ----------------------------------------------------------------------------------------
def split_problems(train_labels: Sequence[int], val_labels: Sequence[int], val_fraction: float,
                   label_names: Sequence[str] = ()) -> list[str]:
    """One line per class whose validation share is not `val_fraction` within one example: the split is
    exactly val_fraction per class when each class c puts floor or ceil of val_fraction * n_c in validation."""
    import numpy as np

    train, val = np.asarray(train_labels), np.asarray(val_labels)
    problems = []
    for c in sorted(set(train.tolist()) | set(val.tolist())):
        n_val, n = int((val == c).sum()), int((train == c).sum() + (val == c).sum())
        if abs(n_val - val_fraction * n) >= 1:
            name = label_names[c] if 0 <= c < len(label_names) else str(c)
            problems.append(f"class {name!r} has {n_val} of its {n} examples in validation "
                            f"({n_val / n:.3f}), want {val_fraction} of them")
    return problems


# -- metrics and the baseline ---------------------------------------------------------------------------
def classification_scores(labels, probs, num_labels: int | None = None) -> dict[str, float]:
    """accuracy, macro_f1 and roc_auc (binary: of class 1; else one-vs-rest, macro) of (n, C) probabilities;
    roc_auc is nan where a class is missing from `labels`."""
    import numpy as np
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    classes = list(range(num_labels or probs.shape[1]))
    pred = probs.argmax(1)
    out = {"accuracy": float(accuracy_score(labels, pred)),
           "macro_f1": float(f1_score(labels, pred, labels=classes, average="macro", zero_division=0))}
    if len(set(labels.tolist())) < len(classes):
        out["roc_auc"] = float("nan")
    elif len(classes) == 2:
        out["roc_auc"] = float(roc_auc_score(labels, probs[:, 1]))
    else:
        out["roc_auc"] = float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=classes))
    return out


def tfidf_lr(ngram_range: tuple[int, int] = (1, 1), C: float = 1.0, max_features: int | None = None,
             max_iter: int = 1000):
    """The baseline: scikit-learn's TfidfVectorizer (its defaults otherwise) -> LogisticRegression (lbfgs, which
    draws nothing: the fit is deterministic)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(TfidfVectorizer(ngram_range=tuple(ngram_range), max_features=max_features),
                         LogisticRegression(C=C, max_iter=max_iter))


def tfidf_lr_probs(train_texts, train_labels, val_texts, num_labels: int, **params):
    """(n_val, num_labels) class probabilities of the baseline fitted on the training texts (columns of classes
    absent from training are 0)."""
    import numpy as np

    pipe = tfidf_lr(**params).fit(list(train_texts), np.asarray(train_labels))
    probs = np.zeros((len(val_texts), num_labels))
    probs[:, pipe.classes_] = pipe.predict_proba(list(val_texts))
    return probs


class BertAIGT(Method):
    """Clean the texts as the paper does, fine-tune the task's BERT classifier with its CE loss, and compare it
    with TF-IDF + logistic regression on the same cleaned 60/40 split."""

    needs_task = frozenset({"text-classification"})

    def __init__(self, name: str = "bert_aigt", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 lowercase: bool = True, tokenize: bool = True, remove_stop_words: bool = True, stem: bool = True,
                 remove_digits: bool = True, collapse_whitespace: bool = True, fixed_point: bool = True,
                 val_fraction: float | None = 0.4, baseline: bool = True, tfidf_ngram_range: Sequence[int] = (1, 1),
                 tfidf_max_features: int | None = None, lr_C: float = 1.0, eval_batch_size: int = 64):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        self.steps = {"lowercase": lowercase, "tokenize": tokenize, "remove_stop_words": remove_stop_words,
                      "stem": stem, "remove_digits": remove_digits, "collapse_whitespace": collapse_whitespace,
                      "fixed_point": fixed_point}
        problems = [f"method.{k}: must be true or false, got {v!r}" for k, v in self.steps.items()
                    if not isinstance(v, bool)]
        if val_fraction is not None and not 0 < val_fraction < 1:
            problems.append(f"method.val_fraction: must be in (0, 1) or null, got {val_fraction}")
        ngrams = tuple(int(n) for n in tfidf_ngram_range)
        if len(ngrams) != 2 or not 1 <= ngrams[0] <= ngrams[1]:
            problems.append(f"method.tfidf_ngram_range: must be [lo, hi] with 1 <= lo <= hi, got {list(ngrams)}")
        if tfidf_max_features is not None and tfidf_max_features < 1:
            problems.append(f"method.tfidf_max_features: must be >= 1 or null, got {tfidf_max_features}")
        if not lr_C > 0:
            problems.append(f"method.lr_C: must be > 0, got {lr_C}")
        if eval_batch_size < 1:
            problems.append(f"method.eval_batch_size: must be >= 1, got {eval_batch_size}")
        if problems:
            raise ValueError("; ".join(problems))
        self.val_fraction = None if val_fraction is None else float(val_fraction)
        self.baseline = bool(baseline)
        self.baseline_params = {"ngram_range": ngrams, "C": float(lr_C), "max_features": tfidf_max_features}
        self.eval_batch_size = int(eval_batch_size)
        self.clean_stats: dict[str, float] = {}

    def clean(self, text: str) -> str:
        return clean(text, **self.steps)

    def prepare_data(self, data: Any) -> Any:
        """The paper's preprocessing of every training and validation text, after checking the 60/40 split."""
        if data.task_type != "classification":
            raise ValueError(f"bert_aigt: needs a classification task, got {data.task_type!r}")
        if self.val_fraction is not None:
            problems = split_problems(data.train_labels, data.val_labels, self.val_fraction, data.label_names)
            if problems:
                raise ValueError(f"bert_aigt: the paper's split is {1 - self.val_fraction:.0%}/"
                                 f"{self.val_fraction:.0%} train/test per class: " + "; ".join(problems)
                                 + f"; run with dataset.val_fraction={self.val_fraction} "
                                   "(or method.val_fraction=null to skip this check)")
        train = [self.clean(t) for t in data.train_texts]
        val = [self.clean(t) for t in data.val_texts]
        words = lambda texts: sum(len(t.split()) for t in texts) / max(1, len(texts))  # noqa: E731
        self.clean_stats = {"clean/words_per_text_before": words(data.train_texts),
                            "clean/words_per_text_after": words(train),
                            "clean/empty_train_texts": float(sum(not t for t in train))}
        return data.replace(train_texts=train, val_texts=val)

    def evaluate(self, model, data: Any) -> dict[str, float]:
        """TF-IDF + LR on the cleaned training split and the trained model, scored alike on the validation split."""
        out = dict(self.clean_stats)
        num_labels = int(data.num_labels)
        bert = classification_scores(data.val_labels, data.predict(model, batch_size=self.eval_batch_size),
                                     num_labels)
        out.update({f"bert/{k}": v for k, v in bert.items()})
        if self.baseline:
            probs = tfidf_lr_probs(data.train_texts, data.train_labels, data.val_texts, num_labels,
                                   **self.baseline_params)
            base = classification_scores(data.val_labels, probs, num_labels)
            out.update({f"tfidf_lr/{k}": v for k, v in base.items()})
            out["bert_minus_tfidf_lr/accuracy"] = bert["accuracy"] - base["accuracy"]
        return out
