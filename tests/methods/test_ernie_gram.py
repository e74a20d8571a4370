"""ERNIE-Gram (methods/pretraining/ernie_gram.py, ngram_mlm.py, ngrams.py): the t-statistic equals its formula on
brute-force counts and ranks planted collocations above every chance pair; maximum matching takes the longest
lexicon n-gram and never crosses an excluded token; explicit masking shortens the input by n - 1 per masked n-gram,
labels it with its n-gram id and appends n fine [M] positions labelled with its tokens; through a real BERT encoder,
a fine [M] position's input changes no other position's output (the [M]<->[M] block), while without the block it
does; span/token masking keep the length; the mask budget holds; RTD labels are exactly where the generator's
sample differs from the original; the loss trains; bad config values are one line."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from methods.pretraining.ernie_gram import ErnieGram
from methods.pretraining.ngram_mlm import (
    NgramTable,
    build_batch,
    encode,
    gumbel_sample,
    pick_units,
    rtd_labels,
    unit_logits,
)
from methods.pretraining.ngrams import NgramLexicon, t_statistics

torch.set_num_threads(1)
V = 40
MASK, EOS = 39, 38


def planted_stream(n=20000, seed=0):
    """I.i.d. uniform tokens 0..29 with the pair (30, 31) and the triple (32, 33, 34) planted often, EOS now and then."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        r = rng.random()
        if r < 0.05:
            out += [30, 31]
        elif r < 0.08:
            out += [32, 33, 34]
        elif r < 0.09:
            out.append(EOS)
        else:
            out.append(int(rng.integers(0, 30)))
    return np.asarray(out[:n])


def tiny_bert(vocab=V, hidden=16, seed=0):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    m = BertForMaskedLM(BertConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, max_position_embeddings=64, type_vocab_size=1,
                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                                   attn_implementation="eager"))
    return m.eval()


# -- the lexicon --------------------------------------------------------------------------------------------
def test_t_statistic_matches_brute_force_counts():
    t = planted_stream(3000)
    N = len(t)
    grams, counts, stat = t_statistics(t, 2, V, exclude=(EOS,), min_count=1)
    brute = Counter((int(a), int(b)) for a, b in zip(t[:-1], t[1:]) if EOS not in (a, b))
    assert dict(zip(grams, counts.tolist())) == dict(brute)
    p = np.bincount(t, minlength=V) / N
    for g, s in list(zip(grams, stat))[::37]:
        pg = brute[g] / N
        assert s == pytest.approx((pg - p[g[0]] * p[g[1]]) / np.sqrt(pg / N), rel=1e-12)


def test_planted_collocations_outrank_every_chance_pair():
    lex = NgramLexicon.build(planted_stream(), V, size=50, max_n=3, min_count=5, exclude=(EOS,))
    top = lex.ngrams[:4]
    assert set(top) >= {(30, 31), (32, 33, 34)}
    assert set(top) <= {(30, 31), (32, 33, 34), (32, 33), (33, 34)}
    grams, _, stat = t_statistics(planted_stream(), 2, V, exclude=(EOS,), min_count=5)
    chance = [s for g, s in zip(grams, stat) if not set(g) & {30, 31, 32, 33, 34}]
    planted = min(s for g, s in zip(lex.ngrams, lex.scores) if g in {(30, 31), (32, 33, 34)})
    assert len(chance) > 800 and planted > 5 * max(chance)  # every pair of the 30 i.i.d. tokens
    assert all(EOS not in g for g in lex.ngrams)
    assert list(lex.scores) == sorted(lex.scores, reverse=True)


def test_maximum_matching_takes_the_longest_and_never_crosses_excluded():
    lex = NgramLexicon([(1, 2), (1, 2, 3), (3, 4)], np.ones(3), np.ones(3, dtype=int), V)
    seq = [1, 2, 3, 4, 1, 2, 4, 3, EOS, 4, 3, 4]
    units = lex.segment(seq)
    assert units == [(0, 3), (3, 1), (4, 2), (6, 1), (7, 1), (8, 1), (9, 1), (10, 2)]
    assert [s for s, _ in units] == sorted(s for s, _ in units)
    assert sum(n for _, n in units) == len(seq)
    built = NgramLexicon.build(planted_stream(), V, size=500, max_n=3, min_count=1, exclude=(EOS,))
    row = planted_stream(400, seed=3).tolist()
    for s, n in built.segment(row):
        assert n == 1 or EOS not in row[s:s + n]


