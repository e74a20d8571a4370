"""The pairs data kind (tasks/seq2seq.py Pairs, tasks/pair_sources.py): generated sources, local files, the shared
tokenizers, the data the run gets, and beam search on T5 (its cross-attention as the coverage)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from tasks.base import BuildContext
from tasks.pair_sources import CipherMT, PairFile, Reverse, corpus_sentences, source_class
from tasks.seq2seq import Pairs, bpe_tokenizer, word_vocabulary


def ctx(tmp_path: Path, seq_len: int = 64) -> BuildContext:
    import os

    return BuildContext(seq_len=seq_len, cache_dir=Path(os.environ["METHODBENCH_CACHE"]), seed=0, batch_size=8,
                        max_steps=0, accumulate_grad_batches=1)


def test_corpus_sentences_split_and_filter_as_documented():
    docs = ["Return the value. It's a UTF8 string!\n\nSecond para has five words", "Return the value."]
    assert corpus_sentences(docs, 2, 6) == [["return", "the", "value"], ["it", "s", "a", "utf", "string"],
                                            ["second", "para", "has", "five", "words"]]
    assert corpus_sentences(docs, 4, 4) == []


def test_cipher_is_a_bijection_and_modifiers_swap_with_the_next_word():
    g = CipherMT(seed=3)
    types = sorted({f"w{i}x" for i in range(500)} | {"a", "an", "encyclopaedia"})
    cipher, modifiers = g.cipher(types)
    assert len(set(cipher.values())) == len(types)
    assert all(w.isalpha() for w in cipher.values())
    assert 0.12 < len(modifiers) / len(types) < 0.28  # modifier_share 0.2 of 503 types (binomial sd 0.018)
    assert cipher == CipherMT(seed=3).cipher(types)[0] and cipher != CipherMT(seed=4).cipher(types)[0]
    c = {w: w.upper() for w in "abcde"}
    # a is a modifier: (a b) swaps; (c d) swaps; a modifier before a modifier or at the end stays
    assert CipherMT.translate(list("abcde"), c, {"a", "c"}) == ["B", "A", "D", "C", "E"]
    assert CipherMT.translate(list("aacb"), c, {"a", "c"}) == ["A", "A", "B", "C"]
    assert CipherMT.translate(list("ba"), c, {"a"}) == ["B", "A"]
    assert CipherMT.translate(list("abcde"), c, set()) == ["A", "B", "C", "D", "E"]


def test_cipher_mt_pairs_are_real_held_out_sentences_translated_word_by_word():
    corpus = CipherMT(train_size=300, val_size=40, seed=1).generate(ctx(Path(".")).cache_dir)
    assert len(corpus.train_source) == 300 and len(corpus.val_source) == 40
    assert not set(corpus.train_source) & set(corpus.val_source)
    for s, t in zip(corpus.train_source + corpus.val_source, corpus.train_target + corpus.val_target):
        assert len(s.split()) == len(t.split()) and 4 <= len(s.split()) <= 16
    again = CipherMT(train_size=300, val_size=40, seed=1).generate(ctx(Path(".")).cache_dir)
    assert again.train_target == corpus.train_target


def test_reverse_targets_are_reversed_sources():
    c = Reverse(words=7, train_size=50, val_size=5, seed=2).generate()
    assert all(t.split() == s.split()[::-1] for s, t in zip(c.train_source + c.val_source, c.train_target + c.val_target))
    assert c.vocabulary[:3] == ["<pad>", "</s>", "<unk>"]


def test_file_source_reads_tsv_and_jsonl_and_splits_by_pair_not_by_order(tmp_path):
    pairs = [(f"source {i}", f"target {i}") for i in range(200)]
    tsv = tmp_path / "p.tsv"
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in pairs))
    shuffled = tmp_path / "q.jsonl"
    rows = pairs[:]
    random.Random(0).shuffle(rows)
    shuffled.write_text("".join(json.dumps({"src": s, "tgt": t}) + "\n" for s, t in rows))
    a = PairFile(str(tsv), val_fraction=0.2, seed=7).generate()
    b = PairFile(str(shuffled), val_fraction=0.2, source_key="src", target_key="tgt", seed=7).generate()
    assert sorted(a.val_source) == sorted(b.val_source) and 20 <= len(a.val_source) <= 60
    assert sorted(a.train_source + a.val_source) == sorted(s for s, _ in pairs)
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nonly one column\n")
    with pytest.raises(ValueError, match="line 2 of .* has 1 tab-separated columns"):
        PairFile(str(bad)).generate()
    with pytest.raises(ValueError, match="dataset.generator.path: 'x.csv' must end in"):
        PairFile("x.csv")
    with pytest.raises(ValueError, match="dataset.source: 'nope' is not a pairs source; choose one of: cipher-mt"):
        source_class("nope")


def test_shared_tokenizers_put_the_specials_first_and_decode_losslessly():
    texts = ["the cat sat on the mat", "lala vuguse sado raku", "the mat"]
    tok = bpe_tokenizer(texts * 20, vocab_size=60, min_frequency=1)
    assert [tok.pad_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2]
    for t in texts:
        assert tok.decode(tok(t, add_special_tokens=False)["input_ids"]).strip() == t
    assert word_vocabulary(["b a", "a c"], 1)[:4] == ["<pad>", "</s>", "<unk>", "a"]
    assert word_vocabulary(["b a", "a c"], 2) == ["<pad>", "</s>", "<unk>", "a"]


@pytest.mark.parametrize("kind", ["word", "bpe"])
def test_the_run_gets_eos_terminated_pairs_references_and_sacrebleu_scores(kind, tmp_path):
    from sacrebleu.metrics import BLEU

    task = Pairs("cipher-mt", {"train_size": 400, "val_size": 30, "seed": 0},
                 {"kind": kind, "vocab_size": 500, "min_frequency": 1})
    data = task.build(ctx(tmp_path, seq_len=128))
    assert all(s[-1] == 1 and t[-1] == 1 for s, t in data.train + data.val)
    if kind == "bpe":  # subwords: every validation target comes back as it was
        assert [data.decode(t) for _, t in data.val] == data.references
    else:  # words: those never seen in training are <unk>
        known = set(data.tokenizer.get_vocab())
        assert [data.decode(t) for _, t in data.val] == [" ".join(w if w in known else "<unk>" for w in r.split())
                                                         for r in data.references]
    assert data.score(data.references)["bleu"] == pytest.approx(100.0)
    hyps = [" ".join(r.split()[:-1]) for r in data.references]
    tokenize = "none" if kind == "word" else "13a"
    assert data.score(hyps)["bleu"] == pytest.approx(BLEU(tokenize=tokenize).corpus_score(hyps, [data.references]).score)
    whole, _ = data.make_loaders(8, 6, seed=0, start=lambda: 0)
    resumed, _ = data.make_loaders(8, 6, seed=0, start=lambda: 4)
    assert all(torch.equal(a, b) for a, b in zip(list(whole)[4:], list(resumed)))


def test_bad_values_and_a_short_seq_len_are_one_line_errors(tmp_path):
    from tasks.errors import ConfigError

    with pytest.raises(ValueError, match="dataset.tokenizer.kind: 'wp' is not valid; choose one of: word, bpe"):
        Pairs("reverse", tokenizer={"kind": "wp"})
    with pytest.raises(ValueError, match="dataset.decoding: unknown key 'beam'"):
        Pairs("reverse", decoding={"beam": 3})
    with pytest.raises(ValueError, match="dataset.generator: an unexpected keyword argument 'foo'; choose keys from: words"):
        Pairs("reverse", {"foo": 1})
    with pytest.raises(ConfigError, match="model.seq_len: 8 is shorter than the longest reverse sequence"):
        Pairs("reverse", {"train_size": 10, "val_size": 2}).build(ctx(tmp_path, seq_len=8))


def test_hub_recipes_compose_and_validate_without_a_network():
    from runner.config import validate
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["dataset=wmt14", "model=gnmt", "method=gnmt"])
    validate(cfg)
    assert cfg.dataset.generator.name == "wmt14" and cfg.dataset.decoding.coverage_penalty == 0.2


def _t5(seed: int = 0):
    from models.t5 import T5

    torch.manual_seed(seed)
    return T5(hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2).build(6, 16).eval()


def test_t5_beam_search_scores_with_its_cross_attention_and_beam_one_is_greedy():
    """T5's coverage is its last decoder layer's cross-attention averaged over heads: a distribution over the real
    source positions at every step; a beam wide enough to prune nothing ranks like exhaustive teacher-forced scoring
    (s with α = 0.5, β = 0.3), and beam 1 is greedy."""
    import itertools

    from methods.seq2seq import (
        BeamScorer,
        beam_search,
        decoder_states,
        greedy_decode,
        output_logits,
        shift_right,
    )

    model = _t5()
    src = torch.tensor([[3, 4, 5, 1, 0]])
    _, att = decoder_states(model, src, torch.tensor([[0, 3, 4]]), attention=True)
    assert torch.allclose(att.sum(-1), torch.ones(1, 3), atol=1e-6) and (att[..., 4] == 0).all()
    scorer = BeamScorer(0.5, 0.3)
    _, ranked = beam_search(model, src, steps=2, beam_size=64, scorer=scorer, return_all=True)
    seqs = [[1]] + [[a, 1] for a in (0, 2, 3, 4, 5)] + [list(p) for p in itertools.product((0, 2, 3, 4, 5), repeat=2)]
    truth = []
    with torch.no_grad():
        for y in seqs:
            tgt = torch.tensor([y])
            hidden, att = decoder_states(model, src, shift_right(model, tgt), attention=True)
            logp = torch.log_softmax(output_logits(model, hidden).double(), -1).gather(-1, tgt[..., None]).sum()
            truth.append((float(scorer.score(logp, len(y), att.double().sum(1), src != 0)), y))
    truth.sort(key=lambda x: -x[0])
    assert [y for _, y in ranked[0]] == [y for _, y in truth]
    many = torch.randint(2, 6, (6, 5), generator=torch.Generator().manual_seed(1))
    assert torch.equal(greedy_decode(model, many, 6), beam_search(model, many, 6, beam_size=1))
