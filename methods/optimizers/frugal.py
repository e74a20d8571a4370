"""FRUGAL: Memory-Efficient Optimization by Reducing State Overhead for Scalable Training
(Zmushko et al., arXiv:2411.07837).

The gradient of every projectable weight (the attention and MLP matrices of the decoder layers) is split
in two: a state-full subspace, updated by AdamW, and its complement, updated by a state-free rule
(signSGD). Embeddings, norms and lm_head stay full AdamW. Optimizer memory then grows with the density ρ
of the state-full subspace instead of with the model.

    every T steps (t = 0, T, 2T, ...), for the projectable weights W_1..W_N:
        choose the state-full subspace S of density ρ:
            block             round(ρ·N) whole matrices, in `block_order` (random | ascending |
                              descending | mirror)
            columns | rows    int(ρ·n) random columns / rows of each matrix;  randk: int(ρ·m·n) entries
            svd | random      an orthonormal basis Q of rank r = round(ρ·min(m, n)) on the smaller side
                              (or r = min(rank, m, n) with an absolute `rank`, as galore-torch's one rank):
                              top singular vectors of the current gradient (GaLore) or random
        reset_statistics:     m, v, t <- 0 on S; outside S no state is kept at all
    every step, with learning rate η (warmup + cosine) and gradient g of a parameter p:
        p <- p·(1 − η·λ)                                  decoupled weight decay, every parameter
        not projectable:  p <- p − η·Adam(g)
        projectable:      g_s = Qᵀg                       (block: g or nothing; coordinates: g[S])
                          p <- p − η·α·Q·Adam(g_s)        state-full part,  α = proj_params_lr_scale
                          g_f = g − Q·Qᵀg                 the complement
                          p <- p − η·α·β·sign(g_f)        state-free part,  β = inactive_lr_scale
                                                          (rule sgd: g_f instead of sign(g_f); no: none)
    Adam(g): t <- t+1;  m <- β1·m + (1−β1)·g;  v <- β2·v + (1−β2)·g²;
             Adam(g) = (m / (1 − β1^t)) / (√v / √(1 − β2^t) + ε)           (torch.optim.AdamW's formula)

Defaults from the paper and its code: ρ = 0.25, T = 200, signSGD with β = 1.0 (pre-training; 0.1 for
fine-tuning), α = 1.0, statistics reset on re-selection, blocks in random order (the C4 pre-training
scripts pass `descending`); lr 1e-3, betas (0.9, 0.999), ε = 1e-8. Special cases: ρ = 1 is AdamW; ρ = 0
is signSGD on the projectable weights; GaLore is `svd` with no state-free update, no reset, lr 0.01 and
α = 0.25; BAdam is `block`, descending, with no state-free update.

Weight decay λ: one λ for every parameter, norms and embeddings included, as the FRUGAL code (its
`prepare_proj_params` puts all non-projectable parameters in one group) and galore-torch's scripts do; the
AdamW baseline (methods/base.py) exempts 1-D parameters, FRUGAL does not. `Frugal`'s default λ is the
baseline's 0.1 (configs/method/frugal.yaml: the shared settings of this repository's comparisons); the
paper's C4 scripts use λ = 0 for every method (`method.weight_decay=0`).

`reference` picks whose arithmetic a run follows, where the published implementations differ (each package
is a dev extra; tests/methods/test_galore.py and test_badam.py run ours against it on the same gradients):
    frugal        the FRUGAL code's (method=frugal): the steps above; λ before the update, every parameter
                  (inactive blocks included); non-projectable parameters keep their Adam state throughout.
                  method=galore / method=badam with reference=frugal are the FRUGAL code's GaLore / BAdam.
    galore-torch  galore_torch.GaLoreAdamW (method=galore; svd | random, no state-free update, no reset):
                  Adam(g) = m / (√v + ε) with step size η·√(1 − β2^t)/(1 − β1^t) (ε outside the bias
                  correction), and λ after the update: p <- p − η·λ·p on the updated p, every parameter.
    badam         badam.BlockOptimizer (method=badam; block, no state-free update, reset): inactive matrices
                  are frozen (no weight decay either); at every switch the Adam state of every parameter, the
                  always-active ones included, restarts; parameters named `*bias*` get λ = 0 (its rule: its
                  LayerNorm test looks at the parameter, never a module, so norms are decayed).
Differences from the packages that remain (documented, not options):
    galore-torch  rank: rank=null is round(ρ·min(m, n)) per matrix, the package's one absolute rank when all
                  matrices share min(m, n) (Llama without GQA); `rank: <int>` is the package's. The basis is
                  refreshed on the group's step count, the package's on each parameter's (equal when every
                  matrix gets a gradient every step). Its default ε is 1e-6; here ε is the config's.
    badam         a window is round(ρ·N) projectable matrices, the package's block one decoder layer: equal
                  when ρ = 1/layers (llama-tiny: 4 layers, ρ = 0.25); embeddings, norms and lm_head are
                  always-active AdamW, as in the FRUGAL paper's BAdam (the package with active_modules
                  [embed_tokens, norm, lm_head]; by default it freezes embeddings and lm_head and puts a layer's
                  norms in its block). The package's first window is T−1 steps (it tests (step + 1) % T after
                  counting the step), every later one T; here every window is T. It keeps fp32 master copies
                  of low-precision weights and turns requires_grad off outside the block (less backward
                  compute); here updates are in the parameter's dtype and every weight gets a gradient.
                  block_order=random draws k blocks per window, the package a permutation per pass.

Everything a resumed run needs (active blocks, the block pointer, step and selection counters, bases,
coordinates) is in `state_dict()`. Random choices draw from a generator seeded by (seed, selection[,
parameter]), so the random stream resumes exactly without saving generator state.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from methods.base import Method

SUBSPACES = ("block", "columns", "rows", "randk", "svd", "random")
BLOCK_ORDERS = ("random", "ascending", "descending", "mirror")
INACTIVE_RULES = ("sign_sgd", "sgd", "no")
REFERENCES = ("frugal", "galore-torch", "badam")
# nn.Linear modules under one of these path segments are projectable (Llama: self_attn.*_proj, mlp.*_proj)
PROJECTABLE_MODULES = frozenset({"self_attn", "attn", "attention", "mlp"})


def check_options(density: float, update_gap: int, subspace: str, block_order: str, inactive_update_rule: str,
                  inactive_lr_scale: float, proj_params_lr_scale: float, reset_statistics: bool = True,
                  reference: str = "frugal", rank: int | None = None) -> None:
    problems = []
    if reference not in REFERENCES:
        problems.append(f"reference {reference!r} is not one of {', '.join(REFERENCES)}")
    elif reference == "galore-torch" and (subspace not in ("svd", "random") or inactive_update_rule != "no"
                                          or reset_statistics):
        problems.append("reference=galore-torch is GaLore: subspace svd or random, inactive_update_rule no, "
                        "reset_statistics false (reference=frugal for FRUGAL's variants)")
    elif reference == "badam" and (subspace != "block" or inactive_update_rule != "no" or not reset_statistics):
        problems.append("reference=badam is BAdam: subspace block, inactive_update_rule no, reset_statistics "
                        "true (reference=frugal for FRUGAL's variants)")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 0):
        problems.append(f"rank must be null or an integer >= 0, got {rank!r}")
    if not 0.0 <= density <= 1.0:
        problems.append(f"density must be in [0, 1], got {density}")
    if update_gap < 1:
        problems.append(f"update_gap must be >= 1, got {update_gap}")
    for key, value, allowed in (("subspace", subspace, SUBSPACES), ("block_order", block_order, BLOCK_ORDERS),
                                ("inactive_update_rule", inactive_update_rule, INACTIVE_RULES)):
        if value not in allowed:
            problems.append(f"{key} {value!r} is not one of {', '.join(allowed)}")
    if inactive_lr_scale < 0 or proj_params_lr_scale < 0:
        problems.append("inactive_lr_scale and proj_params_lr_scale must be >= 0")
    if problems:
        raise ValueError("FRUGAL: " + "; ".join(problems))


def projectable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, weight) of the attention/MLP nn.Linear layers, in module order (layer by layer)."""
    out, seen = [], set()
    for name, module in model.named_modules():
        if (isinstance(module, nn.Linear) and module.weight.requires_grad and id(module.weight) not in seen
                and PROJECTABLE_MODULES & set(name.split("."))):
            seen.add(id(module.weight))
            out.append((f"{name}.weight", module.weight))
    return out


