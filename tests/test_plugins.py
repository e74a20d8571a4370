"""Plug-ins without editing the repository: a new kind of data (a Task), a new method and a new architecture (a
plain torch.nn.Module) defined entirely outside it — a Python module on PYTHONPATH and YAMLs in a config
directory of the user's — run through `python -m runner --config-dir DIR`, with the task's own metric in
summary.json and in the W&B run; and what the runner checks of them before any work (their arguments, and
what the method needs of the task)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from runner.loggers import read_offline_run
from tests.conftest import REPO, run_cli, run_dirs

# A periodic-sequence task (each sequence repeats a random pattern of `period` symbols), its own metric (the
# next-token accuracy after the first period, which a model that learned the task gets right), a method
# with a label-smoothed loss that needs the task's "periodic" capability, and a GRU language model.
MODULE = '''
import torch
import torch.nn.functional as F
from dataclasses import dataclass
from torch import nn

from methods.base import Method
from tasks.base import Task, TaskData
from tasks.common import BlockDataset, ResumableBatchSampler


@dataclass
class PeriodicData(TaskData):
    train: torch.Tensor
    val: torch.Tensor
    period: int
    vocab_size: int
    tokenizer: object = None

    def make_loaders(self, batch_size, total_micro_batches, seed, start, rank=0, world=1, val_batches=None,
                     num_workers=0):
        sampler = ResumableBatchSampler(len(self.train), batch_size, total_micro_batches, seed, start, rank, world)
        train = torch.utils.data.DataLoader(BlockDataset(self.train), batch_sampler=sampler)
        val = torch.utils.data.DataLoader(BlockDataset(self.val[rank::world]), batch_size=batch_size)
        return train, val

    def counts(self):
        return {"train_sequences": len(self.train), "val_sequences": len(self.val)}

    @torch.no_grad()
    def evaluate(self, model):
        ids = self.val[:, :-1]
        logits = model(input_ids=ids)
        hit = logits.argmax(-1)[:, self.period:] == self.val[:, 1:][:, self.period:]
        return {"periodic_accuracy": hit.float().mean().item()}


class Periodic(Task):
    provides = frozenset({"tokens", "periodic"})
    model_kinds = ("causal-lm",)

    def __init__(self, symbols: int = 16, period: int = 4, sequences: int = 512):
        if period < 1:
            raise ValueError(f"dataset.period: must be at least 1, got {period}")
        self.symbols, self.period, self.sequences = symbols, period, sequences

    def build(self, ctx):
        g = torch.Generator().manual_seed(123)
        reps = -(-(ctx.seq_len + 1) // self.period)
        patterns = torch.randint(0, self.symbols, (self.sequences + 64, self.period), generator=g)
        blocks = patterns.repeat(1, reps)[:, : ctx.seq_len + 1]
        return PeriodicData(blocks[64:], blocks[:64], self.period, self.symbols)


class SmoothedLoss(Method):
    needs_task = frozenset({"periodic"})

    def __init__(self, name: str = "smoothed", smoothing: float = 0.1, **base):
        super().__init__(name=name, **base)
        self.smoothing = float(smoothing)

    def loss(self, module, batch):
        logits = module.model(input_ids=batch[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), label_smoothing=self.smoothing)


class TinyGRU(nn.Module):
    kind = "causal-lm"

    def __init__(self, vocab_size: int, width: int = 32, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.layers = nn.ModuleList(nn.GRU(width, width, batch_first=True) for _ in range(layers))
        self.head = nn.Linear(width, vocab_size)

    def repeated_blocks(self):
        return list(self.layers)

    def forward(self, input_ids):
        h = self.embed(input_ids)
        for layer in self.layers:
            h = h + layer(h)[0]
        return self.head(h)
'''

CONFIGS = {
    "dataset/periodic.yaml": """\
        _target_: my_plugins.Periodic
        name: periodic
        batch_size: 16
        num_workers: 0
        symbols: 16
        period: 4
        sequences: 512
    """,
    "method/smoothed.yaml": """\
        defaults:
          - adamw
          - _self_
        _target_: my_plugins.SmoothedLoss
        name: smoothed
        smoothing: 0.1
        lr: 1.0e-2
        warmup_steps: 5
    """,
    "model/tiny-gru.yaml": """\
        _target_: my_plugins.TinyGRU
        name: tiny-gru
        seq_len: 32
        vocab_size: null
        init_from: null
        width: 64
        layers: 2
    """,
}
RUN = ["model=tiny-gru", "method=smoothed", "dataset=periodic", "trainer.max_steps=150", "trainer.val_every_n_steps=75",
       "trainer.log_every_n_steps=10", "hardware.threads=1"]


@pytest.fixture(scope="module")
def user(tmp_path_factory) -> tuple[Path, Path]:
    """(the user's package dir for PYTHONPATH, the user's config dir), both outside the repository."""
    root = tmp_path_factory.mktemp("user")
    (root / "code").mkdir()
    (root / "code" / "my_plugins.py").write_text(MODULE)
    for rel, text in CONFIGS.items():
        (root / "configs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "configs" / rel).write_text(textwrap.dedent(text))
    return root / "code", root / "configs"


def _cli(user, *args, runs_dir, check=True):
    code, configs = user
    return run_cli("--config-dir", str(configs), *args, runs_dir=runs_dir, check=check,
                   env={"PYTHONPATH": f"{code}:{REPO}"})


@pytest.mark.e2e
def test_a_new_task_method_and_model_run_from_outside_the_repo(user, tmp_path):
    _cli(user, *RUN, runs_dir=tmp_path)
    (run_dir,) = run_dirs(tmp_path)
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["stages"] == ["train"] and s["steps"] == 150
    assert s["data/train_sequences"] == 512 and s["data/val_sequences"] == 64
    assert "val/unigram_ppl" not in s  # the task reports no corpus baseline it does not have
    # chance is 1/16; the GRU learns to repeat the pattern (measured 0.57 at seed 0, one thread)
    assert s["eval/periodic_accuracy"] > 0.3, s
    wandb = read_offline_run(run_dir)
    assert wandb["summary"]["eval/periodic_accuracy"] == pytest.approx(s["eval/periodic_accuracy"])
    assert wandb["config"]["dataset.target"] == "my_plugins.Periodic"
    assert wandb["config"]["model.target"] == "my_plugins.TinyGRU"
    assert any("train/loss" in row for row in wandb["history"])


@pytest.mark.e2e
def test_the_plugins_are_checked_like_the_repos(user, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=2) as pool:  # two CLI processes side by side
        bad = pool.submit(_cli, user, "model=tiny-gru", "method=smoothed", "dataset=periodic", "dataset.period=0",
                          "+model.widht=3", runs_dir=tmp_path / "bad", check=False)
        wrong = pool.submit(_cli, user, "model=tiny-gru", "method=smoothed", runs_dir=tmp_path / "wrong", check=False)
        bad, wrong = bad.result(), wrong.result()
    assert bad.returncode == 2, bad.stderr
    assert "dataset.period: must be at least 1" in bad.stderr
    assert "model.widht: not an argument of my_plugins.TinyGRU" in bad.stderr and "width" in bad.stderr
    # the method needs the task's "periodic": on the default corpus it is refused, naming the user's option
    assert wrong.returncode == 2, wrong.stderr
    line = next(ln for ln in wrong.stderr.splitlines() if ln.startswith("error: dataset:"))
    assert "method=smoothed" in line and "periodic" in line and "dataset=periodic" in line
