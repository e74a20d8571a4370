"""What a run keeps on disk, which checkpoint a resume starts from, and which process may run a run directory.

- A checkpoint is written atomically (runner/callbacks.py AtomicCheckpointIO: serialized, written to
  `.<name>.tmp<pid>`, its size checked, renamed) and its sha256 then recorded in `checkpoints/SHA256SUMS`
  (the `sha256sum -c` format). A partial write a crash left behind is removed when the run directory is next
  opened.
- A resume starts from the newest intact checkpoint: its sha256 matches the recorded one (a checkpoint with no
  record, an older run's, must load); a bad one is passed over with a warning naming it and why, and when none
  is intact the error names each.
- A run directory belongs to one process at a time: `fcntl.flock` on `<run dir>/run.lock`, held for the run's
  life (the kernel lets go when the process dies, SIGKILL included). `resume=auto` passes over a run another
  process holds (and a finished one) and starts a new run; `resume=<dir>` of a held run is an error.
- A run is finished when its meta.json says so and its summary.json is written.

No Lightning here (runner.config imports this module to resolve `resume=auto`); torch only where a checkpoint
is loaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
from pathlib import Path

from runner.errors import ConfigError

log = logging.getLogger("methodbench")

META_FILE = "meta.json"
LOCK_FILE = "run.lock"
SUMS_FILE = "SHA256SUMS"
_STEP = re.compile(r"step(\d+)\.ckpt")
_PARTIAL = re.compile(r"\..+\.tmp\d+")  # AtomicCheckpointIO's and write_json's temporary files


# -- runs --------------------------------------------------------------------------------------
def read_meta(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / META_FILE).read_text())
    except (OSError, ValueError):
        return {}


def is_finished(run_dir: Path) -> bool:
    """Whether the run in `run_dir` finished: meta.json says so and summary.json is there."""
    return read_meta(run_dir).get("status") == "finished" and (Path(run_dir) / "summary.json").is_file()


def finished_max_steps(run_dir: Path) -> int | None:
    """The trainer.max_steps a finished run ran to (its summary.json's config)."""
    try:
        return int(json.loads((Path(run_dir) / "summary.json").read_text())["config"]["trainer"]["max_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# -- locks -------------------------------------------------------------------------------------
_HELD: dict[str, int] = {}  # run dir -> the open lock file this process holds


def try_lock(run_dir: Path) -> bool:
    """Take `run_dir`'s lock for this process (kept until `unlock` or the process ends); False when another
    process holds it. Taking a lock this process holds already is a no-op."""
    key = str(Path(run_dir).resolve())
    if key in _HELD:
        return True
    Path(key).mkdir(parents=True, exist_ok=True)
    fd = os.open(Path(key) / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD[key] = fd
    return True


def unlock(run_dir: Path) -> None:
    fd = _HELD.pop(str(Path(run_dir).resolve()), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor of the open file releases the flock


def lock_holder(run_dir: Path) -> str:
    """`pid N` of the process whose pid the lock file names (for messages)."""
    try:
        pid = (Path(run_dir) / LOCK_FILE).read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid else "pid unknown"


def held_by_another(run_dir: Path) -> bool:
    """Whether another process holds `run_dir`'s lock (asked without keeping it)."""
    key = str(Path(run_dir).resolve())
    if key in _HELD or not (Path(key) / LOCK_FILE).exists():
        return False
    if try_lock(key):
        unlock(key)
        return False
    return True


# -- checkpoints -------------------------------------------------------------------------------
def step_of(path: Path) -> int | None:
    m = _STEP.fullmatch(Path(path).name)
    return int(m.group(1)) if m else None


def checkpoints_newest_first(run_dir: Path) -> list[Path]:
    """The run's checkpoints a resume may start from, newest first: a last.ckpt that is a file of its own (a hard
    link or copy where symlinks fail, or an older run's), then the step files by step. A symlinked last.ckpt
    is its target, one of the step files."""
    ckdir = Path(run_dir) / "checkpoints"
    steps = sorted((p for p in ckdir.glob("step*.ckpt") if step_of(p) is not None), key=step_of, reverse=True)
    last = ckdir / "last.ckpt"
    return ([last] if last.is_file() and not last.is_symlink() else []) + steps


def read_sums(ckdir: Path) -> dict[str, str]:
    try:
        lines = (Path(ckdir) / SUMS_FILE).read_text().splitlines()
    except OSError:
        return {}
    return {name.lstrip("*"): digest for digest, _, name in (ln.partition("  ") for ln in lines) if name}


def _write_sums(ckdir: Path, sums: dict[str, str]) -> None:
    tmp = Path(ckdir) / f".{SUMS_FILE}.tmp{os.getpid()}"
    tmp.write_text("".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))
    os.replace(tmp, Path(ckdir) / SUMS_FILE)


def record_sum(path: Path, digest: str) -> None:
    path = Path(path)
    _write_sums(path.parent, {**read_sums(path.parent), path.name: digest})


def forget_sum(path: Path) -> None:
    path = Path(path)
    sums = read_sums(path.parent)
    if sums.pop(path.name, None) is not None:
        _write_sums(path.parent, sums)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be resumed from, or None if it is intact: its sha256 against the
    recorded one; a checkpoint with no record (written before SHA256SUMS) must load."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if size == 0:
        return "empty (0 bytes)"
    want = read_sums(path.parent).get(path.resolve().name if path.is_symlink() else path.name)
    if want:
        got = file_sha256(path)
        return None if got == want else f"corrupted: its sha256 is not the one recorded in {SUMS_FILE} ({size:,} bytes)"
    import torch

    try:
        torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as e:  # noqa: BLE001  (whatever a torn or foreign file raises)
        return f"unreadable ({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else '-'})"
    return None


def newest_intact(run_dir: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest intact checkpoint of the run or None, [(a newer bad one, why)])."""
    bad = []
    for p in checkpoints_newest_first(run_dir):
        problem = checkpoint_problem(p)
        if problem is None:
            return p, bad
        bad.append((p, problem))
    return None, bad


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint a resume of `run_dir` starts from: the newest intact one, each newer bad one named in a
    warning. None if the run has none; ConfigError naming every checkpoint if none is intact."""
    found, bad = newest_intact(run_dir)
    for p, problem in bad:
        if found is not None:
            log.warning("checkpoint %s is %s; resuming from the newest intact one, %s", p, problem, found.name)
    if found is None and bad:
        raise ConfigError(f"resume: no intact checkpoint in {Path(run_dir) / 'checkpoints'}: "
                          + "; ".join(f"{p.name} is {problem}" for p, problem in bad)
                          + " (nothing to resume from; start a new run without resume=)")
    return found


def remove_partial_writes(run_dir: Path) -> list[Path]:
    """Delete the temporary files of a write a crash interrupted (`.<name>.tmp<pid>` in the run directory and
    its checkpoints/); call it holding the run's lock. Returns what was removed."""
    removed = []
    for d in (Path(run_dir), Path(run_dir) / "checkpoints"):
        for p in d.glob(".*.tmp*") if d.is_dir() else []:
            if _PARTIAL.fullmatch(p.name) and p.is_file():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    if removed:
        log.info("removed what a crash left half-written: %s", ", ".join(str(p) for p in removed))
    return removed
