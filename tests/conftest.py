"""Shared test set-up: one corpus/tokenizer cache for the whole session (and its subprocesses), tiny
model overrides, and helpers that run `python -m runner` in a process of its own (run_cli, kill_at_checkpoint)
or the runner in this one (run_in_process, cli_in_process)."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

from runner.config import compose as compose_cfg  # noqa: F401  (the tests' name for it)

pytest_plugins = ["tests.tiers", "pytester"]  # pytester: tests/test_tiers.py; the tiers (unit / e2e / repro), their guard, the time budget

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("METHODBENCH_CACHE", str(REPO / ".cache" / "methodbench"))
os.environ.setdefault("WANDB_SILENT", "true")

# A model small enough that a few dozen steps take seconds on 2 cores.
TINY = ["model.hidden_size=64", "model.intermediate_size=128", "model.num_layers=2", "model.num_heads=2",
        "model.seq_len=64", "dataset.batch_size=16", "dataset.tokenizer.vocab_size=1024", "trainer.val_batches=2",
        "hardware.threads=1"]


def run_cli(*args: str, runs_dir: Path, check: bool = True, timeout: float = 600, env: dict | None = None,
            fresh: bool = False):
    """`python -m runner <args> paths.runs_dir=<runs_dir>`; returns CompletedProcess (text). `env` adds
    variables to the environment; a value of None removes one. The process is a fork of a server that has
    imported torch and Lightning once (tests/cli_fork.py: ~12 s of CPU less per run), unless `fresh` or `env`
    changes what an interpreter reads at start: then a real `python -m runner`."""
    from tests import cli_fork

    full_env = {**os.environ, "CI": "1", **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v is not None}  # None: unset
    args = [*args, f"paths.runs_dir={runs_dir}"]
    cmd = [sys.executable, "-m", "runner", *args]
    if fresh or not cli_fork.forkable(full_env):
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env)
    else:
        cli = cli_fork.start(args, cwd=REPO, env=full_env)
        try:
            code = cli.wait(timeout)
            proc = subprocess.CompletedProcess(cmd, code, *cli.output())
        finally:
            cli.close()
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} -> {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-3000:]}")
    return proc


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli_in_process(args: list[str], runs: Path) -> Result:
    """`runner.cli.main(args)` in this process, as `python -m runner <args>` runs it up to its preflight: the exit
    code and output of a bad command line (the e2e tests cross the process boundary). A command that passes
    preflight fails here: Hydra's job would configure logging in this process (`logging.config.dictConfig`
    closes every handler, pytest's own included), so a run in process goes through `runner.train.run`."""
    from unittest import mock

    from runner.cli import main

    def no_job(*_, **__):
        raise AssertionError(f"cli_in_process{args}: preflight passed; run it with run_cli or runner.train.run")

    out, err = io.StringIO(), io.StringIO()
    code, argv = 0, list(sys.argv)
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), mock.patch("hydra.main", no_job):
        try:
            main([*args, f"paths.runs_dir={runs}"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except Exception:  # a crash is not the contract: the test shows it
            traceback.print_exc(file=err)
            code = -1
        finally:
            sys.argv[:] = argv
    return Result(code, out.getvalue(), err.getvalue())


def run_in_process(overrides: list[str], run_dir: Path) -> dict:
    """`runner.train.run` on the composed `overrides` in this process, writing `run_dir`: its summary (or its
    plan with dry_run=true). The RNG states of the caller are kept."""
    import torch

    from runner.train import run

    with torch.random.fork_rng():
        return run(compose_cfg([*overrides, f"paths.runs_dir={run_dir.parent}"]), run_dir=run_dir)


def kill_at_checkpoint(*args: str, runs_dir: Path, checkpoint: str, timeout: float = 300) -> tuple[Path, dict]:
    """Start `python -m runner <args>` (forked, as run_cli) and SIGKILL its process group as soon as a
    `checkpoint` file (e.g. step000020.ckpt) exists in its run directory: (that run directory, its meta.json
    then). Fails if no such checkpoint appears or the run finished first."""
    import json
    import signal
    import time

    from tests import cli_fork

    cli = cli_fork.start([*args, f"paths.runs_dir={runs_dir}"], cwd=REPO, env={**os.environ, "CI": "1"})
    try:
        target, deadline = None, time.time() + timeout
        while time.time() < deadline and cli.poll() is None:
            found = _glob(Path(runs_dir), f"*/*/checkpoints/{checkpoint}")
            if found:
                target = found[0]
                break
            time.sleep(0.05)
        if target is None:
            cli.killpg(signal.SIGKILL)
            cli.wait(60)
            raise AssertionError(f"no {checkpoint} appeared: {cli.output()[1][-2000:]}")
        cli.killpg(signal.SIGKILL)
        assert cli.wait(60) == -signal.SIGKILL, "the run exited before it was killed"
    finally:
        cli.close()
    killed = target.parent.parent
    assert not (killed / "summary.json").exists(), "the run finished before it was killed"
    return killed, json.loads((killed / "meta.json").read_text())


def _glob(root: Path, pattern: str) -> list[Path]:
    """root.glob(pattern), again when a directory vanished while it was listed (the runner's preflight makes and
    removes a write-check directory in the runs directory: runner.config._unwritable)."""
    for _ in range(20):
        try:
            return list(root.glob(pattern))
        except FileNotFoundError:
            continue
    return list(root.glob(pattern))


def run_dirs(runs_dir: Path) -> list[Path]:
    """Run directories (those with a meta.json) under runs_dir, oldest first."""
    return sorted((p.parent for p in Path(runs_dir).glob("*/*/meta.json")), key=lambda p: p.stat().st_mtime)


# Methods that need a capability of the task the default corpus lacks (`Method.needs_task`) run on this test
# config of a task that provides it (tests/test_methods_e2e.py, tests/test_configs.py); add an entry with a new one.
DATASETS: dict[str, list[str]] = {
    "domains": ["dataset=mixture-tiny"],  # prose, code, a Markov chain and a sample: false target (tasks/mixture.py)
    "forget-retain": ["dataset=fictitious-authors", "dataset.generator.num_authors=30"],  # the models of tests/methods/test_unlearning_pipeline.py
    # source -> target pairs, with the encoder-decoder they are for (EISL): tests/methods/test_eisl.py's sizes
    "seq2seq": ["dataset=noisy-copy", "model=t5-tiny", "dataset.generator.train_size=256", "dataset.generator.val_size=32"],
    # labelled texts for an encoder (tasks/text_cls.py): binary (MPU), split 60/40 (bert_aigt's paper)
    "text-classification": ["dataset=keyword-cls", "model=bert-tiny", "dataset.generator.num_classes=2",
                            "dataset.generator.variant=bag", "dataset.generator.n=200", "dataset.val_fraction=0.4"],
    "text-regression": ["dataset=synthetic-essays", "model=bert-tiny", "dataset.generator.n=200"],
    # queries, passages and qrels for a bi-encoder (tasks/retrieval.py): a 150-passage subset of stdlib-retrieval
    "retrieval": ["dataset=stdlib-retrieval", "model=bert-tiny", "dataset.max_passages=150", "dataset.eval.k=20"],
    # dictionary entries and their definitions (tasks/dictionary.py): 64 stdlib entries (DefSent+)
    "definitions": ["dataset=dictionary", "model=bert-tiny", "dataset.max_entries=64", "dataset.sts_pairs=50"],
    # N = 5 float sets and their sorted order, for a pointer network (tasks/sets.py, Read-Process-Write)
    "sets": ["dataset=sort-sets", "model=rpw", "dataset.generator.train_size=256", "dataset.generator.val_size=32"],
    # documents in two aligned views, topic words and full tokens (tasks/topics.py, ctx-DocNADE)
    "bag-of-words": ["dataset=stdlib-topics", "model=ctx-docnade", "dataset.max_examples=300"],
    # words as character canvases (tasks/words.py, eTok)
    # a prompt slot + sentence -> label word with planted trigger tokens, for t5-tiny (ClaPS's prompt search)
    "prompt-classification": ["dataset=trigger-cls", "model=t5-tiny", "dataset.generator.train_size=512",
                              "dataset.generator.val_size=100", "dataset.generator.prompt_words=50",
                              "dataset.generator.sentence_words=50"],
    # generated Chinese web documents with planted labels and one violator per rule (tasks/zh_web.py, MDFG)
    "zh-web": ["dataset=zh-web-synthetic", "dataset.documents=60", "dataset.clean_documents=30", "dataset.labelled=40"],
    # masked-LM blocks of the default corpus for a BERT (tasks/mlm.py; ERNIE-Gram's explicit n-gram MLM)
    "masked-tokens": ["dataset=stdlib-docs-mlm", "model=bert-tiny"],
    "words": ["dataset=stdlib-words", "model=etok", "model.n_embd=32", "model.n_layer=2", "model.seq_len=16",
              "dataset.eval.words=64"],
}


# A model capability a method needs (Method.needs_model) that the test dataset's model lacks: the test model that has
# it, replacing the dataset entry's model= (small sizes).
MODELS: dict[str, list[str]] = {
    "gnmt": ["model=gnmt", "model.hidden_size=16", "model.num_layers=2"],  # GNMT (methods/translation/gnmt.py)
}


def dataset_for(needs: frozenset[str], needs_model: frozenset[str] = frozenset()) -> list[str]:
    """The test dataset overrides for a method that needs `needs` of its task ([] for the default corpus) and
    `needs_model` of its model (a MODELS entry replaces the dataset entry's model)."""
    missing = sorted(needs - {"tokens", "documents"})
    if not missing:
        out = []
    elif missing[0] not in DATASETS:
        raise AssertionError(f"no test dataset provides {missing[0]}: add one to tests/conftest.DATASETS")
    else:
        out = list(DATASETS[missing[0]])
    for cap in sorted(needs_model):
        if cap in MODELS:
            out = [o for o in out if not o.startswith("model=")] + MODELS[cap]
    return out


def tiny_for(overrides: list[str] | tuple[str, ...]) -> list[str]:
    """TINY less the keys the config of `overrides` lacks (another model or dataset: t5-tiny, noisy-copy)."""
    from omegaconf import OmegaConf

    cfg = compose_cfg(list(overrides))
    return [o for o in TINY if OmegaConf.select(cfg, o.split("=", 1)[0], default="<absent>") != "<absent>"]


# The trained base model of the post-training methods (compression, inference, unlearning) in tests:
# TINY trained BASE_STEPS steps on the embedded corpus, once, cached on disk (runner/basemodel.py).
BASE_STEPS = 300
BASE = [*TINY, f"base_steps={BASE_STEPS}", "model.init_from=base"]


@pytest.fixture(scope="session")
def base_lm():
    """(model, data): the TINY Llama (hidden 64, 2 layers, 2 heads, seq_len 64, vocab 1024) trained BASE_STEPS
    steps on the embedded corpus, in eval mode, and its TokenData. The same model `python -m runner
    <BASE overrides>` loads (`model.init_from=base`)."""
    from runner.api import load_base

    model, data, _ = load_base([*BASE, f"paths.runs_dir={REPO / '.cache' / 'runs'}"])
    return model, data


@pytest.fixture(scope="session")
def token_data():
    """The embedded corpus and its tokenizer, built once (cached on disk across sessions)."""
    from omegaconf import OmegaConf

    from runner.data import build_data

    cfg = OmegaConf.load(REPO / "configs" / "dataset" / "stdlib-docs.yaml")
    return build_data(cfg, seq_len=64, cache_dir=os.environ["METHODBENCH_CACHE"])
