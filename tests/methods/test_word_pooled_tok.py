"""eTok (models/etok.py, methods/architectures/word_pooled_tok.py, tasks/words.py): the word encoder is block-
diagonal over words (a word's CLS vector reads only its own characters), the prediction of word t reads nothing of
words >= t (nor of its own characters at or after the one it predicts), the main transformer has one position per
word, a word counts as right only if all its characters match and it ends there, the one evaluator gives the same
verdicts through eTok's canvases, the character tokenization and the BPE tokenization of the same continuations,
the three units carry the same words, eTok learns a small word sequence, and bad config values are one line each."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from methods.architectures.word_pooled_tok import WordPooledTok
from models.etok import PAD, ETok, ETokLM
from tasks.base import BuildContext
from tasks.common import train_tokenizer
from tasks.words import (
    EOS,
    SPACE,
    Case,
    CharTokenizer,
    NextWordEval,
    WordCorpus,
    WordCorpusBPE,
    WordCorpusChars,
    canvases,
    scores,
    split_words,
    word_correct,
)

V, C = 30, 6  # character ids (PAD 0, EOS 1, space 2, ...) and canvas size of the model tests


def model(seed=0, **kw) -> ETokLM:
    torch.manual_seed(seed)
    sizes = {"seq_len": 12, "canvas_size": C, "n_embd": 16, "n_layer": 2, "n_head": 2, "n_e2e_layer": 2,
             "n_e2e_head": 2, **kw}
    return ETokLM(V, **sizes).double().eval()


def random_words(B, n, seed=0) -> torch.Tensor:
    """(B, n, C) canvases: words of 1..C characters (ids 3..V-1), PAD after them."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, n, C), generator=g)
    lengths = torch.randint(1, C + 1, (B, n, 1), generator=g)
    return ids.masked_fill(torch.arange(C) >= lengths, PAD)


def changed(words: torch.Tensor, j, seed) -> torch.Tensor:
    """A copy with word(s) j replaced (other characters, other lengths)."""
    out = words.clone()
    out[:, j] = random_words(words.shape[0], words.shape[1], seed=seed)[:, j]
    return out


# -- the word encoder: block-diagonal over words ------------------------------------------------
def test_changing_the_characters_of_word_j_leaves_every_other_words_cls_vector_unchanged():
    m = model()
    words = random_words(3, 9, seed=1)
    cls = m.encode_words(words)
    for j in range(9):
        other = changed(words, j, seed=10 + j)
        cls2 = m.encode_words(other)
        keep = [i for i in range(9) if i != j]
        assert torch.equal(cls2[:, keep], cls[:, keep])  # bit for bit
        assert (cls2[:, j] - cls[:, j]).abs().max() > 1e-3  # control: word j's own CLS vector reads its characters
    # the PAD slots after a word are never read: another PAD embedding changes no CLS vector
    with torch.no_grad():
        m.in_emb.weight[PAD].normal_()
    assert torch.equal(m.encode_words(words), cls)
    assert not torch.equal(m(words), model()(words))  # control: the decoder's canvases do read it


# -- causality over words ---------------------------------------------------------------------
def test_the_prediction_of_word_t_ignores_the_characters_of_words_at_and_after_t():
    m = model()
    n = 8
    words = random_words(2, n, seed=2)
    logits = m(words)  # (B, n-1, C, V): row t-1 predicts word t from words < t
    ctx = m.contextualize(m.encode_words(words))
    for t in range(1, n):
        later = changed(words, list(range(t, n)), seed=100 + t)
        assert torch.equal(m.contextualize(m.encode_words(later))[:, :t], ctx[:, :t])  # the word-level context
        assert torch.equal(m(later)[:, t - 1, 0], logits[:, t - 1, 0])  # word t's first character: words < t only
        # character k of word t reads word t's characters < k (teacher forcing) and nothing after them
        for k in range(1, C):
            tail = words.clone()
            tail[:, t, k:] = torch.where(words[:, t, k:] == PAD, PAD, (words[:, t, k:] + 5 - 3) % (V - 3) + 3)
            tail[:, t + 1:] = later[:, t + 1:]
            assert torch.equal(m(tail)[:, t - 1, :k + 1], logits[:, t - 1, :k + 1])
        earlier = changed(words, t - 1, seed=200 + t)  # control: word t - 1 is read
        assert (m(earlier)[:, t - 1, 0] - logits[:, t - 1, 0]).abs().max() > 1e-4
    # greedy decoding: the next word after t words is the same whatever follows them in the padded block
    for t in range(1, n):
        a = m.next_word(words, torch.tensor([t, t]))
        b = m.next_word(changed(words, list(range(t, n)), seed=300 + t), torch.tensor([t, t]))
        assert torch.equal(a, b)
        assert torch.equal(a, m.next_word(words[:, :t]))  # the same as the context alone


