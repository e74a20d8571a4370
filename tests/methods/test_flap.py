"""FLAP's properties (methods/compression/flap.py): the fluctuation statistics and scores, bias compensation
keeps every pruned projection's mean output on the calibration data, the adaptive structure keeps (1 − p) of
the parameters to within a head, and the physical removal is a smaller model that computes what the masked
dense model computes (forward, KV-cache generation, torch.save round trip). mag_sp shares the removal code."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from methods.compression.flap import (
    ConstantAttention,
    Flap,
    InputMoments,
    MagnitudeStructuredPruning,
    PruningPlan,
    _keep_columns,
    apply_plan,
    calibration_moments,
    channel_scores,
    plan_pruning,
)
from tests.helpers import tiny_llama

VOCAB, HIDDEN, HEADS, INTER = 96, 32, 4, 64
HEAD_DIM = HIDDEN // HEADS



def llama(seed: int = 0, kv_heads: int = HEADS):  # a transformers LlamaForCausalLM
    # init_std 0.2: O(1) activations, so that 1e-5 tolerances mean something
    return tiny_llama(VOCAB, hidden=HIDDEN, intermediate=INTER, heads=HEADS, kv_heads=kv_heads, max_pos=64,
                      init_std=0.2, seed=seed).eval()


class Blocks:
    """The part of TokenData the method reads: seeded (n, T+1) training blocks."""

    def __init__(self, n: int = 24, T: int = 16):
        self._blocks = torch.randint(0, VOCAB, (n, T + 1), generator=torch.Generator().manual_seed(1))

    def blocks(self, split: str) -> torch.Tensor:
        return self._blocks


def projection_inputs(model, blocks: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(o_proj input, down_proj input) of every layer on `blocks`, as (N, C) float64, recorded independently."""
    rec = [([], []) for _ in model.model.layers]
    hooks = []
    for layer, (a, m) in zip(model.model.layers, rec):
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(lambda _, args, a=a: a.append(args[0].flatten(0, -2))))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(lambda _, args, m=m: m.append(args[0].flatten(0, -2))))
    with torch.no_grad():
        model(input_ids=blocks)
    for h in hooks:
        h.remove()
    return [(torch.cat(a).double(), torch.cat(m).double()) for a, m in rec]


def linear_weights(model) -> int:
    """Attention and MLP projection weights (what the pruning ratio is about)."""
    return sum(lin.weight.numel() for layer in model.model.layers for lin in layer.modules()
               if isinstance(lin, nn.Linear))


# -- statistics and scores ---------------------------------------------------------------------
def test_moments_match_torch_mean_and_unbiased_variance():
    x = torch.randn(3, 50, 7, dtype=torch.float64) * torch.arange(1, 8) + 100  # large offset: a stability check
    m = InputMoments()
    for chunk in x:
        m.add(chunk)
    flat = x.flatten(0, 1)
    torch.testing.assert_close(m.mean, flat.mean(0))
    torch.testing.assert_close(m.var, flat.var(0))
    torch.testing.assert_close(m.mean_sq, flat.pow(2).mean(0))


def test_constant_channel_scores_zero_and_pruning_it_changes_nothing():
    torch.manual_seed(0)
    lin = nn.Linear(8, 5, bias=False)
    x = torch.randn(200, 8)
    x[:, 3] = 0.7  # a channel that never fluctuates
    m = InputMoments()
    m.add(x[:120])
    m.add(x[120:])
    for metric in ("WIFV", "IFV"):
        s = channel_scores(metric, lin.weight, m)
        assert s[3] == 0 and (s[torch.arange(8) != 3] > 0).all(), metric
    before = lin(x)
    _keep_columns(lin, torch.tensor([0, 1, 2, 4, 5, 6, 7]), m.mean)  # drop channel 3, compensate
    torch.testing.assert_close(lin(x[:, [0, 1, 2, 4, 5, 6, 7]]), before, atol=1e-6, rtol=0)


