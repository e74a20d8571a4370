"""Every shipped method runs end to end through the real `python -m runner` on the CPU.

A new method is covered by adding its YAML. The methods that train run a few steps from scratch in one
Hydra multirun (`-m method=a,b,...`: one process, one job per method); the methods that do not
(compression, inference) run in a second multirun on the shared cached base model
(`model.init_from=base`); every compressed model must load again through `model.init_from=<model.pt>`
and evaluate to the same val loss (a third multirun). Each method's own properties are proved in
tests/methods/; this file proves the wiring.
"""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from runner.config import group_options
from tests.conftest import BASE_STEPS, TINY, compose_cfg, dataset_for, run_cli, run_in_process, tiny_for

pytestmark = pytest.mark.e2e
METHODS = group_options("method")
STEPS = 4


def _method(method: str):
    from hydra.utils import instantiate

    return instantiate(compose_cfg([f"method={method}"]).method, _convert_="all")


def _trains(method: str) -> bool:
    return _method(method).trains


def _group(method: str) -> tuple[tuple[str, ...], bool]:
    """(the test dataset overrides for what it needs of the task, () for the default corpus; whether it starts
    from a trained model)."""
    m = _method(method)
    return tuple(dataset_for(m.needs_task, m.needs_model)), m.needs_trained_model


def _summaries(runs: Path) -> dict[str, dict]:
    """{method name or init_from: summary} of every finished job under `runs`."""
    out = {}
    for f in runs.rglob("summary.json"):
        s = json.loads(f.read_text())
        out[s["config"]["method"]["name"]] = s
    return out


@pytest.fixture(scope="session")
def method_runs(tmp_path_factory, base_lm):
    groups: dict[tuple[tuple[str, ...], bool], list[str]] = {}
    for m in METHODS:
        groups.setdefault(_group(m), []).append(m)
    runs = tmp_path_factory.mktemp("methods")
    jobs = {}
    for (dataset, needs_model), methods in sorted(groups.items()):
        model = [o.split("=", 1)[1] for o in dataset if o.startswith("model=")]
        label = "-".join([dataset[0].split("=")[-1] if dataset else "default", *model[:1],
                          "post" if needs_model else "train"])
        # base_steps as in BASE: a method that asks for the base model from scratch (EMO's cost embedding) gets
        # the one base_lm trained, not a second one
        common = [*tiny_for(dataset), f"base_steps={BASE_STEPS}", *(["model.init_from=base"] if needs_model else []),
                  *dataset]  # with the default corpus: BASE
        steps = [f"trainer.max_steps={STEPS}", f"trainer.val_every_n_steps={STEPS}"]
        if needs_model and not any(_trains(m) for m in methods):
            steps = ["trainer.max_steps=0"]
        jobs[label] = ["-m", f"method={','.join(methods)}", *common, *steps, "logger=csv"]
    # one multirun per group, two at a time (each runs single-threaded: hardware.threads=1)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {label: pool.submit(run_cli, *args, runs_dir=runs / label, check=False, timeout=1200)
                   for label, args in jobs.items()}
        procs = {label: f.result() for label, f in futures.items()}
    summaries = {k: v for label in procs for k, v in _summaries(runs / label).items()}
    saved = {m: s["compress/saved"] for m, s in summaries.items() if "compress/saved" in s}
    reloaded = {m: _reload(path, runs / "reload" / m) for m, path in saved.items()}
    return summaries, reloaded, procs


def _reload(path: str, run_dir: Path) -> dict | None:
    """The baseline's 0-step run of `model.init_from=<path>`, in this process (the runner's own code path; a
    process per saved model would cost its start-up and imports each time): its summary, None if it failed."""
    try:
        return run_in_process(["method=adamw", *TINY, "trainer.max_steps=0", f"model.init_from={path}",
                               "logger=none"], run_dir)
    except Exception as e:  # reported by the test of that method, not by the fixture
        return {"error": f"{e.__class__.__name__}: {e}"}


@pytest.mark.parametrize("method", METHODS)
def test_method_runs_end_to_end(method, method_runs):
    summaries, reloaded, procs = method_runs
    name = compose_cfg([f"method={method}"]).method.name
    if name not in summaries:
        tails = "\n".join(f"[{k}] rc={p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}" for k, p in procs.items())
        pytest.fail(f"method={method} wrote no summary.json\n{tails}")
    s = summaries[name]
    assert math.isfinite(s["val/loss"]), s
    trains = "train" in s["stages"]
    assert s["steps"] == (STEPS if trains else 0)
    if "compress" in s["stages"]:
        for key in ("compress/val_loss_before", "compress/val_loss_after", "compress/kl_to_dense",
                    "compress/params_after", "compress/nonzeros_after"):
            assert math.isfinite(s[key]), key
        assert s["compress/val_loss_after"] == pytest.approx(s["val/loss"], rel=1e-6)
        # the saved compressed model loads again and evaluates to the same loss
        again = reloaded.get(name)
        assert again is not None and "error" not in again, f"model.init_from={s['compress/saved']}: {again}"
        assert again["val/loss"] == pytest.approx(s["val/loss"], rel=1e-5)
    if "evaluate" in s["stages"]:
        assert any(k.startswith("eval/") for k in s), list(s)
    if name == "evopress":  # the search's fitness per generation reaches the logger, one row per generation
        import csv

        rows = list(csv.DictReader(open(Path(s["run_dir"]) / "csv" / "metrics.csv")))
        fitness = [float(r["compress/fitness"]) for r in rows if r.get("compress/fitness")]
        assert len(fitness) == s["eval/generations"] + 1 and fitness == sorted(fitness, reverse=True)
