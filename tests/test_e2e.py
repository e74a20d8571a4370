"""End to end: the real `python -m runner` in subprocesses, on the CPU, for a few dozen steps.

One uninterrupted baseline run is shared (session fixture); the other tests compare against it: a
second identical run (determinism), a run killed with SIGKILL and resumed (exact resume), a run
initialised from the baseline's checkpoint (init_from), a sweep, dry runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.loggers import read_offline_run
from tests.conftest import TINY, kill_at_checkpoint, run_cli, run_dirs, run_in_process

pytestmark = pytest.mark.e2e

STEPS = 60
BASE = [*TINY, f"trainer.max_steps={STEPS}", "trainer.val_every_n_steps=30", "trainer.checkpoint_every_n_steps=10",
        "trainer.log_every_n_steps=1", "method.warmup_steps=5", "method.lr=1e-2", "seed=7"]


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _run_in_process(overrides: list[str], runs_dir: Path) -> dict:
    """run_in_process (what does not need a process of its own): its summary.json, after checking there is
    exactly one run directory."""
    run_dir = runs_dir / "in-process" / "run"
    run_in_process(overrides, run_dir)
    assert run_dirs(runs_dir) == [run_dir]
    return _summary(run_dir)


@pytest.fixture(scope="session")
def baseline(tmp_path_factory):
    runs = tmp_path_factory.mktemp("baseline")
    proc = run_cli(*BASE, runs_dir=runs)
    (run_dir,) = run_dirs(runs)
    return run_dir, proc


def test_run_writes_summary_and_learns(baseline):
    run_dir, proc = baseline
    s = _summary(run_dir)
    for key in ("train/loss", "val/loss", "val/ppl", "params", "tokens_seen", "tokens_per_s", "config"):
        assert s[key] is not None, key
    assert s["steps"] == STEPS
    assert s["tokens_seen"] == STEPS * 16 * 64
    assert s["config"]["model"]["hidden_size"] == 64
    # the model learned something the unigram distribution does not know
    assert s["val/ppl"] < s["val/unigram_ppl"]
    # plain progress lines in CI logs, not a progress bar
    assert f"step {STEPS}/{STEPS}" in proc.stdout
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / "tokenizer" / "tokenizer.json").exists()


def test_wandb_offline_run_reads_back(baseline):
    run_dir, _ = baseline
    s = _summary(run_dir)
    r = read_offline_run(run_dir)
    assert r["id"] == s["wandb_id"]
    assert (r["name"], r["group"], r["job_type"]) == (s["config"]["run_name"], None, "train")
    assert r["tags"] == ["family:baseline", "method:adamw"]
    # flattened, readable config keys
    assert r["config"]["model.hidden_size"] == 64
    assert r["config"]["method.lr"] == s["config"]["method"]["lr"]
    assert r["config"]["trainer.max_steps"] == STEPS
    assert not any(k.startswith("_target_") or "._target_" in k for k in r["config"])
    rows = [h for h in r["history"] if "train/loss" in h]
    assert [h["trainer/global_step"] for h in rows] == list(range(STEPS))  # one train loss per step
    assert all("train/lr" in h for h in rows)
    assert any("train/grad_norm" in h for h in r["history"])
    assert any("train/tokens_per_s" in h for h in r["history"])
    vals = [h for h in r["history"] if "val/loss" in h]
    assert len(vals) >= 2
    assert r["summary"]["val/ppl"] == pytest.approx(s["val/ppl"])
    assert r["summary"]["train/loss"] == pytest.approx(rows[-1]["train/loss"])


def test_same_seed_same_curve(baseline, tmp_path):
    """Same seed, same numbers; and a fresh interpreter gives the numbers of the forked runs the e2e tests use
    (`baseline` is one: tests/cli_fork.py)."""
    run_dir, _ = baseline
    run_cli(*BASE, runs_dir=tmp_path, fresh=True)
    (again,) = run_dirs(tmp_path)
    a = [h["train/loss"] for h in read_offline_run(run_dir)["history"] if "train/loss" in h]
    b = [h["train/loss"] for h in read_offline_run(again)["history"] if "train/loss" in h]
    assert len(a) == STEPS and a == b
    assert _summary(again)["val/loss"] == _summary(run_dir)["val/loss"]


def test_sigkill_then_resume_matches_uninterrupted(baseline, tmp_path):
    """Kill the process for real mid-run, resume from its directory: same final numbers, same W&B run."""
    run_dir, _ = baseline
    killed_dir, before = kill_at_checkpoint(*BASE, runs_dir=tmp_path, checkpoint="step000020.ckpt")

    run_cli(*BASE, f"resume={killed_dir}", runs_dir=tmp_path)
    resumed, base = _summary(killed_dir), _summary(run_dir)
    assert resumed["steps"] == STEPS
    assert resumed["train/loss"] == pytest.approx(base["train/loss"], abs=1e-6)
    assert resumed["val/loss"] == pytest.approx(base["val/loss"], abs=1e-6)
    assert resumed["tokens_seen"] == base["tokens_seen"]
    assert resumed["wandb_id"] == before["wandb_id"]
    r = read_offline_run(killed_dir)
    assert r["segments"] == 2 and r["id"] == before["wandb_id"]
    # Hydra's record of the command that started the run stays; the resume's sits beside it
    from omegaconf import OmegaConf

    assert not any(o.startswith("resume=") for o in OmegaConf.load(killed_dir / ".hydra" / "overrides.yaml"))
    (again,) = (killed_dir / ".hydra").glob("resume-*/overrides.yaml")
    assert f"resume={killed_dir}" in list(OmegaConf.load(again))
    # the loss curve of the steps after the restart is the uninterrupted one
    tail = {h["trainer/global_step"]: h["train/loss"] for h in r["history"] if "train/loss" in h}
    ref = {h["trainer/global_step"]: h["train/loss"] for h in read_offline_run(run_dir)["history"] if "train/loss" in h}
    assert tail[STEPS - 1] == pytest.approx(ref[STEPS - 1], abs=1e-6)


def test_wandb_online_without_credentials_falls_back_to_offline(tmp_path):
    env = {"HOME": str(tmp_path / "home"), "WANDB_API_KEY": None, "WANDB_MODE": None}
    proc = run_cli(*TINY, "trainer=smoke", "logger.mode=online", runs_dir=tmp_path / "runs", env=env)
    assert "logging offline" in proc.stderr + proc.stdout
    (d,) = run_dirs(tmp_path / "runs")
    r = read_offline_run(d)
    assert r["id"] == _summary(d)["wandb_id"] and r["summary"]["val/loss"] == pytest.approx(_summary(d)["val/loss"])


def test_resume_auto_finds_the_run(tmp_path):
    args = [*TINY, "trainer.max_steps=6", "trainer.checkpoint_every_n_steps=3", "trainer.val_every_n_steps=6",
            "logger=csv"]
    run_cli(*args, runs_dir=tmp_path)
    (first,) = run_dirs(tmp_path)
    full = _summary(first)
    # simulate a crash after step 3: only the step-3 checkpoint survives
    for f in (first / "checkpoints").glob("*.ckpt"):
        if f.name != "step000003.ckpt":
            f.unlink()
    (first / "summary.json").unlink()
    run_cli(*args, "resume=auto", runs_dir=tmp_path)
    assert run_dirs(tmp_path) == [first]  # no new run directory
    again = _summary(first)
    assert again["train/loss"] == pytest.approx(full["train/loss"], abs=1e-6)
    assert again["val/loss"] == pytest.approx(full["val/loss"], abs=1e-6)
    # different overrides: auto starts a new run instead
    run_cli(*args, "seed=1", "trainer.max_steps=1", "resume=auto", runs_dir=tmp_path)
    assert len(run_dirs(tmp_path)) == 2


def test_init_from_checkpoint_reproduces_val_loss(baseline, tmp_path):
    run_dir, _ = baseline
    s = _run_in_process([*BASE, f"model.init_from={run_dir}", "trainer.max_steps=0", "logger=none"], tmp_path)
    assert s["val/loss"] == pytest.approx(_summary(run_dir)["val/loss"], abs=1e-5)


def test_hf_export_loads_with_plain_transformers_and_round_trips(baseline, tmp_path):
    """<run dir>/hf/: config.json and safetensors (no pickle) with the tokenizer; transformers' Auto classes load it
    and give the logits of the runner's model from the last checkpoint; model.init_from=<it> gives the run's val
    loss."""
    import torch
    from omegaconf import OmegaConf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from runner.models import build_model

    run_dir, _ = baseline
    s = _summary(run_dir)
    hf = run_dir / "hf"
    assert s["hf_export"] == str(hf)
    assert (hf / "config.json").exists() and (hf / "model.safetensors").exists() and not list(hf.glob("*.bin"))
    plain = AutoModelForCausalLM.from_pretrained(str(hf)).eval()
    tok = AutoTokenizer.from_pretrained(str(hf))
    m = OmegaConf.create({**s["config"]["model"], "init_from": str(run_dir)})
    ours = build_model(m, s["vocab_size"]).eval()
    ids = torch.tensor([tok("def f(x):\n    return the sum of x and the next token")["input_ids"]])
    with torch.no_grad():
        a, b = plain(ids).logits, ours(ids).logits
    assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-6
    again = _run_in_process([*BASE, f"model.init_from={hf}", "trainer.max_steps=0", "logger=none"], tmp_path)
    assert again["val/loss"] == pytest.approx(s["val/loss"], abs=1e-5)
    assert again["config"]["model"]["loaded"] == {"from": str(hf), **{k: v for k, v in plain.config.to_dict().items() if k in (
        "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
        "intermediate_size", "vocab_size", "max_position_embeddings")}}
    assert "loaded" not in s["config"]["model"]  # a run built from the YAML's sizes says nothing more
    # a tokenizer with more ids than the loaded model embeds: one line naming the key, before any step
    from runner.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model.init_from: .*/hf embeds 1024 token ids, but the tokenizer of "
                                          r"dataset=stdlib-docs has 2048"):
        run_in_process([*BASE, f"model.init_from={hf}", "dataset.tokenizer.vocab_size=2048", "trainer.max_steps=2",
                        "logger=none"], tmp_path / "bigger" / "run")


def test_local_jsonl_dataset(tmp_path):
    import random

    rng = random.Random(0)
    words = "the model learns to predict the next token of short english sentences about cats and dogs".split()
    path = tmp_path / "corpus.jsonl"
    with path.open("w") as f:
        for _ in range(400):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(60))}) + "\n")
    s = _run_in_process([*TINY, "dataset=local", f"dataset.path={path}", "dataset.tokenizer.vocab_size=300",
                         "dataset.val_fraction=0.1", "trainer=smoke", "logger=none"], tmp_path / "runs")
    assert s["config"]["dataset"]["path"] == str(path)
    assert s["data/train_docs"] + s["data/val_docs"] == 400
    assert 0 < s["data/val_docs"] < 100
    assert s["vocab_size"] <= 300  # the tokenizer was trained on this corpus, not the default one


def test_sweep_runs_each_job_as_its_own_wandb_run_in_one_group(tmp_path):
    run_cli("-m", "+sweep=lr", *TINY, "trainer.max_steps=2", "trainer.val_every_n_steps=2", runs_dir=tmp_path)
    jobs = sorted(p.parent for p in tmp_path.glob("*/multirun_*/*/summary.json"))
    assert len(jobs) == 3
    lrs = sorted(_summary(j)["config"]["method"]["lr"] for j in jobs)
    assert lrs == [1e-3, 3e-3, 1e-2]
    reads = [read_offline_run(j) for j in jobs]
    assert len({r["id"] for r in reads}) == 3
    groups = {r["group"] for r in reads}
    (group,) = groups
    # the group names the sweep and its start (the sweep directory's time); each job's name says what it swept
    assert group == "lr-" + jobs[0].parent.name.removeprefix("multirun_"), group
    run_name = _summary(jobs[0])["config"]["run_name"]
    by_lr = {_summary(j)["config"]["method"]["lr"]: r for j, r in zip(jobs, reads)}
    assert {lr: r["name"] for lr, r in by_lr.items()} == {
        lr: f"{run_name}/{i}:method.lr={lr}" for i, lr in enumerate([1e-3, 3e-3, 1e-2])}
    assert {r["job_type"] for r in reads} == {"train"}
    assert all(r["tags"] == ["family:baseline", "method:adamw"] for r in reads)


def test_dry_run_plans_a_1b_model_without_allocating(tmp_path, capsys):
    run_in_process(["model=llama-1b", "hardware=h100", "dry_run=true"], tmp_path / "one" / "run")
    one = capsys.readouterr().out
    assert "1,339,082,752" in one
    run_in_process(["model=llama-1b", "hardware=h100x8", "dry_run=true"], tmp_path / "eight" / "run")
    eight = capsys.readouterr().out
    plans = sorted(tmp_path.glob("*/*/dry_run.json"), key=lambda p: p.stat().st_mtime)
    a, b = (json.loads(p.read_text())["bytes_per_gpu"] for p in plans)
    assert b["parameters"] == pytest.approx(a["parameters"] / 8)
    assert b["optimizer state"] == pytest.approx(a["optimizer state"] / 8)
    assert a["optimizer state"] == pytest.approx(2 * 4 * 1_339_082_752)
    assert not list(tmp_path.glob("*/*/checkpoints"))
    assert "fsdp" in eight


def test_help_and_cfg_job(tmp_path):
    # a real interpreter (`python -m runner` itself, not a fork: tests/cli_fork.py); --help needs no Lightning
    h = run_cli("--help", runs_dir=tmp_path, fresh=True)
    for word in ("model", "llama-1b", "method", "adamw", "hardware", "h100x8", "dataset", "stdlib-docs"):
        assert word in h.stdout
    assert "--help method=frugal" in h.stdout and "density:" not in h.stdout  # says how to see another's keys
    f = run_cli("--help", "method=frugal", runs_dir=tmp_path, fresh=True)
    assert "density:" in f.stdout and "_target_: methods.optimizers.frugal.Frugal" in f.stdout
    c = run_cli("--cfg", "job", "method=adamw", "model=llama-1b", "hardware=h100x8", runs_dir=tmp_path)
    assert "strategy: fsdp" in c.stdout and "hidden_size: 2048" in c.stdout
    assert not list(tmp_path.glob("*/*/meta.json"))


def test_two_ddp_ranks_on_the_cpu_log_the_single_process_loss(tmp_path):
    """hardware.devices=2 strategy=ddp (gloo, Lightning's subprocess launcher): the second rank leaves the run
    directory to the first (no lock clash), train/loss is the mean over ranks and equals the loss of one process
    on the same global batch (measured: 0 at steps 1-5, 1e-6 at step 6), each progress line is printed once."""
    import csv

    args = [*TINY, "trainer.max_steps=6", "trainer.val_every_n_steps=6", "trainer.log_every_n_steps=1", "logger=csv",
            "trainer.export=none"]
    two = run_cli(*args, "hardware.devices=2", "hardware.strategy=ddp", "dataset.batch_size=8", runs_dir=tmp_path / "ddp")
    run_cli(*args, "dataset.batch_size=16", runs_dir=tmp_path / "one")
    (d2,), (d1,) = run_dirs(tmp_path / "ddp"), run_dirs(tmp_path / "one")

    def losses(d):
        with open(d / "csv" / "metrics.csv") as f:
            return [float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]]

    a, b = losses(d2), losses(d1)
    assert len(a) == len(b) == 6 and max(abs(x - y) for x, y in zip(a, b)) <= 1e-5, (a, b)
    assert _summary(d2)["train/loss"] == pytest.approx(_summary(d1)["train/loss"], abs=1e-5)
    assert _summary(d2)["val/loss"] == pytest.approx(_summary(d1)["val/loss"], abs=1e-5)
    assert _summary(d2)["tokens_seen"] == _summary(d1)["tokens_seen"]
    steps = [ln for ln in two.stdout.splitlines() if ln.startswith("step ")]
    assert [ln.split(" |")[0] for ln in steps] == [f"step {i}/6" for i in range(1, 7)], two.stdout
