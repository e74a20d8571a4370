"""The error contract: a bad option, key, type or path ends `python -m runner` in preflight with one line
per problem on stderr (naming the key and what would be valid), exit code 2, no traceback, no run
directory; `debug=true` shows the traceback. The cases run the CLI's entry point (`runner.cli.main`) in this
process; two of them also run as a real process. Also `runner.config.validate` directly, on composed configs."""

from __future__ import annotations

import copy
import random

import pytest
from omegaconf import open_dict

from runner.cli import EXIT_CONFIG
from runner.config import validate
from runner.errors import ConfigError
from tests.conftest import cli_in_process, compose_cfg, run_cli

# id -> (overrides, [substrings every one of which stderr must contain])
CASES = {
    "unknown-option": (["model=llama-9b"], ["model", "llama-9b", "llama-tiny"]),
    "wrong-type": (["trainer.max_steps=abc"], ["trainer.max_steps", "int"]),
    "unknown-top-key": (["foo=1"], ["foo"]),
    "unknown-nested-key": (["model.hidden_sze=3"], ["model.hidden_sze"]),
    "missing-data-file": (["dataset=local", "dataset.path=/nonexistent.jsonl"], ["dataset.path", "/nonexistent.jsonl"]),
    "missing-init-from": (["model.init_from=/nonexistent"], ["model.init_from", "/nonexistent"]),
    "method-arg-typo": (["method.lrr=1"], ["method.lrr"]),
    "unknown-kernel": (["hardware.kernels.cross_entropy=nope"], ["hardware.kernels.cross_entropy", "nope", "reference"]),
    "missing-resume-dir": (["resume=/nonexistent"], ["resume", "/nonexistent"]),
    "two-bad-types": (["trainer.max_steps=abc", "trainer.log_every_n_steps=x"],
                      ["trainer.max_steps", "trainer.log_every_n_steps"]),
    "two-unknown-keys": (["foo=1", "model.hidden_sze=3"], ["foo", "model.hidden_sze"]),
    "frugal-under-fsdp": (["method=frugal", "hardware=h100x8"], ["hardware.strategy", "frugal", "fsdp", "ddp"]),
    "bad-base-steps": (["base_steps=0"], ["base_steps", "positive"]),
    # a method bound to its own kind of data names the dataset options that have it
    "method-needs-its-dataset": (["method=npo"], ["dataset", "npo", "stdlib-docs", "dataset=fictitious-authors", "dataset=tofu"]),
    # what fits what (method <-> task <-> model), from what each declares: both sides and the options that fit
    # (model=llama-60m names its class through its defaults list: the options that fit are found through it)
    "encoder-on-a-causal-lm-task": (["model=bert-tiny"], ["model", "bert-tiny", "masked-lm", "dataset=stdlib-docs",
                                                          "causal-lm", "model=llama-tiny", "model=llama-60m",
                                                          "dataset=stdlib-docs-mlm"]),
    "decoder-on-a-pairs-task": (["dataset=noisy-copy"], ["model", "llama-tiny", "dataset=noisy-copy", "seq2seq-lm",
                                                         "model=t5-tiny"]),
    "decoder-method-on-an-encoder": (["method=z_loss", "model=bert-tiny", "dataset=stdlib-docs-mlm"],
                                     ["model", "method=z_loss", "causal-lm", "model=bert-tiny", "model=llama-tiny"]),
    # a task's and an architecture's own arguments are checked against their signatures, like a method's
    "task-argument-typo": (["+dataset.val_fractoin=0.1"], ["dataset.val_fractoin", "LMCorpus", "val_fraction"]),
    "task-argument-value": (["dataset.tokenizer.kind=bpe"], ["dataset.tokenizer.kind", "bpe", "train, hf"]),
    "architecture-argument-typo": (["+model.hidden=3"], ["model.hidden", "Llama", "hidden_size"]),
    # a method's own checks (its __init__) run in preflight too, one line per problem
    "method-value": (["method=gear", "method.bits=3", "method.group_size=0"], ["method.bits", "1, 2, 4, 8", "method.group_size"]),
    # bad values: one line naming our key and what is valid, before any work (a library's error, or a run that
    # does nothing or something else, otherwise)
    "max-steps-negative": (["trainer.max_steps=-1"], ["trainer.max_steps", ">= 0", "got -1"]),
    "grad-clip-negative": (["trainer.grad_clip=-1"], ["trainer.grad_clip", "positive", "null: no clipping"]),
    "keep-checkpoints-below-minus-one": (["trainer.keep_checkpoints=-5"], ["trainer.keep_checkpoints", ">= -1",
                                                                           "-1: keep every", "got -5"]),
    "seed-out-of-range": (["seed=-1"], ["seed", "4294967295", "got -1"]),
    "lr-negative": (["method.lr=-1e-3"], ["method.lr", "positive", "got -0.001"]),
    "lr-negative-of-a-paper-method": (["method=frugal", "method.lr=-1e-3"], ["method.lr", "positive"]),
    "seq-len-beyond-the-architecture": (["model.seq_len=1000000"], ["model.seq_len", "1000000", "model=llama-tiny",
                                                                    "131072"]),
    # a trained byte-level BPE has its 256 bytes and EOS whatever the size asked: a smaller one is refused
    "bpe-vocab-below-its-alphabet": (["dataset.tokenizer.vocab_size=10"], ["dataset.tokenizer.vocab_size", "257",
                                                                           "got 10"]),
    # a method declares what it needs of the model: EISL's encoder-decoder, and the pairs task it trains on
    "eisl-on-a-decoder-only-model": (["method=eisl"], ["model: method=eisl needs a model with seq2seq-lm",
                                                       "model=llama-tiny", "model=t5-tiny", "dataset=noisy-copy"]),
    # a key the chosen option ignores: the option named, and the options that set it
    "path-given-to-the-embedded-corpus": (["dataset.path=/data/my.jsonl"],
                                          ["dataset.path: dataset=stdlib-docs does not use it", "embedded corpus",
                                           "dataset=local", "dataset=c4"]),
    "tokenizer-name-with-a-trained-bpe": (["dataset.tokenizer.name=gpt2"],
                                          ["dataset.tokenizer.name", "tokenizer.kind=train", "dataset=c4"]),
    "run-name-too-long": ([f"run_name={'a' * 300}"], ["run_name", "300 bytes", "shorter run_name"]),
    "run-name-unquoted-unicode": (["run_name=тест"], ["run_name", "quote it", "\"run_name='тест'\""]),
}
UNKNOWN_KEY_CASES = {"unknown-top-key", "unknown-nested-key", "method-arg-typo", "two-unknown-keys"}
# cases of several problems; every other case is one line
SEVERAL = {"two-bad-types": 2, "two-unknown-keys": 2, "method-value": 2, "eisl-on-a-decoder-only-model": 2}
MACHINE_DEPENDENT = {"frugal-under-fsdp"}  # hardware=h100x8 also says what this machine lacks of its 8 GPUs
DEBUG_CASE = (["debug=true", "trainer.max_steps=abc"], ["trainer.max_steps"])


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """Every case's Result, from the CLI's entry point in this process."""
    cases = {**CASES, "debug": DEBUG_CASE}
    results = {}
    for name, (args, _) in cases.items():
        runs = tmp_path_factory.mktemp(name)
        results[name] = (cli_in_process(args, runs), runs)
    return results


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_config_error(case, cli_results):
    proc, runs = cli_results[case]
    _, expected = CASES[case]
    err = proc.stderr
    assert proc.returncode == EXIT_CONFIG, f"exit {proc.returncode}\n{err}"
    assert "Traceback" not in err, err
    for s in expected:
        assert s in err, f"{s!r} not in stderr:\n{err}"
    if case in UNKNOWN_KEY_CASES:
        assert "unknown key" in err or "Could not override" in err, err
    assert "error:" in err
    if case not in MACHINE_DEPENDENT:  # one line per problem
        assert len([ln for ln in err.splitlines() if ln.startswith("error:")]) == SEVERAL.get(case, 1), err
    # nothing started: no run directory, no training output
    assert not runs.exists() or not any(runs.iterdir()), list(runs.rglob("*"))


