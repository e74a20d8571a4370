"""Read-Process-Write (Vinyals, Bengio & Kudlur, "Order Matters: Sequence to sequence for sets", ICLR 2016), and
its Ptr-Net baseline (an LSTM encoder reading the set in the order given, Vinyals et al. 2015), with the same
pointer decoder. Inputs are sets of N real vectors x_1 .. x_N (B, N) or (B, N, input_dim); outputs are pointers.

    Read     m_i   = f(x_i)                           a small per-element MLP (B, N, H)
    Process  q_t   = LSTM(q*_{t-1})                    an LSTM with no input: q*_{t-1} is its input, t = 1 .. P
             e_i,t = <m_i, q_t>,  a_i,t = softmax_i(e_i,t),  r_t = sum_i a_i,t m_i,  q*_t = [q_t; r_t]
    Write    (h_0, c_0) = W_init q*_P + b_init         the pointer decoder's initial state
             d_t = LSTMCell(m_{y_{t-1}}, d_{t-1})      input: the memory of the element pointed to at t-1 (a learned
                                                       `go` vector at t = 1)
             u_i,t = v^T tanh(W_1 m_i + W_2 d_t),  p(y_t = i | y_<t, X) = softmax over the elements not yet emitted

Nothing in Read, Process or the pointer scores depends on the order of the elements (the sums and the softmax run
over the set; q*_0 = 0 and the Process state starts at 0), so q*_P is permutation-invariant and the pointer
distributions are permutation-equivariant (tests/methods/test_read_process_write.py measures both).

P = 0 (`process_steps: 0`): q*_0 = 0, so (h_0, c_0) = b_init, a learned constant: the decoder starts from the
same state whatever the set, and its first pointer scores u_i,1 = v^T tanh(W_1 m_i + W_2 d_1) are a function of
x_i alone (d_1 = LSTMCell(go, b_init) is a constant): a context-free pointer decoder, which learns about the rest
of the set only through what it has already emitted (its inputs m_{y_<t} and the mask).

`encoder: lstm` is the Ptr-Net baseline: an LSTM reads m_1 .. m_N in the order given; its outputs e_i are the
pointer's memory (u_i,t = v^T tanh(W_1 e_i + W_2 d_t)) and its last state (h_N, c_N) is the decoder's initial
state (Ptr-Net's), the decoder inputs are still m_{y_{t-1}}. Not permutation-invariant.

Choices and deviations (the paper gives the equations, not all sizes; also in configs/model/rpw.yaml):
- Read: `read_layers` Linear+ReLU layers then a Linear to H (default 1 hidden layer of H); the paper: "a small
  neural network" per element.
- Process attention is the dot product <m_i, q_t> (the paper's f may be any function; PyG's Set2Set uses the dot
  product too); the pointer's attention is Ptr-Net's additive form above.
- The decoder's initial state is an affine map of q*_P (our choice: the paper says the Write block is a Ptr-Net
  whose state starts from q*_T, which has 2H numbers for an H-sized LSTM); the Process LSTM's own cell state is
  not passed on.
- Already-emitted elements are masked with -inf before the softmax (the paper's sorting task emits each once).

This file imports no other package of the project (models/ is standalone). `kind = "pointer"`: the model of
tasks/sets.py (dataset=sort-sets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.base import Architecture

ENCODERS = ("set", "lstm")


def config_problems(hidden_size: int, process_steps: int, encoder: str, read_layers: int, input_dim: int) -> list[str]:
    """One line per bad model key (configs/model/rpw.yaml), checked when the config is validated."""
    problems = [f"model.{k}: must be positive, got {v}" for k, v in
                (("hidden_size", hidden_size), ("input_dim", input_dim)) if not int(v) > 0]
    problems += [f"model.{k}: must be >= 0, got {v}" for k, v in
                 (("process_steps", process_steps), ("read_layers", read_layers)) if not int(v) >= 0]
    if encoder not in ENCODERS:
        problems.append(f"model.encoder: must be one of {', '.join(ENCODERS)}, got {encoder!r}")
    if encoder == "lstm" and int(process_steps) != 0:
        problems.append(f"model.process_steps: the lstm encoder (Ptr-Net) has no Process block; set 0, got "
                        f"{process_steps}")
    return problems


class RPWArchitecture(Architecture):
    """The builder configs/model/rpw.yaml and ptr-lstm.yaml name: checks the keys when the config is validated (one
    line each, before any work), builds `ReadProcessWrite` (sets have no vocabulary: vocab_size and seq_len unused)."""

    kind = "pointer"

    def __init__(self, hidden_size: int = 64, process_steps: int = 1, encoder: str = "set", read_layers: int = 1,
                 input_dim: int = 1):
        problems = config_problems(hidden_size, process_steps, encoder, read_layers, input_dim)
        if problems:
            raise ValueError("; ".join(problems))
        self.kwargs = {"hidden_size": int(hidden_size), "process_steps": int(process_steps), "encoder": encoder,
                       "read_layers": int(read_layers), "input_dim": int(input_dim)}

    def build(self, vocab_size: int, seq_len: int) -> nn.Module:
        return ReadProcessWrite(**self.kwargs)


class ReadProcessWrite(nn.Module):
    """Read-Process-Write (`encoder: set`) or the Ptr-Net baseline (`encoder: lstm`); see the module docstring.

    forward(x, targets) -> (B, T, N) log p(y_t = i | y_<t, X) of the teacher-forced targets (B, T) (-inf at the
    elements already emitted); greedy(x, steps) -> (B, steps) pointers; log_prob(x, targets) -> (B,) the sum over
    the steps; process(m) -> q*_P (B, 2H)."""

    kind = "pointer"

    def __init__(self, hidden_size: int = 64, process_steps: int = 1, encoder: str = "set", read_layers: int = 1,
                 input_dim: int = 1):
        super().__init__()
        problems = config_problems(hidden_size, process_steps, encoder, read_layers, input_dim)
        if problems:
            raise ValueError("; ".join(problems))
        h = self.hidden_size = int(hidden_size)
        self.process_steps, self.encoder, self.input_dim = int(process_steps), encoder, int(input_dim)
        layers, width = [], self.input_dim
        for _ in range(int(read_layers)):
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.read = nn.Sequential(*layers, nn.Linear(width, h))
        if encoder == "set":
            self.process_cell = nn.LSTMCell(2 * h, h)
            self.init_state = nn.Linear(2 * h, 2 * h)  # q*_P -> (h_0, c_0)
        else:
            self.lstm = nn.LSTM(h, h, batch_first=True)
        self.go = nn.Parameter(torch.zeros(h))
        self.decoder = nn.LSTMCell(h, h)
        self.w_mem = nn.Linear(h, h, bias=False)  # W_1
        self.w_dec = nn.Linear(h, h)  # W_2 (and the attention's bias)
        self.v = nn.Linear(h, 1, bias=False)
        nn.init.normal_(self.go, std=0.1)

    # -- Read and Process ------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """m_i = f(x_i): (B, N) or (B, N, input_dim) -> (B, N, H)."""
        if x.dim() == 2:
            x = x.unsqueeze(-1)
        return self.read(x.to(self.go.dtype))

    def process(self, m: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """q*_P (B, 2H) of the memories m (B, N, H): P steps of the input-free LSTM with dot-product attention."""
        b, _, h = m.shape
        q_star = m.new_zeros(b, 2 * h)
        state = (m.new_zeros(b, h), m.new_zeros(b, h))
        for _ in range(self.process_steps if steps is None else steps):
            q, c = self.process_cell(q_star, state)
            state = (q, c)
            a = torch.softmax(torch.einsum("bnh,bh->bn", m, q), dim=1)
            r = torch.einsum("bn,bnh->bh", a, m)
            q_star = torch.cat([q, r], dim=1)
        return q_star

    def encode(self, x: torch.Tensor):
        """(m (B, N, H): the decoder's inputs, memory (B, N, H): what the pointer attends over, (h_0, c_0))."""
        m = self.embed(x)
        if self.encoder == "set":
            h0, c0 = self.init_state(self.process(m)).chunk(2, dim=1)
            return m, m, (h0, c0)
        out, (hn, cn) = self.lstm(m)
        return m, out, (hn[0], cn[0])

    # -- Write --------------------------------------------------------------------------
    def scores(self, memory_proj: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """u_i = v^T tanh(W_1 m_i + W_2 d): (B, N)."""
        return self.v(torch.tanh(memory_proj + self.w_dec(d).unsqueeze(1))).squeeze(-1)

    def decode(self, x: torch.Tensor, steps: int, targets: torch.Tensor | None = None,
               allowed: torch.Tensor | None = None):
        """Run the pointer decoder for `steps` steps: teacher-forced on `targets` (B, steps) if given, else greedy
        (the arg-max of each step's distribution). `allowed` (B, N) bool restricts the pointer to those elements
        (greedy decoding of an ordering of a given output set). Returns (log-probs (B, steps, N), pointers)."""
        m, memory, state = self.encode(x)
        b, n, _ = m.shape
        proj = self.w_mem(memory)
        emitted = torch.zeros(b, n, dtype=torch.bool, device=m.device)
        if allowed is not None:
            emitted = emitted | ~allowed.to(m.device)
        inp = self.go.expand(b, -1)
        rows = torch.arange(b, device=m.device)
        out, picks = [], []
        for t in range(steps):
            state = self.decoder(inp, state)
            u = self.scores(proj, state[0]).masked_fill(emitted, float("-inf"))
            logp = F.log_softmax(u, dim=1)
            pick = targets[:, t] if targets is not None else logp.argmax(dim=1)
            out.append(logp)
            picks.append(pick)
            emitted = emitted.clone()
            emitted[rows, pick] = True
            inp = m[rows, pick]
        return torch.stack(out, dim=1), torch.stack(picks, dim=1)

    def forward(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, T, N) log-probabilities of the teacher-forced pointer targets (B, T)."""
        return self.decode(x, targets.shape[1], targets=targets)[0]

    def log_prob(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """log p(targets | X) (B,): the sum over the steps of the targets' log-probabilities."""
        logp = self(x, targets)
        return logp.gather(2, targets.unsqueeze(-1)).squeeze(-1).sum(dim=1)

    @torch.no_grad()
    def greedy(self, x: torch.Tensor, steps: int, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """(B, steps) greedy pointers (each step's most probable element not yet emitted, within `allowed`)."""
        return self.decode(x, steps, allowed=allowed)[1]

