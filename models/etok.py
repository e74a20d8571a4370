"""eTok: the end-to-end word-pooled language model of "Learn Your Tokens: Word-Pooled Tokenization for Language
Modeling" (Thawani, Ghanekar, Zhu & Pujara, Findings of EMNLP 2023), after the official code (`avi-jit/eTok`,
`newmodel.py` class myGPT with num_prefix > 0). The paper's method, its training recipe and every deviation are in
methods/architectures/word_pooled_tok.py; this file is the network.

A batch is (B, n, c) character ids: n consecutive words, each a canvas of c = canvas_size character ids, the word's
characters first and PAD (id 0) after them (the task, tasks/words.py, splits the text at word boundaries). With p
learned prefix ("CLS") ids appended to the character vocabulary, for word w_j with characters x_j1 .. x_jc:

    e_j     = Emb([CLS_1..CLS_p, x_j1..x_jc]) + P_in                       (p + c, d)   canvas embedding
    z_j     = WordEncoder(e_j)[:p]                                          (p, d)       per word: the encoder
              attends inside the canvas only (block-diagonal over the words), bidirectionally, to the CLS slots
              and the word's real characters
    h       = ln_f(MainGPT(z_1 + P_w, ..., z_{n-1} + P_w))                  ((n-1) p, d) causal over the words:
              one position per word (p = 1), compression chars/words
    ĉ_j     = e_j with its CLS slots replaced by h_{j-1}, + P_in            (p + c, d)   j = 2..n
    y_j     = head(WordDecoder(ĉ_j)[p-1 : p-1+c])                           (c, V)       causal inside the canvas:
              slot p-1 (the last CLS slot, holding the word-level output of the previous word) predicts the first
              character, slot p+k-1 (character k) the character k+1; PAD targets teach the end of the word
    loss    = CE(y_j, x_j) over all j = 2..n and all c slots (PAD included)

All words' characters are decoded in parallel at training (teacher forcing); at inference `next_word` decodes
one word greedily, character by character.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.base import Architecture, size_problems

PAD = 0  # the canvas filler after a word's characters: "end of word" when predicted


class Attention(nn.Module):
    """Multi-head self-attention with a boolean mask (True: may attend), (L, L) or (N, 1, L, L)."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.heads, self.dropout = heads, dropout
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        N, L, d = x.shape
        q, k, v = self.qkv(x).view(N, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0)
        return self.resid_drop(self.proj(y.transpose(1, 2).reshape(N, L, d)))


class Block(nn.Module):
    """minGPT's block (the official code's main GPT and word decoder): pre-LayerNorm, attention, GELU MLP 4d."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Attention(d, heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class EncoderLayer(nn.Module):
    """torch.nn.TransformerEncoderLayer's default layout (the official code's word encoder): post-LayerNorm,
    ReLU MLP; its width 4d here (torch's default 2048 = 4 x the paper's n_embd 512)."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.attn = Attention(d, heads, dropout)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Dropout(dropout), nn.Linear(4 * d, d))
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x, mask))
        return self.norm2(x + self.drop(self.ff(x)))


def causal_mask(n: int, device=None) -> torch.Tensor:
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


