"""Explicit n-gram masking and the two-stream encoder input of ERNIE-Gram (methods/pretraining/ernie_gram.py says
the paper; this file is the torch machinery: building the masked inputs, the attention mask, the losses' module).

A (B, T) block of token ids is segmented into units by maximum matching against the n-gram lexicon
(methods/pretraining/ngrams.py). Units are picked for masking in a random order until `round(mask_prob * T)` tokens
are covered (a unit that would overshoot is skipped; special tokens are never picked). Then, per `objective`:

- `explicit` (ERNIE-Gram): the coarse stream is the sequence with every masked unit collapsed to ONE position holding
  [MASK]: a masked n-gram of n tokens shortens the input by n - 1. Its label is the unit's identity in V_F ∪ V_N:
  the token id for a single token, vocab_size + (its lexicon index) for an n-gram. With `comprehensive`, the fine
  stream appends n [M] positions per masked n-gram (n >= 2), each labelled with its token. Attention: coarse rows
  see the coarse stream only; a fine row sees the coarse stream and itself, not another fine position (within its
  n-gram or any other), so the n tokens are predicted from the context alone, independently.
- `span`: contiguous span MLM on the same units: every token of a masked unit becomes [MASK] in place (one
  position per token) and is labelled with itself; no n-gram ids, no fine stream.
- `token`: BERT's token-level MLM with the same budget and 100% [MASK] (every unit a single token).

Position ids are the tokens' positions in the original block: a collapsed n-gram sits at its first token's
position (the later positions are skipped in the coarse stream), and each fine [M] takes its token's own position.
Padding (rows are padded to the batch's longest) is attended by nobody; a padding row sees itself only.

The enhanced relation modelling: a small generator (a BERT of its own, with its own n-gram table) reads the coarse
stream with [MASK]s and predicts each masked unit in V_F ∪ V_N (its MLM loss); a sample y' from it (Gumbel-max
with noise from a CPU generator: deterministic) replaces the [MASK] of the main model's coarse stream, an n-gram
id embedded by the main model's n-gram table. The main model predicts the original units (coarse), their tokens
(fine), and, by replaced-token detection, which coarse positions hold something other than the original unit:
RTD labels are exactly (input != original) over the coarse stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods.pretraining.ngrams import OBJECTIVES, NgramLexicon

SAMPLE_SALT = 0x5EED_E61E  # the generator samples' noise: a stream apart from the masks' (same step seed)


@dataclass
class NgramBatch:
    """The masked two-stream input of a batch (all (B, S) but attn (B, S, S)). Ids >= vocab_size are n-gram ids."""

    input_ids: torch.Tensor      # what the main model reads ([MASK]s at masked units; a generator fills them later)
    position_ids: torch.Tensor
    attn: torch.Tensor           # True: row may attend to column
    coarse_labels: torch.Tensor  # the masked units' identity in V_F ∪ V_N at masked coarse positions, else -100
    fine_labels: torch.Tensor    # the token of each fine [M] position, else -100
    original: torch.Tensor       # the original unit at every coarse position (masked or not), -100 elsewhere
    lengths: torch.Tensor        # (B, 2): coarse and fine lengths of each row

    def to(self, device) -> NgramBatch:
        return NgramBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    @property
    def masked(self) -> torch.Tensor:
        return self.coarse_labels != -100

    @property
    def coarse(self) -> torch.Tensor:
        return self.original != -100


def pick_units(units: list[tuple[int, int]], seq_len: int, special: set[int], row: list[int], mask_prob: float,
               generator: torch.Generator) -> list[tuple[int, int]]:
    """The units to mask, in sequence order: a random order of the units without special tokens, taken greedily
    while the covered tokens stay within max(1, round(mask_prob * seq_len))."""
    budget = max(1, int(round(mask_prob * seq_len)))
    cand = [u for u in units if not any(row[j] in special for j in range(u[0], u[0] + u[1]))]
    order = torch.randperm(len(cand), generator=generator).tolist() if cand else []
    chosen, covered = [], 0
    for k in order:
        n = cand[k][1]
        if covered + n <= budget:
            chosen.append(cand[k])
            covered += n
        if covered == budget:
            break
    return sorted(chosen)


def build_batch(tokens: torch.Tensor, lexicon: NgramLexicon, generator: torch.Generator, mask_id: int,
                special_ids: tuple[int, ...], mask_prob: float = 0.15, objective: str = "explicit",
                comprehensive: bool = True, pad_id: int = 0) -> NgramBatch:
    """The masked input of (B, T) token ids (see the module docstring); a function of `generator`'s seed."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    V = lexicon.vocab_size
    special = set(int(i) for i in special_ids) | {int(mask_id)}
    rows = []
    for row in tokens.tolist():
        T = len(row)
        units = lexicon.segment(row) if objective != "token" else [(i, 1) for i in range(T)]
        picked = set(pick_units(units, T, special, row, mask_prob, generator))
        ids, pos, clab, orig, fine_ids, fine_pos, fine_lab = [], [], [], [], [], [], []
        for (s, n) in units:
            gram = tuple(row[s:s + n])
            if (s, n) not in picked:
                for j in range(n):  # unmasked tokens, in place
                    ids.append(row[s + j]), pos.append(s + j), clab.append(-100), orig.append(row[s + j])
            elif objective == "explicit" and n > 1:
                gid = V + lexicon.index[gram]
                ids.append(mask_id), pos.append(s), clab.append(gid), orig.append(gid)
                if comprehensive:
                    for j in range(n):
                        fine_ids.append(mask_id), fine_pos.append(s + j), fine_lab.append(row[s + j])
            else:  # a single token, or every token of a span in place
                for j in range(n):
                    ids.append(mask_id), pos.append(s + j), clab.append(row[s + j]), orig.append(row[s + j])
        rows.append((ids, pos, clab, orig, fine_ids, fine_pos, fine_lab))
    S = max(len(r[0]) + len(r[4]) for r in rows)
    B = len(rows)
    input_ids = torch.full((B, S), pad_id, dtype=torch.long)
    position_ids = torch.zeros((B, S), dtype=torch.long)
    coarse_labels = torch.full((B, S), -100, dtype=torch.long)
    fine_labels = torch.full((B, S), -100, dtype=torch.long)
    original = torch.full((B, S), -100, dtype=torch.long)
    attn = torch.zeros((B, S, S), dtype=torch.bool)
    lengths = torch.zeros((B, 2), dtype=torch.long)
    for b, (ids, pos, clab, orig, fids, fpos, flab) in enumerate(rows):
        L, Fn = len(ids), len(fids)
        input_ids[b, :L] = torch.tensor(ids)
        position_ids[b, :L] = torch.tensor(pos)
        coarse_labels[b, :L] = torch.tensor(clab)
        original[b, :L] = torch.tensor(orig)
        attn[b, :L + Fn, :L] = True  # every real row sees the coarse stream
        if Fn:
            input_ids[b, L:L + Fn] = torch.tensor(fids)
            position_ids[b, L:L + Fn] = torch.tensor(fpos)
            fine_labels[b, L:L + Fn] = torch.tensor(flab)
            idx = torch.arange(L, L + Fn)
            attn[b, idx, idx] = True  # a fine row sees itself, no other fine row
        pad = torch.arange(L + Fn, S)
        attn[b, pad, pad] = True  # padding rows see themselves only (finite softmax; unscored)
        lengths[b] = torch.tensor([L, Fn])
    return NgramBatch(input_ids, position_ids, attn, coarse_labels, fine_labels, original, lengths)


