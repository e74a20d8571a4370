"""aes_robust's properties (methods/classification/aes_robust.py): Integrated Gradients completeness at 64 steps on
a non-linear bag regressor, a tiny BERT and a BiLSTM regressor; word attributions from subword tokens; on a
regressor that depends only on keywords, deleting the bottom-50% attributed words moves the score less than
deleting the top-10%, and inserting class words flips it; the insertion inserts exactly k words; the detector's
features have the documented shape and it separates spiky attributions; QWK on a hand case."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from methods.classification import aes_robust as A

FILLER = [f"w{i}" for i in range(40)]
KEYWORDS = ["alpha", "beta", "gamma", "delta"]


def tokenizer(words):
    """A WordPiece tokenizer ([CLS] ... [SEP]) over `words`, plus "play"/"##ing" to split "playing"."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "play", "##ing", ",", *words])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]")


class TanhBag(nn.Module):
    """score = 3·MLP_tanh(Σ of the real tokens' embeddings / √n): non-linear in the embeddings."""

    def __init__(self, vocab=64, dim=8, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(vocab, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 16), nn.Tanh(), nn.Linear(16, 1))

    def embed(self, ids):
        return self.emb(ids)

    def from_embeddings(self, e, mask):
        m = mask.to(e.dtype).unsqueeze(-1)
        return 3 * self.mlp((e * m).sum(1) / m.sum(1).sqrt()).squeeze(-1)

    def forward(self, ids, mask):
        return self.from_embeddings(self.embed(ids), mask)


class KeywordBag(nn.Module):
    """score = number of keyword tokens: every other token's embedding is orthogonal to the read-out."""

    def __init__(self, tok):
        super().__init__()
        V = len(tok)
        self.emb = nn.Embedding(V, 2)
        with torch.no_grad():
            self.emb.weight.zero_()
            self.emb.weight[:, 1] = torch.randn(V, generator=torch.Generator().manual_seed(0))  # off the read-out
            for w in KEYWORDS:
                self.emb.weight[tok.convert_tokens_to_ids(w), 0] = 1.0
        self.readout = nn.Parameter(torch.tensor([1.0, 0.0]))

    def embed(self, ids):
        return self.emb(ids)

    def from_embeddings(self, e, mask):
        return ((e @ self.readout) * mask.to(e.dtype)).sum(1)

    def forward(self, ids, mask):
        return self.from_embeddings(self.embed(ids), mask)


def essays(n, seed=0, lo=18, hi=30, max_kw=4):
    rng = np.random.default_rng(seed)
    out, scores = [], []
    for _ in range(n):
        words = list(rng.choice(FILLER, size=int(rng.integers(lo, hi))))
        k = int(rng.integers(0, max_kw + 1))
        for w in rng.choice(KEYWORDS, size=k):
            words.insert(int(rng.integers(0, len(words) + 1)), str(w))
        out.append(" ".join(words))
        scores.append(float(k))
    return out, np.asarray(scores, dtype=np.float32)


def fake_data(tok, n_train=120, n_val=24, seq_len=64):
    tt, tl = essays(n_train, seed=1)
    vt, vl = essays(n_val, seed=2)
    return SimpleNamespace(task_type="regression", score_range=(0, 10), tokenizer=tok, seq_len=seq_len,
                           pad_id=int(tok.pad_token_id), train_texts=tt, train_labels=tl, val_texts=vt, val_labels=vl,
                           encode=lambda texts: tok(list(texts), truncation=True, max_length=seq_len)["input_ids"])


def batch_of(tok, texts, seq_len=64):
    rows = [tok(t, truncation=True, max_length=seq_len)["input_ids"] for t in texts]
    return A.pad_batch(rows, tok.pad_token_id, "cpu")


# -- Integrated Gradients ------------------------------------------------------------------------------------------
def test_ig_completeness_within_1pct_at_64_steps_on_a_nonlinear_regressor():
    tok = tokenizer(FILLER + KEYWORDS)
    model = TanhBag(vocab=len(tok)).eval()
    ids, mask = batch_of(tok, essays(6)[0])
    tok_attr, delta, gap = A.integrated_gradients(model, ids, mask, n_steps=64)
    f_x = model(ids, mask)
    f_base = model.from_embeddings(torch.zeros_like(model.embed(ids)), mask)
    assert torch.allclose(gap, f_x - f_base, atol=1e-6)
    assert gap.abs().min() > 0.05  # a non-trivial difference to explain
    assert ((tok_attr.sum(1) - gap).abs() <= 0.01 * gap.abs()).all()
    assert torch.allclose(tok_attr.sum(1) - gap, delta, atol=1e-5)  # Captum's delta is the same error
    assert (tok_attr[mask == 0] == 0).all()


