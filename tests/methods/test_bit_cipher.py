"""Bit Cipher (methods/embeddings/bit_cipher.py) and the shared embedding hook (methods/embeddings/init.py): the
cipher is injective and decipher inverts encipher, in the authors' enumeration order (written out by hand for b = 3, 4
from IaMaN's Cipher.update); active bits grow with frequency rank and the top-b tokens are one-hot; the contextual
vectors have dimensions b and 2m*b and equal a per-position loop; the hook keeps frozen rows bit-identical through an
AdamW step (weight decay on), moves trainable ones, maps rows by token string exactly and projects to the hidden
size; a POS probe on a PCFG beats random vectors of the same dimension; bad config values are one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from methods.embeddings.bit_cipher import (
    BitCipher,
    Cipher,
    cipher_table,
    context_blocks,
    contextual_vectors,
    enumerate_codes,
    frequency_ranks,
    min_bits,
)
from methods.embeddings.computed import ComputedEmbedding
from methods.embeddings.init import init_input_embeddings, map_rows
from methods.embeddings.pcfg import PCFG, pos_probe, tagged_stream

torch.set_num_threads(1)


def tiny_llama(vocab=50, hidden=16, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, max_position_embeddings=32)
    return LlamaForCausalLM(cfg)


# -- the cipher ---------------------------------------------------------------------------------------------
def test_enumeration_order_is_the_codes():
    # hand-run of IaMaN Cipher.update: level 1 in basis order, then the basis reversed, each level flipping bits of
    # the previous level taken in reverse assignment order
    assert list(enumerate_codes(3)) == [(0,), (1,), (2,), (1, 2), (0, 2), (0, 1), (0, 1, 2)]
    assert list(enumerate_codes(4)) == [(0,), (1,), (2,), (3,), (2, 3), (1, 3), (0, 3), (1, 2), (0, 2), (0, 1),
                                        (0, 1, 3), (0, 2, 3), (1, 2, 3), (0, 1, 2), (0, 1, 2, 3)]


@pytest.mark.parametrize("n,bits", [(63, None), (63, 6), (300, None), (300, 12), (1000, None)])
def test_injective_and_decipher_inverts(n, bits):
    c = Cipher(n, bits)
    assert c.bits == (bits or min_bits(n))
    assert len(set(c.active)) == n and len({tuple(r) for r in c.U}) == n  # injective
    np.testing.assert_allclose(c.V.sum(1), 1.0, atol=1e-12)  # L1-normalised
    assert all(c.decipher(c.encipher(r)) == r for r in range(n))


def test_capacity_is_all_nonzero_vectors():
    c = Cipher(2 ** 6 - 1, 6)  # every non-zero 6-bit vector used once
    assert sorted(map(tuple, c.U.astype(int))) == sorted({tuple(int(x) for x in np.binary_repr(i, 6)) for i in
                                                          range(1, 64)})


def test_active_bits_non_decreasing_and_top_b_one_hot():
    c = Cipher(500)
    k = c.U.sum(1)
    assert np.all(np.diff(k) >= 0) and np.all(k[:c.bits] == 1) and k[c.bits] == 2
    # through token frequencies: ids by hand so that token 7 is the most frequent, then 3, then 5 ...
    rng = np.random.default_rng(0)
    counts = rng.permutation(np.arange(1, 41) * 3)  # distinct counts for 40 token ids
    ids = np.repeat(np.arange(40), counts)
    rank = frequency_ranks(ids, 40)
    assert np.array_equal(np.argsort(rank), np.argsort(-counts, kind="stable"))
    table = cipher_table(ids, 40)
    active = (table > 0).sum(1)
    assert np.all(np.diff(active[np.argsort(rank)]) >= 0)
    top = np.argsort(-counts)[:table.shape[1]]
    assert np.all(active[top] == 1) and np.all(table[top].max(1) == 1.0)


# -- contextual vectors -------------------------------------------------------------------------------------
def test_context_dimensions_and_loop_parity():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 20, size=300)
    table = cipher_table(ids, 20)
    b, m = table.shape[1], 3
    assert contextual_vectors(ids, table, m, "sum").shape == (20, b)
    assert contextual_vectors(ids, table, m, "concat").shape == (20, 2 * m * b)
    blocks = context_blocks(ids, table, m)
    for j, d in enumerate([*range(-m, 0), *range(1, m + 1)]):
        ref = np.zeros_like(table)
        for t in range(len(ids)):
            if 0 <= t + d < len(ids):
                ref[ids[t]] += table[ids[t + d]]
        np.testing.assert_allclose(blocks[j], ref, atol=1e-12)
    raw = contextual_vectors(ids, table, m, "sum", "none")
    np.testing.assert_allclose(raw, sum(blocks), atol=1e-12)
    np.testing.assert_allclose(contextual_vectors(ids, table, m, "sum", "log"), np.log1p(raw), atol=1e-12)


def test_pos_probe_beats_random_of_equal_dimension():
    # measured (seed 0, 1500 sentences, 300 held out): summation 0.893 vs random 0.587
    words, tags, sent = tagged_stream(PCFG(0).corpus(1500))
    vocab = {w: i for i, w in enumerate(sorted(set(words)))}
    ids = np.array([vocab[w] for w in words])
    table = cipher_table(ids, len(vocab))
    vec = contextual_vectors(ids, table, 2, "sum")
    rnd = np.random.default_rng(0).standard_normal(vec.shape)
    train = np.array(sent) < 1200
    acc, acc_r = pos_probe(vec, ids, tags, train), pos_probe(rnd, ids, tags, train)
    assert acc > 0.85 and acc > acc_r + 0.2, (acc, acc_r)


# -- the embedding hook -------------------------------------------------------------------------------------
def adamw_step(model):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()


def test_frozen_rows_bit_identical_trainable_move():
    m = np.random.default_rng(0).standard_normal((50, 7))
    model = init_input_embeddings(tiny_llama(), m, projection="random", freeze=True)
    emb = model.get_input_embeddings()
    assert isinstance(emb, ComputedEmbedding) and emb.embedding_dim == 16
    before = emb.table().detach().clone()
    adamw_step(model)
    assert torch.equal(emb.table().detach(), before)
    model2 = init_input_embeddings(tiny_llama(), m, projection="random", freeze=False)
    w = model2.get_input_embeddings().weight
    assert isinstance(model2.get_input_embeddings(), torch.nn.Embedding) and w.requires_grad
    before = w.detach().clone()
    adamw_step(model2)
    assert (w.detach() - before).abs().amax(1).min() > 0  # every row moved (weight decay at least)


def test_frozen_with_unmapped_rows_keeps_mapped_rows_only():
    model = tiny_llama()
    old = model.get_input_embeddings().weight.detach().clone()
    tgt_tokens = [f"t{i}" for i in range(50)]
    src_tokens = [f"t{i}" for i in range(0, 50, 2)] + ["absent"]  # odd ids have no source row
    m = np.random.default_rng(0).standard_normal((len(src_tokens), 16))
    model = init_input_embeddings(model, m, source_tokens=src_tokens, target_tokens=tgt_tokens, projection="pad",
                                  freeze=True, scale="none")
    emb = model.get_input_embeddings()
    t = emb.table().detach()
    assert torch.equal(t[1::2], old[1::2])  # unmapped: the replaced init
    np.testing.assert_allclose(t[0::2].numpy(), m[:25].astype(np.float32), atol=0)  # pad = identity, exact
    adamw_step(model)
    t2 = emb.table().detach()
    assert torch.equal(t2[0::2], t[0::2]) and not torch.equal(t2[1::2], t[1::2])


def test_row_mapping_by_token_string_exact():
    src = ["a", "b", "c", "d", "e"]
    tgt = ["x", "c", "a", "e", "y", "b"]
    assert map_rows(src, tgt) == ([1, 2, 3, 5], [2, 0, 4, 1])
    m = np.arange(5 * 16, dtype=np.float64).reshape(5, 16)
    model = tiny_llama(vocab=6)
    old = model.get_input_embeddings().weight.detach().clone()
    init_input_embeddings(model, m, source_tokens=src, target_tokens=tgt, projection="pad", scale="none")
    w = model.get_input_embeddings().weight.detach()
    for j, i in zip(*map_rows(src, tgt), strict=True):
        assert torch.equal(w[j], torch.tensor(m[i], dtype=torch.float32))
    assert torch.equal(w[[0, 4]], old[[0, 4]])


@pytest.mark.parametrize("projection,d", [("random", 7), ("linear", 7), ("pad", 7), ("random", 40), ("linear", 40)])
def test_projection_shapes_and_scale(projection, d):
    m = np.random.default_rng(0).standard_normal((50, d))
    model = tiny_llama()
    std = float(model.get_input_embeddings().weight.std())
    model = init_input_embeddings(model, m, projection=projection, freeze=projection != "random")
    emb = model.get_input_embeddings()
    t = emb.weight.detach()
    assert t.shape == (50, 16)
    assert abs(float(t.std()) / std - 1) < 1e-4  # scale="match" (measured: ~1e-7)
    if projection == "linear":
        assert isinstance(emb.proj, torch.nn.Parameter) and emb.proj.shape == (d, 16)
        assert isinstance(emb.coords, torch.Tensor) and not isinstance(emb.coords, torch.nn.Parameter)
    out = model(input_ids=torch.zeros(1, 4, dtype=torch.long)).logits
    assert out.shape == (1, 4, 50)


def test_pad_too_wide_and_factorization():
    with pytest.raises(ValueError, match="pad needs"):
        init_input_embeddings(tiny_llama(), np.zeros((50, 40)), projection="pad")
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((50, 5)), rng.standard_normal((5, 16))
    model = init_input_embeddings(tiny_llama(), (a, b), projection="pad", scale="none", keep_factors=True)
    emb = model.get_input_embeddings()
    assert emb.coords.shape == (50, 5) and emb.basis.shape == (5, 16)
    np.testing.assert_allclose(emb.table().detach().numpy(), (a @ b).astype(np.float32), rtol=1e-5, atol=1e-5)


def test_state_dict_has_plain_weight_and_round_trips():
    m = np.random.default_rng(0).standard_normal((50, 7))
    model = init_input_embeddings(tiny_llama(), m, projection="linear", freeze=True)
    sd = model.state_dict()
    assert torch.equal(sd["model.embed_tokens.weight"], model.get_input_embeddings().table().detach())
    other = init_input_embeddings(tiny_llama(seed=1), np.zeros((50, 7)) + 1.0, projection="linear", freeze=True)
    other.load_state_dict(sd)
    assert torch.equal(other.get_input_embeddings().table(), model.get_input_embeddings().table())


def test_method_end_to_end_rows_are_the_cipher():
    class Data:
        pass

    class Tok:
        def get_vocab(self):
            return {f"w{i}": i for i in range(50)}

    data = Data()
    data.train = np.random.default_rng(0).integers(0, 50, 2000)
    data.tokenizer = Tok()
    meth = BitCipher(vectors=["cipher"], projection="pad", scale="none", freeze=True)
    meth.prepare_data(data)
    model = meth.prepare_model(tiny_llama())
    t = model.get_input_embeddings().table().detach().numpy()
    ref = cipher_table(data.train, 50)
    np.testing.assert_allclose(t[:, :ref.shape[1]], (ref / ref.std()).astype(np.float32), rtol=1e-6)
    assert np.all(t[:, ref.shape[1]:] == 0)


@pytest.mark.parametrize("kw,key", [({"bits": 0}, "bit_cipher.bits"), ({"window": 0}, "bit_cipher.window"),
                                    ({"vectors": ["glove"]}, "bit_cipher.vectors"),
                                    ({"transform": "sqrt"}, "bit_cipher.transform"),
                                    ({"projection": "pca"}, "bit_cipher.projection"),
                                    ({"scale": "unit"}, "bit_cipher.scale")])
def test_bad_config_is_one_line(kw, key):
    with pytest.raises(ValueError) as e:
        BitCipher(**kw)
    assert str(e.value).startswith(key) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"^bit_cipher.bits: must be >= floor\(log2 \|V\|\) \+ 1 = 9"):
        Cipher(300, 8)


def test_parts_dimensions():
    from methods.embeddings.bit_cipher import embedding_matrix

    ids = np.random.default_rng(0).integers(0, 100, 3000)
    b = min_bits(100)
    for parts, d in [(["cipher"], b), (["sum"], b), (["concat"], 4 * b), (["cipher", "concat"], 5 * b),
                     (["random"], 5 * b)]:
        assert embedding_matrix(ids, 100, None, 2, parts, "pmi").shape == (100, d)