def gumbel_sample(logits: torch.Tensor, generator: torch.Generator, banned: tuple[int, ...] = ()) -> torch.Tensor:
    """One sample per row of softmax(logits) by the Gumbel-max trick, the noise drawn on the CPU from `generator`
    (the same samples on any device for the same logits); `banned` columns are never drawn."""
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64).clamp_(1e-12, 1 - 1e-12)
    g = (-torch.log(-torch.log(u))).to(logits.device, logits.dtype)
    z = logits.detach() + g
    if banned:
        z[:, list(banned)] = float("-inf")
    return z.argmax(dim=-1)


def rtd_labels(batch: NgramBatch) -> torch.Tensor:
    """1.0 where a coarse position's input differs from its original unit, 0.0 at other coarse positions,
    -1 off the coarse stream."""
    out = (batch.input_ids != batch.original).float()
    return out.masked_fill(~batch.coarse, -1.0)


class NgramTable(nn.Module):
    """The n-gram rows beside a BERT's word embeddings: ids >= vocab_size read `weight` as input embeddings, and
    the same rows (tied, as BERT ties its word embeddings to the MLM decoder) plus `bias` give the lexicon's
    logits."""

    def __init__(self, num_ngrams: int, hidden: int, init_std: float = 0.02):
        super().__init__()
        self.num_ngrams = int(num_ngrams)
        self.weight = nn.Parameter(torch.randn(max(1, self.num_ngrams), hidden) * init_std)
        self.bias = nn.Parameter(torch.zeros(max(1, self.num_ngrams)))


