"""Survival of the Most Influential Prompts: Efficient Black-Box Prompt Search via Clustering and Pruning.
Han Zhou, Xingchen Wan, Ivan Vulić, Anna Korhonen. Findings of EMNLP 2023 (arXiv:2310.12774). Official code:
github.com/cambridgeltl/ClaPS (run_prune_search.py, algs/greedy.py, algs/genetics.py,
rewards/text_classification_reward.py, vocabs/get_kmeans_vocab.ipynb), read for the details below.

A frozen LM f labels x by the verbalizer token its decoder puts first behind a discrete prompt z (token ids in front
of the task's template, methods/inference/claps_data.py); the search only queries f (no gradient, no training):

    class probabilities   p(c | z, x) = softmax_c( f(z ⊕ x)[verbalizer_c] )        (first decoder position)
    reward                R(z) = −(1/N) Σ_i CE( p(· | z, x_i), y_i )               on the few-shot train batch
    (1) cluster           k-means++ over the candidate tokens' input embeddings; each centroid's representative
                          is the token nearest to it (Euclidean), duplicates dropped
    (2) rank & prune      s(v) = R(z = v) − R(z = ∅) for each representative v; keep v with s(v) > the
                          `percentile`-th percentile of s (numpy's linear interpolation): percentile 90 → top 10%
    (3) search            in the pruned set V': greedy (str_len steps, each appending argmax_v R(z ⊕ v)) or a
                          genetic algorithm; each search's candidates are ranked on the few-shot validation set and
                          the best is tested.

Choices and deviations (official code = "the code"):
- Reward = the code's: its CrossEntropyLoss is applied to the class *probabilities* (a second softmax over p), so
  R = −mean_i log softmax(p_i)[y_i] (`reward_input: probs`, the default); `reward_input: logits` is the paper's
  text (CE of the verbalizer logits). Accuracy: argmax of p (the code's gap > 0).
- Prompts are token-id sequences prepended to the template's ids. The code decodes each token to a string,
  concatenates the strings (without spaces for T5's "▁" tokens) and re-tokenises; we never re-tokenise.
- Candidates: every token but pad/EOS/UNK; where the tokenizer marks word starts with "▁" (Flan-T5, BPE), only
  those tokens, as the code. Embedding of a token = its row of the input embedding (the code averages the rows of
  the word's pieces; a "▁" token is one piece). k-means++ = sklearn KMeans(init="k-means++", n_init=10,
  random_state=seed): the notebook's KMeans(n_clusters, random_state=0) with its sklearn's defaults of the time.
  The code clusters Flan-T5's vocabulary once (2,000 clusters, a JSON) and then prunes per task; we cluster the
  trained model's embeddings in the run (`clusters`, 0 = no clustering).
- Pruning batch: the whole few-shot train set (the code: min(train_batch_size=2000, |train|) examples).
- Greedy = algs/greedy.py: no early stop, a step may lower the reward, tokens may repeat.
- Genetic = algs/genetics.py with its defaults scaled down (pop 128 → `pop_size`, 64 + 64 → `mutate_size` +
  `crossover_size`, 30 epochs → `epochs`): a random initial population of str_len tokens; each epoch scores the
  population, keeps the top max(1, ⌊mutate_frac·|pop|⌋) as parents, adds mutants (each token replaced by another
  candidate with probability `mutate_prob` = the code's 0.1) and crossovers of two random parents. Deviations:
  (a) the code never mutates the first token (it skips index 0 as if it were BOS; T5 has none): we mutate every
  position; (b) the code's crossover returns one parent whole (its uniform crossover helper is unused):
  `crossover: uniform` (default) takes each position from either parent, `crossover: copy` is the code's;
  (c) the code records pop[argmax of the old rewards] after replacing pop (an arbitrary member): we record each
  epoch's best prompt. Validation picks the best by accuracy, ties to the last (the code).
- Few-shot sets: `shots` examples per class for train and as many for validation, drawn with `seed` from the
  task's validation pairs; the rest (up to `max_test`) is the test set (the paper: train/val from the training
  split, the test set separate; here the training split is what the base model was trained on).
- Baselines in the same run: greedy over the whole candidate set (no clustering or pruning), and random prompts
  of str_len candidate tokens, as many as ClaPS-greedy's queries (pruning + greedy), the best by train reward.
- Queries: a query is one prompt scored on one batch of examples (one forward batch of the LM); `*_queries` count
  them per stage, `*_examples` the examples the LM read (queries × batch size). Final validation/test scoring is
  not counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from methods.base import Method

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)
SEARCHES = ("greedy", "genetic", "both")
CROSSOVERS = ("uniform", "copy")
REWARD_INPUTS = ("probs", "logits")


# ---------------------------------------------------------------------------------------------- the few-shot task
@dataclass
class FewShot:
    """Prompt-less sources (token ids ending in EOS), class labels, and the verbalizer token of each class."""

    sources: list[list[int]]
    labels: np.ndarray
    verbalizers: list[int]

    def subset(self, idx) -> FewShot:
        return FewShot([self.sources[i] for i in idx], self.labels[np.asarray(idx, dtype=np.int64)], self.verbalizers)


def prompt_task(pairs: list[tuple[list[int], list[int]]], eos: int) -> FewShot:
    """The pairs as a classification task: a target's first token is its verbalizer (classes in id order)."""
    first = [tgt[0] for _, tgt in pairs]
    if any(len([t for t in tgt if t != eos]) != 1 for _, tgt in pairs):
        raise ValueError("dataset: method=claps needs one-token targets (verbalizers); this task's are longer")
    verbalizers = sorted(set(first))
    index = {v: i for i, v in enumerate(verbalizers)}
    return FewShot([list(s) for s, _ in pairs], np.array([index[v] for v in first]), verbalizers)


