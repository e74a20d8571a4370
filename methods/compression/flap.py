"""Fluctuation-based Adaptive Structured Pruning for Large Language Models
(An, Zhao, Yu, Tang, Wang; AAAI 2024; arXiv:2312.11983). Baseline: magnitude structured pruning (mag_sp).

Retraining-free removal of whole attention heads and MLP channels. On calibration inputs of the dense
model, for the input X ∈ R^{N×C} of every output projection W ∈ R^{d×C} (o_proj: C = heads·head_dim;
down_proj: C = intermediate size):

    x̄_j = (1/N) Σ_n X_nj                    V_j = 1/(N−1) Σ_n (X_nj − x̄_j)²        (the fluctuation)
    WIFV   S_j = V_j · ‖W_{:,j}‖²₂           (default; IFV: V_j;  WIFN: mean_i |W_ij| · sqrt((1/N) Σ_n X_nj²))
    attention: S_j ← S_j²                                                          (as the official code)
    standardize per layer and module:  Ŝ = (S − mean S) / std S;  a head scores the mean Ŝ of its channels

    AL-AM (adaptive across layers and modules, the default): rank every head and every MLP channel of the
        model by Ŝ; a head weighs w_h = 4·head_dim/3 channels (its q, k, v rows and o columns hold 4·head_dim·d
        parameters, a channel's gate, up rows and down column 3·d); keep the k best, k minimizing
        |Σ_{i<k} w_(i) − (1 − p)·Σ_all w|  -> the kept parameters are within half a head of (1 − p).
    UL-UM (uniform): every layer drops its round(p·H) lowest heads, then the lowest MLP channels that bring
        the layer nearest to keeping (1 − p) of its parameters.

    bias compensation: b ← b + W_{:,pruned} · x̄_pruned on o_proj / down_proj, so the mean output over the
        calibration data is unchanged (Llama has no bias there: one is added, as the official code does);
    removal: drop the pruned columns of o_proj / down_proj and the matching rows of q/k/v_proj and
        gate/up_proj: a smaller dense model. Heads per layer may differ (Llama's attention infers its head
        count from q_proj's width); a layer left with no head keeps only its bias (`ConstantAttention`).

mag_sp, the paper's baseline (official `prune_magnitude_sp`): head score Σ_{j∈head} ‖W^o_{:,j}‖₂, channel
score ‖W^down_{:,j}‖₂, uniform structure, no calibration data and no bias compensation. Here it keeps the
same fraction of parameters as FLAP (the official code removes int(p·H) heads and int(p·I) channels per
layer, which keeps more than 1 − p of them).

Defaults from the paper and its code: p = 0.2 (reported at 20%, 30%, 50%), WIFV, AL-AM, bias compensation,
1024 calibration samples of 128 tokens (WikiText2 there; seeded training blocks here), seed 0.
Needs multi-head attention (as many key/value heads as query heads), as the official code does.

Where FLAP here departs from the official code (lib/layerwrapper.py `BiasGPT`, lib/prune.py `prune_flap`):
  fluctuation   V_j above is the exact sample variance over every calibration token (fp64 shifted sums).
                The official code keeps a running estimate, one calibration sample per update: the first
                update contributes nothing (the estimate is set to 0 there); every later one, with m samples
                seen before and b in the update, rescales it by (m − 1)/(m + b − 1) and adds
                Σ_tokens (x − x̄)(x − x̄_old) / (m + b), x̄ the running mean after the update and x̄_old meant
                as the one before but, the mean being updated in place, the same tensor as x̄. It counts
                sequences, not tokens (V comes out ~ seq_len times larger, a factor the per-module
                standardization removes). Close to the sample variance when the inputs are stationary over
                the calibration set, never equal to it.
  AL-AM cut     here the k best items (heads and channels) are kept whose summed weight is nearest to
                (1 − p) of the total. The official code finds the position i of the sorted scores whose
                inclusive cumulative weight is nearest, and keeps the scores strictly above the i-th: the
                i items before it, one item (a head or a channel) fewer than here, and any item tied with
                the i-th score goes too. Its head weight is 512/3 channels (4·head_dim/3 at head_dim 128);
                here 4·head_dim/3 for any head_dim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from methods.base import Method

METRICS = ("WIFV", "IFV", "WIFN", "magnitude")
STRUCTURES = ("AL-AM", "UL-UM")


# ---------------------------------------------------------------------------------------------- statistics
class InputMoments:
    """Per-channel mean and sample variance of a stream of (N, C) inputs, in float64.

    Sums of (x − K) and (x − K)² around the first row K (the shifted-data algorithm): stable, and a channel
    whose input never changes gets a variance of exactly 0."""

    def __init__(self) -> None:
        self.count = 0
        self.shift: torch.Tensor | None = None
        self.sum = self.sum_sq = None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().flatten(0, -2).double()
        if self.shift is None:
            self.shift = x[0].clone()
            self.sum = torch.zeros_like(self.shift)
            self.sum_sq = torch.zeros_like(self.shift)
        d = x - self.shift
        self.sum += d.sum(0)
        self.sum_sq += (d * d).sum(0)
        self.count += len(x)

    def _centered_sum_sq(self) -> torch.Tensor:
        return (self.sum_sq - self.sum * self.sum / self.count).clamp_min(0)

    @property
    def mean(self) -> torch.Tensor:
        return self.shift + self.sum / self.count

    @property
    def var(self) -> torch.Tensor:
        return self._centered_sum_sq() / max(1, self.count - 1)

    @property
    def mean_sq(self) -> torch.Tensor:
        return self.mean ** 2 + self._centered_sum_sq() / self.count


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.get_decoder().layers


def calibration_moments(model: nn.Module, blocks: torch.Tensor, batch_size: int = 16
                        ) -> list[tuple[InputMoments, InputMoments]]:
    """(o_proj input, down_proj input) moments of every decoder layer of the dense model on `blocks` (n, T)."""
    layers = decoder_layers(model)
    moments = [(InputMoments(), InputMoments()) for _ in layers]
    hooks = []
    for layer, (attn_m, mlp_m) in zip(layers, moments):
        if not isinstance(layer.self_attn, ConstantAttention):
            hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(lambda _m, args, s=attn_m: s.add(args[0])))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(lambda _m, args, s=mlp_m: s.add(args[0])))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(blocks), batch_size):
                model.get_decoder()(input_ids=blocks[i:i + batch_size].to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return moments


def channel_scores(metric: str, weight: torch.Tensor, moments: InputMoments | None) -> torch.Tensor:
    """Importance of each input channel j of an output projection W (d × C), in float64."""
    w = weight.detach().double()
    if metric == "magnitude":
        return w.norm(dim=0)
    if moments is None:
        raise ValueError(f"metric {metric} needs calibration statistics")
    if metric == "IFV":
        return moments.var.to(w.device)
    if metric == "WIFV":
        return moments.var.to(w.device) * w.pow(2).sum(0)
    if metric == "WIFN":
        return w.abs().mean(0) * moments.mean_sq.to(w.device).sqrt()
    raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")


def standardize(s: torch.Tensor) -> torch.Tensor:
    """(s − mean) / std (unbiased, as torch.std); a constant vector gives zeros."""
    if s.numel() < 2:
        return torch.zeros_like(s)
    return (s - s.mean()) / s.std().clamp_min(torch.finfo(s.dtype).tiny)


# ---------------------------------------------------------------------------------------------- the plan
@dataclass
class PruningPlan:
    """What to keep in every decoder layer, and the mean inputs for the bias compensation (None: no compensation)."""

    kept_heads: list[torch.Tensor]
    kept_channels: list[torch.Tensor]
    attn_mean_inputs: list[torch.Tensor] | None = None
    mlp_mean_inputs: list[torch.Tensor] | None = None
    stats: dict[str, float] = field(default_factory=dict)


def layer_sizes(model: nn.Module) -> tuple[list[int], list[int], int]:
    """(heads per layer, MLP channels per layer, head_dim); checks for multi-head attention."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    heads, channels = [], []
    for i, layer in enumerate(decoder_layers(model)):
        attn = layer.self_attn
        if isinstance(attn, ConstantAttention):
            heads.append(0)
        else:
            widths = (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features)
            if len(set(widths)) > 1:
                raise ValueError(f"FLAP needs multi-head attention (as many key/value heads as query heads); "
                                 f"layer {i} has q/k/v widths {widths}")
            heads.append(attn.o_proj.in_features // head_dim)
        channels.append(layer.mlp.down_proj.in_features)
    return heads, channels, head_dim


def head_weight(head_dim: int) -> float:
    """Parameters of one head (q, k, v rows, o columns: 4·head_dim·d) in MLP channels (3·d)."""
    return 4 * head_dim / 3


def select_adaptive(head_scores: list[torch.Tensor], channel_scores_: list[torch.Tensor], w_head: float,
                    ratio: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """AL-AM: keep the best heads and channels of the whole model, ranked together, whose summed weight is
    nearest to (1 − ratio) of the total. Ties: the earlier index (heads before channels, layer order)."""
    scores = torch.cat([*head_scores, *channel_scores_])
    weights = torch.cat([torch.full((sum(len(h) for h in head_scores),), w_head, dtype=torch.float64),
                         torch.ones(sum(len(c) for c in channel_scores_), dtype=torch.float64)])
    order = torch.sort(scores, descending=True, stable=True).indices
    kept_weight = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(weights[order], 0)])
    n_keep = int(torch.argmin((kept_weight - (1 - ratio) * weights.sum()).abs()))
    keep = torch.zeros(len(scores), dtype=torch.bool)
    keep[order[:n_keep]] = True
    sizes = [len(h) for h in head_scores] + [len(c) for c in channel_scores_]
    parts = keep.split(sizes)
    n = len(head_scores)
    return ([p.nonzero().flatten() for p in parts[:n]], [p.nonzero().flatten() for p in parts[n:]])


