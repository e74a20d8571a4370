"""methods/classification/corpora.py: the stdlib walk and its labels, the generators' documented rules, the aigt
pairs (shared openings, equal lengths) and the exact stratified split."""

import hashlib
from collections import Counter

import numpy as np
import pytest
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.naive_bayes import MultinomialNB

from methods.classification.corpora import (
    KEYWORDS,
    QUALITY_WORDS,
    LabelledTexts,
    aigt_pairs,
    essay_score,
    filler_words,
    keyword_cls,
    stdlib_docstrings,
    stdlib_packages,
    stratified_split,
    synthetic_essays,
    text_hash,
)


# ---------------------------------------------------------------------------------------------- the split
def test_split_is_exact_per_class_disjoint_and_covering():
    rng = np.random.default_rng(0)
    sizes = {0: 7, 1: 100, 2: 33, 3: 1, 4: 250}
    labels = rng.permutation(np.concatenate([np.full(n, c) for c, n in sizes.items()]))
    texts = [f"text {i}" for i in range(len(labels))]
    for f in (0.0, 0.1, 0.4, 0.5, 1.0):
        train, val = stratified_split(labels, f, texts)
        for c, n in sizes.items():
            assert (labels[val] == c).sum() == int(np.floor(f * n + 0.5))  # round(f n_c), halves up
        assert np.intersect1d(train, val).size == 0
        assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(labels)))
        assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0) and val.dtype == np.int64
    # an overall 60/40 split is exact: 40 % of 1000 per class of 500
    labels = np.arange(1000) % 2
    assert len(stratified_split(labels, 0.4, [str(i) for i in range(1000)])[1]) == 400


def test_split_rounds_halves_up_despite_float_error():
    labels = np.zeros(10, dtype=int)
    texts = [str(i) for i in range(10)]
    assert len(stratified_split(labels, 0.35, texts)[1]) == 4  # 0.35 * 10 = 3.4999999999999996
    assert len(stratified_split(labels[:5], 0.5, texts[:5])[1]) == 3  # 2.5 -> 3


def test_split_is_stable_under_permuting_the_input():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    texts = [f"doc {i} {rng.integers(1e9)}" for i in range(300)]
    _, val = stratified_split(labels, 0.3, texts)
    perm = rng.permutation(300)
    _, val_p = stratified_split(labels[perm], 0.3, [texts[i] for i in perm])
    assert {texts[i] for i in val} == {texts[perm[i]] for i in val_p}
    # which examples go to val is decided by the hash of the text: the first of each class by text_hash
    for c in range(3):
        members = sorted((text_hash(texts[i]), i) for i in np.flatnonzero(labels == c))
        k = int(np.floor(0.3 * len(members) + 0.5))
        assert {i for _, i in members[:k]} == set(val[labels[val] == c].tolist())


def test_text_hash_is_blake2b():
    assert text_hash("héllo") == int.from_bytes(hashlib.blake2b("héllo".encode(), digest_size=8).digest(), "big")


def test_split_of_regression_labels_stratifies_by_integer_score():
    scores = np.array([1.0] * 10 + [2.0] * 5 + [5.6] * 10 + [6.0] * 10, dtype=np.float32)  # 5.6 and 6.0 are "6"
    train, val = stratified_split(scores, 0.2, [f"essay {i}" for i in range(len(scores))])
    assert Counter(np.floor(scores[val] + 0.5).tolist()) == {1.0: 2, 2.0: 1, 6.0: 4}
    assert len(train) + len(val) == len(scores)


def test_split_rejects_bad_arguments():
    with pytest.raises(ValueError, match="val_fraction"):
        stratified_split(np.zeros(3), 1.5, ["a", "b", "c"])
    with pytest.raises(ValueError, match="key texts"):
        stratified_split(np.zeros(3), 0.5, ["a", "b"])