def tiny_bert_regressor(vocab, seed=0):
    from transformers import BertConfig, BertModel

    from methods.classification.classifier import SequenceClassifier

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)
    model = SequenceClassifier(BertModel(cfg), num_labels=1, pooling="cls")
    nn.init.normal_(model.head.weight, std=1.0)  # a score that moves (BERT's head init is ~0.02)
    return model.eval()


def tiny_bilstm_regressor(vocab, seed=0):
    from methods.classification.classifier import SequenceClassifier
    from models.bilstm import BiLSTM

    torch.manual_seed(seed)
    model = SequenceClassifier(BiLSTM(vocab, embed_dim=16, hidden_size=16), num_labels=1)
    nn.init.normal_(model.head.weight, std=1.0)
    return model.eval()


@pytest.mark.parametrize("build", [tiny_bert_regressor, tiny_bilstm_regressor], ids=["bert", "bilstm"])
@pytest.mark.parametrize("baseline", ["zero", "pad"])
def test_ig_completeness_on_sequence_classifiers(build, baseline):
    """Σ IG = f(x) − f(x') within 1% at 64 steps through the classifier's from_embeddings (BERT adds its position
    embeddings inside: the word embeddings are what is interpolated)."""
    tok = tokenizer(FILLER + KEYWORDS)
    model = build(len(tok))
    ids, mask = batch_of(tok, essays(4, lo=6, hi=14)[0])
    assert torch.allclose(model(ids, mask), model.from_embeddings(model.embed(ids), mask), atol=1e-5)
    tok_attr, delta, gap = A.integrated_gradients(model, ids, mask, n_steps=64, baseline=baseline,
                                                  pad_id=tok.pad_token_id)
    assert gap.abs().min() > 1e-3
    assert ((tok_attr.sum(1) - gap).abs() <= 0.01 * gap.abs()).all(), (tok_attr.sum(1) - gap) / gap


def test_bilstm_padding_changes_nothing():
    from models.bilstm import BiLSTM

    torch.manual_seed(0)
    enc = BiLSTM(50, embed_dim=8, hidden_size=8).eval()
    ids = torch.randint(4, 50, (1, 7))
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 7, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long)], 1)
    assert torch.allclose(enc(ids), enc(padded, mask), atol=1e-6)
    assert enc(ids).shape == (1, enc.hidden_size)


def test_word_attributions_sum_each_words_subword_tokens():
    tok = tokenizer(["the", "good"])
    words = "playing the good, xyz".split()
    ids, word_of = A.tokenize_words(tok, words, seq_len=64)
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "play", "##ing", "the", "good", ",", "[UNK]", "[SEP]"]
    assert word_of == [-1, 0, 0, 1, 2, 2, 3, -1]
    attr = A.word_attributions([9.0, 1.0, 2.0, 3.0, 4.0, 0.5, -1.0, 7.0], word_of, len(words))
    assert attr.tolist() == [3.0, 3.0, 4.5, -1.0]  # [CLS]/[SEP] (9, 7) belong to no word
    ids_cut, word_of_cut = A.tokenize_words(tok, words, seq_len=5)  # truncated: "good," and "xyz" unseen
    assert ids_cut == tok(" ".join(words), truncation=True, max_length=5)["input_ids"]
    assert A.word_attributions([0, 1, 1, 1, 0], word_of_cut, len(words)).tolist() == [2.0, 1.0, 0.0, 0.0]


# -- the suites ----------------------------------------------------------------------------------------------------
def test_insertion_inserts_exactly_k_words():
    rng = np.random.default_rng(0)
    for _ in range(200):
        words = [f"o{i}" for i in range(int(rng.integers(0, 12)))]
        k = int(rng.integers(1, 8))
        new = [f"n{j}" for j in range(k)]
        out, pos = A.insert_words(words, new, rng)
        assert len(out) == len(words) + k and len(pos) == k
        assert sorted(out[p] for p in pos) == sorted(new)
        assert A.delete_words(out, pos) == words
    pool = ["a", "b", "c"]
    assert len(A.pick_words(pool, 2, rng)) == 2 and len(set(A.pick_words(pool, 3, rng))) == 3  # distinct while it can
    assert len(A.pick_words(pool, 7, rng)) == 7


