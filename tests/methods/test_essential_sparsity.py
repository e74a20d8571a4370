"""Essential sparsity's properties (methods/compression/essential_sparsity.py): one-shot global magnitude
pruning reaches exactly the asked sparsity with one global threshold, N:M keeps exactly N of every M, the mask
holds while fine-tuning (a runner train stage: logged, checkpointed, resumed exactly after SIGKILL), and the knee
finder returns the point of maximum curvature."""

from __future__ import annotations

import copy
import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from methods.compression.essential_sparsity import (
    EssentialSparsity,
    essential_sparsity,
    plot_sparsity_curve,
    prunable_linears,
    sparsity_of,
)
from tests.conftest import BASE, run_in_process
from tests.helpers import tiny_llama

VOCAB = 96



def llama(seed: int = 0):
    return tiny_llama(VOCAB, heads=2, seed=seed).eval()


class Blocks:
    """The part of TokenData the method reads: seeded (n, T+1) training blocks."""

    def __init__(self, n: int = 32, T: int = 16, vocab: int = VOCAB):
        self._blocks = torch.randint(0, vocab, (n, T + 1), generator=torch.Generator().manual_seed(1))

    def blocks(self, split: str) -> torch.Tensor:
        return self._blocks


def prunable_weights(model) -> torch.Tensor:
    return torch.cat([lin.weight.detach().flatten() for _, lin in prunable_linears(model)])


# -- one-shot global magnitude pruning ---------------------------------------------------------
@pytest.mark.parametrize("s", [0.0, 0.1, 0.37, 0.5, 0.9, 1.0])
def test_global_sparsity_is_exactly_s_with_one_threshold(s):
    dense = llama()
    before = prunable_weights(dense)
    assert int((before == 0).sum()) == 0
    model = EssentialSparsity(sparsity=s).compress(copy.deepcopy(dense), Blocks())
    after = prunable_weights(model)
    pruned = after == 0
    assert int(pruned.sum()) == round(s * before.numel())
    if 0 < s < 1:  # every pruned |w| <= every kept |w|
        assert before[pruned].abs().max() <= before[~pruned].abs().min()
    assert torch.equal(after[~pruned], before[~pruned])  # kept weights untouched
    # embeddings, norms and lm_head are not pruned
    for (name, p), (_, q) in zip(dense.named_parameters(), model.named_parameters()):
        if not any(k in name for k in ("self_attn", "mlp")):
            assert torch.equal(p, q), name


def test_ties_are_broken_by_index():
    model = llama()
    with torch.no_grad():
        for _, lin in prunable_linears(model):
            lin.weight.copy_(torch.where(torch.rand_like(lin.weight) < 0.5, -0.01, 0.01))  # all |w| equal
    n = prunable_weights(model).numel()
    EssentialSparsity(sparsity=0.3).compress(model, Blocks())
    pruned = prunable_weights(model) == 0
    k = round(0.3 * n)
    assert pruned[:k].all() and not pruned[k:].any()  # the first k in module order, row-major


# -- N:M ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("n_m", ["2:4", "1:4", "4:8"])
def test_n_m_groups_keep_exactly_n_largest(n_m):
    n, m = (int(v) for v in n_m.split(":"))
    dense = llama()
    model = EssentialSparsity(n_m=n_m).compress(copy.deepcopy(dense), Blocks())
    for (name, lin), (_, lin0) in zip(prunable_linears(model), prunable_linears(dense)):
        groups = lin.weight.detach().reshape(lin.out_features, -1, m)
        orig = lin0.weight.detach().reshape(lin.out_features, -1, m).abs()
        kept = groups != 0
        assert (kept.sum(-1) == n).all(), name
        lowest_kept = torch.where(kept, orig, torch.inf).amin(-1)
        highest_pruned = torch.where(kept, -torch.inf, orig).amax(-1)
        assert (highest_pruned <= lowest_kept).all(), name
    assert math.isclose(EssentialSparsity(n_m=n_m).evaluate(model, None)["sparsity"], 1 - n / m)


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="method.n_m"):
        EssentialSparsity(n_m="2-4")
    with pytest.raises(ValueError, match="method.n_m"):
        EssentialSparsity(n_m="5:4")
    with pytest.raises(ValueError, match="method.sparsity"):
        EssentialSparsity(sparsity=1.5)
    with pytest.raises(ValueError, match="divisible by 3"):
        EssentialSparsity(n_m="1:3").compress(llama(), Blocks())


# -- fine-tuning with the mask fixed: a train stage ------------------------------------------------
def test_stages_follow_finetune_steps():
    one_shot = EssentialSparsity(sparsity=0.5)
    assert one_shot.stages == ["compress", "evaluate"] and not one_shot.trains
    assert one_shot.needs_trained_model and one_shot.supports_fsdp
    tuned = EssentialSparsity(sparsity=0.5, finetune_steps=7)
    assert tuned.stages == ["compress", "train", "evaluate"] and tuned.trains
    assert tuned.needs_trained_model  # it prunes a trained model, fine-tuned or not
    assert tuned.train_steps(200) == 7  # its own step count, not trainer.max_steps
    assert not tuned.supports_fsdp  # whole-matrix masks
    with pytest.raises(ValueError, match="method.finetune_steps"):
        EssentialSparsity(finetune_steps=-1)
    with pytest.raises(ValueError, match="after compress"):  # a train stage without the compress stage's masks
        tuned.hold_mask(llama())