def test_labelled_texts_checks_and_subsets():
    data = LabelledTexts(["a", "b", "c"], [0, 1, 0], ["x", "y"], "classification", meta={"n": np.array([5, 6, 7])})
    assert data.labels.dtype == np.int64 and data.num_labels == 2 and len(data) == 3
    sub = data.subset([2, 0])
    assert sub.texts == ["c", "a"] and sub.labels.tolist() == [0, 0] and sub.meta["n"].tolist() == [7, 5]
    with pytest.raises(ValueError, match="meta"):
        LabelledTexts(["a"], [0], ["x"], "classification", meta={"n": np.array([1, 2])})
    with pytest.raises(ValueError, match="task_type"):
        LabelledTexts(["a"], [0], ["x"], "ranking")
    assert LabelledTexts(["a"], [2.5], [], "regression", (1, 6)).labels.dtype == np.float32


# ---------------------------------------------------------------------------------------------- stdlib
def _write(root, rel, text):
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_stdlib(root):
    """A tiny tree: two packages, a module, and everything the walk must skip."""
    long = "x" * 30
    _write(root, "alpha/__init__.py", f'"""Alpha package {long}."""\n')
    _write(root, "alpha/sub/mod.py", f'"""Alpha mod {long}."""\nclass K:\n    """Class K {long}."""\n'
                                     f'    def f(self):\n        """Method f {long}."""\n        def inner():\n'
                                     f'            """Inner {long}."""\n'
                                     f'def g():\n    """Shared text {long}."""\ndef h():\n    """Alpha twice {long}."""\n'
                                     f'def h2():\n    """Alpha twice {long}."""\ndef short():\n    """Short."""\n')
    _write(root, "alpha/__main__.py", f'"""Main {long}."""\n')
    _write(root, "alpha/test/test_a.py", f'"""Test {long}."""\n')
    _write(root, "alpha/unittests/b.py", f'"""Tests dir {long}."""\n')
    _write(root, "beta.py", f'"""Beta module {long}."""\ndef g():\n    """Shared text {long}."""\n'
                            f'def b1():\n    """Beta one {long}."""\nasync def b2():\n    """Beta two {long}."""\n')
    _write(root, "broken.py", '"""Broken."""\ndef (:\n')
    _write(root, "site-packages/pkg.py", f'"""Installed {long}."""\n')
    _write(root, "idlelib/x.py", f'"""Idle {long}."""\n')
    _write(root, "test/test_x.py", f'"""Suite {long}."""\n')


def test_stdlib_walk_reads_docstrings_and_skips_tests(tmp_path):
    fake_stdlib(tmp_path)
    records = stdlib_docstrings(tmp_path)
    got = [(r["package"], r["kind"], r["object"], r["path"]) for r in records]
    assert got == [
        ("alpha", "module", "alpha", "alpha/__init__.py"),
        ("alpha", "module", "alpha.sub.mod", "alpha/sub/mod.py"),
        ("alpha", "class", "alpha.sub.mod.K", "alpha/sub/mod.py"),
        ("alpha", "function", "alpha.sub.mod.K.f", "alpha/sub/mod.py"),
        ("alpha", "function", "alpha.sub.mod.K.f.inner", "alpha/sub/mod.py"),
        ("alpha", "function", "alpha.sub.mod.g", "alpha/sub/mod.py"),
        ("alpha", "function", "alpha.sub.mod.h", "alpha/sub/mod.py"),
        ("alpha", "function", "alpha.sub.mod.h2", "alpha/sub/mod.py"),
        ("alpha", "function", "alpha.sub.mod.short", "alpha/sub/mod.py"),
        ("beta", "module", "beta", "beta.py"),
        ("beta", "function", "beta.g", "beta.py"),
        ("beta", "function", "beta.b1", "beta.py"),
        ("beta", "function", "beta.b2", "beta.py"),
    ]  # no __main__, test/, *tests*, site-packages, idlelib, nor the file that does not parse
    assert records[2]["text"].startswith("Class K")
    assert [r["package"] for r in stdlib_docstrings(tmp_path, include={"beta"})] == ["beta"] * 4