def test_the_main_transformer_has_one_position_per_word():
    seen = []
    for p in (1, 2):
        m = model(num_prefix=p)
        hook = m.blocks[0].register_forward_hook(lambda mod, args, out: seen.append(args[0].shape))
        n = 7
        words = random_words(2, n, seed=3)
        m(words)
        m.next_word(words[:, :5])
        hook.remove()
        assert seen[-2] == (2, (n - 1) * p, 16)  # training: words 1..n-1 predict words 2..n
        assert seen[-1] == (2, 5 * p, 16)  # inference: the context's words
    # compression: the character LM's sequence of the same words is chars + spaces long
    text_len = sum(int((w != PAD).sum()) + 1 for w in words[0])
    assert seen[0][1] < text_len


# -- the metric --------------------------------------------------------------------------------
def test_a_word_is_right_only_if_all_its_characters_match_and_it_ends_there():
    assert word_correct("bank", "bank")
    for wrong in ("banker", "ban", "bnak", "Bank", "", None):
        assert not word_correct(wrong, "bank")
    cases = [Case(["the"], False, "bank", c) for c in (0, 3, 500, 500)]
    s = scores(cases, ["bank", "banker", "bank", None], rare_max=9, frequent_min=100)
    assert s["next_word_acc"] == 0.5 and s["next_word_n"] == 4
    assert s["next_word_acc_unseen"] == 1.0 and s["next_word_acc_rare"] == 0.5 and s["next_word_acc_frequent"] == 0.5
    assert (s["next_word_n_rare"], s["next_word_n_unseen"], s["next_word_n_frequent"]) == (2, 1, 2)


class ScriptedLM(nn.Module):
    """A stand-in causal LM with the Hugging Face call convention the evaluator uses (attention mask, position ids,
    a cache): it continues each context with its scripted ids (then EOS), whatever the tokenization."""

    def __init__(self, vocab: int, script: dict[tuple[int, ...], list[int]], eos: int):
        super().__init__()
        self.vocab, self.script, self.eos = vocab, script, eos
        self.p = nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask, position_ids=None, past_key_values=None, use_cache=True):
        seen = input_ids if past_key_values is None else torch.cat([past_key_values, input_ids], dim=1)
        logits = torch.zeros(len(seen), 1, self.vocab)
        for r in range(len(seen)):
            ids = tuple(seen[r][attention_mask[r].bool()].tolist())
            key = max((k for k in self.script if ids[:len(k)] == k), key=len)  # its context: the longest that fits
            cont = self.script[key]
            k = len(ids) - len(key)
            logits[r, 0, cont[k] if k < len(cont) else self.eos] = 1.0
        return SimpleNamespace(logits=logits, past_key_values=seen)


class ScriptedETok(nn.Module):
    """A stand-in eTok: `next_word` returns the canvas of its scripted word for each context."""

    def __init__(self, tok, script: dict[str, str], canvas_size: int):
        super().__init__()
        self.tok, self.script, self.c = tok, script, canvas_size
        self.p = nn.Parameter(torch.zeros(1))

    def next_word(self, words, lengths):
        out = torch.zeros(len(words), self.c, dtype=torch.long)
        for r in range(len(words)):
            ctx = " ".join(self.tok.decode(w[w != PAD].tolist()) for w in words[r, :lengths[r]] if w[0] != EOS)
            ids = self.tok.encode(self.script[ctx])[:self.c]
            out[r, :len(ids)] = torch.tensor(ids)
        return out


TEXT = ["the river bank is steep", "a banker at the bank", "the bank of the river", "river banks are wide ."]