# -- masking ------------------------------------------------------------------------------------------------
LEX = NgramLexicon([(5, 6, 7), (8, 9)], np.ones(2), np.ones(2, dtype=int), V)


def test_explicit_masking_shortens_by_n_minus_1_and_labels_the_ngram_id():
    row = [1, 5, 6, 7, 2, 8, 9, 3, 4, 0]
    b = build_batch(torch.tensor([row]), LEX, torch.Generator().manual_seed(0), MASK, (EOS,), mask_prob=1.0,
                    objective="explicit", comprehensive=True)
    L, Fn = b.lengths[0].tolist()
    assert L == len(row) - (3 - 1) - (2 - 1)  # every unit masked: two n-grams collapsed
    assert Fn == 3 + 2
    assert b.input_ids[0, :L].tolist() == [MASK] * L
    assert b.coarse_labels[0, :L].tolist() == [1, V + 0, 2, V + 1, 3, 4, 0]
    assert b.position_ids[0, :L].tolist() == [0, 1, 4, 5, 7, 8, 9]  # a collapsed n-gram at its first position
    assert b.fine_labels[0, L:L + Fn].tolist() == [5, 6, 7, 8, 9]
    assert b.position_ids[0, L:L + Fn].tolist() == [1, 2, 3, 5, 6]
    assert b.input_ids[0, L:L + Fn].tolist() == [MASK] * Fn
    # attention: coarse rows see the coarse stream only; fine rows the coarse stream and themselves
    a = b.attn[0]
    assert a[:L, :L].all() and not a[:L, L:].any()
    assert a[L:, :L].all() and torch.equal(a[L:, L:], torch.eye(Fn, dtype=torch.bool))


def test_one_masked_ngram_at_a_time():
    row = [1, 5, 6, 7, 2, 8, 9, 3, 4, 0, 1, 2]
    for seed in range(20):  # budget 4 of 12 tokens: units of the random order that fit
        b = build_batch(torch.tensor([row]), LEX, torch.Generator().manual_seed(seed), MASK, (EOS,), mask_prob=1 / 3)
        L, Fn = b.lengths[0].tolist()
        masked = b.coarse_labels[0, :L]
        grams = masked[masked >= V] - V
        assert L == len(row) - sum(len(LEX.ngrams[g]) - 1 for g in grams.tolist())
        assert Fn == sum(len(LEX.ngrams[g]) for g in grams.tolist())
        covered = sum(len(LEX.ngrams[int(x) - V]) if x >= V else 1 for x in masked[masked != -100].tolist())
        assert 1 <= covered <= 4
        # the unmasked coarse positions hold their own tokens, their originals
        keep = b.coarse_labels[0, :L] == -100
        assert torch.equal(b.input_ids[0, :L][keep], b.original[0, :L][keep])


def test_span_and_token_masking_keep_the_length():
    row = [1, 5, 6, 7, 2, 8, 9, 3, 4, 0]
    for objective in ("span", "token"):
        b = build_batch(torch.tensor([row]), LEX, torch.Generator().manual_seed(1), MASK, (EOS,), mask_prob=1.0,
                        objective=objective)
        L, Fn = b.lengths[0].tolist()
        assert (L, Fn) == (len(row), 0)
        assert b.coarse_labels[0].tolist() == row and b.position_ids[0].tolist() == list(range(len(row)))
        assert (b.coarse_labels < V).all()


def test_mask_budget_and_special_tokens():
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        row = rng.integers(0, 12, 30).tolist()
        row[rng.integers(0, 30)] = EOS
        units = LEX.segment(row)
        picked = pick_units(units, 30, {EOS, MASK}, row, 0.15, gen)
        covered = sum(n for _, n in picked)
        assert 1 <= covered <= round(0.15 * 30)
        assert all(EOS not in row[s:s + n] for s, n in picked)
        assert set(picked) <= set(units)


