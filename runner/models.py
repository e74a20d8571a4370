"""Models: the architecture a model config names (`_target_`), built at random init or from `init_from` (a .ckpt
of ours, a run directory, a local HF directory, hf://name, or a model.pt saved by a compress stage).
`device="meta"` builds the shapes without allocating (dry runs)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from runner.config import architecture, latest_checkpoint
from runner.errors import ConfigError

log = logging.getLogger(__name__)


def model_vocab_size(m: DictConfig, tokenizer_vocab: int | None) -> int:
    if m.vocab_size is None:
        if tokenizer_vocab is None:
            raise ConfigError("model.vocab_size: null, and no tokenizer to take the size from")
        return int(tokenizer_vocab)
    if tokenizer_vocab is not None and m.vocab_size < tokenizer_vocab:
        raise ConfigError(f"model.vocab_size: {m.vocab_size} is smaller than the tokenizer's {tokenizer_vocab} "
                          "(set model.vocab_size=null to take the tokenizer's)")
    return int(m.vocab_size)


def state_dict_from_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The model's weights in a Lightning checkpoint of ours (the module's `model.` prefix removed)."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    sd = ck.get("state_dict", ck)
    return {k.removeprefix("model."): v for k, v in sd.items() if k.startswith("model.")} or sd


def is_hf_source(src) -> bool:
    return bool(src) and (str(src).startswith("hf://") or (Path(str(src)).expanduser() / "config.json").exists())


def build_model(m: DictConfig, vocab_size: int, device: str | torch.device | None = None) -> nn.Module:
    """The model of `m`. `m.init_from` (`base` is resolved to a run directory by the runner first): weights from a
    .ckpt of ours or a run directory (shapes from the config), an HF checkpoint, or a whole saved model.pt."""
    arch = architecture(m)
    src = m.init_from
    meta = str(device) == "meta"
    if is_hf_source(src):
        name = str(src).removeprefix("hf://")
        name = name if str(src).startswith("hf://") else str(Path(name).expanduser())
        log.info("loading HF weights from %s", name)
        model = arch.from_pretrained(name, meta=meta)
        return model if meta or device is None else model.to(device)
    if src and Path(str(src)).suffix == ".pt":  # a whole saved module (compressed models change shapes)
        log.info("loading the saved model %s", src)
        model = torch.load(Path(str(src)).expanduser(), map_location="cpu", weights_only=False, mmap=meta)
        return model if meta or device is None else model.to(device)
    path = Path(str(src)).expanduser() if src else None
    if path is not None and path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise ConfigError(f"model.init_from: no checkpoint in {path}/checkpoints")
        path = found
    origin = _hf_origin(path) if path is not None else None
    if origin is not None and not meta:  # a run that started from HF weights has their shapes, not our config's
        model = arch.from_pretrained(origin)
        model = model if device is None else model.to(device)
    else:
        with torch.device(device or "cpu"):
            model = arch.build(vocab_size, int(m.seq_len))
    if path is not None and not meta:  # a meta model has the checkpoint's shapes already: they come from the same config
        log.info("initialising from %s", path)
        sd = state_dict_from_checkpoint(path)
        own = model.state_dict()
        if not any(k in own for k in sd) and any(k.startswith("backbone.") for k in sd):
            # a task's wrapper around the architecture's model (a classifier, a bi-encoder) holds it as `backbone`:
            # its weights, without the wrapper's own (a classification head)
            left = sorted(k for k in sd if not k.startswith("backbone."))
            sd = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
            log.info("%s holds a task's wrapper: loading its backbone%s", path, f" (not {left[:3]})" if left else "")
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ConfigError(f"model.init_from: {path} does not fit model={m.name} "
                              f"(missing {list(missing)[:3]}, unexpected {list(unexpected)[:3]})")
    return model


HF_SIZE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "intermediate_size", "vocab_size", "max_position_embeddings", "d_model", "num_layers")


def loaded_model_config(model: nn.Module, src) -> dict | None:
    """What model.init_from loaded when it names HF weights (an HF directory, hf://name, or a run that started
    from them): {"from": src, the sizes of its config.json}, logged under model.loaded in the run's config and
    summary, since the model YAML's own sizes then describe nothing that ran. None otherwise."""
    config = getattr(model, "config", None)
    if not src or config is None:
        return None
    path = Path(str(src)).expanduser()
    newest = latest_checkpoint(path) if path.is_dir() else None
    origin = _hf_origin(newest) if newest else None
    if not is_hf_source(src) and origin is None:
        return None
    sizes = {k: getattr(config, k) for k in HF_SIZE_KEYS if isinstance(getattr(config, k, None), (int, str))}
    return {"from": str(src), **({"origin": origin} if origin else {}), **sizes}


def check_vocabulary(model: nn.Module, tokenizer_vocab: int | None, cfg: DictConfig) -> None:
    """A loaded model (model.init_from) whose input embeddings have fewer rows than the task's tokenizer has ids
    would fail at the first batch with an IndexError: one config line before any training instead."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    rows = getattr(emb, "num_embeddings", None)
    if rows is None or tokenizer_vocab is None or rows >= int(tokenizer_vocab):
        return
    src = cfg.model.init_from
    tok = cfg.dataset.get("tokenizer", {}) or {}
    raise ConfigError(f"model.init_from: {src} embeds {rows} token ids, but the tokenizer of dataset={cfg.dataset.name} "
                      f"has {tokenizer_vocab} (tokenizer.kind={tok.get('kind')}); give the dataset that model's tokenizer "
                      f"(dataset.tokenizer.kind=hf dataset.tokenizer.name=<its directory>) or a vocabulary of at most {rows}")


def _hf_origin(checkpoint: Path) -> str | None:
    """The HF weights the run that wrote `checkpoint` started from (its config.yaml's model.init_from, when that is
    an HF directory or hf://name), else None: its model is then built from its config's sizes."""
    from omegaconf import OmegaConf

    saved = checkpoint.parent.parent / "config.yaml"
    if checkpoint.parent.name != "checkpoints" or not saved.is_file():
        return None
    src = OmegaConf.select(OmegaConf.load(saved), "model.init_from", default=None)
    if not is_hf_source(src):
        return None
    return str(src).removeprefix("hf://") if str(src).startswith("hf://") else str(Path(str(src)).expanduser())


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def export_hf(model: nn.Module, directory: Path, tokenizer_dir: Path | None = None) -> Path | None:
    """`model` in Hugging Face format at `directory`: save_pretrained (config.json, model.safetensors) of the model,
    or of a task wrapper's `backbone` (a classifier, a bi-encoder: the architecture's model without the task's
    head), with the tokenizer files of `tokenizer_dir`. Written beside and renamed into place, so a crash leaves
    the previous export or none. None where the model has no HF form (an nn.Module of your own)."""
    target = model if callable(getattr(model, "save_pretrained", None)) else getattr(model, "backbone", None)
    if not callable(getattr(target, "save_pretrained", None)):
        return None
    directory = Path(directory)
    tmp = directory.with_name(f"{directory.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # its "Writing model shards" bar for a file written in a blink: not in run logs
    try:
        target.save_pretrained(str(tmp), safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if tokenizer_dir is not None and Path(tokenizer_dir).is_dir():
        for f in Path(tokenizer_dir).iterdir():
            if f.is_file() and not (tmp / f.name).exists():
                shutil.copy2(f, tmp / f.name)
    old = directory.with_name(f"{directory.name}.old{os.getpid()}")
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory
