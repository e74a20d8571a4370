"""GNMT (models/gnmt.py, methods/translation/gnmt.py) and the beam search of every encoder-decoder
(methods/seq2seq.py): the paper's scoring function, the architecture's wiring, the quantization-aware clipping."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from methods.seq2seq import (
    BeamScorer,
    beam_search,
    decoder_states,
    encode,
    greedy_decode,
    output_logits,
    shift_right,
)
from models.gnmt import GNMT, ClippedLSTM, quantize_int8


def tiny(seed: int = 0, **kw) -> GNMT:
    torch.manual_seed(seed)
    return GNMT(**{"vocab_size": 5, "hidden_size": 8, "num_layers": 4, **kw}).eval()


def sources(rows: list[list[int]]) -> torch.Tensor:
    out = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
    for b, r in enumerate(rows):
        out[b, :len(r)] = torch.tensor(r)
    return out


# -- the scoring function (eq. 14) -----------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.6, 1.0, 3.7])
def test_length_penalty_of_one_token_is_one_for_any_alpha(alpha):
    assert BeamScorer(alpha=alpha).lp(1) == pytest.approx(1.0, abs=1e-15)
    assert BeamScorer(alpha=alpha).lp(torch.tensor(1)).item() == pytest.approx(1.0, abs=1e-15)
    if alpha > 0:  # longer hypotheses are divided by more: lp grows with |Y|
        assert BeamScorer(alpha=alpha).lp(10) > BeamScorer(alpha=alpha).lp(2) > 1


def test_coverage_penalty_is_zero_iff_every_source_word_got_total_attention_one():
    scorer = BeamScorer(beta=0.2)
    mask = torch.tensor([[True, True, True, False]] * 4)
    coverage = torch.tensor([[1.0, 1.0, 1.0, 0.0],    # every real position covered (padding ignored)
                             [2.5, 1.0, 1.7, 0.0],    # more than 1 counts as 1
                             [1.0, 0.999, 1.0, 5.0],  # one real position short of 1
                             [0.0, 3.0, 3.0, 0.0]], dtype=torch.float64)  # one real position never attended
    cp = scorer.cp(coverage, mask)
    assert cp[0] == 0 and cp[1] == 0
    assert cp[2] < 0 and cp[2] == pytest.approx(0.2 * math.log(0.999))
    assert cp[3] < cp[2] and math.isfinite(cp[3])
    assert torch.equal(BeamScorer(beta=0.0).cp(coverage, mask), torch.zeros(4, dtype=torch.float64))


def test_with_beta_a_hypothesis_that_skips_a_source_word_ranks_lower():
    """Two hypotheses of the same length and log-probability: one attends to every source word, the other (crafted
    attention) never to the last one. β > 0 ranks the second lower; β = 0 ties them; and the coverage penalty can
    outweigh a better log-probability."""
    mask = torch.ones(2, 3, dtype=torch.bool)
    attention = torch.tensor([[[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.0, 0.0, 1.0]],
                              [[0.9, 0.1, 0.0], [0.1, 0.9, 0.0], [0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]], dtype=torch.float64)
    coverage = attention.sum(1)  # (2, 3): [1, 1, 2] and [2, 2, 0]
    logp = torch.tensor([-3.0, -3.0], dtype=torch.float64)
    covered, skipping = BeamScorer(alpha=0.2, beta=0.2).score(logp, 4, coverage, mask)
    assert covered > skipping
    tie = BeamScorer(alpha=0.2, beta=0.0).score(logp, 4, coverage, mask)
    assert tie[0] == tie[1]
    better_logp = torch.tensor([-3.0, -2.0], dtype=torch.float64)
    covered, skipping = BeamScorer(beta=0.2).score(better_logp, 4, coverage, mask)
    assert covered > skipping


def _exhaustive(model: GNMT, src: torch.Tensor, steps: int, scorer: BeamScorer) -> list[tuple[float, list[int]]]:
    """Every target sequence of at most `steps` tokens that ends in EOS, and every one of exactly `steps` tokens
    without EOS, scored by teacher forcing: (s(Y, X), tokens), best first."""
    V, eos = model.config.vocab_size, model.config.eos_token_id
    seqs = [[*p, eos] for n in range(steps) for p in itertools.product([t for t in range(V) if t != eos], repeat=n)]
    seqs += [list(p) for p in itertools.product([t for t in range(V) if t != eos], repeat=steps)]
    out = []
    with torch.no_grad():
        for y in seqs:
            tgt = torch.tensor([y])
            hidden, att = decoder_states(model, src, shift_right(model, tgt), attention=True)
            logp = torch.log_softmax(output_logits(model, hidden).double(), -1).gather(-1, tgt[..., None]).sum()
            mask = src != model.config.pad_token_id
            out.append((float(scorer.score(logp, len(y), att.double().sum(1), mask)), y))
    return sorted(out, key=lambda x: -x[0])


@pytest.mark.parametrize("alpha,beta", [(0.0, 0.0), (0.6, 0.0), (0.0, 0.4), (1.0, 0.3)])
def test_a_beam_wide_enough_to_prune_nothing_ranks_every_hypothesis_as_exhaustive_search(alpha, beta):
    """With beam_size past the number of hypotheses (vocabulary 5, 3 steps: 85 sequences), beam search finishes every
    sequence, and its ranking by s(Y, X) is the one exhaustive teacher-forced scoring gives: with α = β = 0 that is
    plain log-probability ranking. Scores agree to float32 rounding of the two forward paths (measured ≤ 6.3e-8)."""
    model = tiny(seed=3)
    src = sources([[3, 4, 3, 1]])
    scorer = BeamScorer(alpha, beta)
    _, ranked = beam_search(model, src, steps=3, beam_size=128, scorer=scorer, return_all=True)
    truth = _exhaustive(model, src, 3, scorer)
    assert len(ranked[0]) == len(truth) == 85
    assert [y for _, y in ranked[0]] == [y for _, y in truth]
    assert max(abs(a - b) for (a, _), (b, _) in zip(ranked[0], truth)) < 1e-6


def test_beam_one_is_greedy_decoding():
    """A model trained for a few steps on `reverse` (so that it emits EOS), and a random one (that runs to the step
    limit): beam_size 1, no penalties, gives greedy's tokens row for row; a wider beam never scores worse."""
    model = tiny(seed=1, vocab_size=9)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(60):
        x = torch.randint(3, 9, (16, 4), generator=g)
        y = torch.cat([x.flip(1), torch.ones(16, 1, dtype=torch.long)], 1)
        src = torch.cat([x, torch.ones(16, 1, dtype=torch.long)], 1)
        hidden, _ = decoder_states(model, src, shift_right(model, y))
        loss = torch.nn.functional.cross_entropy(output_logits(model, hidden).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    src = torch.cat([torch.randint(3, 9, (12, 4), generator=g), torch.ones(12, 1, dtype=torch.long)], 1)
    emitted_eos = []
    for m in (model, tiny(seed=2, vocab_size=9)):
        greedy = greedy_decode(m, src, 8)
        beam = beam_search(m, src, 8, beam_size=1)
        width = max(greedy.shape[1], beam.shape[1])
        assert torch.equal(*(torch.nn.functional.pad(t, (0, width - t.shape[1])) for t in (greedy, beam)))
        emitted_eos.append(bool((greedy == 1).any(1).all()))
    assert emitted_eos == [True, False], "the trained model ends every row, the random one none"
    _, one = beam_search(model, src, 8, beam_size=1, return_all=True)
    _, four = beam_search(model, src, 8, beam_size=4, return_all=True)
    assert all(f[0][0] >= o[0][0] - 1e-9 for o, f in zip(one, four))


# -- the architecture ------------------------------------------------------------------------------
def test_stepwise_lstm_equals_torch_lstm_without_clipping_and_clips_when_asked():
    torch.manual_seed(0)
    layer = ClippedLSTM(6, 5, clip=1e9)
    x = torch.randn(3, 7, 6) * 3
    ref = layer.lstm(x)[0]
    assert torch.allclose(layer(x), ref, atol=1e-6)  # measured 6e-8
    layer.clip = 0.5
    c_bound = torch.tanh(torch.tensor(0.5))
    assert layer(x).abs().max() <= c_bound + 1e-7  # |h| = σ(o)·|tanh(c)| <= tanh(δ)
    assert not torch.allclose(layer(x), ref, atol=1e-3)


def test_bidirectional_bottom_layer_sees_the_right_sides():
    """Layer 1's forward half at position t reads source positions <= t only, its backward half >= t only (over the
    real positions: appended padding changes neither); the top encoder states depend on every position."""
    model = tiny(seed=4, vocab_size=20)
    src = torch.tensor([[5, 6, 7, 8, 9, 1]])
    emb = model.source_embed
    mask = src != 0

    def halves(s):
        x = emb(s)
        m = s != 0
        return model.encoder_fwd(x, m), model.encoder_bwd(x, m)

    with torch.no_grad():
        fwd, bwd = halves(src)
        changed = src.clone()
        changed[0, 3] = 12
        fwd2, bwd2 = halves(changed)
        diff_f = (fwd - fwd2).abs().amax(-1)[0]
        diff_b = (bwd - bwd2).abs().amax(-1)[0]
        assert (diff_f[:3] == 0).all() and (diff_f[3:] > 0).all()
        assert (diff_b[4:] == 0).all() and (diff_b[:4] > 0).all()
        padded = torch.cat([src, torch.zeros(1, 3, dtype=torch.long)], 1)
        fwd3, bwd3 = halves(padded)
        assert torch.allclose(fwd3[:, :6], fwd, atol=1e-7) and torch.allclose(bwd3[:, :6], bwd, atol=1e-7)
        top, _ = encode(model, src)
        top2, _ = encode(model, changed)
        assert ((top - top2).abs().amax(-1) > 0).all()
        assert mask.all()


@pytest.mark.parametrize("side", ["encoder", "decoder"])
def test_residual_connections_start_at_layer_three(side):
    """A layer whose LSTM weights are all zero outputs h = σ(0)·tanh(0) = 0: from layer 3 up the residual connection
    passes its input through unchanged, so the model equals the one without that layer. In the encoder layer 2 has
    none: zeroed, it cuts the top from the bottom layer."""
    model = tiny(seed=5, vocab_size=12, num_layers=4)
    src = sources([[4, 5, 6, 1], [7, 8, 1]])
    dec_in = shift_right(model, sources([[9, 10, 1], [11, 1]]))
    layers = model.encoder if side == "encoder" else model.decoder
    with torch.no_grad():
        def out(m):
            return decoder_states(m, src, dec_in)[0] if side == "decoder" else encode(m, src)[0]

        # encoder: model.encoder[k] is layer k + 2; decoder: model.decoder[k] is layer k + 1
        third = 1 if side == "encoder" else 2
        for p in layers[third].lstm.parameters():
            p.zero_()
        with_zeroed = out(model)
        removed = tiny(seed=5, vocab_size=12, num_layers=4)
        removed.load_state_dict(model.state_dict())
        if side == "encoder":
            removed.encoder = torch.nn.ModuleList([layers[0], layers[2]])  # layers 2 and 4 (4 still residual)
        else:
            removed.decoder = torch.nn.ModuleList([layers[0], layers[1], layers[3]])
        assert torch.allclose(with_zeroed, out(removed), atol=1e-6)
        if side == "encoder":  # layer 2 has no residual: zeroing it cuts every path from the bottom layer
            for p in layers[0].lstm.parameters():
                p.zero_()
            other_src = sources([[3, 3, 3, 1], [9, 9, 1]])
            assert torch.allclose(encode(model, src)[0], encode(model, other_src)[0], atol=1e-6)


def test_attention_is_a_distribution_over_the_real_source_positions_and_the_output_shapes():
    model = tiny(seed=6, vocab_size=30, hidden_size=16)
    src = sources([[4, 5, 6, 7, 1], [8, 9, 1]])
    dec_in = shift_right(model, sources([[10, 11, 12, 1], [13, 1]]))
    hidden, att = decoder_states(model, src, dec_in, attention=True)
    assert hidden.shape == (2, 4, 16) and att.shape == (2, 4, 5)
    assert torch.allclose(att.sum(-1), torch.ones(2, 4), atol=1e-6)
    assert (att[1, :, 3:] == 0).all()
    assert model(src, dec_in).shape == (2, 4, 30)
    assert model.encoder_fwd.lstm.hidden_size == model.encoder_bwd.lstm.hidden_size == 8  # two halves of 16
    assert model.decoder[1].lstm.input_size == 32  # [y; a] above the bottom layer
    assert model.decoder[0].lstm.input_size == 16


def test_int8_weights_stay_within_half_a_step_and_clipped_outputs_stay_near_float():
    """quantize_int8 moves each weight by at most half its row's step; on a clipped model (δ = 3, γ = 25) the int8
    model's token log-probabilities stay within 0.01 of the float model's (measured 0.0011-0.0014 over seeds 0-4), and
    every logit within γ."""
    for seed in range(3):
        model = tiny(seed=seed, vocab_size=40, hidden_size=32, clip_cell=3.0, clip_logits=25.0)
        q = quantize_int8(tiny(seed=seed, vocab_size=40, hidden_size=32, clip_cell=3.0, clip_logits=25.0))
        for (name, p), (_, pq) in zip(model.named_parameters(), q.named_parameters()):
            if p.ndim == 2:
                step = p.abs().amax(1, keepdim=True) / 127
                assert ((p - pq).abs() <= step / 2 + 1e-7).all(), name
                assert torch.unique(torch.round(pq / step)).numel() <= 255
            else:
                assert torch.equal(p, pq)
        g = torch.Generator().manual_seed(seed)
        src = torch.randint(3, 40, (8, 10), generator=g)
        tgt = torch.randint(3, 40, (8, 9), generator=g)
        with torch.no_grad():
            a, b = (torch.log_softmax(m(src, shift_right(m, tgt)), -1) for m in (model, q))
            assert (a - b).abs().max() < 0.01
            model.output.weight.mul_(100)
            assert model(src, shift_right(model, tgt)).abs().max() <= 25.0


def test_bad_model_values_are_one_line_errors():
    with pytest.raises(ValueError, match="model.num_layers: GNMT needs at least 2"):
        GNMT(vocab_size=10, num_layers=1)
    with pytest.raises(ValueError, match="model.hidden_size: must be even"):
        GNMT(vocab_size=10, hidden_size=7)
    with pytest.raises(ValueError, match="model.clip_cell: a positive bound"):
        GNMT(vocab_size=10, clip_cell=0)


def test_bad_method_values_are_one_line_config_errors():
    from methods.translation.gnmt import GNMT as Method

    with pytest.raises(ValueError, match="method.decodings.wide.beam_size: must be a positive integer"):
        Method(decodings={"wide": {"beam_size": 0}})
    with pytest.raises(ValueError, match="method.decodings.x: unknown key 'beam'"):
        Method(decodings={"x": {"beam": 2}})
    with pytest.raises(ValueError, match="method.decodings.x.coverage_penalty: must be >= 0"):
        Method(decodings={"x": {"coverage_penalty": -1}})
