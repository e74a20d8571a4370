"""Logging: W&B (offline by default), CSV, or nothing; all through Lightning loggers.

The resolved config goes to W&B flattened to dotted keys (`model.hidden_size`), so runs can be
filtered and grouped by any key. Online mode never hangs or crashes a run without a network: if the
W&B service cannot be reached in `init_timeout` seconds, the run continues offline and says so.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'model': {'hidden_size': 8}} -> {'model.hidden_size': 8}; `_target_` becomes `target`."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            k = "target" if k == "_target_" else str(k)
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = d
    return out


def wandb_names(run_name: str, sweep: dict | None) -> tuple[str, str | None]:
    """(W&B run name, group): the run name alone; in a sweep `<run name>/<job label>` (distinct per job) in the
    group `<sweep name or run name>-<sweep start time>` (runner.train._hydra_info's sweep)."""
    if not sweep:
        return run_name, None
    return f"{run_name}/{sweep['job']}", f"{sweep.get('sweep') or run_name}-{sweep['time']}"


def method_tags(target: str, name: str) -> list[str]:
    """W&B tags of a run's method: its family (the folder or module under methods/: optimizers, retrieval, ...;
    `baseline` for methods.base.Method; a class of your own: its top package) and its name."""
    parts = target.split(".")
    if target == "methods.base.Method":
        family = "baseline"
    else:
        family = parts[1] if parts[0] == "methods" and len(parts) >= 3 else parts[0]
    return [f"family:{family}", f"method:{name}"]


def make_logger(lcfg, run_dir: Path, run_name: str, run_id: str, group: str | None, config: dict,
                job_type: str | None = None, tags: tuple[str, ...] | list[str] = ()):
    """A Lightning logger for `logger.kind`, or False. W&B: `tags` follow logger.tags; `job_type` is the run's
    kind of work (train, compress, evaluate)."""
    if lcfg.kind == "none":
        return False
    if lcfg.kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(str(run_dir), name="csv", version="")
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    kwargs = dict(project=lcfg.project, entity=lcfg.entity, name=run_name, id=run_id, group=lcfg.group or group,
                  job_type=job_type, tags=[*lcfg.tags, *(t for t in tags if t not in lcfg.tags)], dir=str(run_dir),
                  config=flatten(config), resume="allow", reinit="create_new")
    mode = lcfg.mode
    try:
        run = wandb.init(mode=mode, settings=wandb.Settings(init_timeout=float(lcfg.get("init_timeout", 30.0)), console="off",
                                                            silent=True, x_disable_stats=True), **kwargs)
    except Exception as e:  # no network, no key, service down: keep the run going
        if mode != "online":
            raise
        log.warning("W&B online init failed (%s); logging offline to %s instead (wandb sync later)",
                    str(e).splitlines()[0], run_dir / "wandb")
        wandb.teardown()  # the failed attempt still holds the run id in W&B's service process
        run = wandb.init(mode="offline", settings=wandb.Settings(console="off", silent=True, x_disable_stats=True), **kwargs)
    return WandbLogger(experiment=run, save_dir=str(run_dir), log_model=False)


def log_figures(logger, figures: dict, step: int | None = None) -> None:
    """Image files as W&B images (`figures/<name>`); other loggers keep only the files (their paths are in
    summary.json under `figures`)."""
    if not figures or logger is False or logger is None:
        return
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        for name, path in figures.items():
            logger.log_image(key=f"figures/{name}", images=[str(path)], step=step)


def finish(logger, summary: dict, failed: bool = False) -> None:
    """Close the run's logger; a failed run is finished as failed (W&B exit code 1)."""
    if logger is False or logger is None:
        return
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        run = logger.experiment
        for k, v in summary.items():
            run.summary[k] = v
        run.finish(exit_code=1 if failed else 0)
    else:
        logger.finalize("failed" if failed else "success")


def read_offline_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Read a run's offline W&B files back: {'id', 'group', 'name', 'job_type', 'tags', 'config', 'history':
    [rows], 'summary', 'segments'}.

    Several offline segments of one run (a resumed run) are merged in order. Useful for tests and for
    looking at runs without syncing them.
    """
    import json

    from wandb.proto import wandb_internal_pb2

    files = sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb"))
    out: dict[str, Any] = {"id": None, "group": None, "name": None, "job_type": None, "tags": [], "config": {},
                           "history": [], "summary": {}, "segments": len(files)}
    for f in files:
        for data in _wandb_records(f):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(data)
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                out["id"] = rec.run.run_id
                out["group"] = rec.run.run_group or None
                out["name"], out["job_type"] = rec.run.display_name or None, rec.run.job_type or None
                out["tags"] = list(rec.run.tags)
                for item in rec.run.config.update:
                    out["config"][item.key] = json.loads(item.value_json)
            elif kind == "config":
                for item in rec.config.update:
                    out["config"][item.key] = json.loads(item.value_json)
            elif kind == "history":
                out["history"].append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
            elif kind == "summary":
                for item in rec.summary.update:
                    out["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    # wandb stores config values as {"value": v}
    out["config"] = {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in out["config"].items()}
    return out


def _wandb_records(path: Path):
    """Records of a .wandb file: a 7-byte header (':W&B', 0xBEE1, version) then a LevelDB-style log of
    32 KiB blocks, each record chunk prefixed by crc32 (4), length (2, little-endian) and type (1:
    full, 2: first, 3: middle, 4: last)."""
    import struct

    raw = path.read_bytes()
    if raw[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    block, pos, buf = 32768, 7, b""
    while pos + 7 <= len(raw):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = raw[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            yield buf + chunk
            buf = b""
