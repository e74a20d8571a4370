"""What the bench scripts share: one `python -m runner` run per arm, reused when it finished before."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_one(name: str, overrides: list[str], runs_dir: Path, rerun: bool = False) -> Path:
    """The run directory of `python -m runner <overrides> run_name=<name>` under `runs_dir`: a finished one
    (it has a summary.json) unless `rerun`, else a fresh run in its own process, logged to <name>.log."""
    done = sorted(runs_dir.glob(f"{name}/*/summary.json"), key=lambda p: p.stat().st_mtime)
    if done and not rerun:
        print(f"  {name}: reusing {done[-1].parent}", flush=True)
        return done[-1].parent
    cmd = [sys.executable, "-m", "runner", *overrides, f"run_name={name}", f"paths.runs_dir={runs_dir}"]
    print(f"  {name}: {' '.join(cmd[3:])}", flush=True)
    t0 = time.time()
    log = runs_dir / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "CI": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}); see {log}")
    run = sorted(runs_dir.glob(f"{name}/*/summary.json"), key=lambda p: p.stat().st_mtime)[-1].parent
    print(f"  {name}: done in {time.time() - t0:.0f}s -> {run}", flush=True)
    return run