def test_several_problems_one_line_each(cli_results):
    proc, _ = cli_results["two-bad-types"]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 2, proc.stderr
    assert "trainer.max_steps" in lines[0] + lines[1] and "trainer.log_every_n_steps" in lines[0] + lines[1]


def test_unknown_option_lists_every_choice(cli_results):
    from runner.config import group_options

    proc, _ = cli_results["unknown-option"]
    for opt in group_options("model"):
        assert opt in proc.stderr


def test_debug_shows_traceback(cli_results):
    proc, _ = cli_results["debug"]
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert "Traceback" in proc.stderr
    assert "trainer.max_steps" in proc.stderr


# ---------------------------------------------------------------------------------------------- validate()


# Through the process boundary: `python -m runner` itself exits 2 with one line per problem and no traceback,
# and shows the traceback with debug=true (the other cases run the same entry point in process, above).
# (a 300-character run_name failed in Hydra's run directory, after preflight: a traceback; an unquoted non-ASCII
# one in Hydra's override lexer)
@pytest.mark.e2e
@pytest.mark.parametrize("case", ["two-bad-types", "debug", "run-name-too-long", "run-name-unquoted-unicode",
                                  "max-steps-negative"])
def test_the_process_exits_2(case, tmp_path):
    args, expected = {**CASES, "debug": DEBUG_CASE}[case]
    proc = run_cli(*args, runs_dir=tmp_path / "runs", check=False, timeout=300, fresh=True)  # a real interpreter
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert ("Traceback" in proc.stderr) == (case == "debug"), proc.stderr
    for s in expected:
        assert s in proc.stderr, proc.stderr
    if case != "debug":
        n = SEVERAL.get(case, 1)
        assert len([ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]) == n, proc.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