def test_delete_and_shuffle_touch_only_the_chosen_words():
    rng = np.random.default_rng(1)
    words = [f"x{i}" for i in range(20)]
    attr = rng.normal(size=20)
    order = A.ranked_by_attribution(attr)
    assert (np.diff(np.abs(attr)[order]) >= 0).all()
    bottom = order[:A.n_of(50, 20)]
    assert len(bottom) == 10 and A.n_of(10, 20) == 2 and A.n_of(10, 3) == 1 and A.n_of(50, 0) == 0
    kept = A.delete_words(words, bottom)
    assert kept == [w for i, w in enumerate(words) if i not in set(bottom.tolist())]
    shuffled = A.shuffle_words(words, bottom, rng)
    assert sorted(shuffled) == sorted(words)
    assert all(shuffled[i] == words[i] for i in range(20) if i not in set(bottom.tolist()))
    assert shuffled != words


def test_keyword_regressor_bottom50_deletion_moves_less_than_top10_and_class_words_flip():
    """The score depends only on keywords: deleting the bottom-50% attributed words (fillers, IG exactly 0) leaves
    it unchanged, deleting the top-10% (keywords) moves it; the class words learnt from the training data are the
    keywords, and inserting one flips the rounded score of every essay (none is at the top score)."""
    tok = tokenizer(FILLER + KEYWORDS)
    data = fake_data(tok)
    model = KeywordBag(tok)
    method = A.AESRobust(eval_essays=24, insert_ks=[1, 3], n_class_words=4, detector_insert_k=3, ig_batch_size=24)
    out = method.evaluate(model, data)
    assert out["aes_qwk"] == pytest.approx(1.0)  # the model is the scoring rule
    assert out["ig_completeness_rel_err"] < 1e-4  # linear: IG is exact
    assert out["overstable_delete_bottom50_abs_change"] == pytest.approx(0.0, abs=1e-5)
    assert out["overstable_delete_bottom50_unchanged"] == 1.0
    assert out["overstable_delete_top10_abs_change"] > 1.0
    assert out["overstable_delete_top10_abs_change"] > out["overstable_delete_random10_abs_change"]
    assert out["overstable_shuffle_all_abs_change"] == pytest.approx(0.0, abs=1e-5)  # a bag of words
    assert out["oversensitive_flip_rate@1"] == 1.0 and out["oversensitive_shift@1"] == pytest.approx(1.0, abs=1e-5)
    assert out["oversensitive_shift@3"] == pytest.approx(3.0, abs=1e-5)
    assert out["oversensitive_low_flip_rate@1"] == 0.0  # low-score words are fillers: no effect
    high, _ = A.class_words_from_data(data.train_texts, data.train_labels, 4, min_df=5)
    assert sorted(high) == sorted(KEYWORDS)
    assert 0.0 <= out["detector_auc"] <= 1.0 and {"detector_auc_insert", "detector_auc_delete_bottom"} <= set(out)
    assert out["suite_essays"] == 24


def test_class_words_hand_case():
    texts = ["good good x", "good y", "bad x", "bad y", "x y"]
    labels = [4, 3, 1, 0, 2]
    high, low = A.class_words_from_data(texts, labels, n=1, min_df=2)
    assert high == ["good"] and low == ["bad"]  # Pearson r of the rate with the score: good +0.89, bad −0.87
    high, low = A.class_words_from_attributions([["Good,", "x"], ["good", "y"], ["x", "y"]],
                                                [np.array([2.0, 0.1]), np.array([1.0, -0.2]), np.array([0.3, -0.4])],
                                                n=1, min_df=2)
    assert high == ["good"] and low == ["y"]


# -- the detector --------------------------------------------------------------------------------------------------
def test_detector_features_have_the_documented_shape():
    rng = np.random.default_rng(0)
    attrs = [rng.normal(size=int(n)) for n in rng.integers(1, 40, size=9)] + [np.zeros(0), np.zeros(3)]
    f = A.attribution_features(attrs, bins=7, top_m=4)
    assert f.shape == (11, 7 + 4 + len(A.DETECTOR_STATS)) and np.isfinite(f).all()
    assert np.allclose(f[:9, :7].sum(1), 1.0)  # histogram shares
    assert (f[:9, 7:11] >= 0).all() and (f[:9, 7:11].sum(1) <= 1 + 1e-12).all()
    assert f[0, 11] == pytest.approx(attrs[0].sum())  # DETECTOR_STATS[0] = Σ A