@pytest.mark.parametrize("n_m,fresh_params", [(None, False), ("2:4", False), (None, True)])
def test_mask_does_not_change_while_fine_tuning(n_m, fresh_params):
    """The method's own train-stage hooks (configure_optimizers, the gradient hooks, after_optimizer_step) in a
    Lightning trainer on the CPU, as the runner's train stage runs them. `fresh_params`: the module trains a copy of
    the pruned model (other parameter tensors than compress saw, as after a strategy re-creates them)."""
    import lightning.pytorch as pl  # here, not at collection (seconds)

    from methods.module import MethodModule

    class Losses(pl.Callback):
        """Every training step's loss."""

        def __init__(self):
            self.losses: list[float] = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))

    dense = llama()
    one_shot = EssentialSparsity(sparsity=0.6, n_m=n_m).compress(copy.deepcopy(dense), Blocks())
    method = EssentialSparsity(sparsity=0.6, n_m=n_m, finetune_steps=6, finetune_lr=1e-2)
    model = method.compress(copy.deepcopy(dense), Blocks())
    if fresh_params:
        model = copy.deepcopy(model)  # deepcopy drops tensor hooks: configure_optimizers must register them again
    module = MethodModule(model, method)
    # (4, T+1) blocks of 8 of the 96 tokens: something to learn
    loader = torch.utils.data.DataLoader(Blocks(n=32, vocab=8).blocks("train"), batch_size=4)
    losses = Losses()
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=method.train_steps(100), max_epochs=-1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, callbacks=[losses])
    trainer.fit(module, train_dataloaders=loader)

    w0, w1 = prunable_weights(one_shot), prunable_weights(module.model)
    assert torch.equal(w0 == 0, w1 == 0)  # the same entries are zero, no more, no fewer
    assert (w1[w0 != 0] != w0[w0 != 0]).float().mean() > 0.9  # and the kept ones did train
    assert trainer.global_step == 6 and len(losses.losses) == 6 and losses.losses[-1] < losses.losses[0]
    opt = trainer.optimizers[0]
    group = opt.param_groups[0]
    assert (group["lr"], group["weight_decay"], tuple(group["betas"]), group["eps"]) == (1e-2, 0.0, method.betas, method.eps)
    for (_, lin), pruned in zip(prunable_linears(module.model), method.pruned):
        state = opt.state[lin.weight]  # the optimizer steps these very tensors, and never saw a pruned gradient
        assert not state["exp_avg"][pruned].any() and not state["exp_avg_sq"][pruned].any()
    assert method.evaluate(module.model, None)["sparsity"] == pytest.approx(sparsity_of(one_shot), abs=0)
    assert not any(lin.weight._backward_hooks for _, lin in prunable_linears(module.model))  # released after


# -- the fine-tune through the runner: logged every step, checkpointed, resumed exactly --------------
FINETUNE = [*BASE, "method=essential_sparsity", "method.sparsity=0.6", "method.finetune_steps=6",
            "trainer.checkpoint_every_n_steps=2", "trainer.keep_checkpoints=3", "trainer.log_every_n_steps=1",
            "logger=csv"]  # keep_checkpoints=3: all of steps 2, 4, 6 (the crash below keeps the step-2 one)


def _csv_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _train_losses(run_dir: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["train/loss"]) for r in _csv_rows(run_dir) if r.get("train/loss")}


def _run(run_dir: Path, *extra: str) -> None:
    """The runner in this process on FINETUNE (its CLI and a real SIGKILL are tests/test_e2e.py's)."""
    run_in_process([*FINETUNE, *extra], run_dir)


