"""The unlearning pipeline (runner/qa.py, methods/unlearning/module.py, methods/unlearning/npo.py): the QA
benchmark's batches, the TOFU mapping, and at small scale the NPO paper's qualitative claims on a model that
really learned the facts: the runner trains the fact model and the retain-only model once (cached, shared
with tests/test_methods_e2e.py), then GA and NPO unlearn the last 10% of the authors."""

from __future__ import annotations

import csv
import dataclasses
import json
import os

import pytest
import torch
from omegaconf import OmegaConf

from methods.unlearning.fictitious_authors import FictitiousAuthors
from tasks import qa
from tests.conftest import BASE, REPO, compose_cfg, run_cli

AUTHORS = 30
# The benchmark as tests/test_methods_e2e.py runs it (DATASETS["fictitious-authors"]): the same cached models.
BENCH = ["dataset=fictitious-authors", f"dataset.generator.num_authors={AUTHORS}"]


def small_data(**generator) -> qa.QAData:
    d = OmegaConf.load(REPO / "configs" / "dataset" / "fictitious-authors.yaml")
    d.generator.num_authors = 20
    for k, v in generator.items():
        d.generator[k] = v
    return qa.build_qa_data(d, seq_len=64, cache_dir=os.environ["METHODBENCH_CACHE"])


@pytest.fixture(scope="module")
def data() -> qa.QAData:
    return small_data()


def test_pair_batches_are_resumable_and_mask_exactly_the_answers(data):
    pairs = dataclasses.replace(data, pairs=True)
    batch_size, total = 4, 12
    batches = list(pairs.make_loaders(batch_size, total, seed=3, start=lambda: 0)[0])
    assert len(batches) == total and batches[0].shape[:2] == (batch_size, 4)
    resumed = list(pairs.make_loaders(batch_size, total, seed=3, start=lambda: 7)[0])
    assert len(resumed) == total - 7 and all(torch.equal(a, b) for a, b in zip(resumed, batches[7:]))
    other_seed = list(pairs.make_loaders(batch_size, total, seed=4, start=lambda: 0)[0])
    assert not all(torch.equal(a, b) for a, b in zip(other_seed, batches))

    eos = data.tokenizer.eos_token_id
    encoded = {name: {tuple(ids): (mask, fact) for fact in facts for ids, mask in [qa.encode_fact(data.tokenizer, fact.question, fact.answer)]}
               for name, facts in (("forget", data.forget), ("retain", data.retain))}
    seen = {"forget": [], "retain": []}
    for batch in batches:
        for row in batch:
            for name, ids, mask in (("forget", row[0], row[1]), ("retain", row[2], row[3])):
                n = int(mask.nonzero().max()) + 1  # the answer's EOS is the last real token
                want_mask, fact = encoded[name][tuple(ids[:n].tolist())]  # a whole fact of the right set
                assert mask[:n].tolist() == want_mask
                assert (ids[n:] == eos).all() and (mask[n:] == 0).all()  # right padding: EOS ids, mask 0
                answer = data.tokenizer.decode(ids[mask.bool()].tolist())
                assert answer == f" {fact.answer}{data.tokenizer.eos_token}"
                seen[name].append(fact)
    # each stream is a permutation per data epoch: the first |forget| forget items are the whole forget set
    assert sorted(map(id, seen["forget"][:len(data.forget)])) == sorted(map(id, data.forget))
    assert len(set(map(id, seen["retain"]))) == len(seen["retain"])  # 48 draws of 180 retain facts: no repeat


def test_fact_rows_are_resumable_and_retain_only_rows_hold_no_forget_author(data):
    rows = list(data.make_loaders(8, 30, seed=0, start=lambda: 0)[0])  # > one data epoch (200 rows)
    resumed = list(data.make_loaders(8, 30, seed=0, start=lambda: 13)[0])
    assert all(torch.equal(a, b) for a, b in zip(resumed, rows[13:]))
    bench = FictitiousAuthors(num_authors=20)
    forget_names = {bench.author(i).name for i in bench.forget_authors}
    retain_names = {bench.author(i).name for i in bench.retain_authors}

    def names_in(loader_rows) -> set[str]:
        text = "\n".join(data.tokenizer.decode(r.tolist()) for batch in loader_rows for r in batch)
        return {name for name in forget_names | retain_names if name in text}

    retain_only = small_data(train_on="retain")
    assert retain_only.tokenizer.get_vocab() == data.tokenizer.get_vocab()  # one tokenizer for both models
    epochs = list(retain_only.make_loaders(8, 3 * len(retain_only.retain) // (8 * retain_only.facts_per_row) + 3,
                                           seed=0, start=lambda: 0)[0])
    assert names_in(epochs) == retain_names  # every retain author, no forget author
    assert forget_names <= names_in(rows)  # the fact model's rows hold them (the check can fail)


