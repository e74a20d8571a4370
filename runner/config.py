"""Composition and validation.

Every composed config is checked before any work starts, and every problem is reported at once:
unknown options and keys (with the valid choices), wrong types, `_target_`s that do not import or whose
arguments do not bind, missing files. The runner's own sections have dataclass schemas below; their
field comments are the reference for each key.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import importlib
import inspect
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from runner import REPO_ROOT
from runner.errors import ConfigError, choices_hint

CONFIG_DIR = Path(os.environ.get("METHODBENCH_CONFIGS", REPO_ROOT / "configs")).resolve()
GROUPS = ("model", "method", "dataset", "hardware", "trainer", "logger", "experiment", "sweep")
META_FILE = "meta.json"


# ----------------------------------------------------------------------------------------------
# Schemas of the runner-owned sections (methods are validated against their class signature).
@dataclass
class ModelSchema:
    name: str
    arch: str  # llama | t5 (encoder-decoder, runner/seq2seq.py)
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int | None  # null: = num_heads (no GQA)
    vocab_size: int | None  # null: the tokenizer's size
    seq_len: int
    tie_embeddings: bool
    rope_theta: float
    init_std: float
    init_from: str | None  # .ckpt, run dir, local HF dir, hf://org/name, a saved model.pt, or `base`
    dropout: float = 0.0  # t5: dropout_rate (llama: unused)


@dataclass
class TokenizerSchema:
    kind: str  # train | hf
    name: str | None
    vocab_size: int | None
    min_frequency: int


@dataclass
class DatasetSchema:
    name: str
    source: str  # stdlib-docs | hub | local | noisy-copy (seq2seq task) | fictitious-authors | tofu | mixture
    path: str | None
    subset: str | None
    split: str
    text_field: str
    streaming: bool
    max_documents: int | None
    val_fraction: float
    tokenizer: TokenizerSchema
    batch_size: int
    num_workers: int
    generator: dict[str, Any] = field(default_factory=dict)  # generated tasks: the generator's arguments
    domains: list[Any] = field(default_factory=list)  # source=mixture: the domains (runner/mixture.py)


@dataclass
class FSDPSchema:
    sharding_strategy: str
    activation_checkpointing: bool


@dataclass
class HardwareSchema:
    name: str
    accelerator: str
    devices: int
    num_nodes: int
    precision: str
    strategy: str
    compile: bool
    matmul_precision: str
    threads: int | None
    fsdp: FSDPSchema
    kernels: dict[str, str]
    kernel_fallback: bool


@dataclass
class TrainerSchema:
    max_steps: int
    val_every_n_steps: int
    val_batches: int | None
    log_every_n_steps: int
    grad_clip: float | None
    accumulate_grad_batches: int
    checkpoint_every_n_steps: int
    keep_checkpoints: int
    enable_progress_bar: Any  # auto | true | false
    deterministic: bool


@dataclass
class LoggerSchema:
    kind: str  # wandb | csv | none
    mode: str | None  # wandb: offline | online | disabled
    project: str
    entity: str | None
    group: str | None
    tags: list[str] = field(default_factory=list)
    init_timeout: float = 30.0  # wandb online: seconds to wait for the server before going offline


@dataclass
class PathsSchema:
    runs_dir: str
    cache_dir: str


SECTIONS: dict[str, type] = {
    "model": ModelSchema,
    "dataset": DatasetSchema,
    "hardware": HardwareSchema,
    "trainer": TrainerSchema,
    "logger": LoggerSchema,
    "paths": PathsSchema,
}
TOP_LEVEL = {"seed": int, "run_name": str, "resume": str | None, "dry_run": bool, "debug": bool, "base_steps": int}

CHOICES = {
    "model.arch": ["llama", "t5"],
    "dataset.source": ["stdlib-docs", "hub", "local", "noisy-copy", "fictitious-authors", "tofu", "mixture"],
    "dataset.tokenizer.kind": ["train", "hf"],
    "hardware.accelerator": ["cpu", "gpu", "cuda", "auto"],
    "hardware.strategy": ["auto", "ddp", "fsdp"],
    "hardware.precision": ["32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true"],
    "hardware.matmul_precision": ["highest", "high", "medium"],
    "hardware.fsdp.sharding_strategy": ["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"],
    "logger.kind": ["wandb", "csv", "none"],
    "trainer.enable_progress_bar": ["auto", True, False],
}
POSITIVE = {"hardware.devices", "hardware.num_nodes", "trainer.val_every_n_steps", "trainer.log_every_n_steps",
            "trainer.accumulate_grad_batches", "trainer.checkpoint_every_n_steps", "dataset.batch_size",
            "model.hidden_size", "model.num_layers", "model.num_heads", "model.seq_len"}


def group_options(group: str) -> list[str]:
    d = CONFIG_DIR / group
    if not d.is_dir():
        return []
    return sorted(p.stem for p in d.glob("*.yaml")) + sorted(
        f"{p.parent.name}/{p.stem}" for p in d.glob("*/*.yaml"))


# ----------------------------------------------------------------------------------------------
# Run directories. Registered as the resolver `mb_run_dir`, used by hydra.run.dir: the run directory
# never depends on Hydra changing the working directory, and `resume=` points Hydra at the old one.
def _identity_of(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / META_FILE).read_text())["identity"]
    except (OSError, ValueError, KeyError):
        return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckdir = Path(run_dir) / "checkpoints"
    last = ckdir / "last.ckpt"
    if last.exists():
        return last
    steps = sorted(ckdir.glob("step*.ckpt"))
    return steps[-1] if steps else None


def find_resumable(runs_dir: Path, run_name: str, identity: str) -> Path | None:
    """The newest run of `run_name` with the same overrides that has a checkpoint."""
    base = Path(runs_dir) / run_name
    if not base.is_dir():
        return None
    cands = [d for d in base.iterdir() if d.is_dir() and _identity_of(d) == identity and latest_checkpoint(d)]
    return max(cands, key=lambda d: d.stat().st_mtime) if cands else None


def resolve_run_dir(resume: Any, runs_dir: str, run_name: str, identity: str = "") -> str:
    runs = Path(runs_dir).expanduser().resolve()
    if resume not in (None, "", "None", "null"):
        if str(resume) == "auto":
            found = find_resumable(runs, run_name, identity)
            if found is not None:
                return str(found)
        else:
            return str(Path(str(resume)).expanduser().resolve())
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    d = runs / run_name / stamp
    i = 1
    while d.exists():
        d = runs / run_name / f"{stamp}-{i}"
        i += 1
    return str(d)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("mb_run_dir"):
        OmegaConf.register_new_resolver("mb_run_dir", resolve_run_dir, use_cache=True)


def compose(overrides: list[str], return_hydra_config: bool = False) -> DictConfig:
    """The config `python -m runner <overrides>` would run, composed in process (tests, benches, notebooks)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="methodbench"):
            return hydra_compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)
    finally:
        GlobalHydra.instance().clear()


