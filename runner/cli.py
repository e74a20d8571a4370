"""`python -m runner`: Hydra's command line with errors a person can act on.

Before Hydra runs anything, the overrides are checked and the config is composed and validated once
(`preflight`): a bad option, key, type or path ends the program with one line per problem on stderr and
exit code 2, not a traceback. `debug=true` shows tracebacks instead.
"""

from __future__ import annotations

import os
import re
import sys
import traceback

from runner.errors import ConfigError, choices_hint

EXIT_CONFIG = 2
_NO_PREFLIGHT_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--version", "--shell-completion", "-sc"}


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


def _dotted_keys(d, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out.append(f"{prefix}{k}")
        if isinstance(v, dict):
            out += _dotted_keys(v, f"{prefix}{k}.")
    return out


def preflight(overrides: list[str]) -> None:
    """Compose the job config from `overrides` and validate it; raise ConfigError on any problem."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from runner.config import CONFIG_DIR, GROUPS, group_options, register_resolvers, validate

    register_resolvers()
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise ConfigError(_hydra_message(e)) from e
    problems: list[str] = []
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
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name="methodbench"):
                cfg = compose(config_name="config", overrides=compose_overrides)
        except HydraException as e:
            m = re.search(r"Could not override '([^']+)'", str(e))
            bad = [o for o in compose_overrides if m and o.split("=", 1)[0].lstrip("~+") == m.group(1)]
            if not bad:
                raise ConfigError(problems + [_hydra_message(e)]) from e
            compose_overrides.remove(bad[0])
            problems.append(m.group(1))
        finally:
            GlobalHydra.instance().clear()
    if problems:
        known = sorted(_dotted_keys(OmegaConf.to_container(cfg, resolve=False)))
        raise ConfigError([f"{k}: unknown key; {choices_hint(k, known).split('choose one of')[0]}"
                           f"a new key needs a leading +, as in +{k}=..." for k in problems])
    if not sweeping:  # sweep jobs are validated one by one when they start
        validate(cfg)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    overrides = list(args.overrides or [])
    debug = _debug_requested(overrides)
    if not (_NO_PREFLIGHT_FLAGS & set(argv)):
        try:
            preflight(overrides)
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


def _task(cfg) -> float | None:
    """One Hydra job (a run, or one job of a sweep)."""
    from runner.train import run

    debug = bool(cfg.get("debug", False))
    try:
        summary = run(cfg)
    except ConfigError as e:
        if debug:
            traceback.print_exc()
        _print_problems(e.problems)
        sys.exit(EXIT_CONFIG)
    except KeyboardInterrupt:
        print("interrupted; resume with resume=<run dir> (checkpoints are kept)", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if debug:
            raise
        print(f"error: {e.__class__.__name__}: {e}", file=sys.stderr)
        print("(methodbench: debug=true shows the full traceback)", file=sys.stderr)
        sys.exit(1)
    # Sweepers (Optuna) minimise the returned value.
    return None if not summary else summary.get("val/loss")
