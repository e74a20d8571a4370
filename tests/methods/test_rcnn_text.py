"""RCNN for text classification (models/rcnn.py, methods/classification/rcnn_text.py): the context recurrences
read only one side of each word, the features equal the paper's equations written out per document, the max-pool
gradient reaches only the arg-max positions, masked padding changes nothing (RCNN and both baselines), the mean
baseline is a hand mean, the CNN baseline its windows by hand, RCNN learns word order where the mean cannot, and
the method is the paper's plain SGD at α = 0.01."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from methods.base import Method
from methods.classification.rcnn_text import RCNNText
from models.rcnn import RCNN, MeanEmbedding, TextCNN, masked_max

VOCAB = 40
MODELS = {"rcnn": RCNN, "mean-emb": MeanEmbedding, "cnn-text": TextCNN}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def build(cls, seed=0, dtype=torch.float64, **kw):
    torch.manual_seed(seed)
    return cls(vocab_size=VOCAB, **kw).to(dtype).eval()


def padded_batch(lengths, width, seed=0):
    """Right-padded ids (pad positions hold random ids too: they must not matter) and the mask."""
    ids = torch.randint(1, VOCAB, (len(lengths), width), generator=gen(seed))
    mask = (torch.arange(width)[None] < torch.tensor(lengths)[:, None]).long()
    return ids, mask


# -- the context recurrences --------------------------------------------------------------------
def test_left_context_ignores_words_at_and_after_i_and_right_context_words_up_to_i():
    model = build(RCNN, context_dim=8, embed_dim=6, hidden_size=5)
    L = 9
    ids = torch.randint(1, VOCAB, (3, L), generator=gen(1))
    mask = torch.ones(3, L, dtype=torch.bool)
    emb = model.get_input_embeddings()
    c_l, c_r = model.contexts(emb(ids), mask)
    for i in range(L):
        after = ids.clone()
        after[:, i:] = (after[:, i:] + torch.randint(1, VOCAB - 1, (3, L - i), generator=gen(i))) % VOCAB
        l2, r2 = model.contexts(emb(after), mask)
        assert torch.equal(l2[:, :i + 1], c_l[:, :i + 1])     # c_l(w_j), j <= i: words >= i changed, bit for bit
        if i + 1 < L:                                          # control: c_l(w_{i+1}) reads w_i
            assert (l2[:, i + 1] - c_l[:, i + 1]).abs().max() > 1e-3
        before = ids.clone()
        before[:, :i + 1] = (before[:, :i + 1] + torch.randint(1, VOCAB - 1, (3, i + 1), generator=gen(50 + i))) % VOCAB
        l3, r3 = model.contexts(emb(before), mask)
        assert torch.equal(r3[:, i:], c_r[:, i:])              # c_r(w_j), j >= i: words <= i changed
        if i > 0:
            assert (r3[:, i - 1] - c_r[:, i - 1]).abs().max() > 1e-3
    assert torch.equal(c_l[:, 0], model.c_l_first.expand(3, -1))   # the learned c_l(w_1), c_r(w_n)
    assert torch.equal(c_r[:, -1], model.c_r_last.expand(3, -1))


def reference_features(model: RCNN, ids: list[int]) -> torch.Tensor:
    """The paper's equations 1-5 for one unpadded document, term by term (f = tanh)."""
    e = model.get_input_embeddings().weight[torch.tensor(ids)]
    n = len(ids)
    W_l, W_sl, W_r, W_sr = model.w_l.weight, model.w_sl.weight, model.w_r.weight, model.w_sr.weight
    c_l, c_r = [model.c_l_first], [model.c_r_last]
    for i in range(1, n):
        c_l.append(torch.tanh(W_l @ c_l[i - 1] + W_sl @ e[i - 1]))
    for i in range(n - 2, -1, -1):
        c_r.insert(0, torch.tanh(W_r @ c_r[0] + W_sr @ e[i + 1]))
    y = [torch.tanh(model.w_2.weight @ torch.cat([c_l[i], e[i], c_r[i]]) + model.w_2.bias) for i in range(n)]
    return torch.stack(y).max(0).values