def encode(mlm: nn.Module, table: NgramTable, ids: torch.Tensor, position_ids: torch.Tensor,
           attn: torch.Tensor) -> torch.Tensor:
    """The last hidden states (B, S, H) of a BertForMaskedLM's encoder on the two-stream input: ids >= vocab_size
    embedded by `table`, the (B, S, S) boolean attention mask as an additive 4D mask."""
    words = mlm.get_input_embeddings()
    V = words.num_embeddings
    x = words(ids.clamp(max=V - 1))
    is_gram = ids >= V
    if table.num_ngrams and bool(is_gram.any()):
        rows = table.weight[(ids - V).clamp(min=0, max=table.num_ngrams - 1)]
        x = torch.where(is_gram[..., None], rows.to(x.dtype), x)
    bias = torch.zeros(attn.shape, dtype=x.dtype, device=x.device).masked_fill_(~attn, torch.finfo(x.dtype).min)
    return mlm.base_model(inputs_embeds=x, position_ids=position_ids, attention_mask=bias[:, None]).last_hidden_state


def unit_logits(mlm: nn.Module, table: NgramTable, h: torch.Tensor, ngrams: bool = True) -> torch.Tensor:
    """Logits of hidden states through the MLM head: over the vocabulary, then (`ngrams`) over the lexicon."""
    pred = mlm.cls.predictions
    t = pred.transform(h)
    tok = pred.decoder(t)
    if not ngrams or not table.num_ngrams:
        return tok
    n = table.num_ngrams
    return torch.cat([tok, t @ table.weight[:n].T.to(t.dtype) + table.bias[:n].to(t.dtype)], -1)


def small_bert(vocab_size: int, seq_len: int, hidden: int, layers: int, heads: int, dropout: float = 0.1,
               init_std: float = 0.02) -> nn.Module:
    """The generator's BERT (BertForMaskedLM from config, random init)."""
    from transformers import BertConfig, BertForMaskedLM

    return BertForMaskedLM(BertConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=seq_len, hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout, initializer_range=init_std, type_vocab_size=1, pad_token_id=None,
        attn_implementation="sdpa"))