def test_stdlib_packages_labels_dedup_and_thresholds(tmp_path):
    fake_stdlib(tmp_path)
    data = stdlib_packages(min_per_class=3, min_chars=30, root=tmp_path)
    assert data.label_names == ["alpha", "beta"] and data.task_type == "classification"
    texts = [t.split(" x")[0] for t in data.texts]
    # "Shared text" is under both packages: dropped; "Alpha twice" twice under alpha: kept once; "Short.": too short
    assert texts == ["Alpha package", "Alpha mod", "Class K", "Method f", "Inner", "Alpha twice",
                     "Beta module", "Beta one", "Beta two"]
    assert data.labels.tolist() == [0] * 6 + [1] * 3
    assert data.meta["objects"][5] == "alpha.sub.mod.h" and data.meta["kinds"][6] == "module"
    with pytest.raises(ValueError, match="lower min_per_class"):
        stdlib_packages(min_per_class=4, min_chars=30, root=tmp_path)  # only alpha has >= 4
    capped = stdlib_packages(min_per_class=3, max_per_class=3, min_chars=30, root=tmp_path, seed=0)
    assert np.bincount(capped.labels).tolist() == [3, 3]
    assert set(capped.texts) <= set(data.texts)
    assert capped.texts == stdlib_packages(min_per_class=3, max_per_class=3, min_chars=30, root=tmp_path, seed=0).texts
    others = {tuple(stdlib_packages(min_per_class=3, max_per_class=3, min_chars=30, root=tmp_path, seed=s).texts)
              for s in range(6)}
    assert len(others) > 1  # the cap is a seeded subset


def test_stdlib_packages_on_the_real_stdlib(tmp_path):
    """Three real packages only (the whole walk takes seconds): real labels, deterministic, cached."""
    include = {"json", "logging", "concurrent"}
    data = stdlib_packages(min_per_class=15, min_chars=80, include=include, cache_dir=tmp_path)
    assert data.label_names == ["concurrent", "json", "logging"]
    assert all(p.split("/")[0].removesuffix(".py") == data.label_names[c] for p, c in zip(data.meta["paths"], data.labels))
    assert not any("test" in p for p in data.meta["paths"])
    assert len(set(data.texts)) == len(data.texts) and min(map(len, data.texts)) >= 80
    dumps = data.texts[list(data.meta["objects"]).index("json.dumps")]
    assert "JSON formatted" in dumps and data.labels[list(data.meta["objects"]).index("json.dumps")] == 1
    assert len(list((tmp_path / "documents").glob("stdlib-packages-*.json"))) == 1
    again = stdlib_packages(min_per_class=15, min_chars=80, include=include, cache_dir=tmp_path)  # from the cache
    assert again.texts == data.texts and np.array_equal(again.labels, data.labels)


# ---------------------------------------------------------------------------------------------- keyword-cls
def test_keyword_position_rule_and_twins():
    data = keyword_cls(n=400, num_classes=4, seed=3)
    keywords = list(KEYWORDS[:4])
    assert data.label_names == ["red-first", "blue-first", "green-first", "gold-first"]
    assert np.bincount(data.labels).tolist() == [100] * 4
    for text, label, where, length in zip(data.texts, data.labels, data.meta["keyword_positions"], data.meta["lengths"]):
        words = text.split()
        assert 12 <= len(words) == length <= 40
        counts = Counter(words)
        assert all(counts[k] == 1 for k in keywords)  # every text has each keyword exactly once
        assert [words.index(k) for k in keywords] == where.tolist()
        assert label == int(np.argmin(where))  # the label: the keyword that comes first
        # its twins: swap the first keyword with any other -> the same word multiset, each other label once
        twin_labels = set()
        for other in range(4):
            if other == label:
                continue
            twin = list(words)
            twin[where[label]], twin[where[other]] = twin[where[other]], twin[where[label]]
            assert Counter(twin) == counts
            twin_labels.add(int(np.argmin([twin.index(k) for k in keywords])))
        assert twin_labels == set(range(4)) - {int(label)}


def _bow_accuracy(data, n_train):
    vec = CountVectorizer(token_pattern=r"\S+")
    x = vec.fit_transform(data.texts)
    clf = MultinomialNB().fit(x[:n_train], data.labels[:n_train])
    return (clf.predict(x[n_train:]) == data.labels[n_train:]).mean()


