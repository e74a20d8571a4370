"""Google's Neural Machine Translation System: Bridging the Gap between Human and Machine Translation (Wu, Schuster,
Chen, Le, Norouzi et al., arXiv:1609.08144, 2016): the GNMT encoder-decoder (section 3), with its quantization-aware
clipping (section 6) as an option.

    encoder   x^1 = BiLSTM(embed(source))                      bottom layer bidirectional: [forward; backward]
              x^{l+1} = LSTM_l(x^l) (+ x^l from layer 3 up)    residual connections start at layer 3
    decoder   y^1_i = LSTM_1(embed(y_{i-1}))                   the bottom layer reads the previous target token
              s_{i,t} = v^T tanh(W_q y^1_i + W_k x^top_t)      attention from the bottom decoder layer
              p_i = softmax_t s_{i,t},  a_i = sum_t p_{i,t} x^top_t
              y^{l+1}_i = LSTM_{l+1}([y^l_i; a_i]) (+ y^l_i from layer 3 up)   the context fed to every layer above
              logits_i = W_o y^top_i                            softmax over the shared wordpiece vocabulary

The attention distribution p_i is what the coverage penalty of GNMT's beam search sums (methods/seq2seq.py
BeamScorer); `seq2seq_decode` returns it beside the hidden states (the protocol of methods/seq2seq.py).

Quantization-aware training (section 6): with `clip_cell` δ the LSTM accumulators are clipped during training and
inference, c_t ∈ [-δ, δ] and every gate pre-activation ∈ [-δ, δ]; with `clip_logits` γ the logits ∈ [-γ, γ]. The
paper then runs 8-bit weights with 16-bit accumulators; `quantize_int8` here fake-quantizes every weight matrix to
int8 (symmetric, one scale per output row) with float accumulators (tests/methods/test_gnmt.py bounds the change of
the log-probabilities).

Choices and deviations (also in configs/model/gnmt.yaml and the README row):
- The attention query is the bottom decoder layer's output at the current step (which has read y_{i-1}), as in
  NVIDIA's reference GNMT implementation (DeepLearningExamples); the paper writes the previous step's output. It
  lets teacher forcing run the bottom layer over the whole target at once.
- The attention function is additive (one tanh hidden layer, as the paper's "feed forward network with one hidden
  layer"), masked over source padding; no normalisation of v (NVIDIA's has one).
- Source and target embeddings are separate matrices over one shared vocabulary; the output layer has no bias
  (the runner's cross-entropy kernel reads the weight only) and is untied.
- With clipping, the LSTMs run step by step in Python (an explicit cell that can clip); without, torch's nn.LSTM
  (the two agree to float rounding: tested). Dropout between layers (`dropout`) as the paper's 0.2-0.3.
- Sizes are ours for the CPU (the paper: 8 + 8 layers of 1024 units).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.base import Architecture, size_problems


@dataclass
class GNMTConfig:
    """What the seq2seq helpers (methods/seq2seq.py) read of an encoder-decoder."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0


class ClippedLSTM(nn.Module):
    """One unidirectional LSTM layer with nn.LSTM's parameters and gate order (i, f, g, o); `clip` δ: gate
    pre-activations and the cell state clipped to [-δ, δ] at every step (GNMT's accumulator clipping), computed step
    by step; None: nn.LSTM itself."""

    def __init__(self, input_size: int, hidden_size: int, clip: float | None = None, reverse: bool = False):
        super().__init__()
        self.lstm = nn.LSTM(input_size, hidden_size, batch_first=True)
        self.clip, self.reverse = clip, reverse

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, I) -> (B, T, H). A reverse layer reads each row from its last real position (mask) backwards,
        so padding never enters a real position's state."""
        if self.reverse:
            x = _flip_real(x, mask)
        if self.clip is None:
            out = self.lstm(x)[0]
        else:
            out = self.stepwise(x)
        return _flip_real(out, mask) if self.reverse else out

    def stepwise(self, x: torch.Tensor) -> torch.Tensor:
        lstm, d = self.lstm, self.clip
        B, T, _ = x.shape
        H = lstm.hidden_size
        h = x.new_zeros(B, H)
        c = x.new_zeros(B, H)
        pre_in = x @ lstm.weight_ih_l0.T + lstm.bias_ih_l0 + lstm.bias_hh_l0
        out = []
        for t in range(T):
            gates = (pre_in[:, t] + h @ lstm.weight_hh_l0.T).clamp(-d, d)
            i, f, g, o = gates.chunk(4, dim=-1)
            c = (torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)).clamp(-d, d)
            h = torch.sigmoid(o) * torch.tanh(c)
            out.append(h)
        return torch.stack(out, dim=1)


