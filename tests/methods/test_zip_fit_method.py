"""ZIP-FIT as a method of the runner (methods/data/zip_fit.py, `ZipFit`): on the prose/code mixture of
configs/dataset/mixture-zipfit.yaml with its held-out code target set, the selection is code, training then
draws only from the selection, the selection is cached and reused, and the baselines keep exactly k.

NCD, the ranking's determinism and order independence at the function level, the parallel scoring and the
DSIR-style weights are tested in test_data_selection.py."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

import methods.data.zip_fit as zip_fit
from methods.data.zip_fit import ZipFit
from tests.conftest import compose_cfg

K, TARGET = 50, 30


@pytest.fixture(scope="module")
def mixture():
    """The runner's MixtureData of mixture-zipfit (domains code_target [sample: false], code, prose)."""
    from runner.data import build_data

    cfg = compose_cfg(["dataset=mixture-zipfit", "dataset.tokenizer.vocab_size=512"]).dataset
    return build_data(cfg, seq_len=64, cache_dir=os.environ["METHODBENCH_CACHE"])


@pytest.fixture
def data(mixture, tmp_path):
    """The mixture with its selection cache (and re-tokenized selections) in a fresh directory."""
    return dataclasses.replace(mixture, cache_dir=str(tmp_path))


def test_code_target_selects_code_and_training_uses_only_the_selection(data):
    method = ZipFit(k=K, target_size=TARGET, progress=False)
    selected = method.prepare_data(data)
    assert method.stats["selection/target_domain"] == "code_target"
    assert method.stats["selection/share/code"] >= 0.9, method.stats
    assert method.stats["selection/share/code"] + method.stats["selection/share/prose"] == pytest.approx(1.0)
    assert method.stats["selection/reused"] == 0 and method.stats["selection/seconds_per_1000"] > 0
    # the source domains' train splits are now the selection, val and the target domain unchanged
    chosen = selected.documents("code", "train") + selected.documents("prose", "train")
    assert len(chosen) == len(set(chosen)) == K
    assert set(chosen) <= set(data.documents("code", "train") + data.documents("prose", "train"))
    assert len(selected.documents("code", "train")) == round(method.stats["selection/share/code"] * K)
    for domain in data.domains:
        assert selected.documents(domain, "val") == data.documents(domain, "val")
    assert selected.documents("code_target", "train") == data.documents("code_target", "train")
    q = selected.natural_probs()
    assert q[data.domains.index("code_target")] == 0  # the target set is never trained on
    np.testing.assert_array_equal(selected.sizes[1:] > 0, q[1:] > 0)
    evaluated = method.evaluate(None, selected)
    assert evaluated["selection/share/code"] == method.stats["selection/share/code"]


def test_selection_is_cached_reused_and_independent_of_document_order(data, monkeypatch):
    first = ZipFit(k=K, target_size=TARGET, progress=False)
    first_data = first.prepare_data(data)
    path, = (Path(data.cache_dir) / "selections").iterdir()  # <cache>/selections/<content hash>
    assert (path / "dataset").is_dir() and (path / "selection.json").is_file()

    def no_scoring(*args, **kwargs):
        raise AssertionError("the cached selection should have been reused")

    monkeypatch.setattr(zip_fit, "alignment_scores", no_scoring)
    shuffled_docs = dict(data.domain_docs)
    for domain in ("code", "prose"):
        docs = list(shuffled_docs[(domain, "train")])
        np.random.default_rng(0).shuffle(docs)
        shuffled_docs[(domain, "train")] = docs
    shuffled = dataclasses.replace(data, domain_docs=shuffled_docs)
    again = ZipFit(k=K, target_size=TARGET, progress=False)
    selected = again.prepare_data(shuffled)
    assert again.stats["selection/reused"] == 1
    assert again.stats["selection/seconds"] == first.stats["selection/seconds"]  # the time of the run that selected
    for domain in ("code", "prose"):
        assert sorted(selected.documents(domain, "train")) == sorted(first_data.documents(domain, "train"))


@pytest.mark.parametrize("selector", ["random", "dsir"])
def test_baselines_select_exactly_k(data, selector):
    method = ZipFit(selector=selector, k=K, target_size=TARGET, seed=3)
    selected = method.prepare_data(data)
    chosen = selected.documents("code", "train") + selected.documents("prose", "train")
    assert len(chosen) == len(set(chosen)) == K
    again = ZipFit(selector=selector, k=K, target_size=TARGET, seed=3)
    source = sorted(data.documents("code", "train") + data.documents("prose", "train"))
    target = data.documents("code_target", "train")[:TARGET]
    a, _ = again.select(source, target, K, seed=3)
    b, _ = again.select(source, target, K, seed=3)
    c, _ = again.select(source, target, K, seed=4)
    assert len(set(a.tolist())) == K and np.array_equal(a, b) and not np.array_equal(np.sort(a), np.sort(c))


def test_config_errors(data):
    with pytest.raises(ValueError, match=r"method\.selector: 'd4' is not valid; choose one of: zip_fit, random, dsir"):
        ZipFit(selector="d4")
    with pytest.raises(ValueError, match=r"method\.codec: 'zstd' is not valid"):
        ZipFit(codec="zstd")
    with pytest.raises(ValueError, match=r"method\.target_domain: 'x' is not valid; choose one of: code_target, code, prose"):
        ZipFit(target_domain="x", progress=False).prepare_data(data)
    with pytest.raises(ValueError, match=r"method\.k: 100000 is more than"):
        ZipFit(k=100_000, progress=False).prepare_data(data)