# ----------------------------------------------------------------------------------------------
# Validation.
def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (list, tuple) or tp in (list, tuple):
        return isinstance(value, (list, tuple, ListConfig))
    if origin is dict or tp is dict:
        return isinstance(value, (dict, DictConfig))
    return True


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    return getattr(tp, "__name__", str(tp))


def _check_section(node: Any, schema: type, prefix: str, problems: list[str]) -> None:
    if not isinstance(node, DictConfig):
        problems.append(f"{prefix}: expected a mapping with keys {', '.join(f.name for f in dataclasses.fields(schema))}")
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key in node.keys():
        if key not in fields:
            problems.append(f"{prefix}.{key}: unknown key; {choices_hint(key, list(fields))}")
    for name in fields:
        full = f"{prefix}.{name}"
        if name not in node:
            if fields[name].default is dataclasses.MISSING and fields[name].default_factory is dataclasses.MISSING:
                problems.append(f"{full}: missing key")
            continue
        if OmegaConf.is_missing(node, name):
            problems.append(f"{full}: no value given (set {full}=...)")
            continue
        try:
            value = node[name]
        except Exception as e:  # an interpolation that does not resolve
            problems.append(f"{full}: {e.__class__.__name__}: {e}".splitlines()[0])
            continue
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            _check_section(value, tp, full, problems)
            continue
        if not _type_ok(value, tp):
            problems.append(f"{full}: expected {_type_name(tp)}, got {value!r}")
            continue
        if full in CHOICES and value not in CHOICES[full]:
            problems.append(f"{full}: {value!r} is not valid; {choices_hint(value, [str(c) for c in CHOICES[full]])}")
        if full in POSITIVE and isinstance(value, int) and value <= 0:
            problems.append(f"{full}: must be positive, got {value}")