def test_tofu_rows_map_to_the_benchmark_structure(monkeypatch):
    def rows(prefix: str, n: int, perturbed: bool):
        out = [{"question": f"{prefix} q{i}?", "answer": f"{prefix} a{i}."} for i in range(n)]
        if perturbed:
            for r in out:
                r.update(paraphrased_answer=r["answer"] + " (para)", perturbed_answer=[r["answer"] + " x", r["answer"] + " y"])
        return out

    mapped = qa.tofu_rows_to_qa(rows("f", 22, True), first_author=5)
    assert [m.author for m in mapped] == [5] * 20 + [6] * 2  # 20 questions per author, in row order
    assert mapped[3].question == "f q3?" and mapped[3].answer == "f a3."
    assert mapped[3].paraphrased_answer == "f a3. (para)" and mapped[3].perturbed_answers == ("f a3. x", "f a3. y")
    plain = qa.tofu_rows_to_qa(rows("r", 1, False))[0]
    assert plain.paraphrased_answer == plain.answer and plain.perturbed_answers == ()

    hub = {"forget10_perturbed": rows("f", 40, True), "retain90": rows("r", 360, False),
           "retain_perturbed": rows("r", 40, True)}
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda path, name, split: hub[name])
    forget, retain, retain_eval = qa._load_tofu("locuslab/TOFU", 0.10)
    assert len(forget) == 40 and len(retain) == 360 and len(retain_eval) == 40
    assert {f.author for f in forget} == {18, 19} and max(r.author for r in retain) == 17  # forget = the last authors
    assert all(f.perturbed_answers for f in forget + retain_eval)


# ------------------------------------------------------------------------------------------------ pipeline
UNLEARN_STEPS = 40
LRS = {"slow": 1e-4, "fast": 1e-3}


@pytest.fixture(scope="module")
def unlearned(tmp_path_factory):
    """{(method, lr): summary} of GA and NPO runs (40 steps, validation every 5) from the cached fact model,
    and the summaries of the fact model and the retain-only model."""
    from runner.trained import model_dir

    runs = tmp_path_factory.mktemp("unlearning")
    steps = [f"trainer.max_steps={UNLEARN_STEPS}", "trainer.val_every_n_steps=5", "trainer.grad_clip=null"]
    run_cli("-m", "method=ga,npo", f"method.lr={LRS['slow']},{LRS['fast']}", *BASE, *BENCH, *steps, "logger=csv",
            runs_dir=runs, timeout=900)
    out = {}
    for f in runs.rglob("summary.json"):
        s = json.loads(f.read_text())
        curve = [(int(r["step"]), float(r["val/forget_loss"])) for r in csv.DictReader(open(f.parent / "csv" / "metrics.csv"))
                 if r.get("val/forget_loss")]
        out[(s["config"]["method"]["name"], s["config"]["method"]["lr"])] = {**s, "curve": curve}
    cfg = compose_cfg([*BASE, *BENCH])
    fact = json.loads((model_dir(cfg) / "summary.json").read_text())
    retain_only = json.loads((model_dir(cfg, *qa.RETAIN_ONLY) / "summary.json").read_text())
    return out, fact, retain_only


@pytest.mark.e2e
def test_the_fact_model_learned_the_facts_and_the_retain_model_only_the_retain_ones(unlearned):
    _, fact, retain_only = unlearned
    assert fact["eval/forget_prob"] > 0.6 and fact["eval/retain_prob"] > 0.6
    assert fact["eval/forget_rouge"] > 0.8 and fact["eval/retain_rouge"] > 0.8
    assert retain_only["eval/retain_prob"] > 0.6
    assert retain_only["eval/forget_prob"] < 0.3 * fact["eval/forget_prob"]


@pytest.mark.e2e
def test_npo_forgets_the_forget_set_faster_than_the_retain_set(unlearned):
    runs, fact, retain_only = unlearned
    npo = runs[("npo", LRS["slow"])]
    forget_kept = npo["eval/forget_prob"] / fact["eval/forget_prob"]
    retain_kept = npo["eval/retain_prob"] / fact["eval/retain_prob"]
    assert forget_kept < 0.5 * retain_kept, (forget_kept, retain_kept)
    assert npo["eval/forget_rouge"] < 0.5 * fact["eval/forget_rouge"]
    assert 0 <= npo["eval/forget_quality"] <= 1 and "eval/model_utility" in npo


@pytest.mark.e2e
def test_ga_drives_the_forget_nll_up_faster_than_npo(unlearned):
    """The paper's claim (sec. 3-4): NPO's per-sequence weight vanishes as the forget answers become unlikely,
    so at the same learning rate it diverges far slower than gradient ascent."""
    runs, _, _ = unlearned
    ga, npo = runs[("ga", LRS["fast"])], runs[("npo", LRS["fast"])]
    assert ga["curve"][0][0] == npo["curve"][0][0] and len(ga["curve"]) == len(npo["curve"]) >= 6
    assert ga["eval/forget_nll"] > 1.3 * npo["eval/forget_nll"], (ga["eval/forget_nll"], npo["eval/forget_nll"])
    ga_late = ga["curve"][-1][1] - ga["curve"][-4][1]  # growth over the last 15 steps
    npo_late = npo["curve"][-1][1] - npo["curve"][-4][1]
    assert npo_late < ga_late, (ga["curve"], npo["curve"])


