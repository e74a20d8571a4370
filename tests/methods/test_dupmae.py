"""DupMAE's properties (methods/retrieval/dupmae.py): the decoder's per-row attention mask, whole-word masking (and
its distribution against the transformers collator the code runs, read literally), the OT (bag-of-words) loss
against a hand computation, the ablations by weight (bow_weight = 0: the RetroMAE loss, dec_weight = bow_weight = 0:
the plain MLM loss, both bitwise), masks and passage batches as pure functions of (seed, micro-batch), the pre-trained
checkpoint loading into a fresh model, and the fine-tuning stage asking the runner for its pre-training. Tiny BERTs
from a local config and a WordPiece trained on a few sentences: nothing from a hub."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM, BertModel

from methods.retrieval.dupmae import (
    TRAIN_STREAM,
    VAL_STREAM,
    DupMAE,
    DupMAEModule,
    MaskVocab,
    PassageData,
    bow_loss,
    bow_weights,
    decoder_visible,
    encoder_inputs,
    mask_seed,
    ot_vector,
    whole_word_mask,
    word_ids,
)
from methods.retrieval.encoder import DualEncoder
from tasks.common import train_wordpiece

DOCS = ["unbelievably retrievable passages are pretrained", "the decoder reconstructs the passage from its embedding",
        "bag of words targets for ordinary token decoding", "masked autoencoders for dense retrieval models"] * 8
V = 160


@pytest.fixture(scope="module")
def tok():
    return train_wordpiece(DOCS, V, min_frequency=1)


@pytest.fixture(scope="module")
def batch(tok):
    enc = tok(DOCS[:4], padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def hand_vocab(size: int = 40, cont: tuple[int, ...] = ()) -> MaskVocab:
    """[PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4; ids in `cont` are '##' pieces."""
    c = torch.zeros(size, dtype=torch.bool)
    c[list(cont)] = True
    return MaskVocab(c, cls_id=2, sep_id=3, pad_id=0, mask_id=4, random_size=size)


def passages(lengths: list[int], size: int = 40, seed: int = 0, cont: tuple[int, ...] = ()):
    """Right-padded [CLS] t_1 .. [SEP] rows with `lengths` tokens each (specials included)."""
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids, att = torch.zeros((len(lengths), L), dtype=torch.long), torch.zeros((len(lengths), L), dtype=torch.long)
    for b, n in enumerate(lengths):
        row = torch.randint(5, size, (n - 2,), generator=g)
        if cont and n > 3:
            row[0] = 5  # a word start, so that the pieces have a word to join
        ids[b, :n] = torch.cat([torch.tensor([2]), row, torch.tensor([3])])
        att[b, :n] = 1
    return ids, att


def bert_config(vocab: int = V) -> BertConfig:
    return BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, type_vocab_size=1,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def module(tok, arch=BertForMaskedLM, **method) -> DupMAEModule:
    torch.manual_seed(0)
    return DupMAEModule(arch(bert_config()), DupMAE(stage="pretrain", **method),
                        data=SimpleNamespace(tokenizer=tok, vocab_size=V), seed=3)


# -- (i) the decoder's attention mask -----------------------------------------------------------------------
def test_decoder_mask_hides_the_diagonal_shows_cls_and_hides_a_whole_word_sample_of_p_dec():
    lengths = [40, 23, 7, 3, 2]
    vocab = hand_vocab()
    ids, att = passages(lengths)
    words, n = word_ids(ids, att, vocab), att.sum(1)
    vis = decoder_visible(words, n, 0.5, 256, torch.Generator().manual_seed(1))
    assert vis.shape == (5, 40, 40) and vis.dtype == torch.bool
    for b, length in enumerate(lengths):
        rows = torch.arange(length)
        assert not vis[b, rows, rows].any()  # every row hides itself ([CLS]'s row 0 too, as data.py:117)
        assert vis[b, 1:length, 0].all()  # [CLS] is visible to every scored row
        assert not vis[b, :, length:].any()  # padding columns hidden
        assert vis[b, length:, 0].all() and not vis[b, length:, 1:].any()  # padding rows see [CLS] alone
        assert vis[b, :length, length - 1][1:-1].all()  # [SEP] is never in a sample either
        # every row hides exactly round(p * length) candidates besides itself (single-piece words: the fill is exact)
        k = max(1, round(0.5 * length))
        cand = words[b, :length] >= 0
        for i in range(length):
            hidden = ~vis[b, i, :length] & cand
            hidden[i] = False
            expect = min(k, int(cand.sum()))
            assert int(hidden.sum()) in (expect, expect - 1), (b, i)  # -1: the row's sample held i itself
    # the share of hidden candidates (off the diagonal) over long rows is p_dec: a sample holds round(0.5 * 202) = 101
    # of the 200 candidates, so (101 - 101/200) / 199 = 0.5050 is expected; measured 0.5049 (seeds 2..5)
    ids, att = passages([202] * 4, size=400)
    words = word_ids(ids, att, hand_vocab(400))
    vis = decoder_visible(words, att.sum(1), 0.5, 256, torch.Generator().manual_seed(2))
    cand = (words >= 0)[:, None, :] & (words >= 0)[:, :, None] & ~torch.eye(202, dtype=torch.bool)[None]
    share = float((~vis & cand).sum() / cand.sum())
    assert share == pytest.approx(0.5050, abs=2e-3)


def test_each_decoder_row_hides_one_of_the_first_min_n_256_samples():
    vocab = hand_vocab(cont=(30, 31))
    ids, att = passages([30, 12], cont=(30, 31), seed=4)
    words, n = word_ids(ids, att, vocab), att.sum(1)
    vis = decoder_visible(words, n, 0.5, 256, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    sets = whole_word_mask(words, n, 0.5, 30, g)  # the same draws decoder_visible made first
    for b, length in enumerate((30, 12)):
        for i in range(length):
            row = ~vis[b, i, :length]
            row[i] = False
            options = sets[b, :length, :length].clone()
            options[:, i] = False
            assert (options == row).all(-1).any(), (b, i)  # one of the passage's own min(n, 256) = n sets


# -- (iv) whole words ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prob", [0.15, 0.3, 0.5])
def test_whole_word_masking_never_splits_a_word_and_fills_its_budget_greedily(prob):
    cont = tuple(range(30, 40))  # ids 30..39 continue a word
    vocab = hand_vocab(cont=cont)
    ids, att = passages([50, 31, 9, 4], cont=cont, seed=7)
    words, n = word_ids(ids, att, vocab), att.sum(1)
    for b in range(4):  # a word is a start followed by its '##' pieces
        w = words[b][words[b] >= 0]
        pieces = ids[b][words[b] >= 0]
        starts = torch.cat([torch.tensor([True]), w[1:] != w[:-1]])
        assert (starts == ~vocab.continuation[pieces] | (torch.arange(len(w)) == 0)).all()
    masks = whole_word_mask(words, n, prob, 32, torch.Generator().manual_seed(8))
    lens = [torch.bincount(words[b][words[b] >= 0]) for b in range(4)]
    for b, s in itertools.product(range(4), range(32)):
        m, w = masks[b, s], words[b]
        assert not m[w < 0].any()  # never [CLS], [SEP] or padding
        for word in range(int(w.max()) + 1):
            assert m[w == word].all() or not m[w == word].any()  # all of a word's pieces or none
        k, total = max(1, round(prob * int(n[b]))), int((w >= 0).sum())
        taken = int(m.sum())
        assert taken <= k and (taken >= min(k, total) - (int(lens[b].max()) - 1))  # greedy: short by < a word
    # the encoder's 80/10/10 on those positions: labels only where chosen, [MASK] on most of them
    selected = masks[:, 0]
    inputs, labels = encoder_inputs(ids, selected, vocab, torch.Generator().manual_seed(9))
    assert ((labels != -100) == selected).all() and (labels[selected] == ids[selected]).all()
    assert (inputs[~selected] == ids[~selected]).all()


def test_word_ids_follow_the_wordpiece_continuations_of_a_real_tokenizer(tok, batch):
    vocab = MaskVocab.from_tokenizer(tok, V)
    pieces = tok.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    words = word_ids(batch["input_ids"], batch["attention_mask"], vocab)[0].tolist()
    assert pieces[0] == "[CLS]" and words[0] == -1 and words[pieces.index("[SEP]")] == -1
    for j in range(2, pieces.index("[SEP]")):
        assert (words[j] == words[j - 1]) == pieces[j].startswith("##"), (pieces, words)


# -- (ii) the OT / bag-of-words loss -------------------------------------------------------------------------
def test_bow_loss_equals_a_hand_computation_and_is_invariant_to_permuting_positions():
    torch.manual_seed(0)
    vocab = hand_vocab(12)
    ids = torch.tensor([[2, 7, 9, 7, 3, 0], [2, 5, 6, 8, 11, 3]])
    att = (torch.arange(6)[None] < torch.tensor([[5], [6]])).long()
    logits = torch.randn(2, 6, 12)
    w = bow_weights(ids, att, vocab, 12)
    # hand: w = 1/n per token of the passage (n = 3 with the repeated 7; 4), r = max over positions 1.. of the real ones
    want_w = torch.zeros(2, 12)
    want_w[0, [7, 9]] = 1 / 3
    want_w[1, [5, 6, 8, 11]] = 1 / 4
    assert torch.equal(w, want_w)
    total = 0.0
    for b, n in enumerate((5, 6)):
        r = torch.tensor([max(float(logits[b, j, v]) for j in range(1, n)) for v in range(12)])
        logp = r - torch.logsumexp(r, 0)
        total += -float((want_w[b] * logp).sum())
    assert float(bow_loss(logits, att, w)) == pytest.approx(total / 2, abs=1e-6)
    # permuting the positions (logits and tokens together) changes nothing, bit for bit
    perm = torch.tensor([0, 3, 1, 4, 2, 5])
    assert torch.equal(ot_vector(logits[:, perm], att), ot_vector(logits, att))
    w_perm = bow_weights(ids[:, perm], att, vocab, 12)
    assert torch.equal(w_perm, w)
    assert torch.equal(bow_loss(logits[:, perm], att, w_perm), bow_loss(logits, att, w))
    # the target's support is the passage's token set; padding and specials never in it
    assert set(w[0].nonzero().flatten().tolist()) == {7, 9} and w[:, [0, 2, 3]].eq(0).all()
    # padding logits are excluded, whatever they are
    spiked = logits.clone()
    spiked[0, 5] = 1e4
    assert torch.equal(bow_loss(spiked, att, w), bow_loss(logits, att, w))


# -- (iii) the ablations by weight, bitwise ------------------------------------------------------------------
def test_bow_weight_zero_is_the_retromae_loss_and_dec_bow_zero_the_plain_mlm_loss(tok, batch):
    mod = module(tok)
    mod.eval()
    full = mod.terms(batch, seed=11)
    assert set(full) == {"dec", "bow", "enc"}
    dec, bow, enc = (full[k][0] for k in ("dec", "bow", "enc"))
    assert torch.equal(mod.lm_loss(batch, seed=11), dec + 0.1 * bow + enc)  # modeling_duplex.py:80's order
    mod.method = DupMAE(stage="pretrain", bow_weight=0.0)
    assert torch.equal(mod.lm_loss(batch, seed=11), dec + enc)  # RetroMAE: L_dec + L_enc
    mod.method = DupMAE(stage="pretrain", dec_weight=0.0, bow_weight=0.0)
    mlm = mod.lm_loss(batch, seed=11)
    masks = mod.masks(batch["input_ids"], batch["attention_mask"], 11, decoder=False)
    logits = mod.model(input_ids=masks["enc_inputs"], attention_mask=batch["attention_mask"]).logits
    plain = F.cross_entropy(logits.float().flatten(0, 1), masks["enc_labels"].flatten())
    assert torch.equal(mlm, enc) and torch.equal(mlm, plain)  # BertForMaskedLM's own MLM loss on those masks
    assert module(tok, dec_weight=0.0).c_head is None  # no decoder layer to train (nor unused parameters)
    # every term trains the encoder: L_dec through h_CLS alone, L_bow through the max-pooled logits
    for key in ("dec", "bow"):
        mod.zero_grad()
        mod.method = DupMAE(stage="pretrain")
        mod.terms(batch, seed=11)[key][0].backward()
        assert mod.model.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0, key


def test_decoder_query_positions_is_retromae_v1s_query(tok, batch):
    mod = module(tok, decoder_query="positions")
    mod.eval()
    emb = mod.model.bert.embeddings
    h = torch.randn(4, 32)
    seen = {}
    mod.c_head.register_forward_hook(lambda m, args, out: seen.setdefault("q", args[0]))
    vis = torch.ones(4, batch["input_ids"].shape[1], batch["input_ids"].shape[1], dtype=torch.bool)
    mod.decoder_hidden(h, batch["input_ids"], vis)
    L = batch["input_ids"].shape[1]
    assert torch.equal(seen["q"], emb.position_embeddings(emb.position_ids[:, :L]) + h[:, None])


# -- (v) masks: a pure function of (seed, micro-batch index) ---------------------------------------------------
def test_masks_are_a_pure_function_of_seed_and_micro_batch(tok, batch):
    mod = module(tok)
    ids, att = batch["input_ids"], batch["attention_mask"]
    s = mask_seed(3, 17)
    torch.manual_seed(123)
    a = mod.masks(ids, att, s)
    torch.manual_seed(456)  # the global RNG (dropout's) plays no part
    b = mod.masks(ids, att, s)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = mod.masks(ids, att, mask_seed(3, 18))
    assert not torch.equal(a["visible"], c["visible"]) or not torch.equal(a["enc_inputs"], c["enc_inputs"])
    # the encoder's masks come first: the same with or without the decoder's
    d = mod.masks(ids, att, s, decoder=False)
    assert torch.equal(d["enc_inputs"], a["enc_inputs"]) and torch.equal(d["enc_labels"], a["enc_labels"])
    # distinct seeds across micro-batches, runs and the two streams
    seeds = {mask_seed(r, i, st) for r in range(3) for i in range(2000) for st in (TRAIN_STREAM, VAL_STREAM)}
    assert len(seeds) == 3 * 2000 * 2


def test_passage_batches_are_a_pure_function_of_the_micro_batch_index(tok):
    from methods.retrieval.corpora import RetrievalCorpus
    from tasks.retrieval import RetrievalData

    ids = [f"p{i}" for i in range(10)]
    corpus = RetrievalCorpus(ids, [DOCS[i % 4] + f" number {i}" for i in range(10)], {"q0": "decoder", "q1": "bag"},
                             {"train": {"q0": {"p1": 1}}, "dev": {"q1": {"p3": 1, "p4": 0}}, "test": {}})
    data = PassageData(RetrievalData("hand", corpus, tok, V, query_len=16, passage_len=12))
    assert len(data.train_ids) == 10 and data.val_ids == [data.retrieval.passage_ids[3]]  # dev positives only
    full, val = data.make_loaders(3, 7, seed=5)
    resumed, _ = data.make_loaders(3, 7, seed=5, start=lambda: 4)
    full, resumed = list(full), list(resumed)
    assert len(full) == 7 and len(resumed) == 3
    for a, b in zip(full[4:], resumed):  # resuming at micro-batch 4 sees exactly what the uninterrupted run saw
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["attention_mask"], b["attention_mask"])
    b = full[0]
    assert b["input_ids"].shape[1] <= 12 and (b["input_ids"][b["attention_mask"] == 0] == tok.pad_token_id).all()
    assert [v["input_ids"].shape[0] for v in val] == [1]


# -- (vi) the pre-trained model loads into a fresh model of its config -----------------------------------------
@pytest.mark.parametrize("arch", [BertForMaskedLM, BertModel])
def test_pretrain_checkpoint_loads_into_a_fresh_model_with_no_missing_or_unexpected_keys(tok, arch, tmp_path):
    from runner.models import state_dict_from_checkpoint

    mod = module(tok, arch)
    if arch is BertModel:  # the module's own MLM head, tied to the word embeddings, outside self.model
        assert mod.mlm_head is not None
        assert mod.mlm_head.predictions.decoder.weight is mod.model.embeddings.word_embeddings.weight
    else:
        assert mod.mlm_head is None
    with torch.no_grad():
        for p in mod.model.parameters():
            p.add_(0.01)
    torch.save({"state_dict": mod.state_dict()}, tmp_path / "last.ckpt")
    fresh = arch(bert_config())
    missing, unexpected = fresh.load_state_dict(state_dict_from_checkpoint(tmp_path / "last.ckpt"), strict=False)
    assert missing == [] and unexpected == []
    for (k, p), (_, q) in zip(fresh.state_dict().items(), mod.model.state_dict().items()):
        assert torch.equal(p, q), k
    # the optimizer sees the encoder, c_head and the module's MLM head, each tied weight once
    params = list(mod.trainable().parameters())
    assert len({id(p) for p in params}) == len(params)
    assert {id(p) for p in mod.c_head.parameters()} <= {id(p) for p in params}


# -- the stages ------------------------------------------------------------------------------------------------
class FakeProvider:
    def __init__(self, model):
        self.model, self.calls = model, []

    def path(self, role, changes=None, **other):
        self.calls.append((role, {**other, "changes": changes}))
        return "/runs/dupmae-pretrained"

    def load(self, path):
        self.calls.append(("load", path))
        return self.model


def test_finetune_asks_the_runner_for_its_pretraining_and_returns_that_encoder():
    pretrained = BertForMaskedLM(bert_config())
    m = DupMAE(bow_weight=0.0, pretrain_steps=7, pretrain_lr=1e-4, pooling="cls")
    m.trained_model = FakeProvider(pretrained)
    assert m.stages == ["prepare_data", "prepare_model", "train"] and m.module_class is None
    data = SimpleNamespace(passage_ids=[[2, 3]], normalize=True)
    assert m.prepare_data(data) is data  # fine-tuning: the task's own data and batches
    encoder = m.prepare_model(BertForMaskedLM(bert_config()))
    assert isinstance(encoder, DualEncoder) and encoder.backbone is pretrained  # [CLS] pooling, the task's normalize
    assert encoder.pooling == "cls" and encoder.normalize
    (role, other), load = m.trained_model.calls
    assert role == "dupmae" and other["steps"] == 7 and load == ("load", "/runs/dupmae-pretrained")
    assert other["changes"]["negatives"]["hard"] == 0  # fine-tuning-only dataset keys pinned: one pre-training
    option, overrides = other["method"]
    assert option == "dupmae" and overrides["stage"] == "pretrain" and overrides["bow_weight"] == 0.0
    assert overrides["lr"] == 1e-4 and overrides["weight_decay"] == m.weight_decay
    # a pretrained model.init_from cannot be the role's start: one line saying what to do
    m = DupMAE(model_init_from="/models/minilm")
    m.trained_model = FakeProvider(pretrained)
    with pytest.raises(ValueError, match=r"method.pretrained: .*method.stage=pretrain"):
        m.prepare_model(BertForMaskedLM(bert_config()))
    m = DupMAE()  # pooling null: the task's own encoder.pooling
    m.trained_model = FakeProvider(pretrained)
    assert m.prepare_model(BertForMaskedLM(bert_config())) is pretrained  # the task wraps it with its own pooling


def test_finetune_from_a_given_pretraining_run_loads_its_encoder_into_this_runs_model(tmp_path):
    source = BertModel(bert_config())
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    state = {"model." + k: v for k, v in source.state_dict().items()} | {"c_head.query.weight": torch.zeros(1)}
    torch.save({"state_dict": state}, tmp_path / "run" / "checkpoints" / "last.ckpt")
    m = DupMAE(pretrained=str(tmp_path / "run"), model_init_from="/models/minilm", pooling="mean")
    m.prepare_data(SimpleNamespace(passage_ids=[[2, 3]], normalize=False))
    target = BertModel(bert_config())
    encoder = m.prepare_model(target)  # no runner needed: the weights go into this run's own model
    assert encoder.backbone is target and encoder.pooling == "mean" and not encoder.normalize
    assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))
    with pytest.raises(ValueError, match=r"^method.pretrained: .* does not fit this run's model"):
        m.prepare_model(BertForMaskedLM(bert_config()))  # another architecture
    with pytest.raises(ValueError, match=r"^method.pretrained: .* neither a run directory nor a checkpoint"):
        DupMAE(pretrained=str(tmp_path / "nothing")).prepare_model(BertModel(bert_config()))


def test_pretrain_stage_trains_passages_in_its_own_module():
    m = DupMAE(stage="pretrain")
    assert m.stages == ["prepare_data", "train"] and m.module_class is DupMAEModule
    model = BertForMaskedLM(bert_config())
    assert m.prepare_model(model) is model
    with pytest.raises(ValueError, match=r"^dataset: .*passage_ids"):
        m.prepare_data(SimpleNamespace(tokenizer=None))
    data = SimpleNamespace(passage_ids=[[2, 5, 3], [2, 6, 7, 3]], corpus_row={"a": 0, "b": 1},
                           corpus=SimpleNamespace(qrels={"dev": {"q": {"b": 1}}, "test": {}}), vocab_size=V)
    wrapped = m.prepare_data(data)
    assert isinstance(wrapped, PassageData) and wrapped.vocab_size == V and wrapped.val_ids == [[2, 6, 7, 3]]
    assert wrapped.counts() == {"train_passages": 2, "val_passages": 1}
    assert DupMAE(stage="pretrain", zero_shot_eval=False).prepare_data(data).evaluate(model) == {}


@pytest.mark.parametrize("key,value,says", [
    ("stage", "train", "method.stage: must be one of finetune, pretrain"),
    ("decoder_query", "cls", "method.decoder_query: must be one of embeddings, positions"),
    ("dec_mask_prob", 0.0, "method.dec_mask_prob: must be in (0, 1]"),
    ("bow_weight", -1.0, "method.bow_weight: must be >= 0"),
    ("pretrain_steps", 0, "method.pretrain_steps: must be >= 1"),
])
def test_bad_settings_are_one_line_naming_the_key(key, value, says):
    with pytest.raises(ValueError, match=r"^" + says.replace("(", r"\(").replace("]", r"\]")) as e:
        DupMAE(**{key: value})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="all 0"):
        DupMAE(enc_weight=0.0, dec_weight=0.0, bow_weight=0.0)


def collator_whole_word_mask(tokens: list[str], prob: float, rng) -> list[int]:
    """transformers 4.34 DataCollatorForWholeWordMask._whole_word_mask (what the code runs), read literally."""
    cand = []
    for i, token in enumerate(tokens):
        if token in ("[CLS]", "[SEP]"):
            continue
        if cand and token.startswith("##"):
            cand[-1].append(i)
        else:
            cand.append([i])
    rng.shuffle(cand)
    k = min(512, max(1, int(round(len(tokens) * prob))))
    chosen: list[int] = []
    for word in cand:
        if len(chosen) >= k:
            break
        if len(chosen) + len(word) > k:
            continue
        chosen += word
    return [int(i in chosen) for i in range(len(tokens))]


def test_whole_word_mask_has_the_collators_distribution():
    import random

    tokens = ["[CLS]", "re", "##tri", "##eval", "of", "pass", "##ages", "by", "a", "dup", "##lex", "model", "[SEP]"]
    ids = torch.tensor([[2] + list(range(5, 16)) + [3]])
    vocab = hand_vocab(cont=tuple(i + 4 for i, t in enumerate(tokens[1:-1], 1) if t.startswith("##")))
    words = word_ids(ids, torch.ones_like(ids), vocab)
    n, draws = 8000, torch.tensor([len(tokens)])
    rng = random.Random(0)
    for prob in (0.3, 0.5):
        ref = torch.tensor([collator_whole_word_mask(tokens, prob, rng) for _ in range(n)], dtype=torch.float).mean(0)
        ours = whole_word_mask(words, draws, prob, n, torch.Generator().manual_seed(1))[0].float().mean(0)
        # two 8000-draw estimates: the standard error of a difference is <= 0.008; measured max gaps 0.009-0.019
        # (seeds 0-2, both probabilities), so 0.025 (~3 standard errors of the largest of 11) is the bound
        assert (ours - ref).abs().max() < 0.025, (prob, ref, ours)
        assert ours[0] == 0 and ours[-1] == 0
