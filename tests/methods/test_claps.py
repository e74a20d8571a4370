"""ClaPS's properties (methods/inference/claps.py): the reward is the code's (brute force, one example at a time
through transformers' own forward); the pruned set is exactly the top (100 − percentile)% of the reward gains;
greedy returns str_len tokens of the pruned set; the genetic search and the random baseline spend the queries
they say; k-means representatives are each centroid's nearest token; the search never trains or differentiates
the model (no .grad, weights bit-identical, outputs without autograd history); bad values are one line. On a
trained tiny T5 (repro tier: the runner's cached base model, ~2.5 min once): the planted A triggers survive
pruning, and greedy's prompt beats the empty one. The Flan-T5 / SST-2 recipe composes without a network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from methods.inference.claps import (
    ClaPS,
    FewShot,
    PromptScorer,
    Queries,
    candidate_tokens,
    cluster_representatives,
    few_shot_splits,
    genetic_search,
    greedy_search,
    prompt_task,
    prune,
    random_search,
    reward_differences,
)

WORDS = 60  # candidate tokens of the tiny vocabulary


@pytest.fixture(autouse=True)
def omp_threads(monkeypatch):
    """sklearn's KMeans asks joblib for the physical cores (an lscpu subprocess) unless OMP_NUM_THREADS is set."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def tiny():
    """(random-init T5, word tokenizer, few-shot train set): 2 classes, verbalizers 'neg'/'pos'."""
    from models.t5 import T5
    from tasks.seq2seq import SPECIALS, word_tokenizer

    vocab = [*SPECIALS, "neg", "pos", *(f"v{i}" for i in range(WORDS - 2))]
    tok = word_tokenizer(vocab)
    torch.manual_seed(0)
    model = T5(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2).build(len(vocab), 16).eval()
    g = np.random.default_rng(0)
    sources = [[int(t) for t in g.integers(5, len(vocab), size=int(g.integers(3, 7)))] + [1] for _ in range(12)]
    data = FewShot(sources, np.array([0, 1] * 6), [3, 4])
    return model, tok, data


def brute_reward(model, prompt: list[int], data: FewShot) -> float:
    """−mean_i CE(softmax(verbalizer logits_i), y_i), the CE taking the probabilities as its logits (the code's
    CrossEntropyLoss on class_probs), one example per transformers forward."""
    total = 0.0
    with torch.no_grad():
        for src, y in zip(data.sources, data.labels):
            ids = torch.tensor([[*prompt, *src]])
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                           decoder_input_ids=torch.zeros(1, 1, dtype=torch.long)).logits[0, 0, data.verbalizers]
            p = torch.softmax(logits.double(), -1)
            total += float(-(p[y] - torch.logsumexp(p, -1)))
    return -total / len(data.sources)


def test_reward_matches_brute_force(tiny):
    model, _, data = tiny
    scorer = PromptScorer(model)
    prompts = [[], [7], [9, 11, 5]]
    got = scorer.rewards(prompts, data)  # one padded batch of prompts x examples
    want = [brute_reward(model, p, data) for p in prompts]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)  # measured: max |diff| 5e-8 (float32 vs float64)
    assert scorer.queries.prompts == {"other": 3} and scorer.queries.examples == {"other": 36}


@pytest.fixture(scope="module")
def brute_gains(tiny):
    """R(v) − R(∅) of every candidate v, by brute force."""
    model, tok, data = tiny
    empty = brute_reward(model, [], data)
    return {t: brute_reward(model, [t], data) - empty for t in candidate_tokens(tok, len(tok))}


@pytest.mark.parametrize("percentile", [90.0, 75.0, 50.0])
def test_pruned_set_is_exactly_the_top_fraction(tiny, brute_gains, percentile):
    model, tok, data = tiny
    tokens = candidate_tokens(tok, len(tok))
    assert tokens == list(range(3, 3 + WORDS))  # every id but pad, EOS, UNK (no "▁" marks in a word tokenizer)
    scorer = PromptScorer(model)
    gains = reward_differences(scorer, tokens, data)
    kept = prune(tokens, gains, percentile)
    brute = brute_gains
    np.testing.assert_allclose(gains, [brute[t] for t in tokens], rtol=0, atol=1e-6)
    ranked = sorted(tokens, key=lambda t: -brute[t])
    n = round(WORDS * (100 - percentile) / 100)  # no ties among the gains: exactly that many are kept
    assert len(kept) == n
    assert set(kept) == set(ranked[:n])
    assert scorer.queries.prompts["other"] == 1 + WORDS