def test_features_are_the_papers_equations_per_document_and_the_right_context_starts_at_the_last_real_token():
    model = build(RCNN, context_dim=7, embed_dim=5, hidden_size=6)
    lengths = [9, 4, 1, 6]
    ids, mask = padded_batch(lengths, 9, seed=3)
    with torch.no_grad():
        got = model(ids, mask)
        c_l, c_r = model.contexts(model.get_input_embeddings()(ids), mask.bool())
        for b, n in enumerate(lengths):
            want = reference_features(model, ids[b, :n].tolist())
            assert (got[b] - want).abs().max() <= 1e-12
            assert torch.equal(c_r[b, n - 1], model.c_r_last)  # each row's own last token, not the batch's


# -- max-pooling ---------------------------------------------------------------------------------
def test_max_pool_gradient_reaches_only_the_argmax_positions():
    B, L, H = 4, 7, 6
    y = torch.randn(B, L, H, generator=gen(4), dtype=torch.float64)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[1, 3:] = False
    mask[3, 1:] = False
    y[~mask] = 10.0                               # padding above every real value: it must still never win
    y.requires_grad_()
    weight = torch.rand(B, H, generator=gen(5), dtype=torch.float64) + 0.5
    pooled = masked_max(y, mask)
    (pooled * weight).sum().backward()
    argmax = y.detach().masked_fill(~mask[..., None], float("-inf")).argmax(1)          # (B, H)
    hit = F.one_hot(argmax, L).transpose(1, 2).bool()                                    # (B, L, H)
    assert torch.equal(y.grad != 0, hit)          # per channel: exactly one position, the arg-max
    assert torch.equal(y.grad.sum(1), weight)     # with the full weight of its channel
    assert pooled.max() < 10


def test_model_gradient_of_the_features_wrt_y_is_only_at_argmax_positions():
    model = build(RCNN, context_dim=6, embed_dim=5, hidden_size=8)
    ids, mask = padded_batch([6, 3, 5], 6, seed=6)
    y, keep = model.token_features(ids, mask)
    y.retain_grad()
    features = masked_max(y, keep)
    assert torch.equal(features, model(ids, mask))                 # forward = max over token_features (eval)
    for h in range(8):                                             # d features[:, h] / d y, channel by channel
        y.grad = None
        features[:, h].sum().backward(retain_graph=True)
        argmax = y.detach()[..., h].masked_fill(~keep, float("-inf")).argmax(1)
        want = F.one_hot(argmax, 6).to(y.dtype)
        assert torch.equal(y.grad[..., h], want)
        assert (y.grad[..., [c for c in range(8) if c != h]] == 0).all()


# -- padding ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_masked_padding_changes_nothing(name):
    """Appending masked positions (whatever their ids or embeddings) leaves every feature as it was; measured
    bit-identical in float32 on the CPU (the bound is 1e-6), and a row alone = that row in a padded batch."""
    model = build(MODELS[name], dtype=torch.float32)
    ids, mask = padded_batch([8, 5, 2, 8], 8, seed=7)
    with torch.no_grad():
        ref = model(ids, mask)
        extra = torch.randint(1, VOCAB, (4, 6), generator=gen(8))
        longer = model(torch.cat([ids, extra], 1), torch.cat([mask, torch.zeros(4, 6, dtype=torch.long)], 1))
        assert (longer - ref).abs().max() <= 1e-6
        embeds = model.get_input_embeddings()(ids)
        wild = embeds.masked_fill(~mask.bool()[..., None], 1e4)        # huge embeddings at the masked positions
        assert (model(inputs_embeds=wild, attention_mask=mask) - ref).abs().max() <= 1e-6
    model64 = build(MODELS[name])
    with torch.no_grad():
        batch = model64(ids, mask)
        for b, n in enumerate([8, 5, 2, 8]):
            alone = model64(ids[b:b + 1, :n])                          # no mask: every position is real
            assert (alone[0] - batch[b]).abs().max() <= 1e-12


