"""DGA (methods/data/dga.py) in the runner: the mixture update DGAModule makes from its gradients is the
exponentiated-gradient step of the paper, α stays on the simplex, the mixture moves toward the domain the
specific set is drawn from, and a resumed run restores α exactly.

The function-level checks of `dga_update` (random vectors, the EMA form, a linear-regression toy) are in
test_data_selection.py; here the same formula is checked through the module's own gradient computation."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.conftest import TINY
from tests.helpers import lazy_import

dga = lazy_import("methods.data.dga")  # imports Lightning (seconds): when a test first needs it, not at collection

SPECIFIC_DIM = 24


class BlocksByDomain:
    """The part of MixtureData DGA reads; every block of domain i is filled with the token i, so a test can
    tell from a batch which domain it came from."""

    def __init__(self, domains: list[str], sampled: list[bool], sizes: list[int]):
        self.domains, self.sampled, self._sizes = domains, sampled, sizes
        self.probs_fn = None

    def domain_blocks(self, domain: str, split: str) -> torch.Tensor:
        i = self.domains.index(domain)
        return torch.full((self._sizes[i], 5), i, dtype=torch.long)

    def natural_probs(self) -> np.ndarray:
        n = np.asarray(self._sizes, dtype=np.float64) * np.asarray(self.sampled)
        return n / n.sum()

    def set_sampling(self, fn) -> None:
        self.probs_fn = fn


def module_with_hand_set_gradients(method: dga.DGA, vectors: torch.Tensor):
    """A DGAModule whose LM loss on a batch of domain i is ⟨θ, vectors[i]⟩, so its gradient is vectors[i]."""
    model = nn.Module()
    model.theta = nn.Parameter(torch.zeros(vectors.shape[1]))
    module = dga.DGAModule(model, method)
    module.lm_loss = lambda tokens, reduction="mean": torch.dot(model.theta, vectors[int(tokens[0, 0])])
    return module


def test_update_through_the_module_is_the_exponentiated_gradient_step():
    torch.manual_seed(0)
    domains = ["a", "spe", "b", "c"]
    data = BlocksByDomain(domains, [True, False, True, True], [10, 3, 20, 30])
    vectors = torch.randn(4, SPECIFIC_DIM) * 0.3
    generic = [0, 2, 3]
    for ema, normalize in ((0.0, False), (0.5, False), (0.0, True)):
        method = dga.DGA(update_every=1, alpha_lr=0.7, ema=ema, init="natural", normalize=normalize, seed=0)
        method.prepare_data(data)
        assert method.generic == ["a", "b", "c"] and method.specific == "spe"
        module = module_with_hand_set_gradients(method, vectors)
        alpha = method.alpha.clone()
        torch.testing.assert_close(alpha, torch.tensor([10 / 60, 20 / 60, 30 / 60], dtype=torch.float64))
        for step in range(3):
            module.update_mixture(step, batch_size=2)
            g = vectors[generic].double()
            g_spe = vectors[1].double()
            if normalize:
                g, g_spe = g / g.norm(dim=1, keepdim=True), g_spe / g_spe.norm()
            logits = torch.log(alpha) + 0.7 * (g @ g_spe)
            expected = (1 - ema) * torch.softmax(logits, 0) + ema * alpha
            torch.testing.assert_close(method.alpha, expected, rtol=0, atol=1e-7)
            assert abs(float(method.alpha.sum()) - 1) < 1e-12 and (method.alpha > 0).all()
            alpha = expected
        # the train sampler's probabilities: α on the generic domains, 0 on the specific set, from the update
        # made `lag` (2) steps before: step 2 still uses the update of step 0
        p = data.probs_fn(2)
        assert p[1] == 0 and abs(p.sum() - 1) < 1e-12
        np.testing.assert_allclose(p[generic], method.history[0][1].numpy(), rtol=0, atol=0)
        np.testing.assert_allclose(data.probs_fn(1), [*method.alpha0.numpy()[:1], 0, *method.alpha0.numpy()[1:]])
        np.testing.assert_allclose(data.probs_fn(4)[generic], method.alpha.numpy(), rtol=0, atol=0)


def test_alpha_stays_on_the_simplex_with_large_gradients():
    torch.manual_seed(1)
    data = BlocksByDomain(["a", "b", "spe"], [True, True, False], [5, 5, 5])
    method = dga.DGA(update_every=1, alpha_lr=1.0, ema=0.0, seed=0)
    method.prepare_data(data)
    module = module_with_hand_set_gradients(method, torch.randn(3, SPECIFIC_DIM) * 30)  # saturating softmax
    for step in range(5):
        module.update_mixture(step, batch_size=1)
        assert (method.alpha >= 0).all() and abs(float(method.alpha.sum()) - 1) < 1e-12


def test_config_errors_are_one_line_each():
    with pytest.raises(ValueError, match=r"method\.init: .*choose one of: uniform, natural"):
        dga.DGA(init="zipf")
    with pytest.raises(ValueError, match=r"method\.ema: must be in \[0, 1\)"):
        dga.DGA(ema=1.0)
    data = BlocksByDomain(["a", "b"], [True, True], [5, 5])
    with pytest.raises(ValueError, match=r"method\.specific_domain: null needs exactly one `sample: false`"):
        dga.DGA().prepare_data(data)
    with pytest.raises(ValueError, match=r"method\.specific_domain: 'x' is not valid; choose one of: a, b"):
        dga.DGA(specific_domain="x").prepare_data(data)


# ---------------------------------------------------------------- through the runner (in process)
STEPS = 40


def run_dga(run_dir: Path, *overrides: str) -> dict:
    from runner.config import compose
    from runner.train import run

    cfg = compose(["method=dga", "dataset=mixture-dga", *TINY, "dataset.tokenizer.vocab_size=512",
                   "model.seq_len=32", "dataset.batch_size=8", "trainer.enable_progress_bar=false",
                   "logger=csv", *overrides])
    return run(cfg, run_dir=run_dir, identity=f"test-dga:{run_dir.name}")


def alpha_trajectory(run_dir: Path) -> list[dict[str, float]]:
    rows = csv.DictReader(open(run_dir / "csv" / "metrics.csv"))
    return [{d: float(r[f"dga/alpha/{d}"]) for d in "abc"} for r in rows if r.get("dga/alpha/a")]


@pytest.mark.e2e
def test_alpha_of_the_specific_sets_chain_rises(tmp_path):
    """Specific set = documents of domain a's Markov chain: α_a rises at every update, b and c fall."""
    summary = run_dga(tmp_path / "run", f"trainer.max_steps={STEPS}", f"trainer.val_every_n_steps={STEPS}",
                      "method.update_every=10", "trainer.log_every_n_steps=10")
    path = alpha_trajectory(tmp_path / "run")  # logged at steps 10, 20, 30, 40 (after updates 0..30)
    a = [row["a"] for row in path]
    print("α_a:", [round(x, 3) for x in a], "final", {d: round(summary[f"eval/dga/alpha/{d}"], 3) for d in "abc"})
    assert summary["eval/dga/updates"] == STEPS // 10
    assert len(a) == 4 and all(x < y for x, y in zip([1 / 3, *a], a))
    assert summary["eval/dga/alpha/a"] > 0.42
    assert summary["eval/dga/alpha/b"] < 1 / 3 and summary["eval/dga/alpha/c"] < 1 / 3
    header = open(tmp_path / "run" / "csv" / "metrics.csv").readline()
    assert "val/loss/specific" in header