class NgramMLM:
    """ERNIE-Gram's objective as the training loss of the masked-LM task's module (the method's `loss` calls
    `ernie_loss`): a mixin over that module's class (`with_task_module(data.module_class)`: methods never import
    tasks), which gives the step's mask seed (`mask_seed_now`) and validation: BERT's token-level masked-LM loss with
    fixed masks, comparable across objectives and with method=adamw on the same data. The extra parts (n-gram
    table, generator, RTD head) live here, beside `self.model`, so the model's checkpoint is a plain
    BertForMaskedLM's (the extra heads are discarded for fine-tuning, as the paper does)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        m = self.method
        if m.lexicon is None:
            raise RuntimeError("NgramMLM: the method has no lexicon (its prepare_data builds it)")
        cfg = self.model.config
        n_grams = len(m.lexicon) if m.objective == "explicit" else 0
        self.ngrams = NgramTable(n_grams, cfg.hidden_size, cfg.initializer_range)
        self.gen = self.gen_ngrams = self.rtd = None
        if m.generator:
            self.gen = small_bert(cfg.vocab_size, cfg.max_position_embeddings, m.generator_hidden, m.generator_layers,
                                  m.generator_heads, cfg.hidden_dropout_prob, cfg.initializer_range)
            self.gen_ngrams = NgramTable(n_grams, m.generator_hidden, cfg.initializer_range)
            self.rtd = nn.Linear(cfg.hidden_size, 1)
        self.special = tuple(sorted(set(self.data.special_ids) | {self.data.mask_id}))

    def ngram_batch(self, batch: torch.Tensor, seed: int) -> NgramBatch:
        m = self.method
        return build_batch(batch[:, :-1].cpu(), m.lexicon, torch.Generator().manual_seed(seed), self.data.mask_id,
                           self.special, m.mask_prob, m.objective, m.comprehensive).to(self.device)

    def ernie_loss(self, batch: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """gen_weight * L_gen + L_coarse + fine_weight * L_fine + rtd_weight * L_rtd of (B, T+1) blocks (the
        terms of parts the configuration switched off are absent)."""
        m = self.method
        seed = self.mask_seed_now if seed is None else seed
        nb = self.ngram_batch(batch, seed)
        terms: dict[str, torch.Tensor] = {}
        masked = nb.masked
        if self.gen is not None:
            g_h = encode(self.gen, self.gen_ngrams, nb.input_ids, nb.position_ids, nb.attn)
            g_logits = unit_logits(self.gen, self.gen_ngrams, g_h[masked]).float()
            terms["gen"] = F.cross_entropy(g_logits, nb.coarse_labels[masked])
            sampler = torch.Generator().manual_seed((int(seed) * 1_000_003 + SAMPLE_SALT) % 2 ** 63)
            sample = gumbel_sample(g_logits, sampler, self.special)
            nb.input_ids = nb.input_ids.masked_scatter(masked, sample)
        h = encode(self.model, self.ngrams, nb.input_ids, nb.position_ids, nb.attn)
        terms["coarse"] = F.cross_entropy(unit_logits(self.model, self.ngrams, h[masked]).float(), nb.coarse_labels[masked])
        fine = nb.fine_labels != -100
        if bool(fine.any()):
            terms["fine"] = F.cross_entropy(unit_logits(self.model, self.ngrams, h[fine], ngrams=False).float(), nb.fine_labels[fine])
        if self.gen is not None:
            labels = rtd_labels(nb)
            on = labels >= 0
            terms["rtd"] = F.binary_cross_entropy_with_logits(self.rtd(h[on]).squeeze(-1).float(), labels[on])
        weights = {"gen": m.gen_weight, "coarse": 1.0, "fine": m.fine_weight, "rtd": m.rtd_weight}
        total = sum(weights[k] * v for k, v in terms.items())
        if getattr(self, "_trainer", None) is not None and self.training:
            for k, v in terms.items():
                self.log(f"train/{k}_loss", v.detach(), on_step=True, on_epoch=False)
        return total


_CLASSES: dict[type, type] = {}


def with_task_module(base: type) -> type:
    """The class NgramMLM + `base` (the masked-LM task's module class), one per base."""
    if base not in _CLASSES:
        _CLASSES[base] = type("NgramMLMModule", (NgramMLM, base), {"__module__": __name__})
    return _CLASSES[base]


def mean_pooled(encoder: nn.Module, token_lists: list[list[int]], batch_size: int = 64) -> np.ndarray:
    """Mean over the tokens of the last hidden states of an HF encoder (eval mode, no grad): (N, H) float64."""
    was = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, len(token_lists), batch_size):
            chunk = token_lists[i:i + batch_size]
            L = max(1, max(len(t) for t in chunk))
            ids = torch.zeros((len(chunk), L), dtype=torch.long)
            att = torch.zeros((len(chunk), L), dtype=torch.long)
            for r, t in enumerate(chunk):
                ids[r, :len(t)] = torch.tensor(t, dtype=torch.long)
                att[r, :len(t)] = 1
            h = encoder(input_ids=ids.to(device), attention_mask=att.to(device)).last_hidden_state.float()
            w = att.to(device)[..., None].float()
            out.append(((h * w).sum(1) / w.sum(1).clamp_min(1)).double().cpu().numpy())
    encoder.train(was)
    return np.concatenate(out) if out else np.zeros((0, 0))