class ETok(Architecture):
    """The builder (configs/model/etok.yaml): checks the sizes, builds an ETokLM. The sizes follow the official code's
    names (n_embd, n_layer, n_head, n_e2e_layer, n_e2e_head, canvas_size, num_prefix); seq_len is words per training
    block (main-transformer positions, times num_prefix), vocab_size the task's character ids."""

    kind = "word-pooled-lm"
    max_seq_len = 4096

    def __init__(self, canvas_size: int = 12, num_prefix: int = 1, n_embd: int = 64, n_layer: int = 4, n_head: int = 4,
                 n_e2e_layer: int = 2, n_e2e_head: int = 4, dropout: float = 0.0, init_std: float = 0.02):
        self.sizes = {"canvas_size": canvas_size, "num_prefix": num_prefix, "n_embd": n_embd, "n_layer": n_layer,
                      "n_head": n_head, "n_e2e_layer": n_e2e_layer, "n_e2e_head": n_e2e_head}
        problems = size_problems(**self.sizes)
        problems += [f"model.{k}: must be an integer, got {v!r}" for k, v in self.sizes.items() if not isinstance(v, int)]
        for heads in ("n_head", "n_e2e_head"):
            if not problems and n_embd % self.sizes[heads]:
                problems.append(f"model.n_embd ({n_embd}) must be divisible by model.{heads} ({self.sizes[heads]})")
        if not 0.0 <= dropout < 1.0:
            problems.append(f"model.dropout: must be in [0, 1), got {dropout}")
        if problems:
            raise ValueError("; ".join(problems))
        self.dropout, self.init_std = float(dropout), float(init_std)

    def build(self, vocab_size: int, seq_len: int) -> ETokLM:
        return ETokLM(vocab_size, seq_len, **self.sizes, dropout=self.dropout, init_std=self.init_std)

    def blocks(self, model: ETokLM) -> list[nn.Module]:
        return model.repeated_blocks()


