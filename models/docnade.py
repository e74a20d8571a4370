"""DocNADE (Larochelle & Lauly, NIPS 2012) and ctx-DocNADE, the DocNADE with an LSTM language model of the full text
from "textTOvec: Deep Contextualized Neural Autoregressive Topic Models of Language with Distributed Compositional
Prior" (Gupta, Chaudhary, Buettner & Schütze, ICLR 2019; code: github.com/pgcool/textTOvec,
model/model_supervised_lstm.py, read for the choices below).

For a document's bag-of-words view v_1 .. v_D (words of the topic vocabulary K, in document order):

    a_i  = c + sum_{k<i} W[:, v_k]                                     DocNADE's pre-activation
    h_i  = g(a_i)                                                       DocNADE (lam = 0 or lm = false)
    h_i  = g(a_i) + lam * h^LM_i        combine = post (the code's: DocNADE's h plus lam times the LSTM's)
    h_i  = g(a_i + lam * h^LM_i)        combine = pre  (lam * h^LM_i inside g)
    p(v_i = w | v_<i) = softmax(b + U h_i)_w   over the K topic words,   NLL = -sum_i log p(v_i | v_<i)

h^LM_i is the output of a one-layer LSTM run over the document's full token sequence t_1 .. t_L (stop words and
words outside K included) at the position `align[i]` the task gives: the last token before v_i (so the LM has read
everything that precedes v_i and nothing from v_i on); align[i] = -1 (v_i is the first token) gives h^LM_i = 0.
The LSTM's input embedding is W itself (shared, as the code's `embeddings_docnade_prior`): the token vocabulary
holds the topic words first, so W's first K rows are DocNADE's columns W[:, v] and its other rows embed the tokens
outside K (stop words, rare words, <unk>), which only the LSTM reads. U and b are sized like W; only their first
K rows score (the softmax is over K exactly; the other rows get no gradient). K is the persistent buffer
`bow_vocab_size`, set from the data (`set_bow_vocab`) by the topic module.

The document representation (IR, classification) is h after the last word: h_{D+1} = g(c + sum_{k<=D} W[:, v_k])
(+ lam * the LSTM's output after the last token, in the form `combine` says), the code's `h_comb_sum`.

Choices and deviations (also in configs/model/docnade.yaml, ctx-docnade.yaml and the README row):
- Initialisation as the code's: W ~ U(0, 1/(V*H)), c = 0, U ~ N(0, 2/H), b = 0. The LSTM is torch's nn.LSTM with
  its default init and tanh cell activations; the code's LSTMCell uses the model's activation (sigmoid for its
  perplexity runs, tanh for IR) and TF's Glorot init with forget bias 1.
- No LM loss on the LSTM (the code's `--include-lstm-loss False` in every shipped script): the LSTM trains only
  through the DocNADE likelihood.
- `lm: false` builds no LSTM (plain DocNADE); the DocNADE parameters are created first, so a DocNADE and a
  ctx-DocNADE with the same seed start from the same W, c, U, b, and lam = 0 reproduces DocNADE exactly (values
  and gradients; tests/methods/test_ctx_docnade.py).
- Not implemented: ctx-DocNADEe (a frozen GloVe embedding added to the LSTM's input), deep DocNADE, iDocNADE,
  the code's `common_space` projection, sampled softmax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.base import Architecture, size_problems

ACTIVATIONS = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}
COMBINE = ("post", "pre")


def config_problems(hidden_size, activation, lm, lam, combine) -> list[str]:
    """One line per bad model key (the YAML's keys; vocab_size comes from the data)."""
    problems = size_problems(hidden_size=hidden_size)
    if activation not in ACTIVATIONS:
        problems.append(f"model.activation: must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if combine not in COMBINE:
        problems.append(f"model.combine: must be one of {', '.join(COMBINE)}, got {combine!r}")
    if not (isinstance(lam, (int, float)) and not isinstance(lam, bool) and math.isfinite(lam) and lam >= 0):
        problems.append(f"model.lam: must be a finite number >= 0, got {lam!r}")
    elif not lm and lam:
        problems.append(f"model.lam: {lam} needs model.lm=true (an LSTM to mix in); lm=false is plain DocNADE")
    return problems


class DocNADEArchitecture(Architecture):
    """The builder configs/model/docnade.yaml and ctx-docnade.yaml name: checks the keys when the config is
    validated (one line each, before any work), builds `DocNADE` with the task's token vocabulary."""

    kind = "topic-model"

    def __init__(self, hidden_size: int = 200, activation: str = "sigmoid", lm: bool = False, lam: float = 0.0,
                 combine: str = "post"):
        problems = config_problems(hidden_size, activation, lm, lam, combine)
        if problems:
            raise ValueError("; ".join(problems))
        self.kwargs = {"hidden_size": int(hidden_size), "activation": activation, "lm": bool(lm), "lam": float(lam),
                       "combine": combine}

    def build(self, vocab_size: int, seq_len: int) -> nn.Module:
        return DocNADE(vocab_size, seq_len=seq_len, **self.kwargs)


class DocNADE(nn.Module):
    """DocNADE, or ctx-DocNADE with `lm: true` (see the module docstring). forward(...) -> dict with
    `logits` (B, D, K), `hidden` (B, D, H) (h_i) and `doc` (B, H) (h after the last word)."""

    kind = "topic-model"

    def __init__(self, vocab_size: int, hidden_size: int = 200, activation: str = "sigmoid", lm: bool = False,
                 lam: float = 0.0, combine: str = "post", seq_len: int = 256):
        super().__init__()
        problems = size_problems(vocab_size=vocab_size) + config_problems(hidden_size, activation, lm, lam, combine)
        if problems:
            raise ValueError("; ".join(problems))
        V, H = int(vocab_size), int(hidden_size)
        self.vocab_size, self.hidden_size, self.activation = V, H, activation
        self.lam, self.combine, self.seq_len = float(lam), combine, int(seq_len)
        self.g = ACTIVATIONS[activation]
        # DocNADE's parameters first (the same draws with or without the LSTM), the code's initialisation
        self.W = nn.Embedding(V, H)  # row v = W[:, v]; rows >= K: tokens only the LSTM reads
        self.c = nn.Parameter(torch.zeros(H))
        self.U = nn.Linear(H, V)  # rows < K score the topic words
        with torch.no_grad():
            self.W.weight.uniform_(0.0, 1.0 / (V * H))
            self.U.weight.normal_(0.0, math.sqrt(2.0 / H))
            self.U.bias.zero_()
        self.lstm = nn.LSTM(H, H, batch_first=True) if lm else None
        self.register_buffer("bow_vocab_size", torch.tensor(V, dtype=torch.long))

    # -- the topic vocabulary ----------------------------------------------------------------------------------
    def set_bow_vocab(self, k: int) -> None:
        """K: the token ids [0, K) are the topic words the softmax is over (the data says how many)."""
        if not 0 < int(k) <= self.vocab_size:
            raise ValueError(f"model: the topic vocabulary ({k} words) must fit in model.vocab_size ({self.vocab_size})")
        self.bow_vocab_size.fill_(int(k))

    def get_input_embeddings(self) -> nn.Embedding:
        return self.W

    # -- the model ---------------------------------------------------------------------------------------------
    def lm_states(self, lm_ids: torch.Tensor, lm_mask: torch.Tensor, align: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(h^LM at each BoW position (B, D, H), h^LM after the last token (B, H)): the LSTM's outputs over the
        full token sequence, read at `align` (-1: zeros). Right padding never reaches a real position's output
        (the LSTM is causal); the last output is read at each row's own length - 1."""
        out, _ = self.lstm(self.W(lm_ids))  # (B, L, H)
        zero = out.new_zeros(out.shape[0], 1, out.shape[2])
        padded = torch.cat([zero, out], dim=1)  # index 0: "no context"
        idx = (align.clamp(min=-1) + 1).unsqueeze(-1).expand(-1, -1, out.shape[2])
        at_words = padded.gather(1, idx)
        last = (lm_mask.long().sum(1)).clamp(min=0)  # length; padded[length] = out[length - 1]
        at_end = padded[torch.arange(out.shape[0], device=out.device), last]
        return at_words, at_end

    def forward(self, bow_ids: torch.Tensor, bow_mask: torch.Tensor, lm_ids: torch.Tensor | None = None,
                lm_mask: torch.Tensor | None = None, align: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        mask = bow_mask.to(self.W.weight.dtype).unsqueeze(-1)
        emb = self.W(bow_ids) * mask  # (B, D, H); padding adds nothing
        total = emb.cumsum(dim=1)
        before = torch.cat([torch.zeros_like(emb[:, :1]), total[:, :-1]], dim=1)  # sum_{k<i} W[:, v_k]
        a = self.c + before
        a_end = self.c + total[:, -1] if emb.shape[1] else self.c.expand(emb.shape[0], -1)
        if self.lstm is None:
            hidden, doc = self.g(a), self.g(a_end)
        else:
            if lm_ids is None or lm_mask is None or align is None:
                raise ValueError("ctx-DocNADE needs lm_ids, lm_mask and align (the full token sequence and its map)")
            h_lm, h_lm_end = self.lm_states(lm_ids, lm_mask, align)
            if self.combine == "post":
                hidden, doc = self.g(a) + self.lam * h_lm, self.g(a_end) + self.lam * h_lm_end
            else:
                hidden, doc = self.g(a + self.lam * h_lm), self.g(a_end + self.lam * h_lm_end)
        k = int(self.bow_vocab_size)
        logits = F.linear(hidden, self.U.weight[:k], self.U.bias[:k])
        return {"logits": logits, "hidden": hidden, "doc": doc}

    def word_nll(self, bow_ids, bow_mask, lm_ids=None, lm_mask=None, align=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(-log p(v_i | v_<i) per BoW position (B, D), 0 at padding; the document representations (B, H))."""
        out = self.forward(bow_ids, bow_mask, lm_ids, lm_mask, align)
        logits = out["logits"]
        logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        nll = F.cross_entropy(logits.flatten(0, 1), bow_ids.flatten(), reduction="none").view_as(bow_ids)
        return nll * bow_mask.to(nll.dtype), out["doc"]
