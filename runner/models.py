"""Models: transformers architectures built from our config (random init), from a run's checkpoint, or
from local HF weights. `device="meta"` builds the shapes without allocating (dry runs)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig

from runner.config import latest_checkpoint
from runner.errors import ConfigError

log = logging.getLogger(__name__)


def hf_config(m: DictConfig, vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_kv_heads or m.num_heads,
        max_position_embeddings=m.seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": float(m.rope_theta)},
        tie_word_embeddings=m.tie_embeddings,
        initializer_range=m.init_std,
        use_cache=False,
        attn_implementation="sdpa",
    )


def model_vocab_size(m: DictConfig, tokenizer_vocab: int | None) -> int:
    if m.vocab_size is None:
        if tokenizer_vocab is None:
            raise ConfigError("model.vocab_size: null, and no tokenizer to take the size from")
        return int(tokenizer_vocab)
    if tokenizer_vocab is not None and m.vocab_size < tokenizer_vocab:
        raise ConfigError(f"model.vocab_size: {m.vocab_size} is smaller than the tokenizer's {tokenizer_vocab} "
                          "(set model.vocab_size=null to take the tokenizer's)")
    return int(m.vocab_size)


def _state_dict_from_ckpt(path: Path) -> dict[str, torch.Tensor]:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    sd = ck.get("state_dict", ck)
    return {k.removeprefix("model."): v for k, v in sd.items() if k.startswith("model.")} or sd


def build_model(m: DictConfig, vocab_size: int, device: str | torch.device | None = None):
    """A causal LM per `m`. `m.init_from`: a .ckpt of ours, a run directory, a local HF directory, hf://name, or a
    model.pt saved by a compress stage (`base` is resolved to a run directory by the runner first)."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    if m.arch == "t5":  # encoder-decoder (runner/seq2seq.py)
        from runner.seq2seq import build_t5

        return build_t5(m, vocab_size, device)
    src = m.init_from
    if src and (str(src).startswith("hf://") or (Path(src).expanduser() / "config.json").exists()):
        name = str(src).removeprefix("hf://")
        log.info("loading HF weights from %s", name)
        model = AutoModelForCausalLM.from_pretrained(str(Path(name).expanduser()) if not str(src).startswith("hf://") else name)
        return model.to(device) if device else model
    if src and Path(src).suffix == ".pt":  # a whole saved module (compressed models change shapes)
        log.info("loading the saved model %s", src)
        model = torch.load(Path(src).expanduser(), map_location="cpu", weights_only=False)
        return model.to(device) if device else model
    with torch.device(device or "cpu"):
        model = LlamaForCausalLM(hf_config(m, vocab_size))
    if src:
        path = Path(src).expanduser()
        if path.is_dir():
            found = latest_checkpoint(path)
            if found is None:
                raise ConfigError(f"model.init_from: no checkpoint in {path}/checkpoints")
            path = found
        log.info("initialising from %s", path)
        missing, unexpected = model.load_state_dict(_state_dict_from_ckpt(path), strict=False)
        if missing or unexpected:
            raise ConfigError(f"model.init_from: {path} does not fit model={m.name} "
                              f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    return model


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