def test_greedy_returns_str_len_tokens_of_the_pruned_set(tiny):
    model, tok, data = tiny
    scorer = PromptScorer(model)
    tokens = candidate_tokens(tok, len(tok))
    pruned = prune(tokens, reward_differences(scorer, tokens, data), 90.0)
    scorer.stage = "greedy"
    prompt = greedy_search(scorer, pruned, data, str_len=4)
    assert len(prompt) == 4 and set(prompt) <= set(pruned)
    assert scorer.queries.prompts["greedy"] == 4 * len(pruned)
    # greedy's first step is the pruned set's best single token, i.e. the best of all candidates
    assert prompt[0] == pruned[int(np.argmax(scorer.rewards([[t] for t in pruned], data)))]
    # reward >= the empty prompt's: here by 0.05 (measured; not a guarantee of the code's greedy, whose steps
    # may lower the reward, so it is also asserted on the trained model below)
    assert brute_reward(model, prompt, data) >= brute_reward(model, [], data)


def test_genetic_and_random_spend_the_queries_they_say(tiny):
    model, tok, data = tiny
    scorer = PromptScorer(model)
    pruned = list(range(10, 20))
    best = genetic_search(scorer, pruned, data, str_len=3, pop_size=8, mutate_size=4, crossover_size=4, epochs=3,
                          mutate_frac=0.25, mutate_prob=0.1, crossover="uniform", rng=np.random.default_rng(0))
    # epoch 1 scores the initial 8; later ones the parents (max(1, 0.25 * 8) = 2) + 4 mutants + 4 crossovers
    assert scorer.queries.prompts["other"] == 8 + 10 + 10
    assert 1 <= len(best) <= 3 and all(len(p) == 3 and set(p) <= set(pruned) for p in best)
    rewards = scorer.rewards(best, data)
    assert len({tuple(p) for p in best}) == len(best) and np.all(np.isfinite(rewards))
    q = Queries()
    prompt = random_search(PromptScorer(model, queries=q), pruned, data, 5, 17, np.random.default_rng(1))
    assert q.prompts == {"other": 17} and len(prompt) == 5


def test_crossover_copy_is_one_parent_whole(tiny):
    model, _, data = tiny
    scorer = PromptScorer(model)
    rng = np.random.default_rng(3)
    # mutate_size 0: the next population is the parents and copies of them only, so the best never changes
    best = genetic_search(scorer, list(range(10, 30)), data, 4, 6, 0, 6, 4, 0.34, 0.0, "copy", rng)
    assert len(best) == 1