def select_blocks(n: int, k: int, order: str, start: int | None,
                  gen: torch.Generator | None) -> tuple[list[int], int | None]:
    """The k active matrices among n, and where the next window starts (cyclic orders walk the list)."""
    if order == "random":
        return sorted(torch.randperm(n, generator=gen)[:k].tolist()), start
    if order == "ascending":
        start = 0 if start is None else start
        return sorted((start + j) % n for j in range(k)), (start + k) % n
    if order == "descending":
        start = n - 1 if start is None else start
        return sorted((start - j) % n for j in range(k)), (start - k) % n
    half = n // 2  # mirror: the pairs (i, n-1-i), from the outside in
    start = 0 if start is None else start
    pairs = [(start + j) % half for j in range(k // 2)]
    return sorted({i for j in pairs for i in (j, n - 1 - j)}), (start + k // 2) % half


def proj_rank(shape: tuple[int, ...], density: float, rank: int | None = None) -> int:
    """Rank of the svd/random basis: round(ρ·min(m, n)), or an absolute `rank` capped at min(m, n)."""
    return round(min(shape) * density) if rank is None else min(int(rank), *shape)


def coord_count(shape: tuple[int, ...], density: float, subspace: str) -> tuple[int, int]:
    """(number of candidates, number chosen) for the coordinate subspaces."""
    total = {"columns": shape[1], "rows": shape[0]}.get(subspace, shape[0] * shape[1])
    return total, int(total * density)


def plan_state_bytes(shapes: list[tuple[int, ...]], elem: int, *, density: float, subspace: str,
                     block_order: str = "random", rank: int | None = None) -> int:
    """The most state bytes the projectable weights of these shapes hold under any selection (no tensors)."""
    if subspace == "block":
        sizes = [math.prod(s) for s in shapes]
        k = round(len(sizes) * density)
        if block_order == "random" or k == 0:
            worst = sum(sorted(sizes, reverse=True)[:k])
        else:  # walk the cyclic windows until the pointer comes back
            worst, start, seen = 0, None, set()
            while start not in seen:
                seen.add(start)
                idx, start = select_blocks(len(sizes), k, block_order, start, None)
                worst = max(worst, sum(sizes[i] for i in idx))
        return 2 * elem * worst
    total = 0
    for m, n in shapes:
        if subspace in ("svd", "random"):
            r = proj_rank((m, n), density, rank)
            total += elem * (2 * r * max(m, n) + r * min(m, n))  # moments of Qᵀg + the basis Q
        else:
            count, chosen = coord_count((m, n), density, subspace)
            inner = chosen * {"columns": m, "rows": n}.get(subspace, 1)
            total += 2 * elem * inner + 8 * chosen  # moments + int64 indices
    return total


def _generator(seed: int, *key: int) -> torch.Generator:
    h = int(seed) % (2**61 - 1)
    for k in key:
        h = (h * 1_000_003 + k + 1) % (2**61 - 1)
    return torch.Generator().manual_seed(h)


class FRUGAL(torch.optim.Optimizer):
    """AdamW on a state-full subspace of the projectable weights, a state-free rule on the rest of them.

    Param groups with `projectable: True` (2-D weights) are split; all other groups are plain AdamW.
    """

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, *, density: float = 0.25, update_gap: int = 200,
                 subspace: str = "block", block_order: str = "random", reset_statistics: bool = True,
                 inactive_update_rule: str = "sign_sgd", inactive_lr_scale: float = 1.0,
                 proj_params_lr_scale: float = 1.0, reference: str = "frugal", rank: int | None = None,
                 seed: int = 0):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, projectable=False,
                        density=density, update_gap=update_gap, subspace=subspace, block_order=block_order,
                        reset_statistics=reset_statistics, inactive_update_rule=inactive_update_rule,
                        inactive_lr_scale=inactive_lr_scale, proj_params_lr_scale=proj_params_lr_scale,
                        reference=reference, rank=rank, seed=seed)
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["reference"] not in REFERENCES:
                raise ValueError(f"FRUGAL: reference {group['reference']!r} is not one of {', '.join(REFERENCES)}")
            if not group["projectable"]:
                continue
            check_options(*(group[k] for k in ("density", "update_gap", "subspace", "block_order",
                                               "inactive_update_rule", "inactive_lr_scale", "proj_params_lr_scale",
                                               "reset_statistics", "reference", "rank")))
            if any(p.ndim != 2 for p in group["params"]):
                raise ValueError("FRUGAL: projectable parameters must be matrices (FSDP's flat shards are not; "
                                 "run FRUGAL with hardware.strategy=auto or ddp)")
            n = len(group["params"])
            if group["subspace"] == "block" and group["block_order"] == "mirror" and round(n * group["density"]) % 2:
                raise ValueError(f"FRUGAL: block_order=mirror needs an even number of active blocks "
                                 f"(round({group['density']} * {n}) is odd)")
            group.update(frugal_step=0, selections=0, active=[], next_block=None)

    # -- the two rules -----------------------------------------------------------------------
    @staticmethod
    def _fresh(state: dict, like: torch.Tensor | tuple[int, ...], p: torch.Tensor) -> None:
        shape = like.shape if isinstance(like, torch.Tensor) else like
        state["step"] = 0
        state["exp_avg"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
        state["exp_avg_sq"] = torch.zeros(shape, dtype=p.dtype, device=p.device)

    @staticmethod
    def _adam(grad: torch.Tensor, state: dict, group: dict, lr: float) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Advance the moments; lr·Adam(grad) = step_size · exp_avg / denom, in the reference's formula:
        torch.optim.AdamW's (√v/√(1−β2^t) + ε, step lr/(1−β1^t)) or galore-torch's (√v + ε, step
        lr·√(1−β2^t)/(1−β1^t))."""
        beta1, beta2 = group["betas"]
        state["step"] += 1
        t = state["step"]
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bc1, bc2 = 1 - beta1**t, 1 - beta2**t
        if group["reference"] == "galore-torch":
            return state["exp_avg"], state["exp_avg_sq"].sqrt().add_(group["eps"]), lr * math.sqrt(bc2) / bc1
        return state["exp_avg"], (state["exp_avg_sq"].sqrt() / bc2**0.5).add_(group["eps"]), lr / bc1

    @staticmethod
    def _decay(p: torch.Tensor, group: dict, after: bool) -> None:
        """Decoupled weight decay: before the update (FRUGAL code, torch AdamW, badam), or after it on the
        updated weight (galore-torch)."""
        wd = group["weight_decay"]
        if wd == 0 or after != (group["reference"] == "galore-torch"):
            return
        if after:
            p.add_(p, alpha=-group["lr"] * wd)
        else:
            p.mul_(1 - group["lr"] * wd)

    @staticmethod
    def _state_free(p: torch.Tensor, g: torch.Tensor, rule: str, lr: float) -> None:
        if rule == "sign_sgd":
            p.add_(g.sign(), alpha=-lr)
        elif rule == "sgd":
            p.add_(g, alpha=-lr)

    # -- step --------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        switched = False  # re-select first: under badam a switch restarts every parameter's Adam state
        for group in self.param_groups:
            if group["projectable"] and group["frugal_step"] % group["update_gap"] == 0:
                self._reselect(group)
                switched |= group["reference"] == "badam"
        if switched:
            for group in self.param_groups:
                if not group["projectable"] and group["reference"] == "badam":
                    for p in group["params"]:
                        self.state.pop(p, None)
        for group in self.param_groups:
            if group["projectable"]:
                self._step_projectable(group)
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                self._decay(p, group, after=False)
                state = self.state[p]
                if not state:
                    self._fresh(state, p, p)
                exp_avg, denom, step_size = self._adam(p.grad, state, group, group["lr"])
                p.addcdiv_(exp_avg, denom, value=-step_size)
                self._decay(p, group, after=True)
        return loss

    def _step_projectable(self, group: dict) -> None:
        group["frugal_step"] += 1
        lr_full = group["lr"] * group["proj_params_lr_scale"]
        lr_free = lr_full * group["inactive_lr_scale"]
        active = set(group["active"])
        frozen = group["reference"] == "badam"  # BAdam: outside the block neither updated nor decayed
        for i, p in enumerate(group["params"]):
            if p.grad is None or (frozen and group["subspace"] == "block" and i not in active):
                continue
            self._decay(p, group, after=False)
            self._update_matrix(group, i, p, p.grad, i in active, lr_full, lr_free)
            self._decay(p, group, after=True)

    def _update_matrix(self, group: dict, i: int, p: torch.Tensor, g: torch.Tensor, active: bool, lr_full: float,
                       lr_free: float) -> None:
        mode, rule, state = group["subspace"], group["inactive_update_rule"], self.state[p]
        if mode == "block":
            if active:
                exp_avg, denom, step_size = self._adam(g, state, group, lr_full)
                p.addcdiv_(exp_avg, denom, value=-step_size)
            else:
                self._state_free(p, g, rule, lr_free)
            return
        if "basis" not in state and "index" not in state:  # no gradient when the subspace was chosen
            self._select(group, i, p, group["selections"] - 1)
        if mode in ("svd", "random"):
            q = state["basis"]
            right = p.shape[0] >= p.shape[1]
            g_s = g @ q if right else q.T @ g
            exp_avg, denom, step_size = self._adam(g_s, state, group, lr_full)
            step = exp_avg / denom
            p.add_(step @ q.T if right else q @ step, alpha=-step_size)
            if rule != "no" and q.shape[1] < q.shape[0]:  # at full rank g_f is rounding noise: skip
                self._state_free(p, g - (g_s @ q.T if right else q @ g_s), rule, lr_free)
            return
        idx = state["index"]
        dim = 1 if mode == "columns" else 0
        flat_p, flat_g = (p.view(-1), g.reshape(-1)) if mode == "randk" else (p, g)
        g_s = flat_g.index_select(dim, idx)
        exp_avg, denom, step_size = self._adam(g_s, state, group, lr_full)
        if rule != "no" and idx.numel() < flat_g.shape[dim]:
            g_f = flat_g.clone()
            g_f.index_fill_(dim, idx, 0.0)
            self._state_free(flat_p, g_f, rule, lr_free)
        flat_p.index_add_(dim, idx, exp_avg / denom, alpha=-step_size)

    # -- subspace selection ------------------------------------------------------------------
    def _reselect(self, group: dict) -> None:
        sel = group["selections"]
        group["selections"] += 1
        params = group["params"]
        if group["subspace"] != "block":
            for i, p in enumerate(params):
                if p.grad is not None:
                    self._select(group, i, p, sel)
            return
        k = round(len(params) * group["density"])
        active, group["next_block"] = select_blocks(len(params), k, group["block_order"], group["next_block"],
                                                    _generator(group["seed"], sel))
        for i, p in enumerate(params):
            state = self.state[p]
            if i not in active:
                state.clear()  # state-free: nothing kept
            elif group["reset_statistics"] or not state:
                self._fresh(state, p, p)
        group["active"] = active

    def _select(self, group: dict, i: int, p: torch.Tensor, sel: int) -> None:
        state, mode, rho = self.state[p], group["subspace"], group["density"]
        m, n = p.shape
        if mode in ("svd", "random"):
            right = m >= n
            r = proj_rank((m, n), rho, group["rank"])
            if r == 0:
                q = torch.zeros(n if right else m, 0)
            elif mode == "svd":
                u, _, vh = torch.linalg.svd(p.grad.float(), full_matrices=False)
                q = vh[:r].T if right else u[:, :r]
            else:
                q = torch.linalg.qr(torch.randn(n if right else m, r, generator=_generator(group["seed"], sel, i))).Q
            state["basis"] = q.to(device=p.device, dtype=p.dtype).contiguous()
            low = (m, r) if right else (r, n)
        else:
            total, chosen = coord_count((m, n), rho, mode)
            idx = torch.randperm(total, generator=_generator(group["seed"], sel, i))[:chosen]
            state["index"] = idx.sort().values.to(p.device)
            low = {"columns": (m, chosen), "rows": (chosen, n)}.get(mode, (chosen,))
        if group["reset_statistics"] or "exp_avg" not in state:
            self._fresh(state, low, p)

    def load_state_dict(self, state_dict: dict) -> None:
        # torch casts every state tensor to its parameter's dtype; coordinate indices must stay int64
        index = {k: s["index"] for k, s in state_dict["state"].items() if "index" in s}
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # checkpoints from before `reference` and `rank` existed
            group.setdefault("reference", "frugal")
            group.setdefault("rank", None)
        params = [p for g in self.param_groups for p in g["params"]]
        for k, idx in index.items():
            self.state[params[k]]["index"] = idx.to(params[k].device)

    # -- accounting --------------------------------------------------------------------------
    def state_bytes(self) -> int:
        return sum(v.numel() * v.element_size() for s in self.state.values() for v in s.values()
                   if isinstance(v, torch.Tensor))

    def active_names(self) -> list[str]:
        """Names of the matrices whose state-full block is active (block mode; groups built with `names`)."""
        return [g["names"][i] for g in self.param_groups if g["projectable"] and "names" in g for i in g["active"]]


class Frugal(Method):
    """FRUGAL as a method: the projectable weights split by `FRUGAL`, under the runner's warmup + cosine lr.

    One weight decay for every parameter (the FRUGAL code's and galore-torch's groups; not the AdamW
    baseline's 1-D exemption); under reference=badam parameters named `*bias*` get none (badam's rule).
    `reference` (frugal | galore-torch | badam) and `rank` as in the module docstring.
    """

    supports_fsdp = False  # subspaces are rows/columns/blocks of whole matrices

    def __init__(self, name: str = "frugal", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 density: float = 0.25, update_gap: int = 200, subspace: str = "block", block_order: str = "random",
                 reset_statistics: bool = True, inactive_update_rule: str = "sign_sgd",
                 inactive_lr_scale: float = 1.0, proj_params_lr_scale: float = 1.0, reference: str = "frugal",
                 rank: int | None = None, seed: int | None = None):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        self.frugal = dict(density=float(density), update_gap=int(update_gap), subspace=subspace,
                           block_order=block_order, reset_statistics=bool(reset_statistics),
                           inactive_update_rule=inactive_update_rule, inactive_lr_scale=float(inactive_lr_scale),
                           proj_params_lr_scale=float(proj_params_lr_scale), reference=reference,
                           rank=rank)
        check_options(**self.frugal)
        self.seed = seed

    def param_groups(self, model: nn.Module) -> list[dict]:
        proj = projectable_parameters(model)
        ids = {id(p) for _, p in proj}
        rest = [(n, p) for n, p in model.named_parameters() if p.requires_grad and id(p) not in ids]
        exempt = self.frugal["reference"] == "badam"  # badam: λ = 0 for names with "bias", else every parameter
        groups = [{"params": [p for n, p in rest if not (exempt and "bias" in n)], "weight_decay": self.weight_decay},
                  {"params": [p for n, p in rest if exempt and "bias" in n], "weight_decay": 0.0},
                  {"params": [p for _, p in proj], "names": [n for n, _ in proj], "projectable": True,
                   "weight_decay": self.weight_decay}]
        return [g for g in groups if g["params"]]

    def build_optimizer(self, model: nn.Module) -> FRUGAL:
        seed = torch.initial_seed() if self.seed is None else self.seed  # the run's seed (seed_everything)
        return FRUGAL(self.param_groups(model), lr=self.lr, betas=self.betas, eps=self.eps,
                      weight_decay=self.weight_decay, seed=seed, **self.frugal)

    def optimizer_state_bytes(self, model: nn.Module) -> int:
        """The most state FRUGAL holds for `model` (shapes only: works on meta tensors)."""
        proj = projectable_parameters(model)
        ids = {id(p) for _, p in proj}
        rest = sum(2 * p.numel() * p.element_size() for p in model.parameters() if p.requires_grad and id(p) not in ids)
        if not proj:
            return rest
        f = self.frugal
        return rest + plan_state_bytes([tuple(p.shape) for _, p in proj], proj[0][1].element_size(),
                                       density=f["density"], subspace=f["subspace"], block_order=f["block_order"],
                                       rank=f["rank"])