@pytest.mark.e2e
def test_resume_restores_alpha_exactly(tmp_path):
    steps = ["trainer.max_steps=12", "trainer.val_every_n_steps=12", "trainer.checkpoint_every_n_steps=6",
             "method.update_every=3", "logger=none"]
    whole = run_dga(tmp_path / "whole", *steps)
    half = tmp_path / "half"
    shutil.copytree(tmp_path / "whole", half)
    for f in (half / "checkpoints").glob("*.ckpt"):
        if f.name != "step000006.ckpt":
            f.unlink()
    (half / "summary.json").unlink()  # as a run killed before its end: no summary (a finished run is not resumed)
    ckpt = torch.load(half / "checkpoints" / "step000006.ckpt", weights_only=False)
    assert ckpt["dga"]["steps"] == [0, 3]  # the updates made before the checkpoint
    resumed = run_dga(half, *steps, f"resume={half}")
    assert resumed["steps"] == 12 and resumed["eval/dga/updates"] == 4
    for d in "abc":
        assert resumed[f"eval/dga/alpha/{d}"] == whole[f"eval/dga/alpha/{d}"]
    assert resumed["train/loss"] == pytest.approx(whole["train/loss"], abs=1e-6)
    assert resumed["val/loss"] == pytest.approx(whole["val/loss"], abs=1e-6)


def test_importance_baseline_weights_the_specific_sets_chain():
    """init=importance (the static baseline with alpha_lr=0): specific documents of chain 1 are assigned to
    the generic domain of chain 1, so nearly all its mass is there (Laplace-smoothed: never exactly 0)."""
    from methods.data.dga import importance_weights
    from tasks.mixture import markov_documents

    domains = [markov_documents(name, 30, seed=seed, length=60) for name, seed in (("a", 1), ("b", 2), ("c", 3))]
    alpha = importance_weights(domains, markov_documents("specific", 20, seed=1, length=60))
    np.testing.assert_allclose(alpha, [21 / 23, 1 / 23, 1 / 23])
