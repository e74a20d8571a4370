"""Recurrent Convolutional Neural Networks for Text Classification (Lai, Xu, Liu & Zhao, AAAI 2015; the document
model of S. Lai's thesis "Word and Document Embeddings based on Neural Network Approaches", arXiv:1611.05962),
and two baselines of the same protocol: the mean of the word embeddings and a window CNN with max-over-time.

RCNN (the paper's equations 1-5, for the words w_1 .. w_n of a document and their embeddings e(w_i)):

    c_l(w_i) = f(W^(l) c_l(w_{i-1}) + W^(sl) e(w_{i-1}))       left context   (c_l(w_1): a learned vector)
    c_r(w_i) = f(W^(r) c_r(w_{i+1}) + W^(sr) e(w_{i+1}))       right context  (c_r(w_n): a learned vector)
    x_i      = [c_l(w_i); e(w_i); c_r(w_i)]
    y_i      = tanh(W^(2) x_i + b^(2))                          (B, L, hidden_size)
    y        = max_i y_i                                        element-wise max over the positions

`RCNN.forward` returns y (B, hidden_size); the classifier's head is the paper's y^(4) = W^(4) y + b^(4) (eq. 6)
and its softmax cross-entropy (eq. 7). The recurrences are simple (Elman) RNNs as the paper writes them, one per
direction with its own weights, no biases (the equations have none), computed step by step; not an LSTM.

Padding (attention_mask 0): a masked position never enters a recurrence (the state is carried over it
unchanged, so c_r starts at each row's last real token and c_l at its first), never wins the max, and its
embedding is never read: appending padding changes no feature (tests/methods/test_rcnn_text.py measures it).

Choices and deviations (also in configs/model/rcnn.yaml and the README row):
- f = tanh. The paper says only "a non-linear activation function"; tanh is ours (the same as its eq. 4).
- Embeddings are trained from random init (nn.Embedding's N(0, 1)); the paper starts from Skip-gram vectors
  trained on Wikipedia (|e| = 50) and trains them further.
- The other weights are U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's nn.Linear default, also used for
  c_l(w_1), c_r(w_n)); the paper: uniform, with the bound given by the fan-in (Plaut & Hinton).
- `dropout` (default 0: the paper has none) acts on the pooled features y.
Sizes from the paper: |e| = 50, |c| = 50, hidden H = 100.

Baselines (ours, same protocol, for the comparison the paper makes against bag-of-embeddings and CNNs):
- MeanEmbedding: (1/n) sum over the real tokens of e(w_i)  -> (B, embed_dim).
- TextCNN: z_t^k = tanh(W_k [e(w_t); ..; e(w_{t+k-1})] + b_k) over the windows of every width k in
  `kernel_sizes` ("wide": windows overhang each end by up to k-1 zero vectors, padding embeddings are zeroed),
  max over the windows holding at least one real token, concatenated -> (B, num_filters * len(kernel_sizes)).
  A window CNN as the paper's CNN baseline (Collobert et al. 2011), with tanh as in RCNN's eq. 4, so the two
  differ only in how they see context; widths and sizes are ours.

Each class: kind = "encoder", vocab_size plus its YAML keys, `hidden_size`, `get_input_embeddings()`, and
forward(input_ids=None, attention_mask=None, inputs_embeds=None) -> (B, hidden_size) features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.base import size_problems


def masked_max(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Element-wise max of values (B, L, H) over the positions where mask (B, L) is true; 0 for a row without one.
    The gradient reaches one arg-max position per (row, channel) and no masked position."""
    filled = values.masked_fill(~mask.unsqueeze(-1), float("-inf"))
    pooled = filled.max(dim=1).values
    return torch.where(mask.any(dim=1, keepdim=True), pooled, torch.zeros_like(pooled))


def _check_positive(**sizes) -> None:
    problems = size_problems(**sizes)
    if problems:
        raise ValueError("; ".join(problems))


class _TokenEncoder(nn.Module):
    """Embeddings, the mask and the dropout on the pooled features: what the three models share."""

    kind = "encoder"

    def __init__(self, vocab_size: int, embed_dim: int, dropout: float):
        super().__init__()
        _check_positive(vocab_size=vocab_size, embed_dim=embed_dim)
        if not 0 <= dropout < 1:
            raise ValueError(f"model.dropout: must be in [0, 1), got {dropout}")
        self.embed_dim = int(embed_dim)
        self.embeddings = nn.Embedding(int(vocab_size), self.embed_dim)
        self.dropout = nn.Dropout(float(dropout))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def _inputs(self, input_ids, attention_mask, inputs_embeds) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (B, L, E), mask (B, L) bool) from ids or given embeddings; no mask: every position."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        embeds = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        if attention_mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
        else:
            mask = attention_mask.to(device=embeds.device, dtype=torch.bool)
        return embeds, mask


