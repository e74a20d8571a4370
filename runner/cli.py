"""`python -m runner`: Hydra's command line with errors a person can act on.

Before Hydra runs anything, the overrides are checked and the config is composed and validated once
(`preflight`): a bad option, key, type or path ends the program with one line per problem on stderr and
exit code 2, not a traceback. `debug=true` shows tracebacks instead.

Preflight composes with the search path Hydra's main uses: the repo's configs/ (primary), then a
`--config-dir`/`-cd` and any `hydra.searchpath=[...]` entries, so a user's own options (DIR/method/mine.yaml)
are valid choices and are checked like the repo's.

In a sweep (`-m`, or a config that sets hydra.mode=MULTIRUN) a failing job does not end the sweep: it is
recorded (its meta.json says status failed, with the error), logged and printed as one line, the other jobs
run, and at the end `SweepFailures` (a Hydra callback, configs/config.yaml) names the failed jobs in one
line and exits 1.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from hydra.experimental.callback import Callback

from runner.errors import ConfigError, RunInterrupted, TrainingStopped, choices_hint

EXIT_CONFIG = 2
_NO_PREFLIGHT_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--version", "--shell-completion", "-sc"}
log = logging.getLogger("methodbench")


def _print_problems(problems: list[str]) -> None:
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    print("(methodbench: fix the above, see `python -m runner --help`; debug=true shows a traceback)", file=sys.stderr)


def _debug_requested(overrides: list[str]) -> bool:
    return any(re.fullmatch(r"\+*debug=(true|True|1|yes)", o) for o in overrides)


def _hydra_message(e: Exception) -> str:
    """Hydra's composition errors, reworded to name the key and the valid choices."""
    from runner.config import group_options

    msg = str(e).strip()
    m = re.search(r"Could not find '([\w/\-]+)/([^']+)'", msg)
    if m and m.group(1) in ("model", "method", "dataset", "hardware", "trainer", "logger", "experiment", "sweep"):
        group, value = m.group(1), m.group(2)
        return f"{group}={value}: unknown option; {choices_hint(value, group_options(group))}"
    m = re.search(r"Could not override '([^']+)'", msg)
    if m and "not in struct" in msg:
        key = m.group(1)
        return f"{key}: unknown key (not in the config; a new key needs a leading +, as in +{key}=...)"
    m = re.search(r"Could not append to config. An item is already at '([^']+)'", msg)
    if m:
        return f"{m.group(1)}: already in the config; drop the leading + to override it"
    m = re.search(r"Error parsing override '([^']+)'", msg)
    if m:
        return f"{m.group(1)}: cannot parse this override (quote values with spaces or special characters)"
    return " ".join(msg.split())


def _unparsable(parser, overrides: list[str]) -> list[str]:
    """One line per override Hydra's grammar refuses: the key, and the value quoted as Hydra takes it (a value
    with characters outside letters, digits and -_./:, such as non-ASCII letters or spaces, needs quotes)."""
    from hydra.errors import HydraException

    out = []
    for raw in overrides:
        try:
            parser.parse_override(raw)
        except HydraException:
            key, eq, value = raw.partition("=")
            if not eq:
                out.append(f"{raw}: cannot parse this override; give key=value")
                continue
            q = '"' if "'" in value else "'"
            shell = "'" if q == '"' else '"'
            out.append(f"{key.lstrip('+~')}: cannot parse the value {value!r}; quote it for Hydra, in the shell: "
                       f"{shell}{key}={q}{value}{q}{shell}")
    return out