def test_bag_of_words_is_at_chance_on_position_and_solves_bag():
    position = keyword_cls(n=3000, num_classes=4, seed=0)
    bag = keyword_cls(n=3000, num_classes=4, seed=0, variant="bag")
    # held-out accuracy of a bag-of-words naive Bayes: chance (1/4; 1000 test texts, sd ~0.014) vs ~1
    assert _bow_accuracy(position, 2000) < 0.30
    assert _bow_accuracy(bag, 2000) > 0.95
    for text, label in zip(bag.texts, bag.labels):
        assert [w for w in text.split() if w in KEYWORDS] == [KEYWORDS[label]]


def test_keyword_cls_is_seeded_and_checks_arguments():
    assert keyword_cls(n=50, seed=1).texts == keyword_cls(n=50, seed=1).texts
    assert keyword_cls(n=50, seed=1).texts != keyword_cls(n=50, seed=2).texts
    two = keyword_cls(n=20, num_classes=2, seed=0)
    assert all((t.split().index("red") < t.split().index("blue")) == (y == 0) for t, y in zip(two.texts, two.labels))
    words = filler_words(4900)
    assert len(set(words)) == 4900 and not set(words) & set(KEYWORDS)
    with pytest.raises(ValueError, match="min_len"):
        keyword_cls(n=10, num_classes=4, min_len=3, max_len=5)
    with pytest.raises(ValueError, match="variant"):
        keyword_cls(n=10, variant="order")


# ---------------------------------------------------------------------------------------------- essays
def _count(text):
    words = [w.strip(".").lower() for w in text.split()]
    return len(words), [words.count(k) for k in QUALITY_WORDS]


def test_essay_score_formula():
    assert essay_score(0, 30) == 1.0 and essay_score(10, 250) == 6.0 and essay_score(20, 400) == 6.0
    assert essay_score(5, 140) == pytest.approx(1 + 5 * (0.6 * 0.5 + 0.4 * 0.5))
    assert essay_score(5, 140, (0, 10)) == pytest.approx(10 * 0.5)


def test_synthetic_essays_follow_the_documented_formula():
    data = synthetic_essays(n=300, seed=0, noise=0.0)
    assert data.task_type == "regression" and data.score_range == (1, 6) and data.label_names == []
    assert data.labels.dtype == np.float32
    for text, length, q, per_word in zip(data.texts, data.meta["lengths"], data.meta["quality_counts"],
                                         data.meta["keyword_counts"]):
        n_words, counts = _count(text)
        assert n_words == length and counts == per_word.tolist() and sum(counts) == q
        assert text[0].isupper() and text.endswith(".")
    # noise 0: the label is exactly the rounded score of the counted quality words and length
    expected = essay_score(data.meta["quality_counts"], data.meta["lengths"])
    assert np.array_equal(data.labels, np.clip(np.floor(expected + 0.5), 1, 6).astype(np.float32))
    assert np.array_equal(data.meta["expected_scores"], expected)


def test_synthetic_essays_noise_and_spread():
    data = synthetic_essays(n=400, seed=1, noise=0.5)
    assert set(np.unique(data.labels).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0, 6.0}
    err = data.labels - data.meta["expected_scores"]
    assert 0.3 < np.abs(err).mean() < 0.6  # rounding plus N(0, 0.5^2) noise, clipped at the ends (measured 0.43-0.45)
    clean = synthetic_essays(n=400, seed=1, noise=0.0)  # the noise is drawn last: same essays, other labels
    assert clean.texts == data.texts and 0 < (clean.labels != data.labels).mean() < 0.6
    assert np.corrcoef(data.labels, data.meta["quality_counts"])[0, 1] > 0.7
    assert np.corrcoef(data.labels, data.meta["lengths"])[0, 1] > 0.7
    assert synthetic_essays(n=20, seed=1).texts == synthetic_essays(n=20, seed=1).texts