def top_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The indices of the k highest scores (ties: the earlier index), in increasing order."""
    return torch.sort(torch.sort(scores, descending=True, stable=True).indices[:k]).values


def select_uniform(head_scores: list[torch.Tensor], channel_scores_: list[torch.Tensor], w_head: float,
                   ratio: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """UL-UM: every layer drops round(p·H) heads and the channels that bring it nearest to keeping (1 − p)."""
    kept_heads, kept_channels = [], []
    for hs, cs in zip(head_scores, channel_scores_):
        n_heads, n_channels = len(hs), len(cs)
        drop_heads = min(n_heads, round(ratio * n_heads))
        drop_channels = round(ratio * (n_heads * w_head + n_channels) - drop_heads * w_head)
        drop_channels = max(0, min(n_channels, drop_channels))
        kept_heads.append(top_indices(hs, n_heads - drop_heads))
        kept_channels.append(top_indices(cs, n_channels - drop_channels))
    return kept_heads, kept_channels


def plan_pruning(model: nn.Module, ratio: float, metric: str = "WIFV", structure: str = "AL-AM",
                 moments: list[tuple[InputMoments, InputMoments]] | None = None,
                 bias_compensation: bool = True) -> PruningPlan:
    """Score every head and MLP channel and choose what to keep (the model is not changed)."""
    heads, channels, head_dim = layer_sizes(model)
    head_scores, chan_scores = [], []
    for i, layer in enumerate(decoder_layers(model)):
        attn_m, mlp_m = moments[i] if moments is not None else (None, None)
        if heads[i]:
            s = channel_scores(metric, layer.self_attn.o_proj.weight, attn_m).cpu()
            if metric != "magnitude":
                s = s ** 2
            head_scores.append(standardize(s).reshape(heads[i], head_dim).mean(1))
        else:
            head_scores.append(torch.zeros(0, dtype=torch.float64))
        chan_scores.append(standardize(channel_scores(metric, layer.mlp.down_proj.weight, mlp_m).cpu()))
    select = select_adaptive if structure == "AL-AM" else select_uniform
    kept_heads, kept_channels = select(head_scores, chan_scores, head_weight(head_dim), ratio)
    plan = PruningPlan(kept_heads, kept_channels)
    if bias_compensation:
        if moments is None:
            raise ValueError("bias compensation needs calibration statistics")
        plan.attn_mean_inputs = [a.mean if a.count else None for a, _ in moments]
        plan.mlp_mean_inputs = [m.mean for _, m in moments]
    before = sum(h * head_weight(head_dim) + c for h, c in zip(heads, channels))  # in MLP channels (3·d parameters)
    after = sum(len(h) * head_weight(head_dim) + len(c) for h, c in zip(kept_heads, kept_channels))
    plan.stats = {"heads_kept": float(sum(len(h) for h in kept_heads)), "heads_before": float(sum(heads)),
                  "mlp_channels_kept": float(sum(len(c) for c in kept_channels)),
                  "mlp_channels_before": float(sum(channels)), "kept_fraction": after / before}
    return plan


# ---------------------------------------------------------------------------------------------- removal
class ConstantAttention(nn.Module):
    """An attention block whose heads were all pruned: its output is its bias (the compensated mean output).

    With a KV cache it stores a (batch, 1, tokens, 1) zero placeholder, so that the cache still counts the
    tokens seen at this layer (the model reads the sequence length from layer 0's cache)."""

    def __init__(self, bias: torch.Tensor, layer_idx: int):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone())
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args, cache=None, past_key_values=None, **kwargs):
        cache = cache if cache is not None else past_key_values
        if cache is not None:
            placeholder = hidden_states.new_zeros(hidden_states.shape[0], 1, hidden_states.shape[1], 1)
            cache.update(placeholder, placeholder, self.layer_idx)
        out = self.bias.to(hidden_states.dtype).expand(*hidden_states.shape[:-1], -1)
        return out, None