def test_detector_separates_spiky_attributions_on_held_out_essays():
    rng = np.random.default_rng(0)
    orig = [rng.normal(0, 0.1, size=30) for _ in range(40)]
    adv = [np.concatenate([a, rng.uniform(2, 3, size=3)]) for a in orig]  # three inserted high-attribution words
    feats = A.attribution_features(orig + adv)
    labels = np.r_[np.zeros(40), np.ones(40)].astype(int)
    groups = np.r_[np.arange(40), np.arange(40)]
    for kind in A.DETECTORS:
        out = A.detector_auc(feats, labels, groups, kind=kind, attack=np.array(["original"] * 40 + ["insert"] * 40))
        assert out["detector_auc"] > 0.95 and out["detector_auc_insert"] == out["detector_auc"]
        assert out["detector_test_samples"] == 40  # 20 essays × (original, perturbed): the split is by essay


# -- metrics and config --------------------------------------------------------------------------------------------
def test_qwk_hand_case():
    # O: (0,0) (1,2) (2,2); weights (i−j)²/4; E = outer([1,1,1], [1,0,2])/3 -> Σ wO = 0.25, Σ wE = 1.25 -> κ = 0.8
    assert A.qwk([0, 1, 2], [0.2, 1.6, 2.4], 0, 2) == pytest.approx(0.8)
    assert A.qwk([1, 2, 3, 4], [1, 2, 3, 4], 1, 4) == pytest.approx(1.0)
    assert A.round_scores([-0.7, 2.5, 3.49, 9.0], 0, 4).tolist() == [0, 3, 3, 4]  # clipped, halves up


def test_bad_config_is_reported_in_one_line():
    with pytest.raises(ValueError) as e:
        A.AESRobust(baseline="mean", detector="svm", delete_pcts=[0, 50], n_steps=1)
    msg = str(e.value)
    assert "baseline 'mean'" in msg and "detector 'svm'" in msg and "delete_pcts" in msg and "n_steps" in msg


# -- end to end ----------------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_runs_through_the_runner_on_synthetic_essays(tmp_path):
    """method=aes_robust on a tiny BERT regressor trained 120 steps on synthetic-essays (300 essays): the regressor
    learns (QWK 0.80 measured), IG is complete on it (1.6e-6 measured), and every suite reports in range."""
    from tests.conftest import run_in_process

    s = run_in_process(["model=bert-tiny", "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2",
                        "model.num_heads=2", "model.seq_len=128", "method=aes_robust", "method.lr=6e-3",
                        "method.eval_essays=16", "method.insert_ks=[1,5]", "dataset=synthetic-essays",
                        "dataset.generator.n=300", "dataset.tokenizer.vocab_size=300", "dataset.batch_size=16",
                        "trainer.max_steps=120", "trainer.val_every_n_steps=120", "trainer.val_batches=2",
                        "hardware.threads=1", "logger=none"], tmp_path / "run")
    assert s["stages"] == ["train", "evaluate"] and s["steps"] == 120
    assert s["eval/aes_qwk"] == pytest.approx(s["eval/qwk"]) and s["eval/aes_qwk"] > 0.5
    assert s["eval/ig_completeness_rel_err"] < 0.01 and s["eval/suite_essays"] == 16
    for p in ("10", "50"):
        for kind in ("delete_bottom", "delete_top", "delete_random", "shuffle_bottom"):
            assert s[f"eval/overstable_{kind}{p}_abs_change"] >= 0
            assert 0 <= s[f"eval/overstable_{kind}{p}_unchanged"] <= 1
    for k in (1, 5):
        assert 0 <= s[f"eval/oversensitive_flip_rate@{k}"] <= 1 and 0 <= s[f"eval/oversensitive_low_flip_rate@{k}"] <= 1
        assert np.isfinite(s[f"eval/oversensitive_shift@{k}"])
    # word order barely matters to it, word count does (length is 40% of the synthetic score)
    assert s["eval/overstable_shuffle_bottom50_abs_change"] < s["eval/overstable_delete_bottom50_abs_change"]
    for k in ("detector_auc", "detector_auc_insert", "detector_auc_delete_bottom", "detector_accuracy"):
        assert 0 <= s[f"eval/{k}"] <= 1, k
