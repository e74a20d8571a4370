"""Masked-language modelling (tasks/mlm.py): the masking's statistics and determinism, the loss against a
hand computation on a tiny random BERT, the task's config checks; end to end through `python -m runner`
(model=bert-tiny dataset=stdlib-docs-mlm): it learns, reports no perplexity, plans the same model in a dry run,
and resumes exactly after SIGKILL (with BERT's dropout on)."""

from __future__ import annotations

import json
import math
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from methods.base import Method
from models.bert import Bert
from tests.conftest import TINY, kill_at_checkpoint, run_cli, run_dirs, run_in_process
from tests.helpers import lazy_import

mlm = lazy_import("tasks.mlm")  # imports Lightning (seconds): when a test first needs it, not at collection

SIGMAS = 6.0  # every frequency check: within 6 binomial standard deviations (a false failure ~1 in 5e8)


def _within(count: int, n: int, p: float) -> bool:
    """`count` of `n` Bernoulli(p) draws is within SIGMAS standard deviations of n*p."""
    return abs(count - n * p) <= SIGMAS * math.sqrt(n * p * (1 - p))


def _tokens(shape: tuple[int, int], vocab: int, seed: int = 0) -> torch.Tensor:
    """Random ordinary tokens (never EOS 0 or <mask> 1)."""
    return torch.randint(2, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _mask(tokens, seed, vocab=1024, **probs):
    return mlm.mask_tokens(tokens, torch.Generator().manual_seed(seed), 1, mlm.random_candidates(vocab, (0, 1)), **probs)


# ---------------------------------------------------------------------------------------------- masking
@pytest.mark.parametrize("mask_prob", [0.15, 0.4])
def test_selected_fraction_and_80_10_10_split(mask_prob):
    vocab, (b, t) = 1024, (256, 512)
    tokens = _tokens((b, t), vocab)
    inputs, labels = _mask(tokens, seed=3, vocab=vocab, mask_prob=mask_prob)
    selected = labels != -100
    n, n_sel = tokens.numel(), int(selected.sum())
    # P(selected) = p, plus the forced pick of a row with none: (1 - p)^T / T per position (~1e-38 here)
    assert _within(n_sel, n, mask_prob), (n_sel, n * mask_prob)
    masked = selected & (inputs == 1)
    changed = selected & (inputs != tokens) & (inputs != 1)
    unchanged = selected & (inputs == tokens)
    assert int(masked.sum() + changed.sum() + unchanged.sum()) == n_sel
    c = vocab - 2  # a random replacement equals the original with probability 1/c: it then reads as unchanged
    assert _within(int(masked.sum()), n_sel, 0.8)
    assert _within(int(changed.sum()), n_sel, 0.1 * (1 - 1 / c))
    assert _within(int(unchanged.sum()), n_sel, 0.1 + 0.1 / c)


def test_labels_are_the_original_tokens_exactly_at_the_selected_positions():
    tokens = _tokens((64, 128), 300)
    inputs, labels = _mask(tokens, seed=5, vocab=300)
    selected = labels != -100
    assert torch.equal(labels[selected], tokens[selected])
    assert bool((labels[~selected] == -100).all())
    # nothing off the selected positions changes, and <mask> appears only on them
    assert torch.equal(inputs[~selected], tokens[~selected])
    assert not bool((inputs[~selected] == 1).any())
    # random replacements are ordinary tokens: never EOS, never <mask> unless it is the <mask> replacement
    assert not bool((inputs == 0).any())
    assert inputs.dtype == tokens.dtype and labels.dtype == tokens.dtype


def test_every_row_scores_at_least_one_token():
    tokens = _tokens((512, 16), 100)
    _, labels = _mask(tokens, seed=0, vocab=100, mask_prob=1e-4)
    per_row = (labels != -100).sum(dim=1)
    assert bool((per_row >= 1).all())
    assert int((per_row == 1).sum()) >= 500  # almost every row: the forced pick alone


def test_probabilities_at_their_limits():
    tokens = _tokens((32, 64), 100)
    inputs, labels = _mask(tokens, seed=1, vocab=100, mask_prob=1.0, mask_token_prob=1.0, random_token_prob=0.0)
    assert bool((labels == tokens).all()) and bool((inputs == 1).all())
    inputs, labels = _mask(tokens, seed=1, vocab=100, mask_prob=1.0, mask_token_prob=0.0, random_token_prob=0.0)
    assert torch.equal(inputs, tokens)  # BERT's "unchanged" share only: the input is the text itself


def _data(vocab: int = 64, seq_len: int = 16, **probs) -> mlm.MaskedTokenData:
    rng = np.random.default_rng(0)
    train, val = rng.integers(2, vocab, 4000).astype(np.uint16), rng.integers(2, vocab, 800).astype(np.uint16)
    return mlm.MaskedTokenData(train, val, None, vocab, seq_len, 1, 1, "test", mask_id=1, special_ids=(0,), **probs)


def _module(data: mlm.MaskedTokenData, seed: int = 3, dropout: float = 0.0) -> mlm.MLMModule:
    torch.manual_seed(0)
    model = Bert(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, dropout=dropout).build(
        data.vocab_size, data.seq_len)
    return mlm.MLMModule(model, Method(), data=data, seed=seed)


def test_same_seed_and_micro_batch_same_masks_else_different():
    data = _data()
    module = _module(data)
    batch = data.blocks("train")[:8]
    a = module.masked_batch(batch, mlm.mask_seed(7, 12))
    b = module.masked_batch(batch, mlm.mask_seed(7, 12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for other in (mlm.mask_seed(7, 13), mlm.mask_seed(8, 12), mlm.mask_seed(7, 12, mlm.VAL_STREAM)):
        c = module.masked_batch(batch, other)
        assert not torch.equal(a[1], c[1])
    # a CPU generator keeps the low 32 bits of its seed: the seeds are 32-bit, distinct over a run's indices
    seeds = {mlm.mask_seed(7, i, stream) for i in range(2000) for stream in ("train", mlm.VAL_STREAM)}
    assert len(seeds) == 4000 and max(seeds) < 2**32
    # the masks do not depend on the global RNG (dropout's), only on the seed
    torch.manual_seed(123)
    d = module.masked_batch(batch, mlm.mask_seed(7, 12))
    assert torch.equal(a[0], d[0])
    # the sequence is the first T tokens of each (B, T+1) block
    assert a[0].shape == (8, data.seq_len)


def test_loss_is_cross_entropy_on_the_selected_positions():
    data = _data(vocab=64, seq_len=16)
    module = _module(data, dropout=0.1)
    module.model.eval()  # no dropout: the same logits in both computations
    batch = data.blocks("train")[:6]
    seed = mlm.mask_seed(3, 4)
    loss = module.lm_loss(batch, seed=seed)
    inputs, labels = data.mask(batch[:, :-1], torch.Generator().manual_seed(seed))
    with torch.no_grad():
        logits = module.model(input_ids=inputs).logits.double()
    logp = logits - logits.logsumexp(dim=-1, keepdim=True)
    rows, cols = (labels != -100).nonzero(as_tuple=True)
    by_hand = -logp[rows, cols, labels[rows, cols]]
    assert loss.item() == pytest.approx(by_hand.mean().item(), abs=1e-5)
    assert module.lm_loss(batch, "sum", seed=seed).item() == pytest.approx(by_hand.sum().item(), rel=1e-5)
    none = module.lm_loss(batch, "none", seed=seed)
    assert none.shape == labels.shape and bool((none[labels == -100] == 0).all())
    assert none.sum().item() == pytest.approx(by_hand.sum().item(), rel=1e-5)
    # the step's masks: training_step sets mask_seed_now, lm_loss (the method's loss) uses it
    module.mask_seed_now = seed
    assert module.lm_loss(batch).item() == loss.item()
    loss.backward()  # differentiable through the model
    assert module.model.bert.embeddings.word_embeddings.weight.grad is not None


def test_validation_scores_fixed_positions_beside_the_unigram_floor():
    """val/loss, val/masked_accuracy and val/unigram_loss of one val batch, by hand: the same positions for
    any run seed, the unigram cross-entropy on exactly those tokens."""
    data = _data(vocab=64, seq_len=16)
    batch = data.blocks("val")[:8]
    sums = []
    for seed in (3, 11):
        module = _module(data, seed=seed)
        module.model.eval()
        with torch.no_grad():
            module.validation_step(batch, 0)
        sums.append((module._val_sum.item(), module._val_count.item(), module._val_correct.item(),
                     module._val_unigram.item()))
    inputs, labels = data.mask(batch[:, :-1], torch.Generator().manual_seed(mlm.mask_seed(mlm.VAL_SEED, 0, mlm.VAL_STREAM)))
    selected = labels != -100
    with torch.no_grad():
        logits = module.model(input_ids=inputs).logits.double()[selected]
    targets = labels[selected]
    ce = (logits.logsumexp(-1) - logits.gather(1, targets[:, None])[:, 0]).sum().item()
    logp = data.unigram_logp()
    unigram = -logp[targets.numpy()].sum()
    total, count, correct, uni = sums[1]
    assert count == selected.sum().item() == sums[0][1]  # the run's seed does not move the val positions
    assert uni == pytest.approx(unigram, rel=1e-6) and sums[0][3] == pytest.approx(unigram, rel=1e-6)
    assert total == pytest.approx(ce, rel=1e-5)
    assert correct == (logits.argmax(-1) == targets).sum().item()
    # the floor is the LM corpus's unigram distribution: uniform-ish tokens 2..63 of 64 score about log 62
    assert unigram / count == pytest.approx(math.log(62), abs=0.1)
    assert np.exp(logp).sum() == pytest.approx(1.0)
    assert data.baselines(None) == {}  # the LM corpus's val/unigram_ppl is a next-token number: not reported


def test_config_checks_one_line_each():
    with pytest.raises(ValueError) as e:
        mlm.MaskedLM(mask_prob=0.0, mask_token_prob=1.5, random_token_prob=-0.1, val_fraction=2.0)
    parts = str(e.value).split("; ")
    assert [p.split(":")[0] for p in parts] == ["dataset.val_fraction", "dataset.mask_prob", "dataset.mask_token_prob",
                                               "dataset.random_token_prob"]
    with pytest.raises(ValueError, match=r"^dataset\.random_token_prob: mask_token_prob \+ random_token_prob"):
        mlm.MaskedLM(mask_token_prob=0.9, random_token_prob=0.2)
    task = mlm.MaskedLM()
    assert task.model_kinds == ("masked-lm",) and "masked-tokens" in task.provides
    assert task.vocab_size_hint() == 4096


def test_composed_config_validates_and_needs_a_masked_lm():
    from runner.config import validate
    from runner.errors import ConfigError
    from tests.conftest import compose_cfg

    cfg = compose_cfg(["model=bert-tiny", "dataset=stdlib-docs-mlm"])
    validate(cfg)
    assert cfg.dataset.source == "stdlib-docs" and cfg.dataset.mask_prob == 0.15  # stdlib-docs, plus the masking
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(["dataset=stdlib-docs-mlm"]))  # the default model is a causal LM
    assert "masked-lm" in str(e.value) and "model=bert-tiny" in str(e.value)
    with pytest.raises(ConfigError, match=r"dataset\.mask_prob: must be in \(0, 1\]"):
        validate(compose_cfg(["model=bert-tiny", "dataset=stdlib-docs-mlm", "dataset.mask_prob=0"]))


# ---------------------------------------------------------------------------------------------- end to end
STEPS = 30
MLM = [*TINY, "model=bert-tiny", "dataset=stdlib-docs-mlm", f"trainer.max_steps={STEPS}",
       "trainer.val_every_n_steps=2", "trainer.val_batches=8", "trainer.checkpoint_every_n_steps=10",
       "trainer.log_every_n_steps=1",
       "method.warmup_steps=5", "method.lr=1e-2", "seed=7", "logger=wandb"]
KILL_AT = "step000010.ckpt"  # 20 steps (~2 s) left: the poll below (50 ms) kills well before the end


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def _baseline(runs: Path) -> Path:
    run_cli(*MLM, runs_dir=runs)
    (run_dir,) = run_dirs(runs)
    return run_dir


def _killed_then_resumed(runs: Path) -> tuple[Path, dict]:
    """As tests/test_e2e.py: SIGKILL the process once its step-10 checkpoint exists, then resume its directory."""
    killed, before = kill_at_checkpoint(*MLM, runs_dir=runs, checkpoint=KILL_AT)
    run_cli(*MLM, f"resume={killed}", runs_dir=runs)
    return killed, before


def _dry_run(runs: Path) -> dict:
    """The runner in this process (a dry run needs no process of its own)."""
    run_in_process([*MLM, "dry_run=true"], runs / "dry" / "run")
    (plan,) = runs.glob("*/*/dry_run.json")
    return json.loads(plan.read_text())


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """The module's runs: the baseline and the killed-and-resumed run (subprocesses, side by side), the dry run. Each
    test takes its job's result (a failed job fails only the tests that read it)."""
    jobs = {"baseline": _baseline, "resumed": _killed_then_resumed}
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(fn, tmp_path_factory.mktemp(f"mlm-{name}")) for name, fn in jobs.items()}
        futures["dry_run"] = Future()  # meanwhile, in this thread
        try:
            futures["dry_run"].set_result(_dry_run(tmp_path_factory.mktemp("mlm-dry_run")))
        except Exception as e:
            futures["dry_run"].set_exception(e)
        for f in futures.values():
            f.exception()  # wait for all
    return futures


def _history(run_dir: Path, key: str) -> dict[int, float]:
    from runner.loggers import read_offline_run

    return {h["trainer/global_step"]: h[key] for h in read_offline_run(run_dir)["history"] if key in h}


@pytest.mark.e2e
def test_mlm_run_learns_and_reports_masked_metrics(e2e):
    run_dir = e2e["baseline"].result()
    s = _summary(run_dir)
    assert s["steps"] == STEPS
    for key in ("train/loss", "val/loss", "val/masked_accuracy", "val/unigram_loss", "data/train_tokens",
                "data/val_tokens"):
        assert s[key] is not None and s[key] > 0, key
    assert not [k for k in s if "ppl" in k]  # a masked LM's exp(loss) is not a perplexity
    assert s["tokens_seen"] == STEPS * 16 * 64  # the encoded tokens, B x T per step
    assert s["tokens_per_s"] and s["tokens_per_s"] > 0
    assert 0.0 < s["val/masked_accuracy"] < 1.0
    vals = _history(run_dir, "val/loss")
    assert sorted(vals) == list(range(1, STEPS, 2))  # every 2 steps (Lightning logs them at step - 1)
    first, last = vals[min(vals)], vals[max(vals)]
    assert last == pytest.approx(s["val/loss"], abs=1e-6)
    # measured (seed 7; 8 val batches, ~1,230 masked tokens): 6.81 at step 2, 6.18 at step 30
    assert first - last > 0.5, (first, last)
    # most of the way from a uniform guess (log 1024 = 6.93) to the unigram floor on the same tokens (6.01):
    # measured 82% at step 30 (this model beats the floor after ~150 steps, by ~0.4 nats at 400)
    uniform, floor = math.log(s["vocab_size"]), s["val/unigram_loss"]
    assert floor < last < uniform and (uniform - last) / (uniform - floor) > 0.6, (last, floor)
    assert s["config"]["dataset"]["mask_prob"] == 0.15 and s["config"]["model"]["dropout"] == 0.1
    tok = run_dir / "tokenizer"
    assert "<mask>" in (tok / "tokenizer.json").read_text()


@pytest.mark.e2e
def test_mlm_dry_run_plans_the_real_model(e2e):
    plan, run_dir = e2e["dry_run"].result(), e2e["baseline"].result()
    s = _summary(run_dir)
    model = Bert(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=2).build(s["vocab_size"], 64)
    n = sum(p.numel() for p in model.parameters())
    assert plan["params"] == n == s["params"]
    assert plan["vocab_size"] == s["vocab_size"]  # the tokenizer's, <mask> included
    assert plan["blocks"] == 2 and plan["bytes_per_gpu"]["activations (estimate)"] > 0


@pytest.mark.e2e
def test_mlm_sigkill_then_resume_matches_uninterrupted(e2e):
    """Masks from (seed, micro-batch), dropout from the restored global RNG: the resumed curve is the same."""
    killed, before = e2e["resumed"].result()
    run_dir = e2e["baseline"].result()
    resumed, base = _summary(killed), _summary(run_dir)
    assert resumed["steps"] == STEPS and resumed["tokens_seen"] == base["tokens_seen"]
    assert resumed["wandb_id"] == before["wandb_id"]
    assert resumed["train/loss"] == pytest.approx(base["train/loss"], abs=1e-6)
    assert resumed["val/loss"] == pytest.approx(base["val/loss"], abs=1e-6)
    assert resumed["val/masked_accuracy"] == pytest.approx(base["val/masked_accuracy"], abs=1e-6)
    from runner.loggers import read_offline_run

    assert read_offline_run(killed)["segments"] == 2
    tail, ref = _history(killed, "train/loss"), _history(run_dir, "train/loss")
    assert sorted(ref) == list(range(STEPS)) and set(range(10, STEPS)) <= set(tail)
    for step in range(10, STEPS):  # every step after the restart
        assert tail[step] == pytest.approx(ref[step], abs=1e-6), step
    val_tail, val_ref = _history(killed, "val/loss"), _history(run_dir, "val/loss")
    for step in (s for s in val_ref if s >= 10):
        assert val_tail[step] == pytest.approx(val_ref[step], abs=1e-6), step