# A config error is shown in a second or two: the path to it imports neither torch nor Lightning (nor
# transformers): the builders' arguments and what they declare are read from their source (runner/static.py),
# and a builder whose module imports torch is built only where nothing else is wrong. (Measured, not asserted:
# timings depend on the machine's load.)
NO_TORCH = [["method.lr=abc"], ["model=llama-9b"], ["trainer.max_steps=-1"], ["method.lr=-1e-3"],
            ["method=frugal", "trainer.max_steps=-1"], ["method=eisl"], ["method=npo"], ["model.seq_len=1000000"],
            ["dataset.path=/data/my.jsonl"], ["method=frugal", "method.lr=-1e-3"], ["method=gear", "method.eps=-1"]]
_NO_TORCH_SCRIPT = """
import json, sys
from runner.cli import main
out = []
for args in json.loads(sys.argv[1]):
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code
    heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "lightning", "transformers", "datasets"})
    out.append([args, code, heavy])
print(json.dumps(out))
"""


@pytest.mark.e2e
def test_config_errors_and_cfg_job_import_neither_torch_nor_lightning(tmp_path):
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    runs = f"paths.runs_dir={tmp_path / 'runs'}"
    cases = [[*args, runs] for args in NO_TORCH] + [["--cfg", "job", runs]]  # --cfg job last: Hydra runs it
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH_SCRIPT, json.dumps(cases)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for args, code, heavy in results:
        assert code == (0 if args[0] == "--cfg" else EXIT_CONFIG), (args, code, proc.stderr[-2000:])
        assert heavy == [], f"{args}: imported {heavy}"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.fixture(scope="module")
def base_cfg():
    return compose_cfg([])


def _problems(cfg) -> list[str]:
    with pytest.raises(ConfigError) as ei:
        validate(cfg)
    return ei.value.problems


def _has(problems: list[str], *needles: str) -> bool:
    return any(all(n in p for n in needles) for p in problems)


def test_validate_accepts_defaults(base_cfg):
    validate(base_cfg)


def test_validate_reports_all_schema_problems_at_once(base_cfg):
    cfg = copy.deepcopy(base_cfg)
    cfg.trainer.max_steps = "abc"                   # wrong type
    cfg.model.num_layers = 2.5                      # wrong type (float for int)
    with open_dict(cfg):
        cfg.dataset.tokenizer.vocab_sise = 10       # unknown key in a nested section
        cfg.hardware.bogus_key = 1                  # unknown key in a section
    cfg.hardware.strategy = "bogus"                 # CHOICES violation
    cfg.logger.kind = "tensorboard"                 # CHOICES violation
    cfg.trainer.log_every_n_steps = 0               # must be positive
    with open_dict(cfg):
        cfg.method.lrr = 1                          # not an argument of the method class
    p = _problems(cfg)
    assert _has(p, "trainer.max_steps", "int", "abc")
    assert _has(p, "model.num_layers", "int")
    assert _has(p, "dataset.tokenizer.vocab_sise", "unknown key", "vocab_size")
    assert _has(p, "hardware.bogus_key", "unknown key")
    assert _has(p, "hardware.strategy", "bogus", "fsdp")
    assert _has(p, "logger.kind", "tensorboard", "wandb")
    assert _has(p, "trainer.log_every_n_steps", "positive")
    assert _has(p, "method.lrr", "lr")
    assert len(p) == 8, p


