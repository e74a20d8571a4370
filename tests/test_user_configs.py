"""A user's own options without forking: `--config-dir DIR` and `hydra.searchpath=[file://DIR]` make the
options of DIR's groups (DIR/method/mine.yaml) valid choices, checked like the repo's (runner/cli.py
preflight, runner.config.group_options and compose(config_dirs=...))."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.cli import preflight
from runner.config import GROUPS, compose, group_options, search_path
from runner.errors import ConfigError
from tests.conftest import TINY, run_cli, run_dirs

# A user's method: the repo's baseline (its defaults list names the repo's `adamw` of the same group) with
# a name and learning rate of its own.
MINE = """\
defaults:
  - adamw
  - _self_
name: mine
lr: 2.0e-3
"""
RUN = [*TINY, "trainer.max_steps=2", "trainer.val_every_n_steps=2", "logger=csv"]


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    d = tmp_path / "my_configs"
    (d / "method").mkdir(parents=True)
    (d / "method" / "mine.yaml").write_text(MINE)
    return d


def test_compose_with_config_dirs(user_dir):
    cfg = compose(["method=mine"], config_dirs=[user_dir])
    assert cfg.method.name == "mine" and cfg.method.lr == 2.0e-3
    assert cfg.method._target_ == compose([]).method._target_  # from the repo's adamw
    with pytest.raises(ConfigError, match="no such directory"):
        compose([], config_dirs=[user_dir / "missing"])


def test_group_options_follow_the_search_path(user_dir):
    repo = {g: group_options(g) for g in GROUPS}  # outside Hydra: the repo's configs/ (globbed)
    assert "mine" not in repo["method"]
    with search_path():  # Hydra lists the repo's options as the glob does, in the same order
        assert {g: group_options(g) for g in GROUPS} == repo
    with search_path([user_dir]):  # as --config-dir adds it
        assert group_options("method") == sorted([*repo["method"], "mine"])
        assert group_options("logger") == repo["logger"]
    with search_path([], [f"file://{user_dir}"]):  # as hydra.searchpath=[...] adds it
        assert "mine" in group_options("method")
    assert group_options("method") == repo["method"]


def test_group_options_in_a_job_see_its_hydra_searchpath(user_dir):
    # In a job the loader's search path is the base one (repo + --config-dir); hydra.searchpath is applied
    # per composition, so group_options reads it from the job's Hydra config.
    from hydra.core.hydra_config import HydraConfig

    cfg = compose([f"hydra.searchpath=[file://{user_dir}]"], return_hydra_config=True)
    with search_path():
        assert "mine" not in group_options("method")
        HydraConfig.instance().set_config(cfg)
        try:
            assert "mine" in group_options("method")
        finally:
            HydraConfig.instance().cfg = None


def test_preflight_checks_user_options(user_dir):
    with pytest.raises(ConfigError) as e:
        preflight(["method=mien"], config_dir=str(user_dir))
    assert "did you mean 'mine'" in e.value.problems[0] and "mine" in e.value.problems[0].split("choose one of:")[1]
    with pytest.raises(ConfigError, match="unknown option"):
        preflight(["method=mine"])  # not without the dir
    with pytest.raises(ConfigError, match="--config-dir .*: no such directory"):
        preflight(["method=mine"], config_dir=str(user_dir / "missing"))
    with pytest.raises(ConfigError, match="hydra.searchpath: no such directory"):
        preflight(["method=mine", f"hydra.searchpath=[file://{user_dir / 'missing'}]"])


def _method_name(runs: Path) -> str:
    (run_dir,) = run_dirs(runs)
    return json.loads((run_dir / "summary.json").read_text())["config"]["method"]["name"]


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """The three CLI runs, two at a time (each one imports torch and Lightning: seconds): through --config-dir,
    through hydra.searchpath, and a misspelt user option."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("cli")
    user = root / "my_configs"
    (user / "method").mkdir(parents=True)
    (user / "method" / "mine.yaml").write_text(MINE)
    cases = {"config-dir": ["--config-dir", str(user), "method=mine"],
             "searchpath": [f"hydra.searchpath=[file://{user}]", "method=mine"],
             "misspelt": ["--config-dir", str(user), "method=mien"]}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {k: pool.submit(run_cli, *args, *RUN, runs_dir=root / k, check=False) for k, args in cases.items()}
        return {k: (f.result(), root / k) for k, f in futures.items()}


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["config-dir", "searchpath"])
def test_cli_runs_a_user_option(cli, case):
    proc, runs = cli[case]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _method_name(runs) == "mine"


@pytest.mark.e2e
def test_cli_unknown_user_option_lists_the_user_options(cli):
    proc, _ = cli["misspelt"]
    assert proc.returncode == 2, proc.stderr
    line = next(ln for ln in proc.stderr.splitlines() if ln.startswith("error: method=mien"))
    assert "mine" in line.split("choose one of:")[1].replace(",", " ").split()
    assert "Traceback" not in proc.stderr