# -- bias compensation -------------------------------------------------------------------------
@pytest.mark.parametrize("ratio,structure", [(0.2, "AL-AM"), (0.5, "AL-AM"), (0.5, "UL-UM")])
def test_bias_compensation_keeps_each_projections_mean_output(ratio, structure):
    dense, data = llama(), Blocks()
    method = Flap(pruning_ratio=ratio, structure=structure, calibration_blocks=16, calibration_batch_size=5)
    calib = method.calibration_data(data)
    inputs = projection_inputs(dense, calib)
    pruned = method.compress(copy.deepcopy(dense), data)
    plan = method.plan
    assert any(len(c) < INTER for c in plan.kept_channels)
    assert ratio < 0.5 or any(len(h) < HEADS for h in plan.kept_heads)
    for i, (layer0, layer) in enumerate(zip(dense.model.layers, pruned.model.layers)):
        heads = plan.kept_heads[i]
        cols = (heads[:, None] * HEAD_DIM + torch.arange(HEAD_DIM)).flatten()
        for x, lin0, lin, keep in ((inputs[i][0], layer0.self_attn.o_proj, layer.self_attn.o_proj, cols),
                                   (inputs[i][1], layer0.mlp.down_proj, layer.mlp.down_proj, plan.kept_channels[i])):
            want = (x @ lin0.weight.double().T).mean(0)
            got = (x[:, keep] @ lin.weight.double().T + lin.bias.double()).mean(0)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
            if len(keep) < lin0.in_features:  # the bias is what does it
                uncompensated = (x[:, keep] @ lin.weight.double().T).mean(0)
                assert (uncompensated - want).abs().max() > 1e-3


# -- structure and parameter budget --------------------------------------------------------------
@pytest.mark.parametrize("ratio", [0.2, 0.5])
@pytest.mark.parametrize("make", [lambda p: Flap(pruning_ratio=p, calibration_blocks=16),
                                  lambda p: Flap(pruning_ratio=p, structure="UL-UM", metric="WIFN", calibration_blocks=16),
                                  lambda p: MagnitudeStructuredPruning(pruning_ratio=p)],
                         ids=["flap", "flap-UL-UM-WIFN", "mag_sp"])
def test_retained_parameters_within_one_head_of_one_minus_p(ratio, make):
    dense = llama()
    before = linear_weights(dense)
    pruned = make(ratio).compress(copy.deepcopy(dense), Blocks())
    after = linear_weights(pruned)
    one_head = 4 * HEAD_DIM * HIDDEN
    assert abs(after - (1 - ratio) * before) <= one_head
    assert after < before