def test_the_evaluator_gives_the_same_verdicts_for_character_bpe_and_word_canvas_models():
    """Hand cases: each model "says" the same continuation text; the verdict must not depend on its tokenization."""
    chars = CharTokenizer(sorted({ch for t in TEXT for ch in t}))
    bpe = train_tokenizer(TEXT * 20, 300)
    c = 8
    hand = [  # (context, target, what the model continues with, right?)
        (["the", "river"], "bank", " bank is", True),
        (["a"], "bank", " banker at", False),
        (["the"], "bank", " ban k", False),
        (["of", "the"], "river", " river .", True),
        (["the", "bank"], "of", " of.", False),  # "of." is not the word "of" (the text puts a space before ".")
        (["at"], "the", " the", True),  # the continuation ends with the text (EOS): the word ends there
        (["the", "wide"], "river", " riverbankriverbank", False),  # never ends within the canvas
    ]
    cases = [Case(ctx, i == 0, target, 0) for i, (ctx, target, _, _) in enumerate(hand)]
    verdicts = {}
    for unit, tok in (("chars", chars), ("bpe", bpe)):
        ev = NextWordEval(unit, tok, canvas_size=c, seq_len=64, batch_size=3)
        script = {}
        for case, (ctx, _, cont, _) in zip(cases, hand):
            key = ev.context_ids(case)
            if unit == "chars":
                assert key[-1] == SPACE  # the context's last word has ended
                full = key + chars.encode(cont[1:])
            else:
                full = ([bpe.eos_token_id] if case.at_start else []) + bpe(" ".join(ctx) + cont)["input_ids"]
                assert full[:len(key)] == key  # the continuation does not merge into the context's tokens
            script[tuple(key)] = full[len(key):]
        lm = ScriptedLM(len(tok), script, tok.eos_token_id)
        verdicts[unit] = [word_correct(p, case.target) for p, case in zip(ev.predict(lm, cases), cases)]
    etok = ScriptedETok(chars, {" ".join(ctx): cont[1:].split(" ")[0] for ctx, _, cont, _ in hand}, c)
    ev = NextWordEval("word-pooled", chars, canvas_size=c, seq_len=16, batch_size=3)
    verdicts["word-pooled"] = [word_correct(p, case.target) for p, case in zip(ev.predict(etok, cases), cases)]
    expected = [right for *_, right in hand]
    expected[-1] = False  # eTok's canvas holds 8 characters of "riverbankriverbank": not the word "river" either
    assert verdicts["chars"] == verdicts["bpe"] == verdicts["word-pooled"] == expected, verdicts


def test_the_character_and_bpe_first_steps_start_a_new_word():
    chars = CharTokenizer(sorted({ch for t in TEXT for ch in t}))
    first, stop = NextWordEval("chars", chars, 8, 64).token_sets()
    assert not first[[PAD, EOS, SPACE]].any() and first[3:].all() and stop[[SPACE, EOS]].all() and stop.sum() == 2
    bpe = train_tokenizer(TEXT * 20, 300)
    first, stop = NextWordEval("bpe", bpe, 8, 64).token_sets()
    pieces = bpe.convert_ids_to_tokens(list(range(len(bpe))))
    assert all(bpe.decode([i]).startswith(" ") for i in first.nonzero().flatten().tolist())
    assert first[bpe.convert_tokens_to_ids("\u0120bank")] and not first[bpe.convert_tokens_to_ids("r")]
    assert stop[bpe.eos_token_id] and stop.sum() == first.sum() + 1 and len(pieces) == len(bpe)


# -- the data: three units, the same words ----------------------------------------------------
@pytest.fixture(scope="module")
def built():
    ctx = BuildContext(seq_len=32, cache_dir=Path(os.environ["METHODBENCH_CACHE"]), seed=0, batch_size=4, max_steps=5,
                       accumulate_grad_batches=1)
    ev = {"words": 300}
    return {cls.unit: cls(eval=ev).build(ctx) for cls in (WordCorpus, WordCorpusChars, WordCorpusBPE)}