# ---------------------------------------------------------------------------------------------- aigt
def human_docs(n=40):
    rng = np.random.default_rng(0)
    docs = []
    for i in range(n):
        length = int(rng.integers(10, 120))
        words = [f"h{i}w{j}" for j in range(length)]
        docs.append("\n".join(" ".join(words[k:k + 7]) for k in range(0, length, 7)))  # lines: normalised away
    return docs


class FakeLM:
    """Reversed opening words, cycled to the asked length, `short_by` words short; records its calls."""

    def __init__(self, short_by=0):
        self.calls, self.short_by = [], short_by

    def __call__(self, openings, lengths):
        self.calls.append((openings, lengths))
        out = []
        for opening, n in zip(openings, lengths):
            rev = opening.split()[::-1]
            out.append(" ".join(rev[j % len(rev)] + "m" for j in range(max(n - self.short_by, 0))))
        return out


@pytest.mark.parametrize("length", ["long", "short"])
def test_aigt_pairs_share_openings_and_lengths(length):
    docs, lm = human_docs(), FakeLM()
    data = aigt_pairs(docs, lm, prompt_tokens=16, seed=0, length=length, max_tokens=60)
    assert data.label_names == ["human", "machine"] and data.labels.tolist() == [0, 1] * (len(data) // 2)
    assert len(lm.calls) == 1
    openings, targets = lm.calls[0]
    assert all(len(o.split()) == 16 for o in openings)
    eligible = [d for d in docs if len(d.split()) >= 16 + (10 if length == "short" else 8)]
    assert len(openings) == len(eligible) == len(data) // 2
    lengths, pairs = data.meta["lengths"], data.meta["pair_ids"]
    for k in range(0, len(data), 2):
        h, m = data.texts[k].split(), data.texts[k + 1].split()
        assert pairs[k] == pairs[k + 1] and data.meta["openings"][k] == data.meta["openings"][k + 1]
        doc = docs[pairs[k]].split()
        assert data.meta["openings"][k] == " ".join(doc[:16])
        assert h == doc[16:16 + len(h)]  # the human continuation, without the opening
        assert len(h) == len(m) == lengths[k] == lengths[k + 1]
        assert m[0] == doc[15] + "m"  # the fake LM's continuation of this opening
        if length == "short":
            assert 10 <= lengths[k] <= 54
        else:
            assert lengths[k] == min(len(doc) - 16, 60)
    # length alone carries no label: the two classes have the same multiset of lengths
    assert sorted(lengths[data.labels == 0]) == sorted(lengths[data.labels == 1])


def test_aigt_pairs_cut_both_sides_to_the_machine_length():
    docs = human_docs()
    data = aigt_pairs(docs, FakeLM(short_by=20), length="long", max_tokens=60, min_tokens=8)
    full = aigt_pairs(docs, FakeLM(), length="long", max_tokens=60, min_tokens=8)
    kept = {p: n for p, n in zip(full.meta["pair_ids"], full.meta["lengths"])}
    for k in range(0, len(data), 2):
        assert data.meta["lengths"][k] == kept[data.meta["pair_ids"][k]] - 20 >= 8
        assert len(data.texts[k].split()) == len(data.texts[k + 1].split())
    assert len(data) < len(full)  # the pairs left with < 8 machine words were dropped


def test_aigt_pairs_subsample_split_and_errors():
    docs = human_docs()
    a = aigt_pairs(docs, FakeLM(), n=10, seed=4, length="short")
    assert len(a) == 20 and a.texts == aigt_pairs(docs, FakeLM(), n=10, seed=4, length="short").texts
    assert np.all(np.diff(a.meta["pair_ids"][::2]) > 0)  # kept in input order
    # the openings as split keys keep both sides of an opening on the same side of the split
    _, val = stratified_split(a.labels, 0.4, list(a.meta["openings"]))
    assert len(val) == 8 and Counter(a.meta["pair_ids"][val].tolist()) == {p: 2 for p in set(a.meta["pair_ids"][val].tolist())}
    with pytest.raises(ValueError, match="continuations"):
        aigt_pairs(docs, lambda openings, lengths: ["x"], length="long")
    with pytest.raises(ValueError, match="length"):
        aigt_pairs(docs, FakeLM(), length="medium")