def import_target(path: str) -> Any:
    module, _, attr = path.rpartition(".")
    if not module:
        raise ImportError(f"'{path}' is not a dotted path")
    obj = importlib.import_module(module)
    return getattr(obj, attr)


def _check_target(node: DictConfig, prefix: str, problems: list[str]) -> None:
    target = node.get("_target_")
    if not isinstance(target, str):
        problems.append(f"{prefix}._target_: missing; it names the class to build (e.g. methods.base.Method)")
        return
    try:
        obj = import_target(target)
    except (ImportError, AttributeError) as e:
        problems.append(f"{prefix}._target_: cannot import '{target}' ({e})")
        return
    sig = inspect.signature(obj)
    params = sig.parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    valid = [n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
    for key in node.keys():
        if str(key).startswith("_"):
            continue
        if key not in params and not takes_kwargs:
            problems.append(f"{prefix}.{key}: not an argument of {target}; {choices_hint(key, valid)}")
            continue
        if key in hints and not OmegaConf.is_missing(node, key) and not _type_ok(node[key], hints[key]):
            problems.append(f"{prefix}.{key}: expected {_type_name(hints[key])}, got {node[key]!r}")
    for n, p in params.items():
        if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in node:
            problems.append(f"{prefix}.{n}: required argument of {target} is not set")


def _check_method_values(node: DictConfig, problems: list[str]) -> None:
    """Build the method (constructors are cheap: no model, no data) so that the checks in its __init__ are
    reported as config problems, one line each, before any work starts."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        instantiate(node, _convert_="all")
    except InstantiationException as e:
        cause = e.__cause__ or e
        if not isinstance(cause, (ValueError, TypeError)):
            raise
        parts = str(cause).split("; ")  # a constructor may report several problems joined by "; "
        if not all(p.startswith("method.") for p in parts):
            parts = [str(cause)]
        problems += [p if p.startswith("method") else f"method: {p}" for p in parts]
    except (ValueError, TypeError) as e:
        problems.append(f"method: {e}")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError listing every problem in `cfg` (the composed job config)."""
    problems: list[str] = []
    for key, tp in TOP_LEVEL.items():
        if key not in cfg:
            problems.append(f"{key}: missing top-level key")
        elif not _type_ok(cfg[key], tp):
            problems.append(f"{key}: expected {_type_name(tp)}, got {cfg[key]!r}")
    for name, schema in SECTIONS.items():
        if name not in cfg:
            problems.append(f"{name}: missing section; choose one with {name}=<option>")
            continue
        _check_section(cfg[name], schema, name, problems)
    allowed = set(TOP_LEVEL) | set(SECTIONS) | {"method", "experiment", "sweep"}
    for key in cfg.keys():
        if key not in allowed:
            problems.append(f"{key}: unknown top-level key; {choices_hint(key, sorted(allowed))}")
    if "method" in cfg and isinstance(cfg.method, DictConfig):
        n = len(problems)
        _check_target(cfg.method, "method", problems)
        if len(problems) == n:
            _check_method_values(cfg.method, problems)
    bad = {p.split(":")[0].split("=")[0] for p in problems}
    problems += _semantic_checks(cfg, bad)
    if problems:
        raise ConfigError(problems)


def _semantic_checks(cfg: DictConfig, bad: set[str]) -> list[str]:
    """Checks across keys; each runs only where the keys it reads passed the checks above."""
    from kernels import known_backends, known_ops

    def ok(*keys: str) -> bool:
        for k in keys:
            parts = k.split(".")
            if parts[0] not in cfg or any(".".join(parts[:i]) in bad for i in range(1, len(parts) + 1)):
                return False
        return True

    out = []
    if ok("hardware.kernels"):
        for op, backend in cfg.hardware.kernels.items():
            if op not in known_ops():
                out.append(f"hardware.kernels.{op}: unknown op; {choices_hint(op, known_ops())}")
            elif backend not in known_backends(op):
                out.append(f"hardware.kernels.{op}: unknown backend {backend!r}; {choices_hint(backend, known_backends(op))}")
    m, d = cfg.get("model"), cfg.get("dataset")
    if ok("model.hidden_size", "model.num_heads") and m.hidden_size % m.num_heads:
        out.append(f"model.hidden_size ({m.hidden_size}) must be divisible by model.num_heads ({m.num_heads})")
    if ok("model.num_kv_heads", "model.num_heads") and m.num_kv_heads is not None and m.num_heads % m.num_kv_heads:
        out.append(f"model.num_kv_heads ({m.num_kv_heads}) must divide model.num_heads ({m.num_heads})")
    if (ok("model.vocab_size", "dataset.tokenizer", "dataset.source") and m.vocab_size is None
            and d.tokenizer.kind == "train" and d.tokenizer.vocab_size is None and d.source != "noisy-copy"):
        out.append("model.vocab_size: null needs dataset.tokenizer.vocab_size to be set")
    if ok("dataset.source", "dataset.generator") and d.source == "noisy-copy":
        from methods.losses.noisy_copy import NoisyCopy

        try:
            NoisyCopy(**dict(d.get("generator") or {}))
        except TypeError as e:
            valid = [p for p in inspect.signature(NoisyCopy).parameters]
            out.append(f"dataset.generator: {str(e).split('got ')[-1]}; choose keys from: {', '.join(valid)}")
        except ValueError as e:
            out.append(str(e))
    if ok("model.init_from") and m.init_from and m.init_from != "base" and not str(m.init_from).startswith("hf://") \
            and not Path(m.init_from).expanduser().exists():
        out.append(f"model.init_from: no such file or directory: {m.init_from}")
    if ok("dataset.source", "dataset.path"):
        if d.source == "local" and d.path and not Path(d.path).expanduser().exists():
            out.append(f"dataset.path: no such file or directory: {d.path}")
        if d.source in ("local", "hub") and not d.path:
            out.append(f"dataset.path: dataset.source={d.source} needs a path (a file/dir or a hub name)")
    if ok("dataset.source", "dataset.domains") and d.source == "mixture":
        from runner.mixture import check_domains

        out += check_domains(OmegaConf.to_container(d.domains, resolve=True))
    if ok("dataset.tokenizer") and d.tokenizer.kind == "hf" and not d.tokenizer.name:
        out.append("dataset.tokenizer.name: tokenizer.kind=hf needs a hub name or a local directory")
    if ok("dataset.val_fraction") and not 0.0 < d.val_fraction < 1.0:
        out.append(f"dataset.val_fraction: must be in (0, 1), got {d.val_fraction}")
    if ok("model.arch", "hardware.compile", "hardware.strategy") and m.arch == "t5":
        unsupported = [k for k, on in (("dry_run=true", cfg.get("dry_run") is True),
                                       ("hardware.compile=true", cfg.hardware.compile is True),
                                       ("hardware.strategy=fsdp", cfg.hardware.strategy == "fsdp")) if on]
        if unsupported:
            out.append(f"model.arch: t5 (encoder-decoder) does not support {', '.join(unsupported)} yet; "
                       "they assume a decoder-only model (model=llama-*)")
    if ok("base_steps") and cfg.base_steps <= 0:
        out.append(f"base_steps: must be positive, got {cfg.base_steps}")
    if ok("method._target_", "hardware.strategy") and cfg.hardware.strategy == "fsdp":
        cls = import_target(cfg.method._target_)
        if not getattr(cls, "supports_fsdp", True):
            out.append(f"hardware.strategy: method={cfg.method.get('name', cls.__name__)} does not run under fsdp "
                       "(it needs whole parameter matrices; FSDP shards them flat); choose one of: auto, ddp")
    if ok("method._target_", "dataset.source"):
        cls = import_target(cfg.method._target_)
        accepted = tuple(getattr(cls, "datasets", ()) or ())
        if accepted and d.source not in accepted:
            options = [o for o in group_options("dataset")
                       if OmegaConf.load(CONFIG_DIR / "dataset" / f"{o}.yaml").get("source") in accepted]
            out.append(f"dataset: method={cfg.method.get('name', cls.__name__)} runs on dataset.source "
                       f"{' or '.join(accepted)}, not {d.source}; choose one of: "
                       + ", ".join(f"dataset={o}" for o in options))
    r = cfg.get("resume")
    if ok("resume") and r not in (None, "auto") and not Path(str(r)).expanduser().is_dir():
        out.append(f"resume: no such run directory: {r} (give a run directory or resume=auto)")
    if ok("logger.kind", "logger.mode") and cfg.logger.kind == "wandb" and cfg.logger.mode not in ("offline", "online", "disabled"):
        out.append(f"logger.mode: {cfg.logger.mode!r} is not valid; choose one of: offline, online, disabled")
    return out
