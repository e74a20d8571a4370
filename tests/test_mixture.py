"""The multi-domain data path (tasks/mixture.py, MixtureTask) and per-domain validation
(methods/module.py): domains are disjoint and cached, blocks and batches carry the right domain, the sampler
draws by the configured probabilities (never a sample: false domain), resumes exactly, and the per-domain
validation losses are the model's losses on each domain and average (token-weighted) to val/loss."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from runner.config import validate
from runner.data import build_data
from runner.errors import ConfigError
from tasks.common import tokenize
from tasks.mixture import MixtureData, MixtureSampler, check_domains, markov_documents
from tests.conftest import compose_cfg

SEQ = 64


@pytest.fixture(scope="module")
def cfg():
    return compose_cfg(["dataset=mixture-tiny", f"model.seq_len={SEQ}"])


@pytest.fixture(scope="module")
def mix(cfg) -> MixtureData:
    return build_data(cfg.dataset, SEQ, os.environ["METHODBENCH_CACHE"])


def _tail(seq: np.ndarray, row: np.ndarray) -> bool:
    """Whether `row` is a window of `seq` starting at a multiple of SEQ (a block of it)."""
    n = (len(seq) - 1) // SEQ
    return any(np.array_equal(seq[j * SEQ:j * SEQ + SEQ + 1], row) for j in range(n))


# ---------------------------------------------------------------------------------------------- build
def test_build_is_deterministic_and_cached(cfg, mix, tmp_path, monkeypatch):
    again = build_data(cfg.dataset, SEQ, os.environ["METHODBENCH_CACHE"])
    assert again.cache_key == mix.cache_key and again.domains == mix.domains == ["prose", "code", "markov", "target"]
    assert np.array_equal(again.train, mix.train) and np.array_equal(again.val, mix.val)
    # a fresh cache: documents and token streams land there, and a second build reads them back
    small = cfg.dataset.copy()
    small.domains = OmegaConf.create([{"name": "x", "kind": "markov", "documents": 40, "seed": 1, "length": 80},
                                      {"name": "y", "kind": "markov", "documents": 30, "seed": 2, "length": 80}])
    first = build_data(small, SEQ, str(tmp_path))
    assert len(list((tmp_path / "mixture" / "documents").glob("*.json"))) == 2
    assert len(list((tmp_path / "mixture" / "tokens").glob("*.npy"))) == 4  # 2 domains x train/val

    def rebuilt(*args, **kwargs):
        raise AssertionError("rebuilt instead of read from the cache")

    for name in ("markov_documents", "tokenize", "train_tokenizer"):
        monkeypatch.setattr(f"tasks.{'common' if name == 'train_tokenizer' else 'mixture'}.{name}", rebuilt)
    second = build_data(small, SEQ, str(tmp_path))
    assert second.cache_key == first.cache_key and np.array_equal(second.train, first.train)


def test_domains_are_disjoint_and_sized(mix):
    seen: dict[str, str] = {}
    for d in mix.domains:
        for split in ("train", "val"):
            for doc in mix.documents(d, split):
                assert doc not in seen, (d, split, seen.get(doc))
                seen[doc] = f"{d}/{split}"
    counts = {d: len(mix.documents(d, "train")) + len(mix.documents(d, "val")) for d in mix.domains}
    assert counts["prose"] <= 240 and counts["code"] <= 120 and counts["markov"] == 60 and counts["target"] == 30
    assert counts["prose"] >= 235 and counts["code"] >= 115  # at most a few duplicates dropped
    assert all("def " in doc or "class " in doc for doc in mix.documents("code", "train"))
    assert mix.sampled == [True, True, True, False]
    assert mix.sizes.tolist() == [mix.domain_blocks(d, "train").shape[0] for d in mix.domains]
    q = mix.natural_probs()
    np.testing.assert_allclose(q[:3], mix.sizes[:3] / mix.sizes[:3].sum())
    assert q[3] == 0.0


def test_blocks_of_a_domain_come_from_that_domain(mix):
    for d in mix.domains:
        for split in ("train", "val"):
            stream = tokenize(mix.tokenizer, mix.documents(d, split))  # tokenized again, independently
            assert np.array_equal(stream, mix.domain_stream(d, split))
            blocks = mix.domain_blocks(d, split)
            n = (len(stream) - 1) // SEQ
            assert blocks.shape == (n, SEQ + 1)
            assert torch.equal(blocks[:, 1:].reshape(-1), torch.from_numpy(stream[1:n * SEQ + 1].astype(np.int64)))
    train_dl, _ = mix.make_loaders(16, 6, seed=0, val_batches=1)
    for tokens, domain in train_dl:  # every example is a block of the domain it is labelled with
        assert tokens.shape == (16, SEQ + 1) and domain.shape == (16,)
        for row, k in zip(tokens.numpy(), domain.tolist()):
            assert _tail(mix.domain_stream(mix.domains[k], "train"), row)


def test_markov_domains_distinct_by_seed_and_name():
    a = markov_documents("a", 5, states=8, seed=1, length=30)
    assert a == markov_documents("a", 5, states=8, seed=1, length=30)
    b = markov_documents("b", 5, states=8, seed=1, length=30)  # same chain, other documents
    c = markov_documents("a", 5, states=8, seed=2, length=30)  # another chain: other words
    assert not set(a) & set(b)

    def words(docs):
        return set(" ".join(docs).split())

    def jaccard(x, y):
        return len(x & y) / len(x | y)

    assert jaccard(words(a), words(b)) > 0.5 and jaccard(words(a), words(c)) < 0.2

# ---------------------------------------------------------------------------------------------- sampling
def _frequencies(sampler: MixtureSampler, micro_batches: range, k: int) -> np.ndarray:
    counts = np.zeros(k)
    for b in micro_batches:
        np.add.at(counts, sampler.draw(b)[0], 1)
    return counts


def _within_binomial(counts: np.ndarray, p: np.ndarray, sigmas: float = 5.0) -> bool:
    n = counts.sum()
    return bool((np.abs(counts / n - p) <= sigmas * np.sqrt(p * (1 - p) / n) + 1e-12).all())


def test_realised_frequencies_match_p_and_unsampled_never_drawn(mix):
    sampler = MixtureSampler(mix, 32, 400, seed=3)
    counts = _frequencies(sampler, range(400), 4)
    assert counts[3] == 0  # the sample: false domain
    assert _within_binomial(counts, mix.natural_probs())
    p = np.array([0.1, 0.2, 0.7, 0.0])
    mix.set_sampling(lambda step: p)
    try:
        counts = _frequencies(sampler, range(400), 4)
        assert counts[3] == 0 and _within_binomial(counts, p)
        assert not _within_binomial(counts, mix.natural_probs())  # the check can fail
    finally:
        mix.set_sampling(None)


def test_probabilities_are_read_when_a_batch_is_drawn(mix):
    """A method may change the weights during training (DGA): the sampler reads them per micro-batch."""
    state = {"p": np.array([1.0, 0.0, 0.0, 0.0])}
    mix.set_sampling(lambda step: state["p"])
    try:
        train_dl, _ = mix.make_loaders(8, 6, seed=0)
        seen = []
        for i, (_, domain) in enumerate(train_dl):
            seen.append(set(domain.tolist()))
            if i == 2:
                state["p"] = np.array([0.0, 0.0, 1.0, 0.0])
        # Lightning-free iteration: no prefetch, so the change applies from the next micro-batch
        assert seen[:3] == [{0}] * 3 and seen[3:] == [{2}] * 3
        with pytest.raises(ValueError, match="one per domain"):
            mix.set_sampling(lambda step: np.ones(3))
            next(iter(mix.make_loaders(8, 1, seed=0)[0]))
    finally:
        mix.set_sampling(None)


def test_resume_sees_the_batches_of_the_uninterrupted_run(mix):
    position = {"k": 0}
    train_dl, _ = mix.make_loaders(8, 12, seed=5, start=lambda: position["k"])
    full = [(t.clone(), d.clone()) for t, d in train_dl]
    position["k"] = 7
    tail = list(train_dl)
    assert len(full) == 12 and len(tail) == 5
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(tail, full[7:]))
    other = [d for _, d in mix.make_loaders(8, 12, seed=6)[0]]
    assert any(not torch.equal(a[1], b) for a, b in zip(full, other))  # the seed matters
    # two ranks split the same draw: together they are the world=1 draw of 2B examples
    r = [MixtureSampler(mix, 4, 3, seed=5, rank=i, world=2).draw(1) for i in (0, 1)]
    both = MixtureSampler(mix, 8, 3, seed=5).draw(1)
    assert np.array_equal(np.concatenate([r[0][0], r[1][0]]), both[0])


def test_replace_train_documents_keeps_val_and_tokenizer(mix):
    keep = mix.documents("code", "train")[:20]
    new = mix.replace_train_documents({"code": keep})
    assert new.documents("code", "train") == keep and new.documents("code", "val") == mix.documents("code", "val")
    assert new.sizes[1] < mix.sizes[1] and new.sizes[0] == mix.sizes[0] and new.tokenizer is mix.tokenizer
    assert np.array_equal(new.domain_stream("code", "train"), tokenize(mix.tokenizer, keep))
    assert mix.documents("code", "train") != keep  # the original is untouched
    q = new.natural_probs()
    np.testing.assert_allclose(q[:3], new.sizes[:3] / new.sizes[:3].sum())


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("domains,message", [
    ([{"name": "a", "kind": "proze", "documents": 3}], "did you mean 'prose'"),
    ([{"name": "a", "kind": "markov"}], "documents: must be a positive integer"),
    ([{"name": "a", "kind": "prose", "documents": 3}, {"name": "a", "kind": "code", "documents": 3}], "unique"),
    ([{"name": "a", "kind": "prose", "documents": 3, "sample": False}], "at least one must be drawn"),
    ([{"name": "a", "kind": "markov", "documents": 3, "stats": 4}], "did you mean 'states'"),
    ([{"name": "a", "kind": "local", "path": "/no/such/file.jsonl"}], "no such file"),
    ([], "non-empty list"),
])
def test_bad_domains_are_config_errors(domains, message):
    assert any(message in p for p in check_domains(domains)), check_domains(domains)
    cfg = compose_cfg(["dataset=mixture-tiny"])
    cfg.dataset.domains = OmegaConf.create(domains)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate(cfg)


# ---------------------------------------------------------------------------------------------- validation
def test_per_domain_val_loss_is_each_domains_loss_and_averages_to_val_loss(mix):
    import lightning.pytorch as pl

    from methods.base import Method
    from methods.module import MethodModule
    from tests.helpers import tiny_llama

    torch.set_num_threads(1)
    model = tiny_llama(mix.vocab_size, hidden=32, intermediate=64, layers=1, heads=2, max_pos=SEQ)
    module = MethodModule(model, Method())
    _, val_dl = mix.make_loaders(16, 1, seed=0, val_batches=1)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False)
    trainer.validate(module, dataloaders=val_dl, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    total, count = 0.0, 0
    model.eval()
    for d in mix.domains:
        blocks = mix.domain_blocks(d, "val")[:16]  # val_batches=1: 16 blocks of each domain
        with torch.no_grad():
            logits = model(input_ids=blocks[:, :-1]).logits
            ref = torch.nn.functional.cross_entropy(logits.flatten(0, 1), blocks[:, 1:].flatten()).item()
        assert metrics[f"val/loss/{d}"] == pytest.approx(ref, rel=1e-5), d
        total += metrics[f"val/loss/{d}"] * blocks[:, 1:].numel()
        count += blocks[:, 1:].numel()
    assert metrics["val/loss"] == pytest.approx(total / count, rel=1e-6)
    spread = [metrics[f"val/loss/{d}"] for d in mix.domains]
    assert max(spread) - min(spread) > 1e-3  # distinct domains, distinct losses: the check has teeth
    # the unigram baseline's targets are every validation block's targets
    assert mix.eval_targets(val_dl).shape == (sum(min(16, mix.n_blocks(d, "val")) for d in mix.domains), SEQ)
