"""Composition and validation.

Every composed config is checked before any work starts, and every problem is reported at once:
unknown options and keys (with the valid choices), wrong types, `_target_`s that do not import or whose
arguments do not bind, missing files. The runner's own sections have dataclass schemas below; their
field comments are the reference for each key.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime as _dt
import importlib
import inspect
import json
import os
import types
import typing
from collections.abc import Iterator, Sequence
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
    """The runner's keys of a model config; every other key is the architecture's own (models/base.py),
    checked against the signature of the class `_target_` names."""

    name: str
    seq_len: int  # tokens per training sequence (the task reads it too)
    vocab_size: int | None  # null: the tokenizer's size
    init_from: str | None  # .ckpt, run dir, local HF dir, hf://org/name, a saved model.pt, or `base`


@dataclass
class DatasetSchema:
    """The runner's keys of a dataset config; every other key is an argument of the task `_target_` names
    (tasks/base.py), checked against its signature."""

    name: str
    batch_size: int  # sequences (examples, pairs, ...) per optimizer step per device
    num_workers: int  # DataLoader worker processes


MODEL_KEYS = frozenset({"_target_", "name", "seq_len", "vocab_size", "init_from"})
DATASET_KEYS = frozenset({"_target_", "name", "batch_size", "num_workers"})


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
            "model.seq_len"}


def group_options(group: str) -> list[str]:
    """The options of a config group: plain ones sorted, then nested `sub/option` ones sorted. Where Hydra is
    initialized (in a job, in the CLI's preflight, in compose) those of every config dir on its search path
    (the repo's configs/, `--config-dir`, `hydra.searchpath`); elsewhere those of the repo's configs/."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        from hydra.core.hydra_config import HydraConfig
        from hydra.core.object_type import ObjectType

        loader = GlobalHydra.instance().config_loader()
        # in a job, hydra.searchpath is applied per composition, not to the loader's search path: pass it on
        extra = list(HydraConfig.get().searchpath or []) if HydraConfig.initialized() else []
        quoted = ",".join("'" + str(p).replace("'", "\\'") + "'" for p in extra)
        sp = [f"hydra.searchpath=[{quoted}]"] if extra else []
        plain = loader.get_group_options(group, ObjectType.CONFIG, overrides=sp)
        nested = [f"{sub}/{o}" for sub in loader.get_group_options(group, ObjectType.GROUP, overrides=sp)
                  for o in loader.get_group_options(f"{group}/{sub}", ObjectType.CONFIG, overrides=sp)]
        return sorted(plain) + sorted(nested)
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


@contextlib.contextmanager
def search_path(config_dirs: Sequence[str | Path] = (), searchpath: Sequence[str] = ()) -> Iterator[None]:
    """GlobalHydra initialized with the config search path `python -m runner` composes with: Hydra's own
    configs, the repo's configs/ (primary), then each of `config_dirs` (as `--config-dir` adds it) and
    `searchpath` entries (as `hydra.searchpath=[...]` adds them), then structured configs. Inside it
    Hydra's compose and runner.config.group_options see the options of every one of those dirs."""
    from hydra import version
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    csp = create_config_search_path(str(CONFIG_DIR))  # what hydra.main(config_path=CONFIG_DIR) builds
    for d in config_dirs:  # hydra/_internal/utils.py _run_hydra: add_conf_dir
        csp.prepend(provider="command-line", path=f"file://{os.path.abspath(os.path.expanduser(str(d)))}",
                    anchor=SearchPathQuery(provider="schema"))
    for p in searchpath:  # ConfigLoaderImpl._process_config_searchpath: appended before the schema
        csp.prepend(provider="hydra.searchpath in command-line", path=str(p), anchor=SearchPathQuery(provider="schema"))
    version.setbase("1.3")
    GlobalHydra.instance().clear()
    Hydra.create_main_hydra2(task_name="methodbench", config_search_path=csp)
    try:
        yield
    finally:
        GlobalHydra.instance().clear()


def compose(overrides: list[str], return_hydra_config: bool = False,
            config_dirs: list[str | Path] | tuple[str | Path, ...] = ()) -> DictConfig:
    """The config `python -m runner <overrides>` would run, composed in process (tests, benches, notebooks).
    `config_dirs`: config directories of your own, searched after the repo's configs/ as `--config-dir` is."""
    from hydra import compose as hydra_compose

    register_resolvers()
    for d in config_dirs:
        if not Path(d).expanduser().is_dir():
            raise ConfigError(f"config_dirs: no such directory: {Path(d).expanduser().resolve()}")
    with search_path(config_dirs):
        return hydra_compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


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


def _check_section(node: Any, schema: type, prefix: str, problems: list[str], open_keys: bool = False) -> None:
    """Check `node` against a schema dataclass; `open_keys`: other keys are a builder's (checked by _check_target)."""
    if not isinstance(node, DictConfig):
        problems.append(f"{prefix}: expected a mapping with keys {', '.join(f.name for f in dataclasses.fields(schema))}")
        return
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key in node.keys():
        if key not in fields and not open_keys:
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


def _check_target(node: DictConfig, prefix: str, problems: list[str], runner_keys: frozenset[str] = frozenset(),
                  supplied: frozenset[str] = frozenset()) -> Any:
    """Check that `_target_` imports and that the node's keys (less the runner's own) bind to its signature;
    `supplied`: arguments the runner fills in itself. Returns the class (or None on a problem)."""
    target = node.get("_target_")
    if not isinstance(target, str):
        problems.append(f"{prefix}._target_: missing; it names the class to build (e.g. methods.base.Method)")
        return None
    try:
        obj = import_target(target)
    except (ImportError, AttributeError) as e:
        problems.append(f"{prefix}._target_: cannot import '{target}' ({e})")
        return None
    sig = inspect.signature(obj)
    params = sig.parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    valid = [n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n not in supplied]
    n_before = len(problems)
    for key in node.keys():
        if str(key).startswith("_") or key in runner_keys:
            continue
        if key not in params and not takes_kwargs:
            problems.append(f"{prefix}.{key}: not an argument of {target}; {choices_hint(key, valid)}")
            continue
        if key in hints and not OmegaConf.is_missing(node, key) and not _type_ok(node[key], hints[key]):
            problems.append(f"{prefix}.{key}: expected {_type_name(hints[key])}, got {node[key]!r}")
    for n, p in params.items():
        if (p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n not in node
                and n not in supplied):
            problems.append(f"{prefix}.{n}: required argument of {target} is not set")
    return obj if len(problems) == n_before else None


def builder_args(node: DictConfig, cls: Any, runner_keys: frozenset[str]) -> dict[str, Any]:
    """The constructor arguments of a builder from its config node: every key but the runner's own (a runner
    key the constructor takes, like a task's `name`, is passed too)."""
    params = inspect.signature(cls).parameters
    container = OmegaConf.to_container(node, resolve=True)
    return {k: v for k, v in container.items()
            if not str(k).startswith("_") and (k not in runner_keys or k in params and k not in ("_target_",))}


def make_task(d: DictConfig) -> Any:
    """The task builder (tasks/base.py Task) a dataset config names; no I/O."""
    cls = import_target(str(d._target_))
    return cls(**builder_args(d, cls, DATASET_KEYS))


def architecture(m: DictConfig) -> Any:
    """The models.base.Architecture `m._target_` names (an nn.Module class is wrapped), configured with the
    model config's own keys; no weights are built."""
    from torch import nn

    from models.base import Architecture, ModuleArchitecture

    cls = import_target(str(m._target_))
    kwargs = {k: v for k, v in m.items() if k not in MODEL_KEYS and not str(k).startswith("_")}
    if isinstance(cls, type) and issubclass(cls, Architecture):
        return cls(**kwargs)
    if isinstance(cls, type) and issubclass(cls, nn.Module):
        return ModuleArchitecture(cls, kwargs)
    raise ConfigError(f"model._target_: {m._target_} is neither a models.base.Architecture nor a torch.nn.Module class")


def _construct(prefix: str, make, problems: list[str]) -> Any:
    """Build a component (constructors are cheap: no model, no data) so that the checks in its __init__ are
    reported as config problems, one line each, before any work starts. Returns it, or None."""
    from hydra.errors import InstantiationException

    try:
        return make()
    except InstantiationException as e:
        cause = e.__cause__ or e
        if not isinstance(cause, (ValueError, TypeError)):
            raise
        err = cause
    except (ValueError, TypeError) as e:
        err = e
    parts = str(err).split("; ")  # a constructor may report several problems joined by "; "
    if not all(p.startswith(f"{prefix}.") for p in parts):
        parts = [str(err)]
    problems += [p if p.startswith(prefix) else f"{prefix}: {p}" for p in parts]
    return None


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError listing every problem in `cfg` (the composed job config)."""
    from hydra.utils import instantiate

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
        _check_section(cfg[name], schema, name, problems, open_keys=name in ("model", "dataset"))
    allowed = set(TOP_LEVEL) | set(SECTIONS) | {"method", "experiment", "sweep"}
    for key in cfg.keys():
        if key not in allowed:
            problems.append(f"{key}: unknown top-level key; {choices_hint(key, sorted(allowed))}")
    built: dict[str, Any] = {}
    if "method" in cfg and isinstance(cfg.method, DictConfig) and _check_target(cfg.method, "method", problems):
        built["method"] = _construct("method", lambda: instantiate(cfg.method, _convert_="all"), problems)
    if isinstance(cfg.get("dataset"), DictConfig) and _check_target(cfg.dataset, "dataset", problems, DATASET_KEYS):
        built["dataset"] = _construct("dataset", lambda: make_task(cfg.dataset), problems)
    # an nn.Module class by _target_ gets vocab_size and seq_len from the runner (models/base.py)
    if isinstance(cfg.get("model"), DictConfig) and _check_target(cfg.model, "model", problems, MODEL_KEYS,
                                                                  frozenset({"vocab_size", "seq_len"})):
        built["model"] = _construct("model", lambda: architecture(cfg.model), problems)
    bad = {p.split(":")[0].split("=")[0] for p in problems}
    problems += _semantic_checks(cfg, bad, built)
    if problems:
        raise ConfigError(problems)


# ----------------------------------------------------------------------------------------------
# What fits what: method <-> task <-> model, by the capabilities each declares.
def model_capabilities(arch: Any) -> frozenset[str]:
    """The kind and the capabilities of an architecture (an Architecture, its class, or an nn.Module class,
    whose kind defaults to causal-lm): models/base.py."""
    return frozenset({getattr(arch, "kind", "causal-lm"), *getattr(arch, "provides", ())})


def _repository():
    """Hydra's config repository of the active search path; in a job with hydra.searchpath (which Hydra applies
    per composition, not to the loader) those directories added, as group_options adds them."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    loader = GlobalHydra.instance().config_loader()
    extra = list(HydraConfig.get().searchpath or []) if HydraConfig.initialized() else []
    if not extra:
        return loader.repository
    from hydra._internal.config_repository import ConfigRepository

    csp = copy.deepcopy(loader.get_search_path())
    for entry in extra:
        csp.append(provider="hydra.searchpath in command-line", path=str(entry))
    return ConfigRepository(config_search_path=csp)


def _option_node(group: str, option: str) -> tuple[DictConfig, list[str]] | None:
    """(the YAML of `<group>/<option>` without its defaults list, the options of the same group that list names)
    from the active config search path (the repo's configs/ outside Hydra)."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        try:
            found = _repository().load_config(f"{group}/{option}")
            if found is not None:  # Hydra has moved the defaults list out of the config
                names = [str(d.path) for d in found.defaults_list or [] if getattr(d, "path", None) not in (None, "_self_")]
                return found.config, names
        except Exception:  # noqa: BLE001  (fall back to the repo's own directory)
            pass
    path = CONFIG_DIR / group / f"{option}.yaml"
    if not path.exists():
        return None
    node = OmegaConf.load(path)
    return node, [e for e in node.get("defaults") or [] if isinstance(e, str) and e != "_self_"]


def option_target(group: str, option: str, depth: int = 0) -> str | None:
    """The `_target_` of a group option, following its defaults list within the group."""
    found = _option_node(group, option)
    if found is None or depth > 8:
        return None
    node, parents = found
    if isinstance(node.get("_target_"), str):
        return node._target_
    for parent in parents:
        target = option_target(group, parent, depth + 1)
        if target:
            return target
    return None


def fitting_options(group: str, fits) -> list[str]:
    """The options of `group` whose `_target_` class `fits(cls)`."""
    out = []
    for option in group_options(group):
        target = option_target(group, option)
        try:
            cls = import_target(target) if target else None
        except (ImportError, AttributeError):
            cls = None
        if cls is not None:
            try:
                if fits(cls):
                    out.append(option)
            except Exception:  # noqa: BLE001  (a class that cannot answer does not fit)
                pass
    return out


def _compatibility(cfg: DictConfig, built: dict[str, Any]) -> list[str]:
    """Does the method fit the task and the model, and the task the model? One line per mismatch, naming both
    sides and the options that fit."""
    method, task, arch = built.get("method"), built.get("dataset"), built.get("model")
    out = []
    m_name, d_name, a_name = cfg.method.get("name"), cfg.dataset.get("name"), cfg.model.get("name")
    if task is not None and arch is not None and arch.kind not in task.model_kinds:
        models = fitting_options("model", lambda c: bool(set(task.model_kinds) & model_capabilities(c)))
        datasets = fitting_options("dataset", lambda c: arch.kind in c.model_kinds)
        out.append(f"model: model={a_name} is a {arch.kind} model, but dataset={d_name} ({type(task).__name__}) "
                   f"trains {' or '.join(task.model_kinds)} models; choose one of: "
                   + ", ".join(f"model={o}" for o in models)
                   + (f"; or for model={a_name}: " + ", ".join(f"dataset={o}" for o in datasets) if datasets else ""))
    if method is not None and task is not None and not method.needs_task <= task.provides:
        need = sorted(method.needs_task - task.provides)
        fits = fitting_options("dataset", lambda c: method.needs_task <= c.provides)
        out.append(f"dataset: method={m_name} needs a task that provides {', '.join(need)}; dataset={d_name} "
                   f"({type(task).__name__}) provides {', '.join(sorted(task.provides)) or 'nothing it asks'}; "
                   "choose one of: " + ", ".join(f"dataset={o}" for o in fits))
    if method is not None and arch is not None and not method.needs_model <= model_capabilities(arch):
        need = sorted(method.needs_model - model_capabilities(arch))
        fits = fitting_options("model", lambda c: method.needs_model <= model_capabilities(c))
        out.append(f"model: method={m_name} needs a model with {', '.join(need)}; model={a_name} "
                   f"({type(arch).__name__}) is {', '.join(sorted(model_capabilities(arch)))}; choose one of: "
                   + ", ".join(f"model={o}" for o in fits))
    return out


def _semantic_checks(cfg: DictConfig, bad: set[str], built: dict[str, Any]) -> list[str]:
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
    m = cfg.get("model")
    if ok("model.init_from") and m.init_from and m.init_from != "base" and not str(m.init_from).startswith("hf://") \
            and not Path(m.init_from).expanduser().exists():
        out.append(f"model.init_from: no such file or directory: {m.init_from}")
    if ok("base_steps") and cfg.base_steps <= 0:
        out.append(f"base_steps: must be positive, got {cfg.base_steps}")
    method = built.get("method")
    if method is not None and ok("hardware.strategy") and cfg.hardware.strategy == "fsdp" and not method.supports_fsdp:
        out.append(f"hardware.strategy: method={cfg.method.get('name', type(method).__name__)} does not run under fsdp "
                   "(it needs whole parameter matrices; FSDP shards them flat); choose one of: auto, ddp")
    out += _compatibility(cfg, built)
    r = cfg.get("resume")
    if ok("resume") and r not in (None, "auto") and not Path(str(r)).expanduser().is_dir():
        out.append(f"resume: no such run directory: {r} (give a run directory or resume=auto)")
    if ok("logger.kind", "logger.mode") and cfg.logger.kind == "wandb" and cfg.logger.mode not in ("offline", "online", "disabled"):
        out.append(f"logger.mode: {cfg.logger.mode!r} is not valid; choose one of: offline, online, disabled")
    return out