def _keep_rows(lin: nn.Linear, idx: torch.Tensor) -> None:
    idx = idx.to(lin.weight.device)
    lin.weight = nn.Parameter(lin.weight.detach()[idx].clone(), requires_grad=lin.weight.requires_grad)
    if lin.bias is not None:
        lin.bias = nn.Parameter(lin.bias.detach()[idx].clone(), requires_grad=lin.bias.requires_grad)
    lin.out_features = len(idx)


def _keep_columns(lin: nn.Linear, idx: torch.Tensor, mean_input: torch.Tensor | None) -> None:
    """Keep the input columns `idx`; with `mean_input`, add W_{:,pruned}·x̄_pruned to the bias (adding one)."""
    w = lin.weight.detach()
    if mean_input is not None:
        pruned = torch.ones(w.shape[1], dtype=torch.bool)
        pruned[idx.cpu()] = False
        pruned = pruned.to(w.device)
        shift = w.double()[:, pruned] @ mean_input.to(w.device, torch.float64)[pruned]
        bias = (lin.bias.detach().double() if lin.bias is not None else torch.zeros_like(shift)) + shift
        lin.bias = nn.Parameter(bias.to(w.dtype), requires_grad=lin.weight.requires_grad)
    lin.weight = nn.Parameter(w[:, idx.to(w.device)].clone(), requires_grad=lin.weight.requires_grad)
    lin.in_features = len(idx)


