"""Every shipped config composes and validates; the paper model sizes, the multi-GPU hardware, the sweeps
and the SLURM launcher say what they claim. Options are globbed, so a new YAML is tested automatically."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from runner.config import (
    CONFIG_DIR,
    fitting_options,
    group_options,
    import_target,
    model_capabilities,
    validate,
)
from runner.errors import ConfigError
from tests.conftest import REPO, compose_cfg, dataset_for

GROUPS = ("model", "method", "dataset", "hardware", "trainer", "logger", "experiment")
SWEEPS = sorted(p.stem for p in (REPO / "sweeps").glob("*.yaml"))


def _group_yamls(group: str) -> list[str]:
    """Options found by globbing the directory directly (independent of runner.config.group_options)."""
    d = CONFIG_DIR / group
    return sorted(str(p.relative_to(d).with_suffix("")) for p in d.rglob("*.yaml"))


ALL_OPTIONS = [pytest.param(g, o, id=f"{g}={o}") for g in GROUPS for o in _group_yamls(g)]


@pytest.fixture
def local_file(tmp_path: Path) -> Path:
    p = tmp_path / "docs.jsonl"
    p.write_text('{"text": "a document"}\n')
    return p


def test_every_group_has_options():
    for g in GROUPS:
        assert _group_yamls(g), f"configs/{g}/ has no YAML"


@pytest.mark.parametrize("group", [*GROUPS, "sweep"])
def test_group_options_lists_every_yaml(group):
    # group_options is what the CLI offers as "choose one of"; it must not miss or invent an option
    assert group_options(group) == sorted(_group_yamls(group), key=lambda s: ("/" in s, s))


def test_sweep_group_is_the_sweeps_dir():
    assert SWEEPS, "sweeps/ is empty"
    assert group_options("sweep") == SWEEPS


def _partner(cfg, group: str) -> list[str]:
    """A model option whose kind the dataset trains (or a dataset for the model), found by what each declares:
    an encoder, an encoder-decoder and their tasks do not run with the Llama/corpus defaults."""
    kinds = import_target(cfg.dataset._target_).model_kinds
    kind = model_capabilities(import_target(cfg.model._target_))
    if kind & set(kinds):
        return []
    if group == "dataset":
        return [f"model={fitting_options('model', lambda c: bool(model_capabilities(c) & set(kinds)))[0]}"]
    return [f"dataset={fitting_options('dataset', lambda c: bool(kind & set(c.model_kinds)))[0]}"]


@pytest.mark.parametrize("group,option", ALL_OPTIONS)
def test_option_composes_and_validates(group, option, local_file):
    overrides = [f"{group}={option}"]
    if group == "dataset" and option == "local":
        overrides.append(f"dataset.path={local_file}")
    if group == "dataset" and option == "pairs-file":
        pairs = local_file.with_name("pairs.tsv")
        pairs.write_text("a source\ta target\n")
        overrides.append(f"dataset.generator.path={pairs}")
    if group == "method":  # a method that needs more of its task than the default corpus has: its e2e test config
        cls = import_target(compose_cfg(overrides).method._target_)
        overrides += dataset_for(cls.needs_task, cls.needs_model)
    overrides += _partner(compose_cfg(overrides), group)
    cfg = compose_cfg(overrides)
    validate(cfg)  # raises ConfigError listing every problem
    # every interpolation resolves
    OmegaConf.to_container(cfg, resolve=True)
    if group in ("model", "dataset", "hardware", "method"):
        # run names and logs use <group>.name: it must say which option was chosen
        assert cfg[group].name == option


def test_default_config_validates():
    validate(compose_cfg([]))


def test_local_dataset_needs_a_path():
    # (local.yaml's `path: ???` merged over stdlib-docs' `path: null` stays null: OmegaConf does not let a
    # missing value override; the semantic check still names the key)
    with pytest.raises(ConfigError, match="dataset.path"):
        validate(compose_cfg(["dataset=local"]))


@pytest.mark.parametrize("name", SWEEPS)
def test_sweep_composes(name):
    cfg = compose_cfg([f"+sweep={name}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params, f"sweeps/{name}.yaml sets no hydra.sweeper.params"
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    job = compose_cfg([f"+sweep={name}"])
    for key in params:  # each swept key exists in the job config (or is added with +)
        k = str(key).lstrip("+")
        if not str(key).startswith("+"):
            assert OmegaConf.select(job, k, default="<absent>") != "<absent>", f"{name}: swept key {k} not in config"
    validate(job)


def test_slurm_launcher_one_task_per_gpu():
    cfg = compose_cfg(["hydra/launcher=slurm", "hardware=h100x8"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.tasks_per_node == launcher.gpus_per_node == 8
    assert launcher.nodes == cfg.hardware.num_nodes == 1


def test_slurm_launcher_follows_hardware():
    cfg = compose_cfg(["hydra/launcher=slurm", "hardware=h100x8", "hardware.devices=4", "hardware.num_nodes=2"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher.tasks_per_node == cfg.hydra.launcher.gpus_per_node == 4
    assert cfg.hydra.launcher.nodes == 2


PAPER_SIZES = {  # hidden, intermediate, layers, heads (GaLore / FRUGAL Llama pre-training)
    "llama-60m": (512, 1376, 8, 8),
    "llama-130m": (768, 2048, 12, 12),
    "llama-350m": (1024, 2736, 24, 16),
    "llama-1b": (2048, 5461, 24, 32),
}


@pytest.mark.parametrize("name", sorted(PAPER_SIZES))
def test_paper_model_sizes(name):
    m = compose_cfg([f"model={name}"]).model
    assert (m.hidden_size, m.intermediate_size, m.num_layers, m.num_heads) == PAPER_SIZES[name]
    assert m.vocab_size == 32000
    assert m.seq_len == 256
    assert m.num_kv_heads is None and m.tie_embeddings is False and m.init_from is None


def test_h100x8_is_eight_gpus_fsdp():
    hw = compose_cfg(["hardware=h100x8"]).hardware
    assert hw.devices == 8
    assert hw.strategy == "fsdp"
    assert hw.accelerator == "gpu"
    assert hw.num_nodes == 1


def test_experiment_smoke_switches_groups():
    cfg = compose_cfg(["experiment=smoke"])
    assert cfg.trainer.max_steps == 8
    assert cfg.logger.kind == "csv"


def test_experiment_overrides_the_primary_config():
    # an experiment preset (@package _global_) wins over config.yaml's own values: _self_ comes before it
    assert compose_cfg(["experiment=smoke"]).run_name == "smoke"
    assert compose_cfg([]).run_name == "llama-tiny-adamw"


@pytest.mark.e2e
def test_the_methodbench_command_is_the_runner_and_completes_config_options():
    """pyproject's console script: Hydra's shell completion (which `python -m runner` cannot have) lists the
    options of a group."""
    import os
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "methodbench"
    assert exe.exists(), "pip install -e . installs the methodbench command"
    out = subprocess.run([str(exe), "-sc", "query=bash"], env={**os.environ, "COMP_LINE": "methodbench method=fr"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "method=frugal" in out.stdout.split()


def test_wandb_names_and_tags():
    from runner.loggers import method_tags, wandb_names

    assert wandb_names("llama-tiny-adamw", None) == ("llama-tiny-adamw", None)
    sweep = {"sweep": "frugal_rho", "time": "2026-12-02_14-00-00", "job": "2:method.rho=0.25"}
    assert wandb_names("r", sweep) == ("r/2:method.rho=0.25", "frugal_rho-2026-12-02_14-00-00")
    assert wandb_names("r", {**sweep, "sweep": None})[1] == "r-2026-12-02_14-00-00"  # a command-line sweep
    assert method_tags("methods.optimizers.frugal.Frugal", "frugal") == ["family:optimizers", "method:frugal"]
    assert method_tags("methods.base.Method", "adamw") == ["family:baseline", "method:adamw"]
    assert method_tags("my_pkg.methods.Mine", "mine") == ["family:my_pkg", "method:mine"]
    assert method_tags("methods.seq2seq.Seq2Seq", "eisl")[0] == "family:seq2seq"