class ETokLM(nn.Module):
    """Word encoder -> causal transformer over words -> parallel per-word character decoder (module docstring)."""

    kind = "word-pooled-lm"

    def __init__(self, vocab_size: int, seq_len: int = 32, canvas_size: int = 12, num_prefix: int = 1,
                 n_embd: int = 64, n_layer: int = 4, n_head: int = 4, n_e2e_layer: int = 2, n_e2e_head: int = 4,
                 dropout: float = 0.0, init_std: float = 0.02):
        super().__init__()
        self.vocab_size, self.seq_len, self.canvas_size, self.num_prefix = vocab_size, seq_len, canvas_size, num_prefix
        d, p, c = n_embd, num_prefix, canvas_size
        self.in_emb = nn.Embedding(vocab_size + p, d)  # characters, then the p prefix (CLS) ids
        self.in_pe = nn.Parameter(torch.zeros(1, p + c, d))  # canvas positions (zeros at init, as the code)
        self.word_pe = nn.Parameter(torch.zeros(1, seq_len * p, d))  # word positions of the main transformer
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(EncoderLayer(d, n_e2e_head, dropout) for _ in range(n_e2e_layer))
        self.blocks = nn.ModuleList(Block(d, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d)
        self.decoder = nn.ModuleList(Block(d, n_e2e_head, dropout) for _ in range(n_e2e_layer))
        self.head = nn.Linear(d, vocab_size, bias=False)
        self.init_std = init_std
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module) -> None:  # the official code's: N(0, 0.02), zero biases, unit LayerNorms
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, self.init_std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def get_input_embeddings(self) -> nn.Embedding:  # (the runner checks its rows against the tokenizer's ids)
        return self.in_emb

    def repeated_blocks(self) -> list[nn.Module]:
        return [*self.encoder, *self.blocks, *self.decoder]

    # -- the three stages --------------------------------------------------------------------
    def embed(self, words: torch.Tensor) -> torch.Tensor:
        """(B, n, c) character ids -> (B, n, p + c, d): [CLS_1..CLS_p, characters] embedded + canvas positions."""
        B, n, c = words.shape
        if c != self.canvas_size:
            raise ValueError(f"canvases of {c} characters, but model.canvas_size is {self.canvas_size}")
        prefix = torch.arange(self.vocab_size, self.vocab_size + self.num_prefix, device=words.device)
        ids = torch.cat([prefix.expand(B, n, -1), words], dim=-1)
        return self.drop(self.in_emb(ids) + self.in_pe)

    def encode_words(self, words: torch.Tensor, embedded: torch.Tensor | None = None) -> torch.Tensor:
        """The CLS outputs of the word encoder, (B, n, p, d). Each canvas is encoded alone (block-diagonal over
        words); inside it every slot attends to the CLS slots and the word's characters, not to the PAD after them."""
        B, n, c = words.shape
        p = self.num_prefix
        x = self.embed(words) if embedded is None else embedded
        real = torch.cat([words.new_ones(B, n, p, dtype=torch.bool), words != PAD], dim=-1).view(B * n, 1, 1, p + c)
        x = x.reshape(B * n, p + c, -1)
        for layer in self.encoder:
            x = layer(x, real)
        return x[:, :p].view(B, n, p, -1)

    def contextualize(self, cls: torch.Tensor) -> torch.Tensor:
        """The main causal transformer over the words' CLS vectors (B, n, p, d) -> (B, n, p, d): position j has
        read words 1..j. Its sequence has n * p positions (n: one per word at p = 1)."""
        B, n, p, d = cls.shape
        if n * p > self.word_pe.shape[1]:
            raise ValueError(f"{n} words is more than model.seq_len ({self.seq_len}) words")
        x = self.drop(cls.reshape(B, n * p, d) + self.word_pe[:, :n * p])
        mask = causal_mask(n * p, x.device)
        for block in self.blocks:
            x = block(x, mask)
        return self.ln_f(x).view(B, n, p, d)

    def decode(self, embedded: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Character logits (B, m, c, V) of m words from their canvas embeddings (B, m, p + c, d) and the word-
        level outputs that precede them (B, m, p, d), written into the CLS slots; causal inside each canvas."""
        B, m, L, d = embedded.shape
        p = self.num_prefix
        x = torch.cat([context, embedded[:, :, p:]], dim=2)
        x = self.drop(x + self.in_pe).reshape(B * m, L, d)  # (the code adds the canvas positions a second time)
        mask = causal_mask(L, x.device)
        for block in self.decoder:
            x = block(x, mask)
        return self.head(x[:, p - 1:p - 1 + self.canvas_size]).view(B, m, self.canvas_size, -1)

    # -- training ----------------------------------------------------------------------------
    def forward(self, words: torch.Tensor) -> torch.Tensor:
        """(B, n, c) -> logits (B, n - 1, c, V) of words 2..n, each from the words before it (teacher forcing)."""
        if words.ndim != 3 or words.shape[1] < 2:
            raise ValueError(f"eTok reads (batch, words >= 2, canvas) character ids, got shape {tuple(words.shape)}")
        emb = self.embed(words)
        h = self.contextualize(self.encode_words(words, emb)[:, :-1])
        return self.decode(emb[:, 1:], h)

    def loss(self, words: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """Character cross-entropy of words 2..n over all canvas slots (PAD targets included, as the code)."""
        logits = self(words)
        targets = words[:, 1:]
        out = F.cross_entropy(logits.float().flatten(0, 2), targets.flatten(), reduction=reduction)
        return out.view_as(targets) if reduction == "none" else out

    # -- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def next_word(self, words: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy characters (B, c) of the word after each row's context: words (B, n, c), right-padded with
        PAD words, row r's context its first lengths[r] words (all n when None). The first character is never
        PAD (the next word is not empty); after a PAD the rest of the canvas is PAD."""
        B, n, c = words.shape
        lengths = torch.full((B,), n, device=words.device) if lengths is None else lengths.to(words.device)
        h = self.contextualize(self.encode_words(words))  # causal: row r's position lengths[r]-1 ignores its padding
        ctx = h[torch.arange(B, device=words.device), lengths - 1][:, None]  # (B, 1, p, d)
        out = words.new_full((B, 1, c), PAD)
        ended = torch.zeros(B, dtype=torch.bool, device=words.device)
        for k in range(c):
            logits = self.decode(self.embed(out), ctx)[:, 0, k].float()
            if k == 0:
                logits[:, PAD] = -math.inf
            nxt = logits.argmax(-1).masked_fill(ended, PAD)
            out[:, 0, k] = nxt
            ended |= nxt == PAD
        return out[:, 0]