def test_the_three_units_carry_the_same_words_and_the_same_evaluation_cases(built):
    wp, ch, bp = built["word-pooled"], built["chars"], built["bpe"]
    assert wp.cases == ch.cases == bp.cases and len(wp.cases) == 300
    words = [w for doc in wp.val_docs_words for w in [*doc, None]]
    assert wp.val.shape == (len(words), 12)
    assert [wp.tokenizer.decode(r) if r[0] != EOS else None for r in wp.val.tolist()] == words
    text = "".join(" ".join(doc) + "\x00" for doc in wp.val_docs_words)
    assert "".join(ch.tokenizer.decode([i]) or "\x00" for i in ch.val.tolist()).replace("\x00", "") == text.replace("\x00", "")
    assert bp.tokenizer.decode(bp.val.tolist()).replace("<|endoftext|>", "\x00") == text
    assert max(len(w) for doc in wp.val_docs_words for w in doc) <= 12
    assert split_words("a_b(c)  averyveryverylongword", 5) == ["a_b", "(", "c", ")", "avery", "veryv", "erylo", "ngwor", "d"]


def test_training_batches_are_a_pure_function_of_the_micro_batch_index(built):
    for data in built.values():
        full = [b.clone() for b in data.make_loaders(4, 6, seed=3)[0]]
        resumed = list(data.make_loaders(4, 6, seed=3, start=lambda: 4)[0])
        assert len(full) == 6 and all(torch.equal(a, b) for a, b in zip(full[4:], resumed))
    assert full[0].shape == (4, 33) and next(iter(built["word-pooled"].make_loaders(4, 1, 0)[0])).shape == (4, 33, 12)


# -- it learns ---------------------------------------------------------------------------------
def test_etok_learns_a_small_word_sequence():
    """AdamW steps on a 13-word cycle (a word fixed by up to 3 before it): every next word right after."""
    tok = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz"))
    cycle = ["the", "cat", "sat", "on", "the", "mat", "and", "a", "dog", "lay", "on", "a", "log"]
    stream = torch.from_numpy(canvases([cycle * 8], tok, C)[0])
    torch.manual_seed(0)
    m = ETokLM(len(tok), seq_len=12, canvas_size=C, n_embd=32, n_layer=2, n_head=2, n_e2e_layer=1, n_e2e_head=2)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    starts = torch.arange(0, len(stream) - 13)
    for step in range(250):
        batch = torch.stack([stream[s:s + 13] for s in starts[(torch.arange(8) * 7 + step * 3) % len(starts)]])
        loss = m.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    ctx = torch.stack([stream[s:s + 12] for s in range(len(cycle))])
    got = [tok.decode([i for i in r if i != PAD]) for r in m.next_word(ctx).tolist()]
    want = [cycle[(s + 12) % len(cycle)] for s in range(len(cycle))]
    assert got == want  # measured (seed 0): 12 of 13 right after 175 steps, all 13 from 200; loss 8e-3 at 250


# -- config ------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, key", [
    (lambda: WordCorpus(canvas_size=0), "dataset.canvas_size"),
    (lambda: WordCorpus(val_fraction=1.5), "dataset.val_fraction"),
    (lambda: WordCorpus(eval={"word": 5}), "dataset.eval.word"),
    (lambda: WordCorpus(eval={"context_words": 0}), "dataset.eval.context_words"),
    (lambda: WordCorpusBPE(bpe={"vocab_size": 100}), "dataset.bpe.vocab_size"),
    (lambda: ETok(n_embd=30), "model.n_embd"),
    (lambda: ETok(num_prefix=0), "model.num_prefix"),
    (lambda: ETok(dropout=1.0), "model.dropout"),
    (lambda: WordPooledTok(lr=-1.0), "method.lr"),
])
def test_bad_config_values_are_one_line_naming_the_key(make, key):
    with pytest.raises(ValueError) as e:
        make()
    msg = str(e.value)
    assert msg.startswith(key) and "\n" not in msg


def test_the_model_and_the_task_must_agree_on_the_canvas():
    from methods.architectures.word_pooled_tok import WordPooledModule

    with pytest.raises(ValueError, match=r"^model.canvas_size: 6 must equal dataset.canvas_size \(12\)$"):
        WordPooledModule(model(), WordPooledTok(), data=SimpleNamespace(canvas_size=12))
    assert WordCorpus.model_kinds == ("word-pooled-lm",) and ETok.kind == ETokLM.kind == "word-pooled-lm"
    assert WordCorpusChars.model_kinds == WordCorpusBPE.model_kinds == ("causal-lm",)
    assert WordPooledTok.needs_model == {"word-pooled-lm"} and WordPooledTok.needs_task <= WordCorpus.provides
