"""Encoder-decoder helpers shared by methods and the runner's seq2seq path (transformers T5 models).

A seq2seq batch is one (B, 2, L) tensor of token ids: batch[:, 0] the sources, batch[:, 1] the targets
(each ending in EOS), both right-padded with the model's pad id. The decoder reads the target shifted right
behind the decoder start token (teacher forcing) or, for free-running training, the model's own greedy
output (`greedy_decode`).
"""

from __future__ import annotations

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


def encode(model: nn.Module, sources: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder states, source attention mask)."""
    mask = sources != model.config.pad_token_id
    return model.get_encoder()(input_ids=sources, attention_mask=mask).last_hidden_state, mask


def decoder_hidden(model: nn.Module, sources: torch.Tensor, decoder_inputs: torch.Tensor,
                   encoded: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The decoder's last hidden states, as the output layer reads them (T5 scales them by d_model^-1/2 when
    its config says so), (B, T, D): `hidden @ lm_head.weight.T` are the logits."""
    states, mask = encoded if encoded is not None else encode(model, sources)
    hidden = model.get_decoder()(input_ids=decoder_inputs, encoder_hidden_states=states,
                                 encoder_attention_mask=mask, use_cache=False).last_hidden_state
    if getattr(model.config, "scale_decoder_outputs", False):
        hidden = hidden * model.config.d_model ** -0.5
    return hidden


def seq2seq_logits(model: nn.Module, sources: torch.Tensor, decoder_inputs: torch.Tensor,
                   encoded: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    return model.get_output_embeddings()(decoder_hidden(model, sources, decoder_inputs, encoded))


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