def test_padding_rows_see_only_themselves():
    rows = torch.tensor([[1, 5, 6, 7, 2, 3], [1, 2, 3, 4, 0, 1]])
    b = build_batch(rows, LEX, torch.Generator().manual_seed(0), MASK, (EOS,), mask_prob=1.0)
    S = b.input_ids.shape[1]
    L, Fn = b.lengths[1].tolist()
    assert L + Fn < S
    pad = torch.arange(L + Fn, S)
    assert torch.equal(b.attn[1][pad], torch.eye(S, dtype=torch.bool)[pad])
    assert not b.attn[1][: L + Fn, L + Fn:].any()


# -- the [M] <-> [M] block, through a real encoder -------------------------------------------------------------
def _perturb_one_fine_position(block_fine: bool):
    """Hidden states before and after moving one fine [M] position's position id (its input embedding)."""
    row = [1, 5, 6, 7, 2, 8, 9, 3, 4, 0]
    b = build_batch(torch.tensor([row]), LEX, torch.Generator().manual_seed(0), MASK, (EOS,), mask_prob=1.0)
    L, Fn = b.lengths[0].tolist()
    attn = b.attn.clone()
    if not block_fine:
        attn[0, L:L + Fn, L:L + Fn] = True
    mlm, table = tiny_bert(), NgramTable(len(LEX), 16)
    with torch.no_grad():
        h0 = encode(mlm, table, b.input_ids, b.position_ids, attn)
        pos = b.position_ids.clone()
        pos[0, L + 1] = 40  # the second fine [M] of the first n-gram
        h1 = encode(mlm, table, b.input_ids, pos, attn)
    return h0[0], h1[0], L, Fn


def test_fine_positions_do_not_see_each_other():
    h0, h1, L, Fn = _perturb_one_fine_position(block_fine=True)
    changed = L + 1
    others = [i for i in range(L + Fn) if i != changed]
    assert torch.equal(h0[others], h1[others])  # exactly: a masked-out column contributes exactly 0
    assert (h0[changed] - h1[changed]).abs().max() > 1e-3


def test_without_the_block_a_fine_position_leaks():  # the invariance above is not vacuous
    h0, h1, L, Fn = _perturb_one_fine_position(block_fine=False)
    assert (h0[L:L + Fn] - h1[L:L + Fn]).abs().amax(-1).gt(1e-4).sum() == Fn
    assert torch.equal(h0[:L], h1[:L])  # coarse rows never see the fine stream


def test_ngram_ids_read_the_table_and_logits_cover_the_lexicon():
    mlm, table = tiny_bert(), NgramTable(len(LEX), 16)
    ids = torch.tensor([[1, V + 1, 2]])
    pos = torch.arange(3)[None]
    attn = torch.ones(1, 3, 3, dtype=torch.bool)
    with torch.no_grad():
        h = encode(mlm, table, ids, pos, attn)
        table.weight[1] += torch.randn(16)  # not a constant shift: BERT's embedding LayerNorm removes those
        h2 = encode(mlm, table, ids, pos, attn)
        assert not torch.allclose(h, h2)
        assert unit_logits(mlm, table, h[0]).shape == (3, V + len(LEX))
        assert unit_logits(mlm, table, h[0], ngrams=False).shape == (3, V)


# -- generator samples and replaced-token detection ---------------------------------------------------------
def test_rtd_labels_are_exactly_where_the_sample_differs():
    rows = torch.tensor([[1, 5, 6, 7, 2, 8, 9, 3, 4, 0], [8, 9, 1, 2, 3, 5, 6, 7, 1, 1]])
    b = build_batch(rows, LEX, torch.Generator().manual_seed(0), MASK, (EOS,), mask_prob=0.5)
    masked = b.masked
    orig = b.original[masked]
    sample = orig.clone()
    sample[::2] = (orig[::2] + 1) % (V + len(LEX))  # every other masked unit replaced by another unit
    b.input_ids = b.input_ids.masked_scatter(masked, sample)
    labels = rtd_labels(b)
    coarse = b.coarse
    assert torch.equal(labels[coarse] == 1, (b.input_ids != b.original)[coarse])
    assert torch.equal(labels[masked], (sample != orig).float())
    assert (labels[coarse & ~masked] == 0).all() and (labels[~coarse] == -1).all()


