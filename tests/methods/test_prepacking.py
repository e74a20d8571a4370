"""Prepacking's properties (methods/inference/prepacking.py): packing into bins never overflows and FFD is
optimal on a known instance; the packed prefill gives every prompt exactly the cache and the next-token
logits of padded batching; greedy generations are identical. On a random tiny Llama (fp32, GQA)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from methods.inference.prepacking import (
    Prepacking,
    block_diagonal_causal_mask,
    first_fit_decreasing,
    left_pad,
    pack_bins,
    pack_prompts,
    padded_generate,
    padded_slots,
    prefill_packed,
    prepacked_generate,
    unpack_cache,
)
from tests.helpers import tiny_llama

VOCAB = 256



@pytest.fixture(scope="module")
def model():
    return tiny_llama(VOCAB, hidden=64, intermediate=128, kv_heads=2, max_pos=64, attn="sdpa").eval()


def prompts_of(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, VOCAB, (n,), generator=g) for n in lengths]


# The catalog's smoke setting: 16 prompts with lengths 3..60, skewed towards short ones.
LENGTHS = [60, 3, 5, 7, 12, 4, 33, 9, 18, 6, 41, 3, 25, 8, 14, 52]


# -- bin packing ---------------------------------------------------------------------------------
def first_fit(sizes, capacity):
    """Plain first fit in the given order: what FFD improves on by sorting first."""
    bins, free = [], []
    for i, s in enumerate(sizes):
        for b, room in enumerate(free):
            if s <= room:
                bins[b].append(i)
                free[b] -= s
                break
        else:
            bins.append([i])
            free.append(capacity - s)
    return bins


def test_ffd_packs_a_known_instance_optimally():
    sizes, capacity = [2, 2, 2, 3, 3, 3, 5, 5, 5], 10
    bins = first_fit_decreasing(sizes, capacity)
    assert len(bins) == math.ceil(sum(sizes) / capacity) == 3  # meets the lower bound: optimal
    assert sorted(sorted(sizes[i] for i in b) for b in bins) == [[2, 2, 3, 3], [2, 3, 5], [5, 5]]
    assert len(first_fit(sizes, capacity)) == 4  # unsorted first fit is not optimal here


@pytest.mark.parametrize("seed", range(5))
def test_every_bin_within_capacity_and_every_item_once(seed):
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, 100, (200,), generator=g).tolist()
    capacity = max(sizes)
    bins = pack_bins(sizes, capacity, "ffd")
    assert sorted(i for b in bins for i in b) == list(range(len(sizes)))
    assert all(sum(sizes[i] for i in b) <= capacity for b in bins)
    assert len(bins) >= math.ceil(sum(sizes) / capacity)
    # no two bins could be merged (what any first-fit rule guarantees): at most one bin is half empty or worse
    assert sum(sum(sizes[i] for i in b) <= capacity / 2 for b in bins) <= 1


def test_capacity_below_the_longest_prompt_and_unknown_packer_are_errors():
    with pytest.raises(ValueError, match="capacity"):
        first_fit_decreasing([3, 9], 8)
    with pytest.raises(ValueError, match="packer"):
        pack_bins([1, 2], 4, "best_fit")


# -- packed layout -------------------------------------------------------------------------------
def test_packed_rows_restart_positions_and_hold_every_prefix_once():
    prompts = prompts_of(LENGTHS)
    packed = pack_prompts(prompts)
    capacity = max(LENGTHS) - 1
    assert packed.input_ids.shape[1] <= capacity
    assert packed.num_tokens == sum(n - 1 for n in LENGTHS) <= packed.input_ids.numel()
    assert packed.input_ids.numel() < padded_slots(prompts)  # fewer slots than padded batching (FLOPs proxy)
    for i, p in enumerate(prompts):
        r, s, n = packed.row[i], packed.start[i], packed.length[i]
        assert torch.equal(packed.input_ids[r, s:s + n], p[:-1])
        assert torch.equal(packed.position_ids[r, s:s + n], torch.arange(n))
        assert (packed.segment_ids[r, s:s + n] == i).all()
        assert packed.last_tokens[i] == p[-1]
    assert (packed.segment_ids >= 0).sum() == packed.num_tokens


def test_mask_is_block_diagonal_causal():
    seg = torch.tensor([[0, 0, 0, 1, 1, -1]])
    m = block_diagonal_causal_mask(seg)[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [0, 0, 0, 1, 0, 0],
                             [0, 0, 0, 1, 1, 0],
                             [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(m, expected)
    additive = block_diagonal_causal_mask(seg, torch.float32)[0, 0]
    assert torch.equal(additive == 0, expected)


# -- equivalence with padded batching ------------------------------------------------------------
def test_next_token_logits_equal_padded_prefill(model):
    prompts = prompts_of(LENGTHS)
    _, packed_logits = prepacked_generate(model, prompts, 1, return_logits=True)
    _, padded_logits = padded_generate(model, prompts, 1, return_logits=True)
    per_prompt = (packed_logits[:, 0] - padded_logits[:, 0]).abs().amax(-1)
    assert per_prompt.shape == (len(prompts),)
    assert per_prompt.max() <= 1e-5, per_prompt
    # and each equals the prompt run alone, unpadded
    for i in (0, 1, 6):
        alone = model(input_ids=prompts[i][None]).logits[0, -1]
        assert (alone - packed_logits[i, 0]).abs().max() <= 1e-5


def test_without_the_block_mask_or_restarted_positions_the_logits_differ(model):
    """The property above is sensitive: a plain causal mask across the row, or positions that run on
    through the row, changes the logits of every prompt packed behind another one."""
    prompts = prompts_of(LENGTHS)
    _, reference = padded_generate(model, prompts, 1, return_logits=True)
    packed = pack_prompts(prompts)
    behind = [i for i in range(len(prompts)) if packed.start[i] > 0]
    assert behind
    broken = {
        "one segment per row": dict(segment_ids=torch.where(packed.segment_ids >= 0, 0, -1)),
        "running positions": dict(position_ids=torch.arange(packed.input_ids.shape[1]).expand_as(packed.input_ids)),
    }
    for what, change in broken.items():
        bad = pack_prompts(prompts)
        for k, v in change.items():
            setattr(bad, k, v)
        cache, mask = unpack_cache(prefill_packed(model, bad), bad, model.config)
        from methods.inference.evaluation import greedy_generate

        last = bad.last_tokens[:, None]
        _, logits = greedy_generate(model, last, 1, attention_mask=torch.cat([mask, torch.ones_like(last)], 1),
                                    cache=cache, return_logits=True)
        diff = (logits[behind, 0] - reference[behind, 0]).abs().amax(-1)
        assert diff.min() > 1e-3, what


def test_unpacked_caches_equal_individual_prefill(model):
    from transformers import DynamicCache

    prompts = prompts_of(LENGTHS, seed=1)
    packed = pack_prompts(prompts)
    batch, mask = unpack_cache(prefill_packed(model, packed), packed, model.config)
    L = max(packed.length)
    assert mask.shape == (len(prompts), L)
    for i, p in enumerate(prompts):
        n = len(p) - 1
        alone = DynamicCache(config=model.config)
        model(input_ids=p[None, :-1], cache=alone, use_cache=True)
        assert mask[i].tolist() == [0] * (L - n) + [1] * n
        for layer, ref in zip(batch.layers, alone.layers):
            for got, want in ((layer.keys, ref.keys), (layer.values, ref.values)):
                assert got.shape[1:] == (model.config.num_key_value_heads, L, want.shape[-1])
                assert (got[i, :, L - n:] - want[0]).abs().max() <= 1e-5
                assert (got[i, :, :L - n] == 0).all()


def test_greedy_generations_identical_to_padded_batching_and_to_transformers_generate(model):
    prompts = prompts_of(LENGTHS, seed=2)
    packed_new = prepacked_generate(model, prompts, 12)
    padded_new = padded_generate(model, prompts, 12)
    assert torch.equal(packed_new, padded_new)
    ids, mask = left_pad(prompts)  # the baseline itself is transformers' own greedy generate
    hf = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False, use_cache=True,
                        pad_token_id=0, eos_token_id=None)
    assert torch.equal(hf[:, ids.shape[1]:], padded_new)


def test_eager_attention_takes_the_additive_mask(model):
    from transformers import LlamaForCausalLM

    eager = LlamaForCausalLM(model.config.__class__(**{**model.config.to_dict(), "attn_implementation": "eager"})).eval()
    eager.load_state_dict(model.state_dict())
    prompts = prompts_of(LENGTHS[:6], seed=3)
    _, a = prepacked_generate(eager, prompts, 1, return_logits=True)
    _, b = padded_generate(model, prompts, 1, return_logits=True)
    assert (a - b).abs().max() <= 1e-5


# -- the method ----------------------------------------------------------------------------------
def test_evaluate_reports_savings_and_matching_generations(model):
    data = SimpleNamespace(val=np.random.default_rng(0).integers(0, VOCAB, 5000))
    method = Prepacking(num_prompts=16, max_new_tokens=4, repeats=1)
    assert not method.trains and method.stages == ["evaluate"]
    out = method.evaluate(model, data)
    assert out["generations_match"] == 1.0
    assert out["first_logits_max_abs_diff"] <= 1e-5
    assert out["prompts"] == 16 and 1 <= out["rows"] < 16
    assert out["prefill_slots_ratio"] < 1 and out["padding_fraction_packed"] < out["padding_fraction_padded"]
    assert out["padding_waste_ratio"] < 1 and out["prefill_time_ratio"] > 0


@pytest.mark.parametrize("kwargs, key", [(dict(packer="best_fit"), "method.packer"), (dict(min_len=1), "method.min_len"),
                                         (dict(min_len=8, max_len=4), "method.max_len"), (dict(skew=0), "method.skew"),
                                         (dict(repeats=0), "method.repeats")])
def test_bad_config_is_a_one_line_error_naming_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as e:
        Prepacking(**kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.e2e
def test_on_the_trained_base_model(base_lm):
    """The runner's trained tiny Llama on validation prompts: same first logits, same greedy text."""
    model, data = base_lm
    out = Prepacking(num_prompts=24, max_new_tokens=16, repeats=1).evaluate(model, data)
    assert out["first_logits_max_abs_diff"] <= 1e-5
    assert out["generations_match"] == 1.0
    assert out["prefill_slots_ratio"] < 0.5  # skewed lengths: packing computes well under half the slots
