"""PreSelect (methods/data/preselect.py): predictive strength, the selection by character mass, per-document bits
per character, the classifier, the method's checks. The selection through the runner is the shared e2e test's."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from methods.data.preselect import (
    PreSelect,
    concordance,
    document_bpc,
    keep_by_characters,
    predictive_strength,
    train_classifier,
)


def test_strength_is_in_range_and_maximal_exactly_when_losses_rank_like_the_benchmark():
    """N = 4 models: over every ordering of the losses of a document, S ∈ [0, 6], S = 6 only for the ordering whose
    best model (highest benchmark) has the lowest loss, and so on down; S = 0 only for the reverse; S counts the
    concordant pairs (a brute-force count)."""
    bench = np.array([0.3, 0.9, 0.1, 0.5])  # quality order: model 1 > 3 > 0 > 2
    orders = list(itertools.permutations(range(4)))
    bpc = np.array([[1.0 + p.index(m) for p in orders] for m in range(4)])  # model m's loss rank in each ordering
    s = predictive_strength(bpc, bench)
    assert s.min() >= 0 and s.max() <= math.comb(4, 2)
    best_first = np.argsort(-bench)
    for col in range(len(orders)):
        brute = sum((bench[i] > bench[j]) == (bpc[i, col] < bpc[j, col]) for i, j in itertools.combinations(range(4), 2))
        assert s[col] == brute
        losses_in_quality_order = [bpc[m, col] for m in best_first]
        assert (s[col] == 6) == (losses_in_quality_order == sorted(losses_in_quality_order))
        assert (s[col] == 0) == (losses_in_quality_order == sorted(losses_in_quality_order, reverse=True))
    assert (s == 6).sum() == 1 and (s == 0).sum() == 1


def test_ties_order_no_pair():
    assert predictive_strength(np.array([[1.0], [1.0]]), [0.0, 1.0]).tolist() == [0]
    assert predictive_strength(np.array([[2.0], [1.0]]), [0.5, 0.5]).tolist() == [0]
    with pytest.raises(ValueError, match="bpc must be"):
        predictive_strength(np.zeros((3, 2)), [1.0, 2.0])


@pytest.mark.parametrize("seed", range(5))
def test_selection_removes_ninety_percent_of_the_characters_and_keeps_the_best_scores(seed):
    """Of 2000 documents of 20-400 characters (each < 0.1 % of the total), 90 % ± 1 % of the characters go, every
    kept document scores at least as high as every dropped one, and the result does not depend on the order."""
    rng = np.random.default_rng(seed)
    texts = [f"doc {i} " + "x" * int(rng.integers(20, 400)) for i in range(2000)]
    scores = rng.random(2000)
    kept = keep_by_characters(scores, [len(t) for t in texts], 0.1, texts)
    share = sum(len(texts[i]) for i in kept) / sum(map(len, texts))
    assert abs(share - 0.1) <= 0.01
    dropped = np.setdiff1d(np.arange(2000), kept)
    assert scores[kept].min() >= scores[dropped].max()
    perm = rng.permutation(2000)
    again = keep_by_characters(scores[perm], [len(texts[i]) for i in perm], 0.1, [texts[i] for i in perm])
    assert sorted(texts[perm[i]] for i in again) == sorted(texts[i] for i in kept)


def test_document_bpc_is_the_summed_next_token_loss_over_its_windows():
    """A tiny Llama from config: the BPC of a document longer than one window equals the next-token NLL summed over
    its non-overlapping windows (each window's first token unscored), by hand, over chars · ln 2 (float64 to 1e-9);
    a short document is one window; batching changes nothing."""
    import torch

    from models.llama import Llama

    torch.manual_seed(0)
    model = Llama(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2).build(50, 16).eval()

    class Tok:  # one id per character, 0..49
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) % 50 for c in text]}

    docs = ["abcdefghijklmnopqrstuvwxyz0123456789", "hello world"]
    got = document_bpc(model, Tok(), docs, seq_len=8, batch_size=3)
    for d, text in enumerate(docs):
        ids = Tok()(text)["input_ids"]
        nll = 0.0
        for start in range(0, len(ids) - 1, 8):
            w = torch.tensor([ids[start:start + 9]])
            if w.shape[1] < 2:
                continue
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=w[:, :-1]).logits.double(), -1)
            nll -= float(lp.gather(-1, w[:, 1:, None]).sum())
        assert got[d] == pytest.approx(nll / (len(text) * math.log(2)), rel=1e-6)
    assert np.allclose(document_bpc(model, Tok(), docs, seq_len=8, batch_size=1), got, rtol=1e-6)


def test_the_classifier_separates_planted_positives():
    pos = [f"alpha beta gamma {i}" for i in range(30)]
    neg = [f"delta epsilon zeta {i}" for i in range(30)]
    clf = train_classifier(pos, neg)
    p = clf.predict_proba(["gamma beta alpha", "zeta delta"])[:, 1]
    assert p[0] > 0.5 > p[1]


def test_bad_values_are_one_line_errors():
    with pytest.raises(ValueError, match="method.selector: 'zip_fit' is not valid; choose one of: preselect, random"):
        PreSelect(selector="zip_fit")
    with pytest.raises(ValueError, match="method.reference_steps: at least two distinct positive step counts"):
        PreSelect(reference_steps=[10, 10])
    with pytest.raises(ValueError, match="method.char_fraction"):
        PreSelect(char_fraction=1.0)
    method = PreSelect()
    method.base_steps = 300
    assert method.steps() == [37, 75, 150, 300]
    assert PreSelect(reference_steps=[5, 50]).steps() == [5, 50]


def test_concordance_is_one_for_losses_falling_linearly_with_quality_and_zero_when_flat():
    bench = [0.0, 1.0, 2.0]
    bpc = np.array([[3.0, 1.0, 5.0], [2.0, 2.0, 4.0], [1.0, 3.0, 4.0]])  # doc 0 agrees, doc 1 reverses, doc 2 mixed
    c = concordance(bpc, bench)
    assert c[0] == pytest.approx(1.0) and c[1] == pytest.approx(-1.0) and -1 < c[2] < 1
    assert concordance(np.ones((3, 2)), bench).tolist() == [0.0, 0.0]