@pytest.mark.e2e
def test_finetune_is_a_logged_resumable_train_stage(tmp_path):
    """The uninterrupted run on the cached base model (trained once, under a lock, if missing); then a copy of
    its directory as a crash after the step-2 checkpoint leaves it (no later checkpoint, no summary, no CSV, no
    saved model) resumes: the same per-step losses, val/loss and final model, its sparsity exact."""
    full_dir, killed_dir = tmp_path / "full" / "run", tmp_path / "killed" / "run"
    _run(full_dir)
    shutil.copytree(full_dir, killed_dir, symlinks=True)
    for f in (killed_dir / "checkpoints").iterdir():
        if f.name != "step000002.ckpt":
            f.unlink()
    for gone in ("summary.json", "csv", "compressed"):
        path = killed_dir / gone
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    # the uninterrupted run: a train stage of finetune_steps steps, train/loss logged at every one
    ref = json.loads((full_dir / "summary.json").read_text())
    assert ref["stages"] == ["compress", "train", "evaluate"]
    assert ref["steps"] == 6 and ref["tokens_seen"] == 6 * 16 * 64
    assert ref["eval/sparsity"] == pytest.approx(0.6, abs=1e-6)
    ref_losses = _train_losses(full_dir)
    assert sorted(ref_losses) == list(range(6))
    assert ref["train/loss"] == pytest.approx(ref_losses[5], abs=1e-6)  # the fine-tune's last loss
    lrs = [float(r["train/lr"]) for r in _csv_rows(full_dir) if r.get("train/lr")]
    assert len(lrs) == 6 and all(lr == pytest.approx(2e-5) for lr in lrs)  # finetune_lr, constant

    # the killed run, resumed from its directory
    _run(killed_dir, f"resume={killed_dir}")
    got = json.loads((killed_dir / "summary.json").read_text())
    assert json.loads((killed_dir / "meta.json").read_text())["resumed_from"]
    assert got["steps"] == 6 and got["tokens_seen"] == ref["tokens_seen"]
    losses = _train_losses(killed_dir)  # the steps after the restart (the CSV of the resumed segment)
    assert losses and 2 <= min(losses) <= 5 and max(losses) == 5, losses
    diffs = [abs(losses[k] - ref_losses[k]) for k in losses] + [abs(got["val/loss"] - ref["val/loss"]),
                                                                 abs(got["train/loss"] - ref["train/loss"])]
    print(f"resume vs uninterrupted: steps {sorted(losses)}, max |diff| {max(diffs):.3g}")
    assert max(diffs) <= 1e-6
    assert got["eval/sparsity"] == ref["eval/sparsity"]

    # the resumed run's final model: the same mask, exactly the configured sparsity, the same weights
    a = torch.load(full_dir / "compressed" / "model.pt", weights_only=False)
    b = torch.load(killed_dir / "compressed" / "model.pt", weights_only=False)
    wa, wb = prunable_weights(a), prunable_weights(b)
    assert int((wb == 0).sum()) == round(0.6 * wb.numel()) and torch.equal(wa == 0, wb == 0)
    assert float((wa - wb).abs().max()) <= 1e-6


# -- the knee ----------------------------------------------------------------------------------
def test_knee_is_the_maximum_curvature_point_of_a_smooth_curve():
    # y = 1 − (e^{kx} − 1)/(e^k − 1) on [0, 1] is its own unit-square scaling; its curvature
    # κ = k·u / (1 + u²)^{3/2}, u = k·e^{kx}/(e^k − 1) = |y'|, peaks where u = 1/√2:
    k = 5.0
    x_star = math.log((math.exp(k) - 1) / (k * math.sqrt(2))) / k  # 0.6075
    x = np.linspace(0, 1, 1001)
    y = 1 - (np.exp(k * x) - 1) / (np.exp(k) - 1)
    assert abs(essential_sparsity(x, y) - x_star) < 2e-3
    # any units and either sign: the knee does not move
    assert abs(essential_sparsity(100 * x, 7 - 3 * y) / 100 - x_star) < 2e-3


def test_knee_of_a_broken_line_on_the_sweep_grid():
    s = np.round(np.arange(10) * 0.1, 2)  # 0, 10, ..., 90%
    loss = np.where(s <= 0.5, 3.0 + 0.1 * s, 3.05 + 4.0 * (s - 0.5))  # flat, then falls off at 50%
    assert essential_sparsity(s, loss) == pytest.approx(0.5)
    assert essential_sparsity(s[::-1], loss[::-1]) == pytest.approx(0.5)  # order of the samples does not matter
    assert essential_sparsity(s, np.full(10, 2.0)) == pytest.approx(0.9)  # flat: no knee before the end
    with pytest.raises(ValueError):
        essential_sparsity([0.0, 0.1], [1.0, 2.0])


def test_plot_is_written(tmp_path):
    s = np.arange(10) * 0.1
    path = plot_sparsity_curve(s, 1 + s ** 4, 0.7, tmp_path / "curve.png", title="t")
    assert path.stat().st_size > 1000


# -- the paper's comparison at small scale -------------------------------------------------------
@pytest.mark.e2e
def test_magnitude_pruning_keeps_the_trained_model_far_better_than_random_pruning(base_lm):
    dense, data = base_lm
    val = data.blocks("val")[:32]

    def val_loss(model) -> float:
        with torch.no_grad():
            logits = model(input_ids=val[:, :-1]).logits
        return float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), val[:, 1:].flatten()))

    magnitude = EssentialSparsity(sparsity=0.5).compress(copy.deepcopy(dense), data)
    rand = copy.deepcopy(dense)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, lin in prunable_linears(rand):
            lin.weight.mul_(torch.rand(lin.weight.shape, generator=gen) >= 0.5)
    base = val_loss(dense)
    # at 50% one-shot magnitude pruning costs a fraction of what random pruning of the same weights costs
    assert val_loss(magnitude) - base < 0.25 * (val_loss(rand) - base)
