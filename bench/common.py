"""What the bench scripts share: one `python -m runner` run per arm, reused when it finished before."""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


def fmt(values: list[float | None]) -> str:
    """mean ± half-range over seeds ("-" when there is no value)."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ± {(max(values) - min(values)) / 2:.3f}"


def arm_slug(label: str) -> str:
    return label.split(" (")[0].replace(" ", "-").replace("/", "-").lower()


def run_tables(experiments: dict, doc: str, default_runs_dir: str, threads: list[str], argv=None,
               slug=arm_slug) -> dict[str, dict[str, list[dict]]]:
    """The CLI of a repro script: `experiments` maps a name to ([(arm label, overrides)], summary keys to show, and
    optionally the seeds of that experiment); each arm runs once per seed (run_one); one markdown table per
    experiment (mean ± half-range over seeds) is printed. Returns {experiment: {arm: [summary per seed]}}."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiments", nargs="*", help=f"of: {', '.join(experiments)} (default: all)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--runs-dir", type=Path, default=Path(default_runs_dir))
    ap.add_argument("--rerun", action="store_true")
    args = ap.parse_args(argv)
    unknown = [e for e in args.experiments if e not in experiments]
    if unknown:
        ap.error(f"unknown experiment {unknown[0]!r}; choose from: {', '.join(experiments)}")
    out = {}
    for exp in args.experiments or list(experiments):
        arms, keys, *own = experiments[exp]
        seeds = [int(x) for x in (own[0] if own else args.seeds).split(",")]
        rows = {}
        for label, overrides in arms:
            summaries = []
            for seed in seeds:
                run = run_one(f"{exp}-{slug(label)}-s{seed}", [*overrides, *threads, f"seed={seed}"], args.runs_dir,
                              args.rerun)
                summaries.append(json.loads((run / "summary.json").read_text()))
            rows[label] = summaries
        shown = keys or sorted({k for ss in rows.values() for s in ss for k in s if k.startswith("eval/")
                                and isinstance(s[k], (int, float))})
        print(f"\n### {exp} (seeds {','.join(map(str, seeds))})\n")
        print("| arm | " + " | ".join(k.removeprefix("eval/") for k in shown) + " |")
        print("|---|" + "---|" * len(shown))
        for label, ss in rows.items():
            print(f"| {label} | " + " | ".join(fmt([s.get(k) for s in ss]) for k in shown) + " |")
        out[exp] = rows
    return out