def test_gumbel_samples_follow_softmax_and_skip_banned():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0 + 1e-9]])).repeat(20000, 1)
    a = gumbel_sample(logits, torch.Generator().manual_seed(0), banned=(2,))
    b = gumbel_sample(logits, torch.Generator().manual_seed(0), banned=(2,))
    assert torch.equal(a, b) and not (a == 2).any()
    freq = torch.bincount(a, minlength=4).double() / len(a)
    np.testing.assert_allclose(freq[:2].numpy(), [0.625, 0.375], atol=0.015)  # 0.5, 0.3 renormalised; 4 sigma


# -- the method ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,key", [
    ({"objective": "ngram"}, "method.objective"), ({"mask_prob": 0.0}, "method.mask_prob"),
    ({"max_n": 1}, "method.max_n"), ({"lexicon_size": 0}, "method.lexicon_size"),
    ({"generator_hidden": 30, "generator_heads": 4}, "method.generator_hidden"),
    ({"rtd_weight": -1}, "method.rtd_weight"), ({"probe": {"sorce": "x"}}, "method.probe.sorce"),
    ({"probe": {"source": "glue"}}, "method.probe.source"),
])
def test_config_errors_are_one_line(kwargs, key):
    with pytest.raises(ValueError) as e:
        ErnieGram(**kwargs)
    assert key in str(e.value) and "\n" not in str(e.value)


def test_ernie_loss_trains_every_part():
    """Steps of the full objective (generator, coarse, fine, RTD) on a tiny BERT lower it and move every part."""
    from methods.pretraining.ngram_mlm import with_task_module
    from models.bert import Bert
    from tasks.mlm import MaskedTokenData

    rng = np.random.default_rng(0)
    train = rng.integers(0, 30, 4000).astype(np.uint16)
    train[::10], train[1::10], train[2::10] = 5, 6, 7
    data = MaskedTokenData(train, train[:800], None, V, 16, 1, 1, "test", mask_id=MASK, special_ids=(EOS,))
    m = ErnieGram(mask_prob=0.3, generator_hidden=16, generator_heads=2, lexicon_size=20)
    m.prepare_data(data)
    assert (5, 6, 7) in m.lexicon.index
    torch.manual_seed(0)
    model = Bert(hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, dropout=0.0).build(V, 16)
    assert m.module_class is with_task_module(type(data).module_class)
    module = m.module_class(model, m, data=data, seed=0)
    rows = data.blocks("train")[:8].long()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-2)
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    losses = []
    for _ in range(15):
        loss = module.ernie_loss(rows, seed=0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.8 * losses[0]
    for part in ("model.", "ngrams.", "gen.", "gen_ngrams.", "rtd."):
        assert any(not torch.equal(before[k], v) for k, v in module.named_parameters() if k.startswith(part)), part


ERNIE_GPU_RECIPE = ["method=ernie_gram", "dataset=stdlib-docs-mlm", "model=bert-tiny", "hardware=h100",
                    "dataset.source=hub", "dataset.path=allenai/c4", "dataset.subset=en", "dataset.streaming=true",
                    "dataset.max_documents=2000000", "dataset.tokenizer.kind=hf",
                    "dataset.tokenizer.name=google-bert/bert-base-uncased", "model.hidden_size=768",
                    "model.intermediate_size=3072", "model.num_layers=12", "model.num_heads=12", "model.seq_len=512",
                    "dataset.batch_size=64", "method.lexicon_size=200000", "method.lr=1e-4", "method.max_n=3"]


def test_gpu_recipe_composes_and_validates_without_a_network():
    """The README's GPU recipe (BERT-base size on C4 by hub name) composes and passes the config checks."""
    from hydra.utils import instantiate

    from runner.config import validate
    from tests.conftest import compose_cfg

    cfg = compose_cfg(ERNIE_GPU_RECIPE)
    validate(cfg)
    m = instantiate(cfg.method, _convert_="all")
    assert (m.objective, m.lexicon_size, cfg.model.num_layers, cfg.dataset.path) == ("explicit", 200000, 12, "allenai/c4")
