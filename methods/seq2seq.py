"""Encoder-decoder helpers shared by methods and the seq2seq data kind (tasks/seq2seq.py): teacher forcing, greedy
decoding and beam search with GNMT's length and coverage penalties, for transformers T5 models and for any
encoder-decoder of your own.

A seq2seq batch is one (B, 2, L) tensor of token ids: batch[:, 0] the sources, batch[:, 1] the targets
(each ending in EOS), both right-padded with the model's pad id. The decoder reads the target shifted right
behind the decoder start token (teacher forcing) or, for free-running training, the model's own greedy
output (`greedy_decode`).

An encoder-decoder of your own (an nn.Module, e.g. models/gnmt.py) works with every function here when it has

    config                                   .pad_token_id, .eos_token_id, .decoder_start_token_id
    seq2seq_encode(sources) -> (states, source mask)
    seq2seq_decode(encoded, decoder_inputs) -> (hidden (B, T, D), attention (B, T, S): each target position's
                                                distribution over the source positions, or None)
    get_output_embeddings() -> the output layer (logits = hidden @ weight.T)
    seq2seq_logits(hidden) -> logits           optional: where the logits are not just the output layer's
                                             (GNMT's clipped logits); the training loss then uses them too

T5 goes through transformers' encoder and decoder; its attention for the coverage penalty is the last decoder
layer's cross-attention averaged over heads (our choice: T5 has one distribution per layer and head).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def is_seq2seq_batch(batch: torch.Tensor) -> bool:
    return batch.ndim == 3 and batch.shape[1] == 2


def split_batch(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sources, targets), each (B, L)."""
    return batch[:, 0], batch[:, 1]