def few_shot_splits(task: FewShot, shots: int, seed: int, max_test: int | None = None):
    """(train, val, test): `shots` per class each for train and val, the rest (up to max_test) test."""
    rng = np.random.default_rng(seed)
    train, val, rest = [], [], []
    for c in range(len(task.verbalizers)):
        idx = rng.permutation(np.flatnonzero(task.labels == c)).tolist()
        if len(idx) < 2 * shots + 1:
            raise ValueError(f"method.shots: {shots} per class needs more than {2 * shots} validation examples of "
                             f"each class; class {c} has {len(idx)}")
        train += idx[:shots]
        val += idx[shots:2 * shots]
        rest += idx[2 * shots:]
    rest = rng.permutation(rest).tolist()[:max_test]
    return task.subset(sorted(train)), task.subset(sorted(val)), task.subset(sorted(rest))


# ---------------------------------------------------------------------------------------------- the black box
@dataclass
class Queries:
    """Model queries per stage: a query scores one prompt on one batch of examples (one LM forward batch)."""

    prompts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, int] = field(default_factory=dict)

    def add(self, stage: str, prompts: int, examples: int) -> None:
        self.prompts[stage] = self.prompts.get(stage, 0) + prompts
        self.examples[stage] = self.examples.get(stage, 0) + prompts * examples