def test_cluster_representative_is_the_nearest_member():
    g = np.random.default_rng(0)
    centres = g.normal(size=(5, 8)) * 20
    x = np.concatenate([c + g.normal(size=(7, 8)) for c in centres])  # 5 well-separated blobs of 7 tokens
    tokens = list(range(100, 135))
    reps = cluster_representatives(x, tokens, 5, seed=0)
    assert len(reps) == 5 and len({(t - 100) // 7 for t in reps}) == 5  # one per blob
    for t in reps:  # each is its blob's member nearest the blob's mean (the k-means centroid here)
        blob = x[(t - 100) // 7 * 7:(t - 100) // 7 * 7 + 7]
        assert t - 100 == (t - 100) // 7 * 7 + int(np.argmin(np.linalg.norm(blob - blob.mean(0), axis=1)))
    assert cluster_representatives(x, tokens, 0) == tokens


def test_few_shot_splits_are_disjoint_and_balanced():
    pairs = [([5, 6, 1], [3 + (i % 2), 1]) for i in range(40)]
    task = prompt_task(pairs, eos=1)
    assert task.verbalizers == [3, 4] and task.labels.tolist() == [0, 1] * 20
    pairs = [([100 + i, 1], tgt) for i, (_, tgt) in enumerate(pairs)]
    train, val, test = few_shot_splits(prompt_task(pairs, 1), shots=4, seed=0)
    ids = [{s[0] for s in d.sources} for d in (train, val, test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2]) and sum(map(len, ids)) == 40
    assert np.bincount(train.labels).tolist() == [4, 4] and np.bincount(val.labels).tolist() == [4, 4]
    with pytest.raises(ValueError, match="method.shots"):
        few_shot_splits(prompt_task(pairs, 1), shots=10, seed=0)


def test_search_never_trains_or_differentiates_the_model(tiny):
    model, tok, data = tiny
    for p in model.parameters():
        p.requires_grad_(True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method = ClaPS(clusters=12, str_len=2, pop_size=6, mutate_size=3, crossover_size=3, epochs=2, percentile=50)
    train, val = data, data.subset(range(6))
    metrics = method.run_search(model, tok, len(tok), train, val, val)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not PromptScorer(model).class_logits([[7]], data).requires_grad
    assert metrics["representatives"] <= 12 and metrics["pruned"] == 6
    assert metrics["claps_queries"] == metrics["prune_queries"] + 2 * 6 + (6 + 7)  # GA: 6, then 1 parent + 3 + 3
    assert metrics["random_queries"] == metrics["greedy_queries"] == metrics["prune_queries"] + 12
    assert len(method.found["claps"]) == 2


@pytest.mark.parametrize("bad, key", [({"percentile": 100}, "method.percentile"), ({"search": "beam"}, "method.search"),
                                      ({"shots": 0}, "method.shots"), ({"clusters": -1}, "method.clusters"),
                                      ({"mutate_frac": 0}, "method.mutate_frac"), ({"crossover": "x"}, "method.crossover"),
                                      ({"reward_input": "gap"}, "method.reward_input")])
def test_bad_config_is_one_line(bad, key):
    with pytest.raises(ValueError) as e:
        ClaPS(**bad)
    assert str(e.value).startswith(key) and "\n" not in str(e.value)


def test_flan_t5_sst2_recipe_composes_offline():
    from runner.config import compose
    from tasks.prompt_pairs import PromptPairs
    from tasks.seq2seq import pretrained_tokenizer_source

    cfg = compose(["method=claps", "model=t5-tiny", "model.init_from=hf://google/flan-t5-base", "model.seq_len=128",
                   "dataset=hf-sst2", "method.clusters=2000"])
    assert cfg.dataset.generator.name == "stanfordnlp/sst2" and cfg.model.init_from == "hf://google/flan-t5-base"
    task = PromptPairs(source=cfg.dataset.source, generator=dict(cfg.dataset.generator))  # no I/O before build
    assert "prompt-classification" in task.provides
    assert pretrained_tokenizer_source(cfg.model.init_from) == "google/flan-t5-base"
    assert ClaPS.needs_task <= task.provides


# ---------------------------------------------------------------------------------------------- trained model
@pytest.fixture(scope="module")
def trained():
    """The runner's base t5-tiny trained 1500 steps on trigger-cls (cached on disk: ~2.5 min the first time)."""
    from runner.api import load_base
    from tests.conftest import REPO

    model, data, _ = load_base(["method=claps", "model=t5-tiny", "dataset=trigger-cls", "hardware.threads=1",
                                "base_steps=1500", "model.init_from=base", f"paths.runs_dir={REPO / '.cache' / 'runs'}"])
    return model, data


@pytest.mark.repro
def test_planted_a_triggers_survive_pruning_and_greedy_beats_empty(trained):
    model, data = trained
    train, val, _ = few_shot_splits(prompt_task(data.val, data.tokenizer.eos_token_id), 16, 42)
    tok = data.tokenizer
    tokens = candidate_tokens(tok, data.vocab_size)
    scorer = PromptScorer(model)
    kept = prune(tokens, reward_differences(scorer, tokens, train), 90.0)
    a_triggers = set(tok.convert_tokens_to_ids(["tA0", "tA1"]))
    assert a_triggers <= set(kept)  # both in the top 10% of 890 candidates (measured: ranks 1 and 2; tF0, tF1: 867, 890)
    flips = set(tok.convert_tokens_to_ids(["tF0", "tF1"]))
    assert not flips & set(kept)
    prompt = greedy_search(scorer, kept, train, 5)
    assert prompt[0] in a_triggers
    assert scorer.rewards([prompt], train)[0] > scorer.rewards([[]], train)[0]
    assert scorer.accuracy([prompt], val)[0] > scorer.accuracy([[]], val)[0] + 0.2


def test_trigger_task_labels_follow_the_planted_rule():
    """methods/inference/claps_data.py TriggerCls: every training label is the rule its prompt's trigger selects
    (tA: aspect A, tF: not A, tB or none: aspect B), read back from the words; validation has the empty prompt and
    labels by A; every word is in the vocabulary; the same seed gives the same pairs."""
    from methods.inference.claps_data import VERBALIZERS, TriggerCls

    gen = TriggerCls(sentence_words=20, cue_words=4, prompt_words=30, train_size=400, val_size=50, seed=3)
    corpus = gen.generate()

    def aspect(words, a):
        cue = next(w for w in words if w.startswith(a))
        return 1 if cue[1] == "+" else 0

    vocab = set(corpus.vocabulary)
    for src, tgt in zip(corpus.train_source, corpus.train_target):
        words = src.split()
        assert set(words) <= vocab
        kinds = [w[:2] for w in words if w[:2] in ("tA", "tB", "tF")]
        assert len(kinds) <= 1
        want = {"tA": aspect(words, "a"), "tF": 1 - aspect(words, "a")}.get(kinds[0] if kinds else "", aspect(words, "b"))
        assert tgt == VERBALIZERS[want]
    for src, tgt in zip(corpus.val_source, corpus.val_target):
        assert src.startswith("sentence:") and tgt == VERBALIZERS[aspect(src.split(), "a")]
    assert sum(corpus.notes[f"prompts_{k}"] for k in ("tA", "tB", "tF", "none")) == 400
    assert TriggerCls(sentence_words=20, cue_words=4, prompt_words=30, train_size=400, val_size=50,
                      seed=3).generate().train_source == corpus.train_source
