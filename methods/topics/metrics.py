"""The evaluation of topic models' document representations, as the textTOvec code's model/evaluate.py.

- `ir_precision`: every query document (validation) ranks the corpus documents (training) by the cosine of their
  representations; precision at retrieval fraction f = the share of the top n = floor(f * N_corpus) that carry the
  query's label, averaged over the queries (the code's perform_IR_prec; ours takes n >= 1, where the code's
  floor may give 0 documents and a division by zero). Ties keep the corpus order (a stable sort).
- `classification`: scikit-learn's LogisticRegression on the training representations, accuracy and macro-F1 on
  the validation ones (the code's perform_classification; it picks C on a validation split among several and
  reports test, here one C and the validation split).
"""

from __future__ import annotations

import numpy as np

IR_FRACTIONS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def cosine_matrix(queries: np.ndarray, corpus: np.ndarray) -> np.ndarray:
    q = np.asarray(queries, dtype=np.float64)
    c = np.asarray(corpus, dtype=np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    return q @ c.T


def ir_precision(queries: np.ndarray, query_labels, corpus: np.ndarray, corpus_labels,
                 fractions=IR_FRACTIONS) -> dict[float, float]:
    """{fraction: mean precision of the top max(1, floor(fraction * N)) corpus documents by cosine}."""
    sims = cosine_matrix(queries, corpus)
    order = np.argsort(-sims, axis=1, kind="stable")
    same = np.asarray(corpus_labels)[order] == np.asarray(query_labels)[:, None]  # (Q, N), ranked
    hits = np.cumsum(same, axis=1)
    n = len(corpus_labels)
    out = {}
    for f in fractions:
        top = max(1, int(np.floor(f * n)))
        out[float(f)] = float(np.mean(hits[:, top - 1] / top))
    return out


def classification(train_x: np.ndarray, train_y, val_x: np.ndarray, val_y, c: float = 1.0, seed: int = 0) -> dict[str, float]:
    """Accuracy and macro-F1 on the validation representations of a logistic regression fitted on the training ones."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    clf.fit(np.asarray(train_x, dtype=np.float64), np.asarray(train_y))
    pred = clf.predict(np.asarray(val_x, dtype=np.float64))
    return {"accuracy": float(accuracy_score(val_y, pred)), "macro_f1": float(f1_score(val_y, pred, average="macro"))}