class RCNN(_TokenEncoder):
    """Lai et al. 2015: left/right context recurrences, y_i = tanh(W2 [c_l; e; c_r] + b2), max over positions."""

    def __init__(self, vocab_size: int, embed_dim: int = 50, context_dim: int = 50, hidden_size: int = 100,
                 dropout: float = 0.0):
        super().__init__(vocab_size, embed_dim, dropout)
        _check_positive(context_dim=context_dim, hidden_size=hidden_size)
        self.context_dim, self.hidden_size = int(context_dim), int(hidden_size)
        c, e = self.context_dim, self.embed_dim
        self.w_l = nn.Linear(c, c, bias=False)     # W^(l)
        self.w_sl = nn.Linear(e, c, bias=False)    # W^(sl)
        self.w_r = nn.Linear(c, c, bias=False)     # W^(r)
        self.w_sr = nn.Linear(e, c, bias=False)    # W^(sr)
        bound = 1 / math.sqrt(c)
        self.c_l_first = nn.Parameter(torch.empty(c).uniform_(-bound, bound))   # c_l(w_1)
        self.c_r_last = nn.Parameter(torch.empty(c).uniform_(-bound, bound))    # c_r(w_n)
        self.w_2 = nn.Linear(2 * c + e, self.hidden_size)                        # W^(2), b^(2)

    def contexts(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """c_l, c_r (B, L, context_dim) of every position (eqs. 1-2, f = tanh). A masked position is skipped: the
        state passes it unchanged (its own c_l, c_r are those of the next real token on that side)."""
        batch, length, _ = embeds.shape
        keep = mask.unsqueeze(-1)
        from_left, from_right = self.w_sl(embeds), self.w_sr(embeds)   # W^(sl) e(w_i), W^(sr) e(w_i): (B, L, C)
        state = self.c_l_first.to(embeds.dtype).expand(batch, -1)
        left = []
        for i in range(length):
            left.append(state)                                          # c_l(w_i) reads only words < i
            if i + 1 < length:
                state = torch.where(keep[:, i], torch.tanh(self.w_l(state) + from_left[:, i]), state)
        state = self.c_r_last.to(embeds.dtype).expand(batch, -1)
        right = [state] * length
        for i in range(length - 1, -1, -1):
            right[i] = state                                            # c_r(w_i) reads only words > i
            if i > 0:
                state = torch.where(keep[:, i], torch.tanh(self.w_r(state) + from_right[:, i]), state)
        return torch.stack(left, 1), torch.stack(right, 1)

    def token_features(self, input_ids=None, attention_mask=None, inputs_embeds=None):
        """y_i = tanh(W2 x_i + b2) (B, L, hidden_size) (eqs. 3-4), and the mask (B, L) bool."""
        embeds, mask = self._inputs(input_ids, attention_mask, inputs_embeds)
        c_l, c_r = self.contexts(embeds, mask)
        return torch.tanh(self.w_2(torch.cat([c_l, embeds, c_r], dim=-1))), mask

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None) -> torch.Tensor:
        y, mask = self.token_features(input_ids, attention_mask, inputs_embeds)
        return self.dropout(masked_max(y, mask))                        # eq. 5: (B, hidden_size)


class MeanEmbedding(_TokenEncoder):
    """Bag of embeddings: the mean of e(w_i) over the real tokens (0 for a row without one)."""

    def __init__(self, vocab_size: int, embed_dim: int = 50, dropout: float = 0.0):
        super().__init__(vocab_size, embed_dim, dropout)
        self.hidden_size = self.embed_dim

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None) -> torch.Tensor:
        embeds, mask = self._inputs(input_ids, attention_mask, inputs_embeds)
        weight = mask.to(embeds.dtype).unsqueeze(-1)
        total = torch.where(mask.unsqueeze(-1), embeds, torch.zeros_like(embeds)).sum(1)
        return self.dropout(total / weight.sum(1).clamp_min(1))


class TextCNN(_TokenEncoder):
    """Window CNN: tanh of a wide 1-D convolution per width k, max over the windows that hold a real token."""

    def __init__(self, vocab_size: int, embed_dim: int = 50, num_filters: int = 100,
                 kernel_sizes: list[int] = (3,), dropout: float = 0.0):
        super().__init__(vocab_size, embed_dim, dropout)
        kernel_sizes = [int(k) for k in kernel_sizes]
        _check_positive(num_filters=num_filters)
        if not kernel_sizes or min(kernel_sizes) < 1:
            raise ValueError(f"model.kernel_sizes: must be a non-empty list of integers >= 1, got {kernel_sizes}")
        self.kernel_sizes, self.num_filters = kernel_sizes, int(num_filters)
        self.hidden_size = self.num_filters * len(kernel_sizes)
        self.convs = nn.ModuleList(nn.Conv1d(self.embed_dim, self.num_filters, k) for k in kernel_sizes)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None) -> torch.Tensor:
        embeds, mask = self._inputs(input_ids, attention_mask, inputs_embeds)
        x = torch.where(mask.unsqueeze(-1), embeds, torch.zeros_like(embeds)).transpose(1, 2)  # (B, E, L)
        m = mask.to(embeds.dtype).unsqueeze(1)                                                  # (B, 1, L)
        pooled = []
        for k, conv in zip(self.kernel_sizes, self.convs):
            z = torch.tanh(conv(F.pad(x, (k - 1, k - 1))))                                      # (B, F, L+k-1)
            has_token = F.max_pool1d(F.pad(m, (k - 1, k - 1)), k, stride=1).squeeze(1) > 0     # (B, L+k-1)
            pooled.append(masked_max(z.transpose(1, 2), has_token))
        return self.dropout(torch.cat(pooled, dim=-1))