def _dotted_keys(d, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out.append(f"{prefix}{k}")
        if isinstance(v, dict):
            out += _dotted_keys(v, f"{prefix}{k}.")
    return out


def _searchpath_dir(entry: str) -> str | None:
    """The directory a hydra.searchpath entry names, or None for a non-file one (pkg://, structured://)."""
    if "://" not in entry:
        return entry
    scheme, _, path = entry.partition("://")
    return path if scheme == "file" else None


def preflight(overrides: list[str], config_dir: str | None = None, runs_here: bool = True) -> None:
    """Compose the job config from `overrides` (with `--config-dir` `config_dir`) and validate it; raise
    ConfigError on any problem. `runs_here`: the command runs the config on this machine, which is checked for
    what it asks (runner.config.machine_problems); not for `--cfg`, which only prints it."""
    from hydra import compose
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from runner.config import GROUPS, group_options, register_resolvers, search_path, validate

    register_resolvers()
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(_unparsable(parser, overrides) or [_hydra_message(e)]) from e
    problems: list[str] = []
    if config_dir is not None and not os.path.isdir(os.path.expanduser(config_dir)):
        problems.append(f"--config-dir {config_dir}: no such directory")
    searchpath: list[str] = []
    for o in parsed:
        if o.get_key_element() == "hydra.searchpath" and not o.is_sweep_override():  # as Hydra finds it
            value = o.value()
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append(f"hydra.searchpath: expected a list of directories, as in hydra.searchpath=[file:///my/configs], got {value!r}")
                continue
            searchpath = value
            for entry in value:
                d = _searchpath_dir(entry)
                if d is not None and not os.path.isdir(os.path.expanduser(d)):
                    problems.append(f"hydra.searchpath: no such directory: {d}")
            break
    for o in parsed:  # submitit submits through sbatch and runs through srun: off a cluster it fails with a traceback
        if o.key_or_group == "hydra/launcher" and str(o.value()) in ("slurm", "submitit_slurm") and not shutil.which("srun"):
            problems.append(f"hydra/launcher={o.value()}: no SLURM on this machine (no `srun` on PATH); submit from the "
                            "cluster's login node, or drop it to run the jobs here (hydra/launcher=basic)")
    if problems:
        raise ConfigError(problems)
    with search_path([config_dir] if config_dir is not None else [], searchpath):
        compose_overrides = []
        sweeping = False
        for o, raw in zip(parsed, overrides):
            key = o.key_or_group
            if key.startswith("hydra"):
                continue
            if key in GROUPS and not o.is_delete():
                values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
                for v in values:
                    if v is not None and str(v) not in group_options(key):
                        problems.append(f"{key}={v}: unknown option; {choices_hint(str(v), group_options(key))}")
            if o.is_sweep_override():
                sweeping = True
                continue
            compose_overrides.append(raw)
        if problems:
            raise ConfigError(problems)
        cfg = None
        while cfg is None:  # drop unknown keys one by one so that all of them are reported at once
            try:
                cfg = compose(config_name="config", overrides=compose_overrides)
            except HydraException as e:
                m = re.search(r"Could not override '([^']+)'", str(e))
                bad = [o for o in compose_overrides if m and o.split("=", 1)[0].lstrip("~+") == m.group(1)]
                if not bad:
                    raise ConfigError(problems + [_hydra_message(e)]) from e
                compose_overrides.remove(bad[0])
                problems.append(m.group(1))
        if problems:
            known = sorted(_dotted_keys(OmegaConf.to_container(cfg, resolve=False)))
            raise ConfigError([f"{k}: unknown key; {choices_hint(k, known).split('choose one of')[0]}"
                               f"a new key needs a leading +, as in +{k}=..." for k in problems])
        if not sweeping:  # sweep jobs are validated one by one when they start (where they run: SLURM nodes)
            validate(cfg, here=runs_here)  # inside the search path: the options it lists include the user's


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    overrides = list(args.overrides or [])
    debug = _debug_requested(overrides)
    if not (_NO_PREFLIGHT_FLAGS & set(argv)):
        try:
            preflight(overrides, config_dir=args.config_dir, runs_here=not args.cfg)
        except ConfigError as e:
            if debug:
                traceback.print_exc()
            _print_problems(e.problems)
            sys.exit(EXIT_CONFIG)

    import hydra

    from runner.config import CONFIG_DIR, register_resolvers

    register_resolvers()
    sys.argv = [sys.argv[0]] + argv
    hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")(_task)()


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def discard_unstarted_run(cfg) -> None:
    """A run refused by validation in its job (not in preflight: a config that changed in between, a machine
    check): the directory Hydra made for it holds nothing but Hydra's own files, and goes, with its
    runs/<run_name>/ if that is left empty. A directory with a meta.json (a run that started, or the one
    `resume=` names) stays: runner.train.run marks it failed itself; a refused resume's .hydra/resume-<time>/ goes."""
    import shutil

    from hydra.core.hydra_config import HydraConfig

    from runner.config import META_FILE

    if not HydraConfig.initialized():
        return
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.get("resume") not in (None, ""):  # the refused resume's own record goes; the run's stays
        sub = str(HydraConfig.get().get("output_subdir") or "")
        if sub.startswith(".hydra/resume-"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
        return
    if not run_dir.is_dir() or (run_dir / META_FILE).exists():
        return
    if all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()  # only if empty


def _task(cfg) -> float | None:
    """One Hydra job (a run, or one job of a sweep)."""
    from runner.train import run

    debug = bool(cfg.get("debug", False))
    try:
        summary = run(cfg)
    except KeyboardInterrupt as e:
        _print_interrupted(e)
        sys.exit(130)
    except Exception as e:
        if _in_sweep():
            _record_job_failure(e, debug)
            return None
        if isinstance(e, ConfigError):
            if debug:
                traceback.print_exc()
            discard_unstarted_run(cfg)
            _print_problems(e.problems)
            sys.exit(EXIT_CONFIG)
        if debug:
            raise
        print(f"error: {e if isinstance(e, TrainingStopped) else f'{e.__class__.__name__}: {e}'}", file=sys.stderr)
        print("(methodbench: debug=true shows the full traceback)", file=sys.stderr)
        sys.exit(1)
    # Sweepers (Optuna) minimise the returned value.
    return None if not summary else summary.get("val/loss")


def resume_command(overrides: Sequence[str], run_dir: str | Path) -> str:
    """`python -m runner <overrides> resume=<run dir>`: the command line that resumes the run, quoted for a shell."""
    import shlex

    kept = [o for o in overrides if _override_key(o) != "resume"]
    return " ".join(["python", "-m", "runner", *map(shlex.quote, kept), shlex.quote(f"resume={run_dir}")])


def _print_interrupted(e: KeyboardInterrupt) -> None:
    """Ctrl-C: what was saved and the exact command that resumes the run."""
    from hydra.core.hydra_config import HydraConfig

    from runner.checkpoints import newest_intact

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    saved = getattr(e, "checkpoint", None) or (newest_intact(run_dir)[0] if run_dir.is_dir() else None)
    what = str(e) if isinstance(e, RunInterrupted) else "interrupted"
    if saved is None:
        print(f"{what}; no checkpoint was written: nothing to resume (run it again)", file=sys.stderr)
        return
    if not isinstance(e, RunInterrupted) or e.checkpoint is None:
        what += f"; the newest checkpoint is {saved}"
    print(f"{what}\nresume with: {resume_command(list(hc.overrides.task), run_dir)}", file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# Failed jobs of a sweep. A job that raised is recorded and returns normally: raising would make Hydra's
# BasicSweeper re-raise the first failure once the batch is done (a traceback, no on_multirun_end, and no
# later batch when hydra.sweeper.max_batch_size is set); a SystemExit would end the sweep at once.
def _record_job_failure(e: Exception, debug: bool) -> None:
    """Write status failed + the error into the job's meta.json (unless the run already did), log it to the
    job's log file and print it as one line."""
    from hydra.core.hydra_config import HydraConfig

    from runner.config import META_FILE
    from runner.train import load_meta, write_json

    hc = HydraConfig.get()
    error = "; ".join(e.problems) if isinstance(e, ConfigError) else f"{e.__class__.__name__}: {e}"
    error = " ".join(error.split())
    run_dir = Path(hc.runtime.output_dir)
    meta = load_meta(run_dir)
    if meta.get("status") != "failed":  # runner.train.run records the failures it sees itself
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / META_FILE, {**meta, "status": "failed", "error": error})
    if debug:
        traceback.print_exc()
    log.error("sweep job #%s failed: %s", hc.job.num, error, exc_info=debug)
    print(f"error: sweep job #{hc.job.num} failed: {error} ({run_dir})", file=sys.stderr)


def _override_key(s: str) -> str:
    return s.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _swept_keys(config) -> set[str]:
    """Keys the sweep varies: sweep overrides on the command line and hydra.sweeper.params (sweeps/*.yaml)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parser = OverridesParser.create()
    keys = {_override_key(str(k)) for k in (OmegaConf.select(config, "hydra.sweeper.params") or {})}
    for s in OmegaConf.select(config, "hydra.overrides.task") or []:
        try:
            if parser.parse_override(s).is_sweep_override():
                keys.add(_override_key(s))
        except Exception:  # Hydra parsed it before; a label is not worth failing for
            continue
    return keys


def _job_dirs(config, seen: Sequence[str]) -> list[Path]:
    """Directories of the sweep's jobs: those that ran in this process (`seen`) and, for launchers that run
    jobs elsewhere (submitit), those found under the sweep directory. Jobs whose run_name differs (a sweep
    over model= or method=) live in sibling sweep directories of the same name: runs/<run_name>/multirun_*."""
    from omegaconf import OmegaConf

    dirs = {Path(d).resolve() for d in seen}
    try:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        template = str(OmegaConf.to_container(config.hydra.sweep, resolve=False).get("dir", ""))
    except Exception:  # the directory does not resolve outside its jobs
        return sorted(dirs)
    bases = [sweep_dir]
    if "run_name" in template:
        bases += [p for p in sweep_dir.parent.parent.glob(f"*/{sweep_dir.name}") if p.is_dir()]
    for base in bases:
        dirs |= {p.parent.parent.resolve() for p in base.glob("*/.hydra/overrides.yaml")}
    return sorted(dirs)


def sweep_failures(config, seen: Sequence[str] = ()) -> tuple[list[tuple[int | str, str]], int]:
    """([(job number, its swept overrides)] of the failed jobs, number of jobs) of the sweep `config`."""
    from omegaconf import OmegaConf

    from runner.config import META_FILE

    swept = _swept_keys(config)
    failed, jobs = [], _job_dirs(config, seen)
    for d in jobs:
        try:
            if json.loads((d / META_FILE).read_text()).get("status") != "failed":
                continue
        except (OSError, ValueError):
            continue
        try:
            overrides = [str(o) for o in OmegaConf.load(d / ".hydra" / "overrides.yaml")]
            num = OmegaConf.load(d / ".hydra" / "hydra.yaml").hydra.job.num
        except Exception:
            overrides, num = [], d.name
        label = [o for o in overrides if _override_key(o) in swept] or overrides
        failed.append((num, " ".join(label)))
    failed.sort(key=lambda f: (f[0], "") if isinstance(f[0], int) else (sys.maxsize, str(f[0])))
    return failed, len(jobs)


class SweepFailures(Callback):
    """Hydra callback (configs/config.yaml hydra.callbacks): when a sweep ends with failed jobs, one line
    naming them (job number and the overrides the sweep varies) and exit code 1. SystemExit passes through
    Hydra's run_and_report (it catches Exception), so no traceback."""

    def __init__(self) -> None:
        self.job_dirs: list[str] = []

    def on_job_end(self, config, job_return, **kwargs) -> None:
        self.job_dirs.append(str(config.hydra.runtime.output_dir))

    def on_multirun_end(self, config, **kwargs) -> None:
        failed, total = sweep_failures(config, self.job_dirs)
        if failed:
            names = ", ".join(f"#{num} ({label})" for num, label in failed)
            print(f"error: {len(failed)} of {total} sweep jobs failed: {names}", file=sys.stderr)
            raise SystemExit(1)
