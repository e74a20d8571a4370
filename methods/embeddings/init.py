"""The shared embedding-initialization hook: a computed matrix becomes a model's input embedding.

Used from `Method.prepare_model(model)` by methods that compute embeddings instead of (or before) learning them
(Bit Cipher; OFA-style factorized initialisation). Given

    a dense matrix M (V_s x D')                     or a factorization  A (V_s x D'), B (D' x D_b)

over a *source* vocabulary (token strings), `init_input_embeddings` replaces `model.get_input_embeddings()` by a
`ComputedEmbedding` whose table over the model's tokenizer (V x D, D = the model's hidden size) is

    E = s * (C @ P)        C = rows of M (or A @ B, kept factorized) mapped to the target vocabulary by token string
                           P = the projection from the computed dimension to D (`projection`):
                               "random": a fixed Gaussian N(0, 1/D_in) matrix (seeded, not trained)
                               "linear": the same matrix as a learned linear map (trained with the model)
                               "pad":    zero-padding (the identity into the first D_in columns); needs D_in <= D
                           s = a scalar (`scale="match"`: the std of E equals the std of the embedding it replaces, so
                               the rest of the model sees inputs of its init scale; `scale="none"`: s = 1)

Rows whose target token string has no source row keep the replaced embedding's rows and are always trainable.
Three cases:
- `freeze=False`, projection "random"/"pad", `keep_factors=False` (an *initial* embedding): E is copied into the
  model's own nn.Embedding weight, a full-rank V x D parameter trained as usual (plain HF layout, ties kept).
- `freeze=True`: a `ComputedEmbedding` keeps the computed rows (C, and B of a factorization) as buffers:
  bit-identical through any optimizer step, weight decay included (they are not parameters).
- `projection="linear"` or `keep_factors=True` (OFA-style factorized training): a `ComputedEmbedding` whose C (and
  B) are parameters, trained in factorized form (the table's rank stays <= D').

The state dict also carries `weight` (the materialized V x D table, computed when the state dict is taken), so
`save_pretrained` writes a plain `embed_tokens.weight` a stock `from_pretrained` loads; loading a state dict back
into a ComputedEmbedding ignores that key (the factors are the state). Tied input/output embeddings are untied:
the output head keeps the weight it had (a computed input table is not an output head).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

PROJECTIONS = ("random", "linear", "pad")
SCALES = ("match", "none")


def check_init_args(prefix: str, projection: str, scale: str) -> None:
    """One ValueError line per bad value, before any work (config-time checks of a method's __init__)."""
    if projection not in PROJECTIONS:
        raise ValueError(f"{prefix}.projection: must be one of {', '.join(PROJECTIONS)}, got {projection!r}")
    if scale not in SCALES:
        raise ValueError(f"{prefix}.scale: must be one of {', '.join(SCALES)}, got {scale!r}")


def vocabulary_tokens(tokenizer) -> list[str]:
    """The token string of every id of a transformers tokenizer (index = id), from its real vocabulary."""
    vocab = tokenizer.get_vocab()
    out = [""] * (max(vocab.values()) + 1)
    for tok, i in vocab.items():
        out[i] = tok
    return out


def map_rows(source_tokens: list[str], target_tokens: list[str]) -> tuple[list[int], list[int]]:
    """(target ids, source rows) of the target tokens whose string is a source token (exact string match)."""
    where = {t: i for i, t in enumerate(source_tokens)}
    pairs = [(j, where[t]) for j, t in enumerate(target_tokens) if t in where]
    return [j for j, _ in pairs], [i for _, i in pairs]


def projection_matrix(kind: str, d_in: int, d_out: int, seed: int = 0) -> torch.Tensor:
    """The D_in x D_out projection of `kind` ("random"/"linear": seeded Gaussian N(0, 1/D_in); "pad": identity)."""
    import torch

    if kind == "pad":
        if d_in > d_out:
            raise ValueError(f"projection: pad needs the computed dimension <= the hidden size, got {d_in} > {d_out}")
        return torch.eye(d_in, d_out)
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(d_in, d_out, generator=g) / d_in ** 0.5


def init_input_embeddings(model: nn.Module, matrix, *, source_tokens: list[str] | None = None,
                          target_tokens: list[str] | None = None, projection: str = "random", freeze: bool = False,
                          scale: str = "match", seed: int = 0, keep_factors: bool = False) -> nn.Module:
    """Replace `model`'s input embedding by the computed one (see the module docstring) and return `model`.

    `matrix`: a V_s x D' tensor/array, or a pair (A, B) of a factorization. `source_tokens`/`target_tokens`: the
    token strings of the matrix's rows and of the model's ids; both None: the rows are the model's ids already.
    """
    import numpy as np
    import torch

    check_init_args("init", projection, scale)
    old = model.get_input_embeddings()
    w = old.weight.detach()
    V, D = int(w.shape[0]), int(w.shape[1])
    if isinstance(matrix, tuple | list):
        a, b = (torch.as_tensor(np.asarray(m), dtype=torch.float32) for m in matrix)
        if a.shape[1] != b.shape[0]:
            raise ValueError(f"init: factorization shapes do not chain: {tuple(a.shape)} @ {tuple(b.shape)}")
    else:
        a, b = torch.as_tensor(np.asarray(matrix), dtype=torch.float32), None
    if (source_tokens is None) != (target_tokens is None):
        raise ValueError("init: give both source_tokens and target_tokens, or neither")
    if source_tokens is None:
        if a.shape[0] != V:
            raise ValueError(f"init: the matrix has {a.shape[0]} rows but the model's vocabulary has {V}")
        tgt, src = list(range(V)), list(range(V))
    else:
        if len(source_tokens) != a.shape[0]:
            raise ValueError(f"init: {len(source_tokens)} source tokens for a matrix of {a.shape[0]} rows")
        tgt, src = map_rows(list(source_tokens), list(target_tokens)[:V])
    coords = torch.zeros(V, a.shape[1])
    coords[tgt] = a[src]
    d_in = int(a.shape[1] if b is None else b.shape[1])
    proj = projection_matrix(projection, d_in, D, seed)
    mapped = torch.zeros(V, dtype=torch.bool)
    mapped[tgt] = True
    rest_ids = torch.nonzero(~mapped).flatten()
    if scale == "match" and len(tgt):
        t = (coords[tgt] if b is None else coords[tgt] @ b) @ proj
        s = float(w.float().std()) / max(float(t.std()), 1e-12)
        coords = coords * s
    if not freeze and projection != "linear" and not keep_factors:  # an initial table: into the model's own weight
        with torch.no_grad():
            full = (coords if b is None else coords @ b) @ proj
            old.weight[tgt] = full[tgt].to(old.weight.dtype)
        return model
    from methods.embeddings.computed import ComputedEmbedding

    new = ComputedEmbedding(coords, b, proj, w[rest_ids].float(), rest_ids, freeze=freeze, train_proj=projection == "linear",
              padding_idx=getattr(old, "padding_idx", None)).to(w.device)
    if getattr(model, "config", None) is not None and getattr(model.config, "tie_word_embeddings", False):
        model.config.tie_word_embeddings = False  # the head keeps its weight (its own Parameter from here on)
    model.set_input_embeddings(new)
    return model