class PromptScorer:
    """f as a black box: class logits of prompts on a set of examples, forwards only (torch.inference_mode)."""

    def __init__(self, model: nn.Module, reward_input: str = "probs", rows_per_forward: int = 2048,
                 queries: Queries | None = None):
        self.model, self.reward_input, self.rows = model, reward_input, int(rows_per_forward)
        self.queries = queries if queries is not None else Queries()
        self.stage = "other"

    def class_logits(self, prompts: list[list[int]], data: FewShot) -> torch.Tensor:
        """(P, N, C) verbalizer logits at the first decoder position of every prompt ⊕ source."""
        import torch

        from methods.seq2seq import decoder_states, encode, output_logits

        model = self.model
        pad = model.config.pad_token_id
        device = next(model.parameters()).device
        verbal = torch.tensor(data.verbalizers, device=device)
        per = max(1, self.rows // max(1, len(data.sources)))
        out = []
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            for start in range(0, len(prompts), per):
                chunk = prompts[start:start + per]
                rows = [[*p, *s] for p in chunk for s in data.sources]
                ids = torch.full((len(rows), max(map(len, rows))), pad, dtype=torch.long)
                for i, r in enumerate(rows):
                    ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
                ids = ids.to(device)
                start_tok = ids.new_full((len(rows), 1), model.config.decoder_start_token_id)
                hidden, _ = decoder_states(model, ids, start_tok, encode(model, ids))
                logits = output_logits(model, hidden[:, 0]).float()[:, verbal]
                out.append(logits.reshape(len(chunk), len(data.sources), -1).cpu())
        model.train(was_training)
        self.queries.add(self.stage, len(prompts), len(data.sources))
        return torch.cat(out)

    def rewards(self, prompts: list[list[int]], data: FewShot) -> np.ndarray:
        """R(z) per prompt (the module docstring; `reward_input`)."""
        import torch

        logits = self.class_logits(prompts, data)
        x = torch.softmax(logits, -1) if self.reward_input == "probs" else logits
        y = torch.as_tensor(data.labels).expand(len(prompts), -1)
        ce = torch.nn.functional.cross_entropy(x.flatten(0, 1), y.flatten(), reduction="none").view(len(prompts), -1)
        return (-ce.mean(1)).double().numpy()

    def accuracy(self, prompts: list[list[int]], data: FewShot, stage: str | None = None) -> np.ndarray:
        saved, self.stage = self.stage, stage or "eval"
        logits = self.class_logits(prompts, data)
        self.stage = saved
        return (logits.argmax(-1).numpy() == data.labels[None]).mean(1)


# ---------------------------------------------------------------------------------------------- ClaPS's stages
def candidate_tokens(tokenizer, vocab_size: int) -> list[int]:
    """Every id but the specials; only "▁"-prefixed tokens where the tokenizer marks word starts so (the code)."""
    specials = {tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id}
    tokens = tokenizer.convert_ids_to_tokens(list(range(min(vocab_size, len(tokenizer)))))
    marked = [i for i, t in enumerate(tokens) if t and "▁" in t and i not in specials]
    return marked if len(marked) > 0.1 * len(tokens) else [i for i in range(len(tokens)) if i not in specials]


def cluster_representatives(embeddings: np.ndarray, tokens: list[int], k: int, seed: int = 0) -> list[int]:
    """k-means++ over the rows of `embeddings` (one per token); per centroid the token nearest to it, deduplicated
    in centroid order (vocabs/get_kmeans_vocab.ipynb). k >= len(tokens) or k == 0: every token."""
    if k == 0 or k >= len(tokens):
        return list(tokens)
    from sklearn.cluster import KMeans

    x = np.asarray(embeddings, dtype=np.float64)
    km = KMeans(n_clusters=k, init="k-means++", n_init=10, random_state=seed).fit(x)
    out, seen = [], set()
    for c in km.cluster_centers_:
        t = tokens[int(np.argmin(np.linalg.norm(x - c, axis=1)))]
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def reward_differences(scorer: PromptScorer, tokens: list[int], data: FewShot) -> np.ndarray:
    """s(v) = R(z = v) − R(z = ∅) for each token v (1 + len(tokens) queries)."""
    empty = scorer.rewards([[]], data)[0]
    return scorer.rewards([[t] for t in tokens], data) - empty


def prune(tokens: list[int], scores: np.ndarray, percentile: float) -> list[int]:
    """The tokens whose score exceeds the `percentile`-th percentile of the scores (run_prune_search.py)."""
    threshold = np.percentile(np.asarray(scores), percentile)
    return [t for t, s in zip(tokens, scores) if s > threshold]


def greedy_search(scorer: PromptScorer, tokens: list[int], data: FewShot, str_len: int) -> list[int]:
    """algs/greedy.py: str_len steps, each appending the token of the highest reward (str_len · |tokens| queries)."""
    prompt: list[int] = []
    for _ in range(str_len):
        pop = [[*prompt, t] for t in tokens]
        prompt = pop[int(np.argmax(scorer.rewards(pop, data)))]
    return prompt


def genetic_search(scorer: PromptScorer, tokens: list[int], data: FewShot, str_len: int, pop_size: int,
                   mutate_size: int, crossover_size: int, epochs: int, mutate_frac: float, mutate_prob: float,
                   crossover: str, rng: np.random.Generator) -> list[list[int]]:
    """algs/genetics.py (deviations in the module docstring): the best prompt of every epoch, first-seen order."""
    pick = np.asarray(tokens)

    def mutate(x: list[int]) -> list[int]:
        out = list(x)
        for i in range(len(out)):
            if rng.random() < mutate_prob and len(tokens) > 1:
                others = pick[pick != out[i]]
                out[i] = int(others[rng.integers(len(others))])
        return out

    def cross(a: list[int], b: list[int]) -> list[int]:
        if crossover == "copy":
            return list(a if rng.random() < 0.5 else b)
        return [x if rng.random() < 0.5 else y for x, y in zip(a, b)]

    pop = [[int(t) for t in pick[rng.integers(len(pick), size=str_len)]] for _ in range(pop_size)]
    best: list[list[int]] = []
    for _ in range(epochs):
        reward = scorer.rewards(pop, data)
        order = np.argsort(-reward, kind="stable")
        if pop[order[0]] not in best:
            best.append(pop[order[0]])
        parents = [pop[i] for i in order[:max(1, int(len(pop) * mutate_frac))]]
        mutants = [mutate(parents[rng.integers(len(parents))]) for _ in range(mutate_size)]
        crosses = [cross(parents[rng.integers(len(parents))], parents[rng.integers(len(parents))])
                   for _ in range(crossover_size)]
        pop = parents + mutants + crosses
    return best


def random_search(scorer: PromptScorer, tokens: list[int], data: FewShot, str_len: int, n: int,
                  rng: np.random.Generator) -> list[int]:
    """n random prompts of str_len tokens; the best by train reward (n queries)."""
    pick = np.asarray(tokens)
    pop = [[int(t) for t in pick[rng.integers(len(pick), size=str_len)]] for _ in range(n)]
    return pop[int(np.argmax(scorer.rewards(pop, data)))]


def pick_on_validation(scorer: PromptScorer, prompts: list[list[int]], val: FewShot) -> tuple[list[int], float]:
    """The prompt of the highest validation accuracy, ties to the last (algs/base_trainer.py validate)."""
    acc = scorer.accuracy(prompts, val, stage="validation")
    i = int(np.flatnonzero(acc == acc.max())[-1])
    return prompts[i], float(acc[i])


# ---------------------------------------------------------------------------------------------- the method
class ClaPS(Method):
    """Post-training, forwards only: cluster, prune and search discrete prompts for the trained model; report the
    found prompts' validation/test accuracy and the queries each stage spent, beside the baselines'."""

    needs_task = frozenset({"prompt-classification"})
    needs_model = frozenset({"seq2seq-lm"})

    def __init__(self, name: str = "claps", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 search: str = "both", shots: int = 16, clusters: int = 100, percentile: float = 90.0,
                 str_len: int = 5, pop_size: int = 32, mutate_size: int = 16, crossover_size: int = 16,
                 epochs: int = 10, mutate_frac: float = 0.1, mutate_prob: float = 0.1, crossover: str = "uniform",
                 reward_input: str = "probs", baselines: bool = True, max_test: int | None = 1000,
                 rows_per_forward: int = 2048, seed: int = 42):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        choices = (("search", search, SEARCHES), ("crossover", crossover, CROSSOVERS),
                   ("reward_input", reward_input, REWARD_INPUTS))
        for key, value, valid in choices:
            if value not in valid:
                raise ValueError(f"method.{key}: {value!r} is not valid; choose one of: {', '.join(valid)}")
        for key, value in (("shots", shots), ("str_len", str_len), ("pop_size", pop_size), ("epochs", epochs),
                           ("rows_per_forward", rows_per_forward)):
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"method.{key}: must be a positive integer, got {value!r}")
        for key, value in (("clusters", clusters), ("mutate_size", mutate_size), ("crossover_size", crossover_size)):
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"method.{key}: must be an integer >= 0, got {value!r}")
        if max_test is not None and not (isinstance(max_test, int) and max_test >= 1):
            raise ValueError(f"method.max_test: must be a positive integer or null, got {max_test!r}")
        if not 0 <= percentile < 100:
            raise ValueError(f"method.percentile: must be in [0, 100) (90 keeps the top 10%), got {percentile!r}")
        if not 0 < mutate_frac <= 1:
            raise ValueError(f"method.mutate_frac: must be in (0, 1], got {mutate_frac!r}")
        if not 0 <= mutate_prob <= 1:
            raise ValueError(f"method.mutate_prob: must be in [0, 1], got {mutate_prob!r}")
        self.search, self.shots, self.clusters, self.percentile = search, shots, clusters, float(percentile)
        self.str_len, self.pop_size, self.mutate_size, self.crossover_size = str_len, pop_size, mutate_size, crossover_size
        self.epochs, self.mutate_frac, self.mutate_prob, self.crossover = epochs, float(mutate_frac), float(mutate_prob), crossover
        self.reward_input, self.baselines, self.max_test = reward_input, bool(baselines), max_test
        self.rows_per_forward, self.seed = rows_per_forward, int(seed)
        self.found: dict[str, list[int]] = {}  # the prompts of the last evaluate, by searcher

    @property
    def trains(self) -> bool:
        return False

    def run_search(self, model: nn.Module, tokenizer, vocab_size: int, train: FewShot, val: FewShot,
                   test: FewShot | None = None) -> dict[str, float]:
        """Every stage and baseline on (train, val, test); the metrics, and the prompts in self.found."""
        q = Queries()
        scorer = PromptScorer(model, self.reward_input, self.rows_per_forward, q)
        rng = np.random.default_rng(self.seed)
        tokens = candidate_tokens(tokenizer, vocab_size)
        emb = model.get_input_embeddings().weight.detach().float().cpu().numpy()[tokens]
        reps = cluster_representatives(emb, tokens, self.clusters, self.seed)
        scorer.stage = "prune"
        scores = reward_differences(scorer, reps, train)
        pruned = prune(reps, scores, self.percentile)
        m: dict[str, float] = {"candidates": len(tokens), "representatives": len(reps), "pruned": len(pruned)}
        found: dict[str, list[list[int]]] = {"empty": [[]]}
        if self.search in ("greedy", "both"):
            scorer.stage = "greedy"
            found["greedy"] = [greedy_search(scorer, pruned, train, self.str_len)]
        if self.search in ("genetic", "both"):
            scorer.stage = "genetic"
            found["genetic"] = genetic_search(scorer, pruned, train, self.str_len, self.pop_size, self.mutate_size,
                                              self.crossover_size, self.epochs, self.mutate_frac, self.mutate_prob,
                                              self.crossover, rng)
        if self.baselines:
            scorer.stage = "greedy_full"
            found["greedy_full"] = [greedy_search(scorer, tokens, train, self.str_len)]
            budget = q.prompts["prune"] + q.prompts.get("greedy", q.prompts.get("genetic", 0))
            scorer.stage = "random"
            found["random"] = [random_search(scorer, tokens, train, self.str_len, budget, rng)]
        per_stage = {"greedy": ("prune", "greedy"), "genetic": ("prune", "genetic"), "greedy_full": ("greedy_full",),
                     "random": ("random",), "empty": ()}
        self.found = {}
        scorer.stage = "report"  # the final scoring below is not a search's query
        best_val = -1.0
        for key, prompts in found.items():
            prompt, val_acc = pick_on_validation(scorer, prompts, val)
            self.found[key] = prompt
            m[f"{key}_val_acc"] = val_acc
            m[f"{key}_train_reward"] = float(scorer.rewards([prompt], train)[0])
            if test is not None:
                m[f"{key}_test_acc"] = float(scorer.accuracy([prompt], test, stage="test")[0])
            if key != "empty":
                m[f"{key}_queries"] = float(sum(q.prompts.get(s, 0) for s in per_stage[key]))
                m[f"{key}_examples"] = float(sum(q.examples.get(s, 0) for s in per_stage[key]))
            if key in ("greedy", "genetic") and val_acc > best_val:  # ClaPS's answer: the best search on val
                best_val, self.found["claps"] = val_acc, prompt
                m["claps_val_acc"] = val_acc
                if test is not None:
                    m["claps_test_acc"] = m[f"{key}_test_acc"]
        m["prune_queries"] = float(q.prompts["prune"])
        m["claps_queries"] = float(q.prompts["prune"] + q.prompts.get("greedy", 0) + q.prompts.get("genetic", 0))
        return m

    def evaluate(self, model: nn.Module, data) -> dict[str, float]:
        task = prompt_task(data.val, data.tokenizer.eos_token_id)
        train, val, test = few_shot_splits(task, self.shots, self.seed, self.max_test)
        m = self.run_search(model, data.tokenizer, data.vocab_size, train, val, test)
        for key, prompt in self.found.items():
            log.info("claps: %s prompt %r (val acc %.3f)", key, " ".join(data.tokenizer.convert_ids_to_tokens(prompt)),
                     m.get(f"{key}_val_acc", float("nan")))
        return {f"claps/{k}": float(v) for k, v in m.items()}
