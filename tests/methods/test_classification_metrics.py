"""methods/classification/metrics.py: hand-computed cases, perfect and constant predictors, undefined values as
NaN, and the confusion-matrix PNG."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from methods.classification.metrics import (
    classification_metrics,
    confusion_matrix_figure,
    regression_metrics,
    round_scores,
)


def onehot(preds, num_classes, p=0.9):
    probs = np.full((len(preds), num_classes), (1 - p) / (num_classes - 1))
    probs[np.arange(len(preds)), preds] = p
    return probs


# ---------------------------------------------------------------------------------------------- classification
def test_classification_hand_case():
    # labels 0 0 1 1 2 2, predicted 0 1 1 1 2 0:
    #   class 0: tp 1, fp 1, fn 1 -> F1 1/2;  class 1: tp 2, fp 1, fn 0 -> P 2/3, R 1, F1 4/5;
    #   class 2: tp 1, fp 0, fn 1 -> P 1, R 1/2, F1 2/3.   macro-F1 = (1/2 + 4/5 + 2/3) / 3 = 59/90
    labels = np.array([0, 0, 1, 1, 2, 2])
    m = classification_metrics(labels, onehot([0, 1, 1, 1, 2, 0], 3))
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx(59 / 90)
    assert 0.0 <= m["roc_auc"] <= 1.0


def test_binary_auc_hand_case():
    # positives score 0.35 and 0.8, negatives 0.1 and 0.4: 3 of the 4 (pos, neg) pairs are ranked right
    labels = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.4, 0.35, 0.8])
    m = classification_metrics(labels, np.stack([1 - p1, p1], 1))
    assert m["roc_auc"] == pytest.approx(0.75)
    assert classification_metrics(labels, p1) == m  # a 1-D probs is P(class 1)
    assert m["accuracy"] == pytest.approx(0.75)  # argmax: 0 0 0 1


def test_multiclass_auc_is_the_mean_one_vs_rest_auc():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    probs = rng.dirichlet(np.ones(4), 200)
    probs[np.arange(200), labels] += 0.3  # some signal
    probs /= probs.sum(1, keepdims=True)
    per_class = [roc_auc_score(labels == c, probs[:, c]) for c in range(4)]
    assert classification_metrics(labels, probs)["roc_auc"] == pytest.approx(np.mean(per_class))


@pytest.mark.parametrize("num_classes", [2, 5])
def test_perfect_predictions_give_one(num_classes):
    labels = np.arange(40) % num_classes
    m = classification_metrics(labels, onehot(labels, num_classes))
    assert m == {"accuracy": 1.0, "macro_f1": 1.0, "roc_auc": 1.0}


def test_auc_undefined_is_nan():
    one_class = classification_metrics(np.zeros(5, dtype=int), onehot([0, 0, 1, 0, 0], 2))
    assert math.isnan(one_class["roc_auc"]) and one_class["accuracy"] == pytest.approx(0.8)
    missing = classification_metrics(np.array([0, 1, 0, 1]), onehot([0, 1, 2, 1], 3))  # class 2 never true
    assert math.isnan(missing["roc_auc"])


# ---------------------------------------------------------------------------------------------- regression
def qwk_reference(y_true, y_pred, lo, hi):
    """The Kaggle ASAP definition, written out: 1 - sum(w O) / sum(w E)."""
    k = hi - lo + 1
    observed = np.zeros((k, k))
    for t, p in zip(y_true, y_pred):
        observed[t - lo, p - lo] += 1
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    i, j = np.indices((k, k))
    w = (i - j) ** 2 / (k - 1) ** 2
    return 1 - (w * observed).sum() / (w * expected).sum()


def test_qwk_hand_case_3x3():
    # true 1 1 2 2 3 3, predicted 1 2 2 2 3 1 (scores 1..3):
    #   O = [[1,1,0],[0,2,0],[1,0,1]];  histograms true (2,2,2), predicted (2,3,1); E = outer / 6 = rows (2/3, 1, 1/3)
    #   w = (i-j)^2 / 4:  sum w O = 1/4 + 1 = 5/4;  sum w E = (1/4 + 1/3) + (1/6 + 1/12) + (2/3 + 1/4) = 7/4
    #   QWK = 1 - (5/4) / (7/4) = 2/7
    m = regression_metrics([1, 1, 2, 2, 3, 3], [1, 2, 2, 2, 3, 1], (1, 3))
    assert m["qwk"] == pytest.approx(2 / 7)
    assert m["mse"] == pytest.approx((1 + 4) / 6)


def test_qwk_matches_the_written_out_definition():
    rng = np.random.default_rng(1)
    y = rng.integers(1, 7, 300)
    pred = np.clip(y + rng.integers(-2, 3, 300), 1, 6)
    assert regression_metrics(y, pred, (1, 6))["qwk"] == pytest.approx(qwk_reference(y, pred, 1, 6))


def test_qwk_rounds_and_clips_predictions():
    assert round_scores([0.2, 1.49, 1.5, 2.5, 9.0], (1, 3)).tolist() == [1, 1, 2, 3, 3]
    y = np.array([1, 2, 3, 1, 2, 3])
    raw = np.array([0.6, 2.4, 7.0, -3.0, 1.5, 2.5])  # -> 1 2 3 1 2 3
    m = regression_metrics(y, raw, (1, 3))
    assert m["qwk"] == 1.0
    assert m["mse"] == pytest.approx(np.mean((y - raw) ** 2))  # MSE of the raw predictions


def test_perfect_regression():
    y = np.array([1, 2, 3, 4, 5, 6, 3, 4], dtype=np.float32)
    assert regression_metrics(y, y, (1, 6)) == {"mse": 0.0, "qwk": 1.0, "pearson": pytest.approx(1.0)}


def test_constant_predictor_has_qwk_zero():
    y = np.array([1, 2, 3, 4, 5, 6, 2, 5])
    for c in (1.0, 3.2, 6.0):
        m = regression_metrics(y, np.full(8, c), (1, 6))
        assert m["qwk"] == pytest.approx(0.0, abs=1e-12)
        assert math.isnan(m["pearson"])
    assert math.isnan(regression_metrics([3, 3, 3], [3, 3, 3], (1, 6))["qwk"])  # 0/0: both the same constant


# ---------------------------------------------------------------------------------------------- figure
def test_confusion_matrix_figure_is_a_png(tmp_path):
    # "tests" (class 3) has no true example: its row is empty and drawn as zeros
    out = confusion_matrix_figure([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 3], ["email", "xml", "asyncio", "tests"],
                                  tmp_path / "sub" / "cm.png", title="val")
    assert out == tmp_path / "sub" / "cm.png" and out.exists()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
