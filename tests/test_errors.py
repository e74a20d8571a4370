"""The error contract: a bad option, key, type or path ends `python -m runner` in preflight with one line
per problem on stderr (naming the key and what would be valid), exit code 2, no traceback, no run
directory; `debug=true` shows the traceback. The cases run the CLI's entry point (`runner.cli.main`) in this
process; two of them also run as a real process. Also `runner.config.validate` directly, on composed configs."""

from __future__ import annotations

import copy

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
}
UNKNOWN_KEY_CASES = {"unknown-top-key", "unknown-nested-key", "method-arg-typo", "two-unknown-keys"}
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
@pytest.mark.e2e
@pytest.mark.parametrize("case", ["two-bad-types", "debug"])
def test_the_process_exits_2(case, tmp_path):
    args, expected = {**CASES, "debug": DEBUG_CASE}[case]
    proc = run_cli(*args, runs_dir=tmp_path / "runs", check=False, timeout=300, fresh=True)  # a real interpreter
    assert proc.returncode == EXIT_CONFIG, proc.stderr
    assert ("Traceback" in proc.stderr) == (case == "debug"), proc.stderr
    for s in expected:
        assert s in proc.stderr, proc.stderr
    if case != "debug":
        assert len([ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]) == 2, proc.stderr
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