def test_validate_reports_all_semantic_problems_at_once(base_cfg):
    cfg = copy.deepcopy(base_cfg)
    cfg.model.hidden_size = 100                     # not divisible by num_heads=3
    cfg.model.num_heads = 3
    cfg.model.num_kv_heads = 2                      # does not divide num_heads
    cfg.model.init_from = "/nonexistent/ckpt"
    cfg.hardware.kernels.cross_entropy = "nope"
    cfg.resume = "/nonexistent/run"
    cfg.dataset.val_fraction = 1.5
    p = _problems(cfg)
    assert _has(p, "model.hidden_size", "100", "model.num_heads", "3")
    assert _has(p, "model.num_kv_heads", "2")
    assert _has(p, "model.init_from", "/nonexistent/ckpt")
    assert _has(p, "hardware.kernels.cross_entropy", "nope", "reference")
    assert _has(p, "resume", "/nonexistent/run")
    assert _has(p, "dataset.val_fraction", "1.5")
    assert len(p) == 6, p


def test_validate_unknown_top_level_key(base_cfg):
    cfg = copy.deepcopy(base_cfg)
    with open_dict(cfg):
        cfg.sed = 1
    assert _has(_problems(cfg), "sed", "unknown top-level key", "seed")


def test_validate_missing_section_and_top_level_key(base_cfg):
    cfg = copy.deepcopy(base_cfg)
    with open_dict(cfg):
        del cfg["trainer"]
        del cfg["seed"]
    p = _problems(cfg)
    assert _has(p, "trainer", "missing section", "trainer=")
    assert _has(p, "seed", "missing")


def test_validate_method_target_that_does_not_import(base_cfg):
    cfg = copy.deepcopy(base_cfg)
    cfg.method._target_ = "methods.nowhere.Method"
    assert _has(_problems(cfg), "method._target_", "methods.nowhere.Method")
    cfg.trainer.max_steps = -1  # reported together with another problem
    p = _problems(cfg)
    assert _has(p, "method._target_", "methods.nowhere.Method") and _has(p, "trainer.max_steps")


def test_validate_reports_schema_and_semantic_problems_together(base_cfg):
    cfg = copy.deepcopy(base_cfg)
    cfg.trainer.max_steps = "abc"
    cfg.hardware.strategy = "bogus"
    cfg.model.num_heads = 3                          # hidden_size 256 is not divisible by 3
    p = _problems(cfg)
    assert _has(p, "trainer.max_steps")
    assert _has(p, "hardware.strategy")
    assert _has(p, "model.hidden_size", "model.num_heads")


class EncoderOnlyMethod:
    """A method that needs an encoder (a test double: validate() imports `_target_` by its dotted path)."""

    needs_task = frozenset()
    needs_model = frozenset({"masked-lm"})
    supports_fsdp = True

    def __init__(self, name: str = "encoder_only"):
        self.name = name


def test_an_encoder_method_on_a_decoder_only_model(base_cfg):
    cfg = copy.deepcopy(base_cfg)
    cfg.method = {"_target_": f"{__name__}.EncoderOnlyMethod", "name": "encoder_only"}
    (line,) = [p for p in _problems(cfg) if p.startswith("model:")]
    for needle in ("method=encoder_only", "masked-lm", "model=llama-tiny", "causal-lm", "model=bert-tiny"):
        assert needle in line, line


# ---------------------------------------------------------------------------------------------- data files
def _one_error(proc, *needles: str) -> str:
    """The only `error:` line of a bad command line, which names every needle; no traceback."""
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("content,needles", [
    (b"", ["is empty"]),
    (random.Random(0).randbytes(4000), ["is not UTF-8 text"]),
    (b"[1, 2]\n", ["line 1 is a JSON list, not an object"]),
    (b'{"text": "a document"\n', ["is not JSON lines: line 1"]),
], ids=["empty", "random-bytes", "an-array", "cut-short"])
def test_a_local_file_that_is_not_json_lines(content, needles, tmp_path):
    # (datasets raised StopIteration for the empty file, DatasetGenerationError and a pyarrow line for the others)
    f = tmp_path / "docs.jsonl"
    f.write_bytes(content)
    _one_error(cli_in_process(["dataset=local", f"dataset.path={f}"], tmp_path / "runs"), "dataset.path", str(f),
               *needles)
    assert not (tmp_path / "runs").exists()


