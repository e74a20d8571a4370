"""EvoPress: Towards Optimal Dynamic Model Compression via Evolutionary Search
(Sieberling, Kuznedelev, Kurtic, Alistarh; arXiv:2410.14649).

Dynamic (non-uniform) compression: every unit of the model (a linear layer, or a decoder block) takes one
of several compression levels from a database, and a search picks the levels that minimise the compressed
model's KL divergence to the dense model under a budget on the total cost.

    database   for every unit u and level l: the unit's weights at that level and their cost c_u(l)
               quant   every decoder linear at b bits, b in {2, 3, 4, 8}: round-to-nearest with a min-max
                       scale and an integer zero point per group of `group_size` input columns, simulated
                       (the weights are replaced by their dequantized values); c_u(b) = numel_u * b
               sparse  every decoder linear at unstructured sparsity s (magnitude: the smallest |w| zeroed);
                       c_u(s) = the number of weights kept
               drop    every decoder block kept or dropped (all its linears zero: the block adds nothing
                       to the residual stream); c_u = 1 if kept
    budget     sum_u c_u(l_u) <= B, B = the cost of every unit at the target level (target_bits,
               target_sparsity; n_blocks - drop_blocks). The search starts at the uniform target level (or
               at the best of `initial_candidates` random states at most B) and every candidate it builds
               has exactly the start's cost.
    fitness    KL(p_dense || p_compressed) of the next-token distributions, mean over calibration tokens.
    (1 + lambda) evolutionary search (the paper's Algorithm 1), for each generation:
        lambda offspring of the parent, each made by num_flips = min(U{1,3}, U{1,3}) level switches: one
            unit moves one level up (or down), and other units move one level down (up) until the total
            cost is back where it was (for units of equal size on an evenly spaced ladder: the paper's
            swap within a group); duplicates, copies of the parent and offspring with more than
            `max_level_changes` level changes are rejected
        multi-step selection: stage k draws a fresh random calibration mini-batch of tokens[k] tokens and
            keeps the survivors[k] fittest; the parent joins the last stage (elitism), whose single
            survivor becomes the parent
    baselines  uniform  every unit at the target level
               dp       each unit's error e_u(l) measured on its own (that unit at level l, every other unit
                        dense): the model's KL to the dense model, or the unit's output NMSE
                        sum ||X (W_l - W)^T||^2 / sum ||X W^T||^2 (the official compute_layer_errors); then
                        the dynamic program  min sum_u e_u(l_u)  s.t.  sum_u c_u(l_u) <= B

Defaults from the paper and its code (quantization): KL fitness, offspring by min(U{1,3}, U{1,3}) flips, at
most 10 level changes per offspring, group size 128, the parent in the last selection stage. The paper's
scale (150 generations, 128 offspring, survivors 16/4/1 on 2048/16384/131072 tokens, a GPTQ database at
2..6 bits, 2^19 calibration tokens) is far above a CPU smoke run; the defaults here follow the catalog's
small-scale setting: an RTN database at {2, 3, 4, 8} bits, 30 generations x 16 offspring, survivors 4/2/1
on 256/1024/4096 tokens of a 4096-token calibration set, so that the last stage scores the whole set.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from methods.base import Method

DATABASES = ("quant", "sparse", "drop")
SEARCHES = ("evo", "uniform", "dp")
DP_ERRORS = ("kl", "nmse")

State = tuple[int, ...]  # one level index per unit; levels are ordered by increasing cost


# ---------------------------------------------------------------------------------------------- levels
def rtn_quantize(weight: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Round-to-nearest asymmetric quantization of each row in groups of `group_size` input columns (the last
    group may be shorter), returned dequantized. Each group's range includes 0, as in GPTQ's quantizer."""
    rows, cols = weight.shape
    g = min(group_size, cols)
    w = weight.detach().float()
    out = torch.empty_like(w)
    full = cols // g * g
    if full:
        out[:, :full] = _rtn_groups(w[:, :full].reshape(rows, cols // g, g), bits).reshape(rows, full)
    if full < cols:
        out[:, full:] = _rtn_groups(w[:, full:], bits)
    return out.to(weight.dtype)


def _rtn_groups(x: torch.Tensor, bits: int) -> torch.Tensor:
    levels = 2**bits - 1
    lo = x.amin(-1, keepdim=True).clamp(max=0)
    hi = x.amax(-1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / levels).clamp(min=1e-12)
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(x / scale) + zero, 0, levels)
    return (q - zero) * scale


def magnitude_prune(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The weight with its round(sparsity * numel) smallest-magnitude entries set to zero."""
    k = round(sparsity * weight.numel())
    out = weight.detach().clone()
    if k:
        idx = weight.detach().abs().flatten().argsort()[:k]
        out.view(-1)[idx] = 0
    return out


# ---------------------------------------------------------------------------------------------- database
@dataclass
class Unit:
    name: str
    params: list[tuple[nn.Module, str]]  # (module, "weight" | "bias") the unit's levels set
    costs: list[int]                     # cost of each level, strictly increasing
    share: float                         # the unit's part of the total cost at the target (sizes its start level)


class Database:
    """Every unit's parameters at every compression level (computed on first use, kept on the weights'
    device), and the model's current levels. `apply(state)` writes only the units whose level changed;
    `apply(None)` restores the dense weights."""

    def __init__(self, model: nn.Module, kind: str, bits: Sequence[int] = (2, 3, 4, 8), group_size: int = 128,
                 sparsities: Sequence[float] = (0.0, 0.5), target: float = 3.0):
        if kind not in DATABASES:
            raise ValueError(f"EvoPress: database {kind!r} is not one of {', '.join(DATABASES)}")
        self.kind, self.group_size = kind, int(group_size)
        blocks = list(model.get_decoder().layers)
        names = {id(m): n for n, m in model.named_modules()}
        self.units: list[Unit] = []
        if kind == "drop":
            self.values = [0, 1]  # blocks kept
            for block in blocks:
                params = [(m, a) for m in block.modules() if isinstance(m, nn.Linear)
                          for a in ("weight", "bias") if getattr(m, a) is not None]
                self.units.append(Unit(names[id(block)], params, [0, 1], 1.0))
        else:
            self.values = sorted(bits) if kind == "quant" else sorted(sparsities, reverse=True)
            for block in blocks:
                for m in block.modules():
                    if isinstance(m, nn.Linear):
                        n = m.weight.numel()
                        costs = ([n * b for b in self.values] if kind == "quant"
                                 else [n - round(s * n) for s in self.values])
                        self.units.append(Unit(names[id(m)], [(m, "weight")], costs, float(n)))
        for u in self.units:
            if any(b <= a for a, b in zip(u.costs, u.costs[1:])):
                raise ValueError(f"EvoPress: the levels of {u.name} do not have strictly increasing costs {u.costs}")
        self.dense = [[getattr(m, a).detach().clone() for m, a in u.params] for u in self.units]
        self._cache: dict[tuple[int, int], list[torch.Tensor]] = {}
        self.current: list[int | None] = [None] * len(self.units)
        # the budget: the uniform target level's cost, or the target's share of the total
        if kind == "drop":  # target: the number of blocks kept
            self.budget = int(round(target))
            self.target_level = {0: 0, len(self.units): 1}.get(self.budget)
        elif target in self.values:
            self.target_level = self.values.index(target)
            self.budget = sum(u.costs[self.target_level] for u in self.units)
        else:
            self.target_level = None
            per = target if kind == "quant" else 1.0 - target
            self.budget = int(math.floor(sum(u.share for u in self.units) * per + 1e-6))
        lo, hi = sum(u.costs[0] for u in self.units), sum(u.costs[-1] for u in self.units)
        if not lo <= self.budget <= hi:
            raise ValueError(f"EvoPress: target {target} is outside what the levels {self.values} allow")
        total_share = sum(u.share for u in self.units)
        for u in self.units:
            u.share = self.budget * u.share / total_share

    @property
    def costs(self) -> list[list[int]]:
        return [u.costs for u in self.units]

    def cost(self, state: Sequence[int]) -> int:
        return sum(u.costs[level] for u, level in zip(self.units, state))

    def level_value(self, state: Sequence[int], u: int) -> float:
        return float(self.values[state[u]])

    def tensors(self, u: int, level: int) -> list[torch.Tensor]:
        key = (u, level)
        if key not in self._cache:
            v = self.values[level]
            if self.kind == "quant":
                out = [rtn_quantize(w, int(v), self.group_size) for w in self.dense[u]]
            elif self.kind == "sparse":
                out = [magnitude_prune(w, float(v)) for w in self.dense[u]]
            else:
                out = [w if v else torch.zeros_like(w) for w in self.dense[u]]
            self._cache[key] = out
        return self._cache[key]

    def set_unit(self, u: int, level: int | None) -> None:
        if self.current[u] == level:
            return
        values = self.dense[u] if level is None else self.tensors(u, level)
        for (m, a), v in zip(self.units[u].params, values):
            getattr(m, a).data.copy_(v)
        self.current[u] = level

    def apply(self, state: Sequence[int] | None) -> None:
        for u in range(len(self.units)):
            self.set_unit(u, None if state is None else state[u])

    def uniform(self) -> State:
        if self.target_level is None:
            raise ValueError(f"EvoPress: search=uniform needs the target to be one of the levels {self.values}")
        return tuple([self.target_level] * len(self.units))

    def random_state(self, rng: random.Random) -> State:
        """Every unit at the cheapest level that covers its share of the budget, then random units one level
        down until the cost is within the budget (the official code's start for a fractional target)."""
        state = [next((i for i, c in enumerate(u.costs) if c >= u.share), len(u.costs) - 1) for u in self.units]
        cost = self.cost(state)
        while cost > self.budget:
            u = rng.choice([i for i, level in enumerate(state) if level > 0])
            cost -= self.units[u].costs[state[u]] - self.units[u].costs[state[u] - 1]
            state[u] -= 1
        return tuple(state)


# ---------------------------------------------------------------------------------------------- search
def mutate(parent: Sequence[int], costs: Sequence[Sequence[int]], rng: random.Random,
           max_level_changes: int = 10) -> State | None:
    """An offspring of `parent` with the same total cost, or None if the draw found no exact compensation."""
    child = list(parent)
    changes = 0
    for _ in range(min(rng.randint(1, 3), rng.randint(1, 3))):
        d = rng.choice((1, -1))
        movable = [u for u, level in enumerate(child) if 0 <= level + d < len(costs[u])]
        if not movable:
            return None
        u = rng.choice(movable)
        remaining = costs[u][child[u] + d] - costs[u][child[u]]  # signed change to undo
        child[u] += d
        changes += 1
        while remaining:
            fits = []
            for v, level in enumerate(child):
                if v != u and 0 <= level - d < len(costs[v]):
                    step = costs[v][level - d] - costs[v][level]  # opposite sign to `remaining`
                    if abs(step) <= abs(remaining):
                        fits.append((v, step))
            if not fits or changes >= max_level_changes:
                return None
            v, step = rng.choice(fits)
            child[v] -= d
            remaining += step
            changes += 1
    return tuple(child)


Score = Callable[[list[State], int], list[float]]  # (candidates, tokens) -> fitness of each, on one mini-batch


def evolutionary_search(costs: Sequence[Sequence[int]], start: Sequence[int], score: Score, generations: int,
                        offspring: int, survivors: Sequence[int], tokens: Sequence[int], rng: random.Random,
                        max_level_changes: int = 10) -> tuple[State, list[dict[str, float]]]:
    """The (1 + lambda) search with multi-step selection. Returns the last parent and one row per generation
    (generation 0: the start) with the parent's fitness in the last selection stage."""
    parent = tuple(start)
    fitness = score([parent], tokens[-1])[0]
    history = [{"generation": 0, "fitness": fitness, "offspring": 0}]
    for generation in range(1, generations + 1):
        children: list[State] = []
        seen = {parent}
        for _ in range(100 * offspring):
            if len(children) == offspring:
                break
            child = mutate(parent, costs, rng, max_level_changes)
            if child is not None and child not in seen:
                seen.add(child)
                children.append(child)
        n_children = len(children)
        candidates = children
        for stage, (keep, n_tokens) in enumerate(zip(survivors, tokens)):
            if stage == len(tokens) - 1:
                candidates = candidates + [parent]  # elitism
            fits = score(candidates, n_tokens)
            order = sorted(range(len(candidates)), key=fits.__getitem__)[:keep]
            candidates, kept_fits = [candidates[i] for i in order], [fits[i] for i in order]
        parent, fitness = candidates[0], kept_fits[0]
        history.append({"generation": generation, "fitness": fitness, "offspring": n_children})
    return parent, history


def dp_allocation(errors: Sequence[Sequence[float]], costs: Sequence[Sequence[int]], budget: int) -> State:
    """argmin sum_u errors[u][l_u] subject to sum_u costs[u][l_u] <= budget, by dynamic programming over the
    cost (in units of the costs' greatest common divisor)."""
    g = 0
    for c in costs:
        for x in c:
            g = math.gcd(g, int(x))
    g = g or 1
    cap = budget // g
    best = np.full(cap + 1, np.inf)
    best[0] = 0.0
    choice = np.zeros((len(costs), cap + 1), dtype=np.int16)
    for u, (cu, eu) in enumerate(zip(costs, errors)):
        new = np.full(cap + 1, np.inf)
        for level, (c, e) in enumerate(zip(cu, eu)):
            c //= g
            if c > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[c:] = best[: cap + 1 - c] + e
            better = cand < new
            new[better] = cand[better]
            choice[u, better] = level
        best = new
    if not np.isfinite(best).any():
        raise ValueError("EvoPress: no allocation fits the budget")
    spent = int(np.argmin(best))
    state = [0] * len(costs)
    for u in range(len(costs) - 1, -1, -1):
        state[u] = int(choice[u, spent])
        spent -= costs[u][state[u]] // g
    return tuple(state)


# ---------------------------------------------------------------------------------------------- fitness
class KLFitness:
    """KL(p_dense || p_candidate) of next-token distributions on calibration mini-batches. The dense
    distributions of the whole calibration set are computed once; per token
    KL = sum_v p_v log p_v - sum_v p_v z_v + logsumexp(z), z the candidate's logits."""

    def __init__(self, model: nn.Module, database: Database, inputs: torch.Tensor, rng: random.Random,
                 batch_blocks: int = 8):
        self.model, self.db, self.rng, self.batch_blocks = model, database, rng, int(batch_blocks)
        self.device = next(model.parameters()).device
        self.inputs = inputs.to(self.device)
        self.evaluations = 0
        database.apply(None)
        with torch.no_grad():
            self.dense_p = torch.cat([torch.softmax(self._logits(self.inputs[i:i + self.batch_blocks]), -1)
                                      for i in range(0, len(self.inputs), self.batch_blocks)])
            self.dense_neg_entropy = torch.xlogy(self.dense_p, self.dense_p).sum(-1)  # (blocks, seq)

    def _logits(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits.float()

    def minibatch(self, n_tokens: int) -> tuple[list[int], int]:
        """Sorted random block ids holding exactly n_tokens tokens, and the positions of the last block used."""
        seq = self.inputs.shape[1]
        n_blocks = -(-n_tokens // seq)
        ids = sorted(self.rng.sample(range(len(self.inputs)), n_blocks))
        return ids, n_tokens - (n_blocks - 1) * seq

    @torch.no_grad()
    def kl(self, ids: Sequence[int], last_positions: int) -> float:
        """Mean KL over the chosen tokens, for the model's current weights."""
        total, count = 0.0, 0
        for i in range(0, len(ids), self.batch_blocks):
            chunk = list(ids[i:i + self.batch_blocks])
            z = self._logits(self.inputs[chunk])
            per_token = (self.dense_neg_entropy[chunk] - (self.dense_p[chunk] * z).sum(-1)
                         + torch.logsumexp(z, -1))  # (blocks, seq)
            if i + self.batch_blocks >= len(ids):  # the last block counts only its first positions
                per_token[-1, last_positions:] = 0
                count += per_token[:-1].numel() + last_positions
            else:
                count += per_token.numel()
            total += float(per_token.sum())
        return total / count

    def __call__(self, candidates: list[State], n_tokens: int) -> list[float]:
        ids, last = self.minibatch(n_tokens)
        out = []
        for state in candidates:
            self.db.apply(state)
            out.append(self.kl(ids, last))
        self.evaluations += len(candidates)
        return out


def unit_errors_kl(fitness: KLFitness, n_tokens: int) -> list[list[float]]:
    """e_u(l): the model's KL to the dense model with only unit u at level l (every other unit dense)."""
    db = fitness.db
    ids, last = fitness.minibatch(n_tokens)
    db.apply(None)
    errors = []
    for u, unit in enumerate(db.units):
        row = []
        for level in range(len(unit.costs)):
            db.set_unit(u, level)
            row.append(fitness.kl(ids, last))
            fitness.evaluations += 1
        db.set_unit(u, None)
        errors.append(row)
    return errors


@torch.no_grad()
def unit_errors_nmse(model: nn.Module, db: Database, inputs: torch.Tensor, batch_blocks: int = 8) -> list[list[float]]:
    """e_u(l) = sum ||X (W_l - W)^T||^2 / sum ||X W^T||^2 over the unit's linears, X their dense calibration
    inputs (through the Gram matrix X^T X)."""
    db.apply(None)
    linears = {id(m): m for u in db.units for m, a in u.params if a == "weight"}
    grams: dict[int, torch.Tensor] = {}

    def hook(module, args, _output):
        x = args[0].detach().float().reshape(-1, args[0].shape[-1])
        grams[id(module)] = grams.get(id(module), 0) + x.T @ x

    handles = [m.register_forward_hook(hook) for m in linears.values()]
    try:
        device = next(model.parameters()).device
        for i in range(0, len(inputs), batch_blocks):
            model(input_ids=inputs[i:i + batch_blocks].to(device))
    finally:
        for h in handles:
            h.remove()
    errors = []
    for u, unit in enumerate(db.units):
        weights = [(k, db.dense[u][k].float(), grams[id(m)]) for k, (m, a) in enumerate(unit.params) if a == "weight"]
        norm = sum(float(((w @ h) * w).sum()) for _, w, h in weights)
        row = []
        for level in range(len(unit.costs)):
            q = db.tensors(u, level)
            err = sum(float((((q[k].float() - w) @ h) * (q[k].float() - w)).sum()) for k, w, h in weights)
            row.append(err / max(norm, 1e-30))
        errors.append(row)
    return errors


# ---------------------------------------------------------------------------------------------- method
class EvoPress(Method):
    """EvoPress as a post-training method: `compress` searches the levels and returns the model with its
    weights at those levels (a plain transformers model); `evaluate` reports the search's final numbers."""

    needs_task = frozenset({"tokens"})
    needs_model = frozenset({"decoder-layers"})

    def __init__(self, name: str = "evopress", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 search: str = "evo", database: str = "quant", bits: Sequence[int] = (2, 3, 4, 8),
                 group_size: int = 128, target_bits: float = 3.0,
                 sparsities: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                 target_sparsity: float = 0.5, drop_blocks: int = 1, generations: int = 30, offspring: int = 16,
                 survivors: Sequence[int] = (4, 2, 1), tokens: Sequence[int] = (256, 1024, 4096),
                 calibration_tokens: int = 4096, initial_candidates: int = 16, max_level_changes: int = 10,
                 dp_error: str = "kl", batch_blocks: int = 8, seed: int | None = None):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        self.search, self.database, self.dp_error = search, database, dp_error
        self.bits, self.group_size, self.target_bits = [int(b) for b in bits], int(group_size), float(target_bits)
        self.sparsities, self.target_sparsity = [float(s) for s in sparsities], float(target_sparsity)
        self.drop_blocks = int(drop_blocks)
        self.generations, self.offspring = int(generations), int(offspring)
        self.survivors, self.tokens = [int(s) for s in survivors], [int(t) for t in tokens]
        self.calibration_tokens, self.initial_candidates = int(calibration_tokens), int(initial_candidates)
        self.max_level_changes, self.batch_blocks, self.seed = int(max_level_changes), int(batch_blocks), seed
        self._check()
        self.history: list[dict[str, float]] = []  # fitness per generation of the last compress()
        self.result: dict[str, float] = {}
        self.levels: dict[str, float] = {}           # unit -> its level (bits, sparsity, or kept)

    def _check(self) -> None:
        problems = []
        for key, value, allowed in (("search", self.search, SEARCHES), ("database", self.database, DATABASES),
                                    ("dp_error", self.dp_error, DP_ERRORS)):
            if value not in allowed:
                problems.append(f"{key} {value!r} is not one of {', '.join(allowed)}")
        if not self.bits or min(self.bits) < 1 or len(set(self.bits)) != len(self.bits):
            problems.append(f"bits must be distinct integers >= 1, got {self.bits}")
        if not self.sparsities or not all(0.0 <= s < 1.0 for s in self.sparsities):
            problems.append(f"sparsities must be in [0, 1), got {self.sparsities}")
        if len(self.survivors) != len(self.tokens) or not self.tokens:
            problems.append(f"survivors {self.survivors} and tokens {self.tokens} need one entry per selection stage")
        elif (self.survivors[-1] != 1 or any(b > a for a, b in zip(self.survivors, self.survivors[1:]))
              or self.survivors[0] > self.offspring or min(self.survivors) < 1):
            problems.append(f"survivors {self.survivors} must decrease from at most offspring={self.offspring} to 1")
        if self.tokens and (min(self.tokens) < 1 or max(self.tokens) > self.calibration_tokens):
            problems.append(f"tokens {self.tokens} must be in [1, calibration_tokens={self.calibration_tokens}]")
        if self.generations < 0 or self.offspring < 1 or self.initial_candidates < 1 or self.max_level_changes < 2:
            problems.append("generations >= 0, offspring >= 1, initial_candidates >= 1 and max_level_changes >= 2")
        if self.group_size < 1 or self.batch_blocks < 1 or self.drop_blocks < 0:
            problems.append("group_size and batch_blocks must be >= 1, drop_blocks >= 0")
        if problems:
            raise ValueError("EvoPress: " + "; ".join(problems))

    @property
    def trains(self) -> bool:
        return False

    def build_database(self, model: nn.Module) -> Database:
        if self.database == "drop":
            n_blocks = len(model.get_decoder().layers)
            if self.drop_blocks > n_blocks:
                raise ValueError(f"EvoPress: drop_blocks={self.drop_blocks} is more than the model's {n_blocks} blocks")
            target = float(n_blocks - self.drop_blocks)
        else:
            target = self.target_bits if self.database == "quant" else self.target_sparsity
        return Database(model, self.database, self.bits, self.group_size, self.sparsities, target)

    def calibration(self, data) -> torch.Tensor:
        """Seeded random blocks of data.train holding at least calibration_tokens tokens: (n, seq_len) inputs."""
        blocks = data.blocks("train")[:, :-1]
        n = -(-self.calibration_tokens // blocks.shape[1])
        if n > len(blocks):
            raise ValueError(f"EvoPress: calibration_tokens={self.calibration_tokens} is more than the "
                             f"{blocks.numel()} training tokens")
        g = torch.Generator().manual_seed(self._seed())
        return blocks[torch.randperm(len(blocks), generator=g)[:n]].clone()

    def _seed(self) -> int:
        return int(torch.initial_seed() if self.seed is None else self.seed)  # null: the run's seed

    @torch.no_grad()
    def compress(self, model: nn.Module, data) -> nn.Module:
        return self.compress_on(model, self.calibration(data))

    @torch.no_grad()
    def compress_on(self, model: nn.Module, inputs: torch.Tensor) -> nn.Module:
        """Search the levels on calibration `inputs` (n, seq_len) and leave the model at them."""
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        rng = random.Random(self._seed())
        db = self.build_database(model)
        fitness = KLFitness(model, db, inputs, rng, self.batch_blocks)
        self.history = []
        if self.search == "uniform":
            state = db.uniform()
        elif self.search == "dp":
            errors = (unit_errors_kl(fitness, self.tokens[-1]) if self.dp_error == "kl"
                      else unit_errors_nmse(model, db, inputs, self.batch_blocks))
            state = dp_allocation(errors, db.costs, db.budget)
        else:
            if db.target_level is not None:
                start = db.uniform()
            else:
                starts = list(dict.fromkeys(db.random_state(rng) for _ in range(self.initial_candidates)))
                fits = fitness(starts, self.tokens[-1])
                start = starts[int(np.argmin(fits))]
            state, self.history = evolutionary_search(db.costs, start, fitness, self.generations, self.offspring,
                                                      self.survivors, self.tokens, rng, self.max_level_changes)
        final = fitness([state], self.tokens[-1])[0]
        db.apply(state)
        model.train(was_training)
        self.state, self.budget, self.cost = state, db.budget, db.cost(state)
        self.levels = {u.name: db.level_value(state, i) for i, u in enumerate(db.units)}
        numel = [sum(getattr(m, a).numel() for m, a in u.params if a == "weight") for u in db.units]
        values = np.array([self.levels[u.name] for u in db.units])
        self.result = {"fitness": final, "budget_used": self.cost / max(db.budget, 1),
                       "evaluations": float(fitness.evaluations), "search_s": time.perf_counter() - t0,
                       "generations": float(len(self.history) - 1 if self.history else 0)}
        if self.database == "quant":
            self.result["avg_bits"] = float((values * numel).sum() / sum(numel))
        elif self.database == "sparse":
            self.result["avg_sparsity"] = float((values * numel).sum() / sum(numel))
        else:
            self.result["blocks_dropped"] = float((values == 0).sum())
        return model

    def stage_log(self, stage: str) -> list[dict[str, float]]:
        """The search's curve: fitness per generation, one logged row each (compress/fitness, ...)."""
        return list(self.history) if stage == "compress" else []

    def evaluate(self, model: nn.Module, data) -> dict[str, float]:
        """The search's final numbers and each unit's level (`level/<unit>`); the runner adds perplexity and
        the KL to the dense model on the validation split."""
        return {**self.result, **{f"level/{k}": v for k, v in self.levels.items()}}