def apply_plan(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """Physically remove the heads and channels `plan` drops, compensating the mean output where it says so."""
    layers = decoder_layers(model)
    for i, layer in enumerate(layers):
        attn, mlp = layer.self_attn, layer.mlp
        if not isinstance(attn, ConstantAttention):
            heads = plan.kept_heads[i].to(torch.long)
            cols = (heads[:, None] * attn.head_dim + torch.arange(attn.head_dim)).flatten()
            for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
                _keep_rows(proj, cols)
            _keep_columns(attn.o_proj, cols, plan.attn_mean_inputs[i] if plan.attn_mean_inputs else None)
            attn.num_heads = len(heads)  # informational: Llama's attention reads the head count from q_proj
            if len(heads) == 0:
                o = attn.o_proj
                bias = o.bias.detach() if o.bias is not None else o.weight.new_zeros(o.out_features)
                layer.self_attn = ConstantAttention(bias, attn.layer_idx)
        channels = plan.kept_channels[i].to(torch.long)
        _keep_rows(mlp.gate_proj, channels)
        _keep_rows(mlp.up_proj, channels)
        _keep_columns(mlp.down_proj, channels, plan.mlp_mean_inputs[i] if plan.mlp_mean_inputs else None)
        mlp.intermediate_size = len(channels)
    # the per-layer shapes, for whoever reads the config (the modules are the truth; save with torch.save)
    model.config.pruned_num_heads = [len(h) for h in plan.kept_heads]
    model.config.pruned_intermediate_sizes = [len(c) for c in plan.kept_channels]
    return model


# ---------------------------------------------------------------------------------------------- the methods
class Flap(Method):
    """FLAP: fluctuation scores on calibration data, adaptive structure, bias compensation, physical removal."""

    needs_task = frozenset({"tokens"})
    needs_model = frozenset({"decoder-layers"})

    def __init__(self, name: str = "flap", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 pruning_ratio: float = 0.2, metric: str = "WIFV", structure: str = "AL-AM",
                 bias_compensation: bool = True, calibration_blocks: int = 1024, calibration_batch_size: int = 16,
                 seed: int = 0):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        if not 0.0 <= float(pruning_ratio) < 1.0:
            raise ValueError(f"method.pruning_ratio: {pruning_ratio} is not in [0, 1)")
        if metric not in METRICS:
            raise ValueError(f"method.metric: {metric!r} is not one of {', '.join(METRICS)}")
        if structure not in STRUCTURES:
            raise ValueError(f"method.structure: {structure!r} is not one of {', '.join(STRUCTURES)}")
        needs_data = metric != "magnitude" or bias_compensation
        if needs_data and int(calibration_blocks) < 2:
            raise ValueError(f"method.calibration_blocks: {calibration_blocks}; metric {metric} / bias compensation "
                             "need >= 2 calibration blocks")
        if int(calibration_batch_size) < 1:
            raise ValueError(f"method.calibration_batch_size: {calibration_batch_size} must be >= 1")
        self.pruning_ratio = float(pruning_ratio)
        self.metric = metric
        self.structure = structure
        self.bias_compensation = bool(bias_compensation)
        self.calibration_blocks = int(calibration_blocks) if needs_data else 0
        self.calibration_batch_size = int(calibration_batch_size)
        self.seed = int(seed)
        self.plan: PruningPlan | None = None

    @property
    def trains(self) -> bool:
        return False

    def calibration_data(self, data: Any) -> torch.Tensor:
        """`calibration_blocks` training blocks (n, seq_len) drawn without replacement with `seed`."""
        blocks = data.blocks("train")
        idx = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(self.seed))
        return blocks[idx[: self.calibration_blocks], :-1]

    def compress(self, model: nn.Module, data: Any) -> nn.Module:
        moments = None
        if self.calibration_blocks:
            moments = calibration_moments(model, self.calibration_data(data), self.calibration_batch_size)
        self.plan = plan_pruning(model, self.pruning_ratio, self.metric, self.structure, moments,
                                 self.bias_compensation)
        return apply_plan(model, self.plan)

    def evaluate(self, model: nn.Module, data: Any) -> dict[str, float]:
        return dict(self.plan.stats) if self.plan is not None else {}


class MagnitudeStructuredPruning(Flap):
    """mag_sp: uniform structured pruning by weight magnitude, no calibration data, no bias compensation."""

    def __init__(self, name: str = "mag_sp", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 pruning_ratio: float = 0.2):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio, pruning_ratio=pruning_ratio,
                         metric="magnitude", structure="UL-UM", bias_compensation=False, calibration_blocks=0)