def _flip_real(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Each row's real positions (a right-padded mask) reversed in place; padding stays where it is."""
    if mask is None:
        return x.flip(1)
    T = x.shape[1]
    lengths = mask.sum(1, keepdim=True)
    pos = torch.arange(T, device=x.device).expand(x.shape[0], T)
    idx = torch.where(pos < lengths, lengths - 1 - pos, pos)
    return x.gather(1, idx.unsqueeze(-1).expand_as(x))


class AdditiveAttention(nn.Module):
    """s_{i,t} = v^T tanh(W_q q_i + W_k k_t), softmax over the real source positions."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.query = nn.Linear(hidden_size, hidden_size, bias=False)
        self.key = nn.Linear(hidden_size, hidden_size)
        self.v = nn.Linear(hidden_size, 1, bias=False)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (B, T, H), keys (B, S, H), mask (B, S) -> (contexts (B, T, H), attention (B, T, S))."""
        scores = self.v(torch.tanh(self.query(queries)[:, :, None] + self.key(keys)[:, None])).squeeze(-1)
        p = scores.masked_fill(~mask[:, None], float("-inf")).softmax(-1)
        return p @ keys, p


def config_problems(hidden_size: int, num_layers: int, residual_from: int, dropout: float,
                    clip_cell: float | None, clip_logits: float | None) -> list[str]:
    """One line per bad model key (configs/model/gnmt.yaml), checked when the config is validated."""
    problems = size_problems(hidden_size=hidden_size, num_layers=num_layers)
    if num_layers < 2:
        problems.append(f"model.num_layers: GNMT needs at least 2 (a bidirectional bottom layer and one above), got {num_layers}")
    if hidden_size % 2:
        problems.append(f"model.hidden_size: must be even (the bidirectional layer's two halves), got {hidden_size}")
    if residual_from < 2:
        problems.append(f"model.residual_from: the first layer with a residual connection, >= 2, got {residual_from}")
    for k, v in (("clip_cell", clip_cell), ("clip_logits", clip_logits)):
        if v is not None and not v > 0:
            problems.append(f"model.{k}: a positive bound or null (no clipping), got {v}")
    if not 0 <= dropout < 1:
        problems.append(f"model.dropout: must be in [0, 1), got {dropout}")
    return problems


class GNMTArchitecture(Architecture):
    """The builder configs/model/gnmt.yaml names: checks the keys when the config is validated (one line each,
    before any work), builds `GNMT` with the task's shared vocabulary."""

    kind = "seq2seq-lm"
    provides = frozenset({"gnmt"})

    def __init__(self, hidden_size: int = 64, num_layers: int = 4, residual_from: int = 3, dropout: float = 0.0,
                 clip_cell: float | None = None, clip_logits: float | None = None):
        problems = config_problems(hidden_size, num_layers, residual_from, dropout, clip_cell, clip_logits)
        if problems:
            raise ValueError("; ".join(problems))
        self.kwargs = {"hidden_size": int(hidden_size), "num_layers": int(num_layers), "residual_from": int(residual_from),
                       "dropout": float(dropout), "clip_cell": clip_cell, "clip_logits": clip_logits}

    def build(self, vocab_size: int, seq_len: int) -> nn.Module:
        return GNMT(vocab_size, seq_len=seq_len, **self.kwargs)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        return model.repeated_blocks()


class GNMT(nn.Module):
    """The GNMT encoder-decoder (module docstring): kind seq2seq-lm, the methods/seq2seq.py protocol."""

    kind = "seq2seq-lm"
    provides = frozenset({"gnmt"})

    def __init__(self, vocab_size: int, hidden_size: int = 64, num_layers: int = 4, residual_from: int = 3,
                 dropout: float = 0.0, clip_cell: float | None = None, clip_logits: float | None = None,
                 seq_len: int | None = None):
        super().__init__()
        problems = config_problems(hidden_size, num_layers, residual_from, dropout, clip_cell, clip_logits)
        problems += size_problems(vocab_size=vocab_size)
        if problems:
            raise ValueError("; ".join(problems))
        self.config = GNMTConfig(vocab_size, hidden_size, num_layers)
        H, L = hidden_size, num_layers
        self.residual_from, self.clip_logits = residual_from, clip_logits
        self.source_embed = nn.Embedding(vocab_size, H)
        self.target_embed = nn.Embedding(vocab_size, H)
        self.encoder_fwd = ClippedLSTM(H, H // 2, clip_cell)
        self.encoder_bwd = ClippedLSTM(H, H // 2, clip_cell, reverse=True)
        self.encoder = nn.ModuleList([ClippedLSTM(H, H, clip_cell) for _ in range(L - 1)])
        self.decoder = nn.ModuleList([ClippedLSTM(H if layer == 0 else 2 * H, H, clip_cell) for layer in range(L)])
        self.attention = AdditiveAttention(H)
        self.output = nn.Linear(H, vocab_size, bias=False)
        self.drop = nn.Dropout(dropout)

    # -- the methods/seq2seq.py protocol ------------------------------------------------------
    def get_output_embeddings(self) -> nn.Linear:
        return self.output

    def get_input_embeddings(self) -> nn.Embedding:
        return self.target_embed

    def repeated_blocks(self) -> list[nn.Module]:
        return [*self.encoder, *self.decoder]

    def seq2seq_encode(self, sources: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the top encoder layer's states (B, S, H), the source mask (B, S))."""
        mask = sources != self.config.pad_token_id
        x = self.drop(self.source_embed(sources))
        x = torch.cat([self.encoder_fwd(x, mask), self.encoder_bwd(x, mask)], dim=-1)  # layer 1: bidirectional
        for n, layer in enumerate(self.encoder, start=2):  # layers 2 .. L
            y = layer(self.drop(x))
            x = y + x if n >= self.residual_from else y
        return x * mask[..., None], mask

    def seq2seq_decode(self, encoded: tuple[torch.Tensor, torch.Tensor],
                       decoder_inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the top decoder layer's states (B, T, H), the attention (B, T, S))."""
        states, mask = encoded
        y = self.decoder[0](self.drop(self.target_embed(decoder_inputs)))  # layer 1
        context, attention = self.attention(y, states, mask)
        for n, layer in enumerate(self.decoder[1:], start=2):
            z = layer(self.drop(torch.cat([y, context], dim=-1)))
            y = z + y if n >= self.residual_from else z
        return y, attention

    def seq2seq_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The output layer, its logits clipped to [-clip_logits, clip_logits] when set."""
        out = self.output(hidden)
        return out if self.clip_logits is None else out.clamp(-self.clip_logits, self.clip_logits)

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, T, V) of `decoder_input_ids` given the sources `input_ids`."""
        hidden, _ = self.seq2seq_decode(self.seq2seq_encode(input_ids), decoder_input_ids)
        return self.seq2seq_logits(hidden)


def quantize_int8(model: nn.Module) -> nn.Module:
    """`model` with every weight matrix (Linear, LSTM and embedding weights) replaced by its int8 fake-quantized
    value: w ≈ scale_r · round(w / scale_r), scale_r = max_j |w_rj| / 127 per output row; biases kept in float. In
    place; returns the model."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                scale = p.abs().amax(dim=1, keepdim=True).clamp(min=torch.finfo(p.dtype).tiny) / 127.0
                p.copy_(torch.round(p / scale).clamp(-127, 127) * scale)
    return model