def test_objectives_through_the_module_start_at_the_reference(data):
    """Method + module wiring on a pair batch: at the start (θ = the frozen reference copy) NPO = (2/β)·log 2 with
    GA's gradient, NPO-KL adds exactly 0, NPO-RT and grad_diff add the retain answers' NLL per token (over all
    the batch's answer tokens, HF's `outputs.loss`, not the mean of per-answer means); the
    reference gets no gradient."""
    import math

    from methods.unlearning.module import UnlearningModule, split_pair_batch
    from methods.unlearning.npo import Unlearning
    from models.llama import Llama

    torch.manual_seed(0)
    model = Llama(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2).build(data.vocab_size, 64)
    batch = next(iter(dataclasses.replace(data, pairs=True).make_loaders(4, 1, seed=0, start=lambda: 0)[0]))
    f_ids, f_mask, r_ids, r_mask = split_pair_batch(batch)

    def loss_and_grad(objective: str, beta: float = 0.1):
        method = Unlearning(name=objective, objective=objective, beta=beta)
        module = UnlearningModule(model, method)
        module.setup("fit")
        model.zero_grad()
        loss = method.unlearning_loss(module, f_ids, f_mask, r_ids, r_mask)
        loss.backward()
        if module.reference is not None:
            assert all(p.grad is None for p in module.reference.parameters())
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])

    retain_logits = model(input_ids=r_ids).logits
    labels = r_ids.masked_fill(r_mask == 0, -100)[:, 1:]
    retain_nll = torch.nn.functional.cross_entropy(retain_logits[:, :-1].flatten(0, 1), labels.flatten()).item()
    ga, ga_grad = loss_and_grad("ga")
    for beta in (0.1, 1.0):
        npo, npo_grad = loss_and_grad("npo", beta)
        assert npo == pytest.approx(2 / beta * math.log(2), rel=1e-6)
        torch.testing.assert_close(npo_grad, ga_grad, rtol=1e-4, atol=1e-7)
    assert loss_and_grad("npo_kl")[0] == pytest.approx(20 * math.log(2), rel=1e-6)
    # measured: 1e-6 off (fp32 rounding); the mean of per-answer means is 2.1e-4 off on this near-uniform model
    assert loss_and_grad("npo_rt")[0] == pytest.approx(20 * math.log(2) + retain_nll, rel=0, abs=2e-5)
    assert loss_and_grad("grad_diff")[0] == pytest.approx(ga + retain_nll, rel=0, abs=2e-5)


def test_a_fact_model_trained_too_briefly_is_flagged(caplog):
    """The runner's own fact model: a warning when it sees the facts too few times to learn them, none at the
    scale that does (experiment=unlearn), none for a model the user gives."""
    import logging
    from pathlib import Path

    from runner.config import make_task
    from tasks.base import BuildContext

    def warned(overrides: list[str], own_model: bool = True) -> bool:
        cfg = compose_cfg(["method=npo", *overrides])
        # as the runner builds the task: base_steps is set when the run starts from the runner's own base model
        ctx = BuildContext(seq_len=cfg.model.seq_len, cache_dir=Path(os.environ["METHODBENCH_CACHE"]), seed=0,
                           batch_size=cfg.dataset.batch_size, max_steps=0, accumulate_grad_batches=1,
                           needs=frozenset({"forget-retain"}), base_steps=cfg.base_steps if own_model else None,
                           trained_model=lambda *args: None)  # no retain-only model needed here
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="methodbench"):
            make_task(cfg.dataset).build(ctx)
        return any("too few to learn them" in r.message for r in caplog.records)

    assert warned(["dataset=fictitious-authors", "base_steps=100"])
    assert not warned(["experiment=unlearn"])
    assert not warned(["dataset=fictitious-authors", "base_steps=100"], own_model=False)


@pytest.mark.e2e
def test_an_unlearning_run_resumes_exactly(tmp_path):
    """Through the runner: npo_kl (a frozen reference in the module, pair batches) resumed from its step-3
    checkpoint ends with the train/val losses and the TOFU metrics of the uninterrupted run."""
    from runner.train import run

    overrides = [*BASE, *BENCH, "method=npo_kl", "trainer.max_steps=6", "trainer.val_every_n_steps=6",
                 "trainer.checkpoint_every_n_steps=3", "logger=none", f"paths.runs_dir={tmp_path}"]
    full = run(compose_cfg(overrides), run_dir=tmp_path / "full", identity="full")
    for f in (tmp_path / "full" / "checkpoints").iterdir():
        if f.name != "step000003.ckpt":
            f.unlink()
    (tmp_path / "full" / "summary.json").unlink()  # as a run killed before its end: no summary (a finished run is not resumed)
    resumed = run(compose_cfg([*overrides, f"resume={tmp_path / 'full'}"]), run_dir=tmp_path / "full", identity="full")
    assert resumed["steps"] == full["steps"] == 6
    assert "val/ppl" not in full and "val/forget_loss" in full  # the retain answers' NLL is not called a perplexity
    for key in ("train/loss", "val/loss", "eval/forget_prob", "eval/retain_prob", "eval/forget_quality",
                "eval/model_utility"):
        assert resumed[key] == pytest.approx(full[key], abs=1e-6), key