def test_adaptive_structure_takes_more_from_the_layer_with_unimportant_channels():
    dense = llama()
    with torch.no_grad():  # half of layer 1's MLP channels barely reach the output: WIFV ~ 1e-6 of the rest
        dense.model.layers[1].mlp.down_proj.weight[:, : INTER // 2] *= 1e-3
    method = Flap(pruning_ratio=0.3, calibration_blocks=16)
    method.compress(copy.deepcopy(dense), Blocks())
    kept0, kept1 = method.plan.kept_channels
    assert not (kept1 < INTER // 2).any()  # every weak channel is gone
    assert len(kept1) < len(kept0)  # layer 1 gives up more than layer 0
    uniform = MagnitudeStructuredPruning(pruning_ratio=0.3)  # the uniform baseline takes the same from each
    uniform.compress(copy.deepcopy(dense), Blocks())
    assert len({len(c) for c in uniform.plan.kept_channels}) == 1 and len({len(h) for h in uniform.plan.kept_heads}) == 1


# -- physical removal --------------------------------------------------------------------------
def masked_copy(dense, plan: PruningPlan):
    """The dense model with the pruned columns of o_proj / down_proj zeroed and the compensation bias added."""
    model = copy.deepcopy(dense)
    for i, layer in enumerate(model.model.layers):
        cols = (plan.kept_heads[i][:, None] * HEAD_DIM + torch.arange(HEAD_DIM)).flatten()
        for lin, keep, mean in ((layer.self_attn.o_proj, cols, plan.attn_mean_inputs),
                                (layer.mlp.down_proj, plan.kept_channels[i], plan.mlp_mean_inputs)):
            drop = torch.ones(lin.in_features, dtype=torch.bool)
            drop[keep] = False
            with torch.no_grad():
                if mean is not None:
                    lin.bias = nn.Parameter((lin.weight.double()[:, drop] @ mean[i][drop]).float())
                lin.weight[:, drop] = 0
    return model


def plan_with_an_empty_layer(dense) -> PruningPlan:
    """Layer 0 loses every head, layer 1 every MLP channel (the cases a plain Llama cannot express)."""
    moments = calibration_moments(dense, Blocks().blocks("train")[:, :-1])
    return PruningPlan(kept_heads=[torch.tensor([], dtype=torch.long), torch.tensor([1, 3])],
                       kept_channels=[torch.arange(0, INTER, 2), torch.tensor([], dtype=torch.long)],
                       attn_mean_inputs=[a.mean for a, _ in moments], mlp_mean_inputs=[m.mean for _, m in moments])


@pytest.mark.parametrize("which", ["flap", "mag_sp", "empty layers"])
def test_pruned_model_is_smaller_and_computes_the_masked_model(which):
    dense = llama()
    if which == "empty layers":
        plan = plan_with_an_empty_layer(dense)
        pruned = apply_plan(copy.deepcopy(dense), plan)
    else:
        method = Flap(pruning_ratio=0.5, calibration_blocks=16) if which == "flap" else MagnitudeStructuredPruning(pruning_ratio=0.5)
        pruned = method.compress(copy.deepcopy(dense), Blocks())
        plan = method.plan
    for i, layer in enumerate(pruned.model.layers):
        h, c = len(plan.kept_heads[i]), len(plan.kept_channels[i])
        if h == 0:
            assert isinstance(layer.self_attn, ConstantAttention)
        else:
            a = layer.self_attn
            assert a.q_proj.weight.shape == a.k_proj.weight.shape == a.v_proj.weight.shape == (h * HEAD_DIM, HIDDEN)
            assert a.o_proj.weight.shape == (HIDDEN, h * HEAD_DIM)
        assert layer.mlp.gate_proj.weight.shape == layer.mlp.up_proj.weight.shape == (c, HIDDEN)
        assert layer.mlp.down_proj.weight.shape == (HIDDEN, c)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in dense.parameters())
    ids = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(pruned(input_ids=ids).logits, masked_copy(dense, plan)(input_ids=ids).logits,
                                   atol=1e-5, rtol=1e-5)


def test_generation_with_a_kv_cache_and_a_torch_save_round_trip():
    dense = llama()
    pruned = apply_plan(copy.deepcopy(dense), plan_with_an_empty_layer(dense))  # the hardest case: layer 0 has no head
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    kw = dict(max_new_tokens=8, do_sample=False, attention_mask=mask, pad_token_id=0)
    cached = pruned.generate(ids, use_cache=True, **kw)
    assert torch.equal(cached, pruned.generate(ids, use_cache=False, **kw))
    with torch.no_grad():  # one token at a time through the cache == the whole sequence at once
        full = pruned(input_ids=cached).logits
        out = pruned(input_ids=cached[:, :4], use_cache=True)
        steps = [out.logits]
        for t in range(4, cached.shape[1]):
            out = pruned(input_ids=cached[:, t:t + 1], cache=out.past_key_values, use_cache=True)
            steps.append(out.logits)
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)
    buf = io.BytesIO()
    torch.save(pruned, buf)  # the runner saves compressed models whole: shapes differ from the config
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=cached).logits, full)


# -- options -----------------------------------------------------------------------------------
def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="method.metric"):
        Flap(metric="L2")
    with pytest.raises(ValueError, match="method.structure"):
        Flap(structure="AL-MM")
    with pytest.raises(ValueError, match="method.pruning_ratio"):
        Flap(pruning_ratio=1.0)
    with pytest.raises(ValueError, match="method.calibration_blocks"):
        Flap(calibration_blocks=0)
    with pytest.raises(ValueError, match="multi-head attention"):
        plan_pruning(llama(kv_heads=2), 0.2, metric="magnitude", bias_compensation=False)