def test_a_local_file_datasets_cannot_parse_past_its_first_line(tmp_path):
    from omegaconf import OmegaConf

    from tasks.common import load_documents

    f = tmp_path / "docs.jsonl"
    f.write_text('{"text": "a document"}\n{"text": oops}\n')
    d = OmegaConf.create({"source": "local", "path": str(f), "split": "train", "streaming": False,
                          "max_documents": None, "text_field": "text", "subset": None})
    with pytest.raises(ConfigError, match=r"^dataset.path: cannot read .*docs.jsonl as json data: \w+"):
        load_documents(d)


# ---------------------------------------------------------------------------------------------- this machine
# What the run asks of the machine is checked where it starts (preflight, a Hydra job), before any work.
def test_a_gpu_config_on_a_machine_without_one(tmp_path, monkeypatch):
    import runner.config

    monkeypatch.setattr(runner.config, "gpu_count", lambda mps=False: 0)  # (Lightning's MisconfigurationException)
    _one_error(cli_in_process(["hardware=h100"], tmp_path / "runs"), "hardware.accelerator", "hardware=h100",
               "hardware=cpu")
    # a dry run plans a GPU run without one
    validate(compose_cfg(["hardware=h100", "dry_run=true", f"paths.runs_dir={tmp_path}"]), here=True)


def test_more_gpus_than_the_machine_has(tmp_path, monkeypatch):
    import runner.config

    monkeypatch.setattr(runner.config, "gpu_count", lambda mps=False: 2)
    _one_error(cli_in_process(["hardware=h100x8"], tmp_path / "runs"), "hardware.devices", "8 GPUs",
               "hardware.devices=2")


@pytest.mark.parametrize("kind", ["proc", "read-only"])
def test_an_unwritable_runs_dir(kind, tmp_path):
    # (Hydra's mkdir of the run directory raised before the runner's handler: a traceback)
    import os
    import sys
    from pathlib import Path

    if kind == "proc":
        if not sys.platform.startswith("linux"):
            pytest.skip("/proc is Linux's")
        runs = Path("/proc/methodbench-runs")  # nobody can make a directory there, root included
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only directory")
        (tmp_path / "ro").mkdir(mode=0o555)
        runs = tmp_path / "ro" / "runs"
    _one_error(cli_in_process([], runs), "paths.runs_dir", str(runs), "cannot be written", "paths.runs_dir=<dir>")
    assert not runs.exists()


def _hub_env(monkeypatch, tmp_path, offline: bool) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))  # an empty cache
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_hf_weights_offline_fail_fast(tmp_path, monkeypatch):
    # (transformers retried the hub for minutes)
    import runner.config

    _hub_env(monkeypatch, tmp_path, offline=True)
    monkeypatch.setattr(runner.config, "hub_unreachable", lambda *a, **k: pytest.fail("probed the hub while offline"))
    _one_error(cli_in_process(["model.init_from=hf://methodbench-tests/absent"], tmp_path / "runs"),
               "model.init_from", "HF_HUB_OFFLINE=1", "huggingface-cli download methodbench-tests/absent")


def test_hf_weights_without_a_network_fail_fast(tmp_path, monkeypatch):
    import runner.config

    _hub_env(monkeypatch, tmp_path, offline=False)
    monkeypatch.setattr(runner.config, "hub_unreachable", lambda *a, **k: "huggingface.co:443: Network is unreachable")
    _one_error(cli_in_process(["model.init_from=hf://methodbench-tests/absent"], tmp_path / "runs"),
               "model.init_from", "cannot be reached", "Network is unreachable")


def test_hf_weights_in_the_local_cache_need_no_hub(tmp_path, monkeypatch):
    import runner.config
    from runner.config import machine_problems

    _hub_env(monkeypatch, tmp_path, offline=False)
    snapshot = tmp_path / "hub" / "models--org--name" / "snapshots" / "0123abc"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    monkeypatch.setattr(runner.config, "hub_unreachable", lambda *a, **k: pytest.fail("probed the hub"))
    assert machine_problems(compose_cfg(["model.init_from=hf://org/name", f"paths.runs_dir={tmp_path}"])) == []


def test_the_hub_probe_gives_up_within_its_timeout(monkeypatch):
    import socket
    import threading
    import types

    from runner.config import hub_unreachable

    release = threading.Event()

    def hangs(*args, **kwargs):  # a name lookup that does not answer (no network is touched)
        release.wait(30)
        return types.SimpleNamespace(close=lambda: None)

    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(socket, "create_connection", hangs)
    try:
        assert hub_unreachable(timeout=0.05) == "huggingface.co:443: no answer in 0.05 s"
    finally:
        release.set()