def shift_right(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Decoder inputs for `tokens`: the decoder start token, then tokens[:, :-1]."""
    start = model.config.decoder_start_token_id
    return torch.cat([tokens.new_full((tokens.shape[0], 1), start), tokens[:, :-1]], dim=1)


def is_custom(model: nn.Module) -> bool:
    """Whether `model` is an encoder-decoder of our own protocol (the module docstring), not a transformers one."""
    return callable(getattr(model, "seq2seq_decode", None))


def encode(model: nn.Module, sources: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder states, source attention mask)."""
    if is_custom(model):
        return model.seq2seq_encode(sources)
    mask = sources != model.config.pad_token_id
    return model.get_encoder()(input_ids=sources, attention_mask=mask).last_hidden_state, mask


def decoder_states(model: nn.Module, sources: torch.Tensor, decoder_inputs: torch.Tensor,
                   encoded: tuple[torch.Tensor, torch.Tensor] | None = None,
                   attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(hidden (B, T, D) as the output layer reads them, the attention (B, T, S) over the sources or None unless
    `attention`). T5 scales its hidden states by d_model^-1/2 when its config says so (tied embeddings)."""
    encoded = encoded if encoded is not None else encode(model, sources)
    if is_custom(model):
        hidden, att = model.seq2seq_decode(encoded, decoder_inputs)
        return hidden, (att if attention else None)
    states, mask = encoded
    if attention and getattr(model.config, "_attn_implementation", "eager") != "eager":
        # SDPA returns no attention probabilities: the model switches to eager attention (the same function)
        model.set_attn_implementation("eager")
    out = model.get_decoder()(input_ids=decoder_inputs, encoder_hidden_states=states, encoder_attention_mask=mask,
                              use_cache=False, output_attentions=attention)
    hidden = out.last_hidden_state
    if getattr(model.config, "scale_decoder_outputs", False):
        hidden = hidden * model.config.d_model ** -0.5
    return hidden, (out.cross_attentions[-1].mean(dim=1) if attention else None)


def decoder_hidden(model: nn.Module, sources: torch.Tensor, decoder_inputs: torch.Tensor,
                   encoded: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The decoder's last hidden states, as the output layer reads them (T5 scales them by d_model^-1/2 when
    its config says so), (B, T, D): `hidden @ lm_head.weight.T` are the logits."""
    return decoder_states(model, sources, decoder_inputs, encoded)[0]


def output_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The logits of decoder states `hidden`: the model's own seq2seq_logits where it has one, else its output layer."""
    own = getattr(model, "seq2seq_logits", None)
    return own(hidden) if callable(own) else model.get_output_embeddings()(hidden)


def seq2seq_logits(model: nn.Module, sources: torch.Tensor, decoder_inputs: torch.Tensor,
                   encoded: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    return output_logits(model, decoder_hidden(model, sources, decoder_inputs, encoded))


@torch.no_grad()
def greedy_decode(model: nn.Module, sources: torch.Tensor, steps: int, teacher: torch.Tensor | None = None,
                  teacher_ratio: float = 0.0, stop_at_eos: bool = True,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Greedy decoding of `steps` tokens, (B, steps).

    stop_at_eos: a finished sequence is padded after its EOS and decoding ends once all have finished (the
    output can be shorter than `steps`). teacher/teacher_ratio: at each position the next decoder input is
    teacher[:, t] with probability teacher_ratio, else the model's own argmax (scheduled sampling; the
    official EISL code's `tf_ratio`). The returned tokens are always the model's argmax.
    """
    cfg = model.config
    encoded = encode(model, sources)
    inputs = sources.new_full((sources.shape[0], 1), cfg.decoder_start_token_id)
    done = torch.zeros(sources.shape[0], dtype=torch.bool, device=sources.device)
    out = []
    for t in range(steps):
        logits = seq2seq_logits(model, sources, inputs, encoded)[:, -1]
        token = logits.argmax(-1)
        if stop_at_eos:
            token = token.masked_fill(done, cfg.pad_token_id)
            done |= token == cfg.eos_token_id
        out.append(token)
        fed = token
        if teacher is not None and teacher_ratio > 0 and t < teacher.shape[1]:
            use = torch.rand(token.shape, generator=generator, device=token.device) < teacher_ratio
            fed = torch.where(use, teacher[:, t], token)
        inputs = torch.cat([inputs, fed[:, None]], dim=1)
        if stop_at_eos and bool(done.all()):
            break
    return torch.stack(out, dim=1)


# ---------------------------------------------------------------------------------------------- beam search
@dataclass(frozen=True)
class BeamScorer:
    """GNMT's hypothesis score (Wu et al. 2016, eq. 14), s(Y, X) = log P(Y|X) / lp(Y) + cp(X; Y), with

        lp(Y)    = (5 + |Y|)^alpha / (5 + 1)^alpha
        cp(X; Y) = beta * sum_i log(min(sum_j p_ij, 1.0))     p_ij: attention on source word i at target step j

    alpha = beta = 0: plain log-probability. |Y| counts the target tokens, EOS included; i runs over the real
    (non-padding) source positions. An attention sum of exactly 0 is floored at the smallest normal float (the
    penalty stays finite: log 1.2e-38 = -87.3 per position)."""

    alpha: float = 0.0
    beta: float = 0.0

    def lp(self, length: torch.Tensor | float) -> torch.Tensor | float:
        if isinstance(length, torch.Tensor):
            return ((5.0 + length.double()) / 6.0) ** self.alpha
        return ((5.0 + length) / 6.0) ** self.alpha

    def cp(self, coverage: torch.Tensor, source_mask: torch.Tensor) -> torch.Tensor:
        """coverage (..., S): the attention summed over the target steps; source_mask (..., S) true where real."""
        if self.beta == 0:
            return coverage.new_zeros(coverage.shape[:-1], dtype=torch.float64)
        floor = torch.finfo(torch.float32).tiny
        logs = coverage.double().clamp(min=floor, max=1.0).log().masked_fill(~source_mask, 0.0)
        return self.beta * logs.sum(-1)

    def score(self, logprob: torch.Tensor, length: torch.Tensor | float, coverage: torch.Tensor | None = None,
              source_mask: torch.Tensor | None = None) -> torch.Tensor:
        s = logprob.double() / self.lp(length)
        return s if coverage is None or self.beta == 0 else s + self.cp(coverage, source_mask)


@torch.no_grad()
def beam_search(model: nn.Module, sources: torch.Tensor, steps: int, beam_size: int = 4,
                scorer: BeamScorer | None = None, return_all: bool = False):
    """Beam search of at most `steps` target tokens per source, (B, <= steps) tokens right-padded with pad.

    Every hypothesis extends by every token; the `beam_size` best by `scorer` (GNMT's s(Y, X), which ranks partial
    hypotheses too: their length and attention so far) among the 2·beam_size best candidates are kept alive, and
    a candidate that ends in EOS within the top beam_size is finished with its score. A source is done when it
    holds beam_size finished hypotheses; at `steps` the alive ones join the finished as they are. The answer is the
    best-scored finished hypothesis. beam_size 1 with alpha = beta = 0 is greedy decoding (`greedy_decode`).
    return_all: also a list, per source, of (score, tokens) of every finished hypothesis, best first."""
    scorer = scorer or BeamScorer()
    cfg = model.config
    eos, pad = cfg.eos_token_id, cfg.pad_token_id
    B, K = sources.shape[0], int(beam_size)
    device = sources.device
    states, mask = encode(model, sources)
    rep = torch.arange(B, device=device).repeat_interleave(K)
    encoded = (_take(states, rep), mask[rep])
    src_mask = mask[rep]
    inputs = sources.new_full((B * K, 1), cfg.decoder_start_token_id)
    logp = torch.full((B, K), float("-inf"), dtype=torch.float64, device=device)
    logp[:, 0] = 0.0  # one live hypothesis to start with
    coverage = torch.zeros(B * K, sources.shape[1], dtype=torch.float64, device=device)
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
    done = [False] * B
    want_attention = scorer.beta != 0
    for t in range(steps):
        hidden, att = decoder_states(model, sources[rep], inputs, encoded, attention=want_attention)
        lprobs = torch.log_softmax(output_logits(model, hidden[:, -1]).double(), dim=-1)  # (B*K, V)
        V = lprobs.shape[-1]
        cand = (logp.reshape(-1, 1) + lprobs).reshape(B, K * V)
        cov = coverage + att[:, -1].double() if want_attention else coverage
        cov_pen = scorer.cp(cov, src_mask).reshape(B, K) if want_attention else torch.zeros(B, K, dtype=torch.float64)
        score = cand / scorer.lp(t + 1) + cov_pen.to(device).repeat_interleave(V, dim=1)
        top = score.topk(min(2 * K, K * V), dim=1)
        new_rows, new_logp = [], torch.full((B, K), float("-inf"), dtype=torch.float64, device=device)
        new_tokens = torch.full((B, K), pad, dtype=torch.long, device=device)
        for b in range(B):
            kept = 0
            for rank, (s, flat) in enumerate(zip(top.values[b].tolist(), top.indices[b].tolist())):
                if s == float("-inf") or kept == K:
                    break
                k, token = divmod(flat, V)
                row = b * K + k
                if token == eos:
                    if rank < K and not done[b]:
                        finished[b].append((s, [*inputs[row, 1:].tolist(), eos]))
                    continue
                new_rows.append(row)
                new_logp[b, kept] = cand[b, flat]
                new_tokens[b, kept] = token
                kept += 1
            while kept < K:  # fewer live candidates than beams (tiny vocabularies): dead slots
                new_rows.append(b * K)
                kept += 1
            if len(finished[b]) >= K:
                done[b] = True
        rows = torch.tensor(new_rows, device=device)
        inputs = torch.cat([inputs[rows], new_tokens.reshape(-1, 1)], dim=1)
        coverage = cov[rows]
        logp = new_logp
        if all(done):
            break
    else:  # out of steps: the live hypotheses count as they stand
        final = scorer.score(logp.reshape(-1), steps, coverage, src_mask).reshape(B, K)
        for b in range(B):
            if done[b]:
                continue
            for k in range(K):
                if logp[b, k] > float("-inf"):
                    finished[b].append((float(final[b, k]), inputs[b * K + k, 1:].tolist()))
    ranked = [sorted(f, key=lambda x: -x[0]) for f in finished]
    best = [r[0][1] if r else [] for r in ranked]
    width = max(1, max(map(len, best)))
    out = torch.full((B, width), pad, dtype=torch.long, device=device)
    for b, toks in enumerate(best):
        out[b, :len(toks)] = torch.tensor(toks, dtype=torch.long)
    return (out, ranked) if return_all else out


def _take(states, rows: torch.Tensor):
    """states (a tensor, or a tuple/list of them) indexed by `rows` along dim 0."""
    if isinstance(states, torch.Tensor):
        return states[rows]
    return type(states)(_take(s, rows) for s in states)


def decode(model: nn.Module, sources: torch.Tensor, steps: int, beam_size: int = 1, length_penalty: float = 0.0,
           coverage_penalty: float = 0.0) -> torch.Tensor:
    """Greedy decoding (beam_size 1, no penalties: `greedy_decode`) or beam search with GNMT's scoring."""
    if beam_size == 1 and length_penalty == 0 and coverage_penalty == 0:
        return greedy_decode(model, sources, steps)
    return beam_search(model, sources, steps, beam_size, BeamScorer(length_penalty, coverage_penalty))