# -- the baselines ---------------------------------------------------------------------------------
def test_mean_embedding_is_the_hand_mean_over_real_tokens():
    model = build(MeanEmbedding, embed_dim=12)
    ids, mask = padded_batch([5, 1, 3], 5, seed=9)
    table = model.get_input_embeddings().weight
    with torch.no_grad():
        got = model(ids, mask)
        for b, n in enumerate([5, 1, 3]):
            want = sum(table[ids[b, i]] for i in range(n)) / n
            assert (got[b] - want).abs().max() <= 1e-12


def test_text_cnn_is_tanh_of_its_windows_by_hand_max_over_windows_with_a_real_token():
    model = build(TextCNN, embed_dim=4, num_filters=3, kernel_sizes=[1, 3])
    assert model.hidden_size == 6
    ids, mask = padded_batch([5, 2], 5, seed=10)
    table = model.get_input_embeddings().weight
    with torch.no_grad():
        got = model(ids, mask)
        for b, n in enumerate([5, 2]):
            pooled = []
            for k, conv in zip(model.kernel_sizes, model.convs):
                e = torch.cat([torch.zeros(k - 1, 4, dtype=table.dtype), table[ids[b, :n]],
                               torch.zeros(k - 1, 4, dtype=table.dtype)])      # wide: zero vectors past each end
                z = [torch.tanh((conv.weight * e[t:t + k].T).sum((1, 2)) + conv.bias) for t in range(n + k - 1)]
                pooled.append(torch.stack(z).max(0).values)
            assert (got[b] - torch.cat(pooled)).abs().max() <= 1e-12


# -- the protocol ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MODELS)
def test_protocol_and_shapes(name):
    cls = MODELS[name]
    model = build(cls, dtype=torch.float32)
    assert cls.kind == "encoder"
    assert isinstance(model.get_input_embeddings(), nn.Embedding)
    assert model.get_input_embeddings().num_embeddings == VOCAB
    ids, mask = padded_batch([6, 3, 1], 6, seed=11)
    out = model(ids, mask)
    assert out.shape == (3, model.hidden_size)
    assert (model(input_ids=ids, attention_mask=mask) == out).all()
    same = model(inputs_embeds=model.get_input_embeddings()(ids), attention_mask=mask)   # IG's path
    assert (same - out).abs().max() <= 1e-6
    assert torch.equal(model(ids), model(ids, torch.ones_like(ids)))                      # no mask: all real
    empty = model(ids, torch.zeros_like(ids))                                             # no real token: 0
    assert torch.equal(empty, torch.zeros_like(empty))
    out.sum().backward()
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model()


def test_default_sizes_are_the_papers_and_bad_sizes_are_one_line_errors():
    model = RCNN(vocab_size=VOCAB)
    assert (model.embed_dim, model.context_dim, model.hidden_size) == (50, 50, 100)
    assert model.w_2.in_features == 150 and model.dropout.p == 0
    assert not any(m.bias is not None for m in (model.w_l, model.w_sl, model.w_r, model.w_sr))
    with pytest.raises(ValueError, match="model.context_dim: must be positive"):
        RCNN(vocab_size=VOCAB, context_dim=0)
    with pytest.raises(ValueError, match=r"model.dropout: must be in \[0, 1\)"):
        MeanEmbedding(vocab_size=VOCAB, dropout=1.0)
    with pytest.raises(ValueError, match="model.kernel_sizes"):
        TextCNN(vocab_size=VOCAB, kernel_sizes=[])