def test_a_resumed_run_keeps_the_hydra_record_that_started_it(tmp_path):
    """hydra.output_subdir: .hydra for a new directory, .hydra/resume-<time> (a new one per resume) once the run has
    its record."""
    from runner.config import hydra_subdir

    assert hydra_subdir(str(tmp_path)) == ".hydra"
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("[]\n")
    a, b = hydra_subdir(str(tmp_path)), hydra_subdir(str(tmp_path))
    assert a.startswith(".hydra/resume-") and b.startswith(".hydra/resume-") and a != b


def test_a_run_refused_in_its_job_leaves_no_directory(tmp_path, monkeypatch):
    """Validation in the job itself (a sweep job, a config that changed after preflight): the directory Hydra made
    holds only Hydra's files and goes; one with a meta.json (a run that started, or the one resume= names) stays."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from runner.cli import discard_unstarted_run

    def job(run_dir):
        monkeypatch.setattr(HydraConfig, "initialized", staticmethod(lambda: True))
        monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: OmegaConf.create(
            {"runtime": {"output_dir": str(run_dir)}})))

    fresh = tmp_path / "runs" / "llama-tiny-adamw" / "2000-01-01_00-00-00"
    (fresh / ".hydra").mkdir(parents=True)
    (fresh / "methodbench.log").write_text("")
    job(fresh)
    discard_unstarted_run(OmegaConf.create({"resume": None}))
    assert not (tmp_path / "runs" / "llama-tiny-adamw").exists()
    started = tmp_path / "runs" / "x" / "2000-01-01_00-00-01"
    (started / ".hydra").mkdir(parents=True)
    (started / "meta.json").write_text('{"status": "failed"}')
    job(started)
    discard_unstarted_run(OmegaConf.create({"resume": None}))
    assert started.is_dir()
    resumed = tmp_path / "runs" / "y" / "2000-01-01_00-00-02"
    (resumed / ".hydra" / "resume-2000-01-02_00-00-00-000000").mkdir(parents=True)
    (resumed / ".hydra" / "overrides.yaml").write_text("[]\n")
    job(resumed)
    discard_unstarted_run(OmegaConf.create({"resume": str(resumed)}))
    assert resumed.is_dir() and (resumed / ".hydra" / "resume-2000-01-02_00-00-00-000000").is_dir()
    monkeypatch.setattr(HydraConfig, "get", staticmethod(lambda: OmegaConf.create(
        {"runtime": {"output_dir": str(resumed)}, "output_subdir": ".hydra/resume-2000-01-02_00-00-00-000000"})))
    discard_unstarted_run(OmegaConf.create({"resume": str(resumed)}))  # the refused resume's record goes, the run's stays
    assert [p.name for p in (resumed / ".hydra").iterdir()] == ["overrides.yaml"]


@pytest.mark.skipif(__import__("shutil").which("srun") is not None, reason="this machine is a SLURM node")
def test_the_slurm_launcher_off_a_cluster_is_one_line(tmp_path):
    from tests.conftest import cli_in_process

    r = cli_in_process(["-m", "hydra/launcher=slurm", "trainer.max_steps=1"], tmp_path)
    assert r.returncode == EXIT_CONFIG and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")] == [
        "error: hydra/launcher=slurm: no SLURM on this machine (no `srun` on PATH); submit from the cluster's login "
        "node, or drop it to run the jobs here (hydra/launcher=basic)"]
    assert not any(tmp_path.iterdir())


def test_a_launched_rank_is_told_apart_from_the_first_process(monkeypatch, tmp_path):
    """Lightning's DDP subprocesses (LOCAL_RANK), torchrun (RANK) and srun's tasks (SLURM_PROCID) other than the
    first leave the run directory to it; their Hydra record is the first process's (no resume-* of their own)."""
    from runner.config import hydra_subdir, is_launched_rank

    for k in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "RANK", "SLURM_PROCID"):
        monkeypatch.delenv(k, raising=False)
    assert not is_launched_rank()
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert not is_launched_rank()
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("[]\n")
    for k in ("LOCAL_RANK", "RANK", "SLURM_PROCID"):
        monkeypatch.setenv(k, "1")
        assert is_launched_rank() and hydra_subdir(str(tmp_path)) == ".hydra"
        monkeypatch.setenv(k, "0")
