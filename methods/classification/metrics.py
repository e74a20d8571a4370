"""Metrics of the text-classification task, computed with scikit-learn (and scipy's Pearson r).

- `classification_metrics(labels, probs)`: accuracy, macro-F1 and ROC-AUC from class probabilities.
- `regression_metrics(y_true, y_pred, score_range)`: MSE, quadratic weighted kappa (QWK, the ASAP/AES metric)
  and Pearson's r.
- `confusion_matrix_figure(labels, preds, label_names, path)`: a row-normalised confusion matrix as a PNG.

Undefined values are NaN, never an exception: ROC-AUC with a class missing from `labels`, QWK and Pearson r
when one side is constant in a way that leaves them 0/0.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score, mean_squared_error, roc_auc_score


def classification_metrics(labels, probs) -> dict[str, float]:
    """{"accuracy", "macro_f1", "roc_auc"} of class probabilities `probs` (N, C) against int labels (N,).

    The prediction is argmax(probs). accuracy: the fraction right. macro_f1: sklearn's `f1_score(average=
    "macro")`, the unweighted mean of the per-class F1 over the classes present in labels or predictions (a
    class predicted but never true has F1 0). roc_auc: for C = 2, the ROC-AUC of probs[:, 1] as the score of
    class 1; for C > 2, the macro one-vs-rest AUC (`roc_auc_score(multi_class="ovr", average="macro")`, on rows
    renormalised to sum to 1). roc_auc is NaN where it is undefined: a class of 0..C-1 absent from `labels`
    (e.g. only one class present). A 1-D `probs` is read as P(class 1) of a binary task.
    """
    labels = np.asarray(labels).astype(np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = np.stack([1.0 - probs, probs], axis=1)
    if probs.ndim != 2 or probs.shape[0] != len(labels):
        raise ValueError(f"classification_metrics: probs of shape {probs.shape} for {len(labels)} labels")
    num_classes = probs.shape[1]
    preds = probs.argmax(1)
    out = {"accuracy": float(accuracy_score(labels, preds)),
           "macro_f1": float(f1_score(labels, preds, average="macro", zero_division=0))}
    if set(np.unique(labels).tolist()) != set(range(num_classes)):
        out["roc_auc"] = float("nan")
    elif num_classes == 2:
        out["roc_auc"] = float(roc_auc_score(labels, probs[:, 1]))
    else:
        rows = probs / probs.sum(1, keepdims=True)
        out["roc_auc"] = float(roc_auc_score(labels, rows, multi_class="ovr", average="macro",
                                             labels=list(range(num_classes))))
    return out


def round_scores(y, score_range: tuple[int, int]) -> np.ndarray:
    """Scores rounded to the nearest integer (halves up: 2.5 -> 3) and clipped to [lo, hi], as int64."""
    lo, hi = score_range
    return np.clip(np.floor(np.asarray(y, dtype=np.float64) + 0.5), lo, hi).astype(np.int64)


def regression_metrics(y_true, y_pred, score_range: tuple[int, int]) -> dict[str, float]:
    """{"mse", "qwk", "pearson"} of predicted scores against true integer scores in score_range = (lo, hi).

    mse: the mean squared error of the raw predictions. qwk: the quadratic weighted kappa,
    `cohen_kappa_score(weights="quadratic")` over the integer scores lo..hi, of the predictions rounded
    (halves up) and clipped to [lo, hi] against the true scores (rounded the same way):
        QWK = 1 - sum_ij w_ij O_ij / sum_ij w_ij E_ij,   w_ij = (i - j)^2 / (hi - lo)^2,
    O the observed confusion matrix and E the outer product of the two score histograms divided by N. 1 for
    perfect agreement, 0 for a constant predictor (or one independent of the truth), NaN when both sides are
    the same constant. pearson: Pearson's r of the raw predictions, NaN if either side is constant.
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_pred = np.asarray(y_pred, dtype=np.float64)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"regression_metrics: y_true {y_true.shape} and y_pred {y_pred.shape}")
    lo, hi = int(score_range[0]), int(score_range[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 -> nan, reported as NaN
        qwk = cohen_kappa_score(round_scores(y_true, (lo, hi)), round_scores(y_pred, (lo, hi)),
                                labels=list(range(lo, hi + 1)), weights="quadratic")
    if np.ptp(y_true) == 0 or np.ptp(y_pred) == 0:
        pearson = float("nan")
    else:
        from scipy.stats import pearsonr

        pearson = float(pearsonr(y_true, y_pred)[0])
    return {"mse": float(mean_squared_error(y_true, y_pred)), "qwk": float(qwk), "pearson": pearson}


def confusion_matrix_figure(labels, preds, label_names: list[str], path: str | Path, title: str = "") -> Path:
    """Save the confusion matrix of `preds` against `labels` (int class ids into `label_names`) as a PNG at `path`;
    returns the path.

    Rows are the true classes, columns the predicted ones; each cell is coloured by the row-normalised fraction
    (the row's recall profile, 0..1; an empty row stays 0) and annotated with its count and that fraction.
    Drawn on a matplotlib Agg canvas of its own (no pyplot state, no display needed).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import confusion_matrix

    num = len(label_names)
    counts = confusion_matrix(np.asarray(labels), np.asarray(preds), labels=list(range(num)))
    totals = counts.sum(1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)
    size = 2.0 + 0.6 * num
    fig = Figure(figsize=(size + 1.0, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(fractions, vmin=0.0, vmax=1.0, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(num), label_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(num), label_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    for i in range(num):
        for j in range(num):
            ax.text(j, i, f"{counts[i, j]}\n{fractions[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if fractions[i, j] > 0.5 else "black")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path