# -- learning word order ---------------------------------------------------------------------------
def order_task(n: int, length: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random words with keywords 1 and 2 at two random positions; the label: whether 1 comes first. The same
    bag of words either way: a mean of embeddings cannot tell the classes apart."""
    ids = torch.randint(3, 16, (n, length), generator=g)
    pos = torch.rand(n, length, generator=g).argsort(1)[:, :2]
    ids[torch.arange(n), pos[:, 0]] = 1
    ids[torch.arange(n), pos[:, 1]] = 2
    return ids, (pos[:, 0] < pos[:, 1]).long()


def train_on_order(cls, steps: int = 60, **kw) -> float:
    torch.manual_seed(0)
    encoder = cls(vocab_size=16, **kw)
    head = nn.Linear(encoder.hidden_size, 2)
    params = [*encoder.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    g = gen(12)
    for _ in range(steps):
        ids, labels = order_task(32, 8, g)
        loss = F.cross_entropy(head(encoder(ids)), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ids, labels = order_task(400, 8, gen(13))
    with torch.no_grad():
        return (head(encoder(ids)).argmax(-1) == labels).float().mean().item()


def test_rcnn_learns_word_order_where_the_mean_of_embeddings_cannot():
    rcnn = train_on_order(RCNN, embed_dim=16, context_dim=16, hidden_size=32)
    mean = train_on_order(MeanEmbedding, embed_dim=16)
    assert rcnn >= 0.95, rcnn
    assert mean <= 0.6, mean


# -- the method ------------------------------------------------------------------------------------
def test_method_is_plain_sgd_at_the_papers_constant_rate():
    method = RCNNText()
    assert method.needs_task == frozenset({"text-classification"})
    assert type(method).loss is Method.loss                   # the classifier's cross-entropy, unchanged
    model = RCNN(vocab_size=VOCAB)
    opt = method.build_optimizer(model)
    assert type(opt) is torch.optim.SGD
    assert all(g["lr"] == 0.01 and g["momentum"] == 0 and g["weight_decay"] == 0 for g in opt.param_groups)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    schedule = method.lr_lambda(1000)
    assert all(schedule(s) == 1.0 for s in (0, 1, 500, 999, 1000))
    assert method.optimizer_state_bytes(model) == 0
    adamw = RCNNText(optimizer="adamw", lr=3e-3)
    assert type(adamw.build_optimizer(model)) is torch.optim.AdamW
    assert adamw.optimizer_state_bytes(model) == 8 * sum(p.numel() for p in model.parameters())
    assert RCNNText(momentum=0.9).optimizer_state_bytes(model) == 4 * sum(p.numel() for p in model.parameters())


def test_method_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="method.optimizer: 'adam' is not one of sgd, adamw"):
        RCNNText(optimizer="adam")
    with pytest.raises(ValueError, match=r"method.momentum: must be in \[0, 1\)"):
        RCNNText(momentum=1.0)


# -- through the runner ----------------------------------------------------------------------------
@pytest.mark.e2e
def test_runs_through_the_runner_with_the_papers_sizes_and_sgd(tmp_path):
    """method=rcnn_text model=rcnn on the word-order task (keyword-cls, position variant, "red before blue"):
    the runner builds RCNN at the paper's sizes inside the classifier and trains it with plain SGD at 0.01."""
    import math

    from tests.conftest import run_in_process

    s = run_in_process(["model=rcnn", "model.seq_len=48", "method=rcnn_text", "dataset=keyword-cls",
                        "dataset.generator.num_classes=2", "dataset.generator.n=400", "dataset.tokenizer.vocab_size=300",
                        "dataset.batch_size=16", "trainer.max_steps=20", "trainer.val_every_n_steps=20",
                        "trainer.val_batches=2", "hardware.threads=1", "logger=none"], tmp_path / "run")
    assert s["stages"] == ["train"] and s["steps"] == 20
    backbone = RCNN(vocab_size=s["vocab_size"])                   # 50 / 50 / 100: the paper's sizes
    assert s["params"] == sum(p.numel() for p in backbone.parameters())
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    groups = saved["optimizer_states"][0]["param_groups"]          # torch.optim.SGD's state: plain SGD at 0.01
    assert all("nesterov" in g and g["lr"] == 0.01 and g["momentum"] == 0 for g in groups)
    assert math.isfinite(s["train/loss"]) and math.isfinite(s["val/loss"])
    assert 0 <= s["eval/macro_f1"] <= 1 and "val/auc" in s
