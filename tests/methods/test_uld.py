"""ULD (methods/unlearning/uld.py): the logit-difference model leaves the target's distribution wherever the
assistant is uniform; the assistant starts as the target's first K layers exactly; training moves only the
LoRA factors and reverses the objectives (the assistant learns the forget set and unlearns the retain set),
which makes the combined model forget the forget set while the retain set barely moves; the model
generates greedily with a KV cache, saves, and resumes from a state dict."""

from __future__ import annotations

import copy
import io
from types import SimpleNamespace

import pytest
import torch

from methods.inference.evaluation import greedy_generate
from methods.unlearning.losses import kl_uniform_to_model, relative_top_mask, sequence_nll, uld_logits
from tests.helpers import lazy_import, tiny_llama

uld = lazy_import("methods.unlearning.uld")  # imports Lightning (seconds): when a test first needs it

VOCAB, LENGTH, QUESTION = 64, 12, 6


class ConstantPerPosition(torch.nn.Module):
    """An 'assistant' whose logits are one constant per (sequence, position), the same over the vocabulary."""

    def forward(self, input_ids, **_):
        values = torch.randn(input_ids.shape, generator=torch.Generator().manual_seed(1)) * 10
        return SimpleNamespace(logits=values[..., None].expand(*input_ids.shape, VOCAB).clone())


def qa_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n random 'question + answer' sequences; the mask is 1 on the answer tokens (the second half)."""
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros_like(ids)
    mask[:, QUESTION:] = 1
    return ids, mask


@pytest.fixture(scope="module")
def trained_target():
    """A tiny 4-layer Llama that has memorised 8 forget and 8 retain sequences (the 'fine-tuned' target)."""
    torch.manual_seed(0)
    model = tiny_llama(VOCAB, hidden=32, intermediate=64, layers=4, heads=4, max_pos=32)
    (forget, fmask), (retain, rmask) = qa_batch(8, 1), qa_batch(8, 2)
    data, mask = torch.cat([forget, retain]), torch.cat([fmask, rmask])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(80):
        loss = sequence_nll(model(input_ids=data).logits, data, mask, "mean").mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss < 0.05  # the facts are learned
    return model.eval(), (forget, fmask), (retain, rmask)


def test_constant_assistant_logits_leave_the_target_distribution(trained_target):
    target, (ids, _), _ = trained_target
    wrapper = uld.LogitDifference(copy.deepcopy(target), ConstantPerPosition(), alpha=0.8, relative_top=None)
    target_logits = target(input_ids=ids).logits
    combined = wrapper(input_ids=ids).logits
    torch.testing.assert_close(combined.softmax(-1), target_logits.softmax(-1), atol=1e-6, rtol=0)
    assert not torch.allclose(combined, target_logits)  # the logits did move, by a constant per position

    wrapper.set_combination(0.8, 0.1)  # with the filter: tokens outside the relative-top set keep their logit
    kept = relative_top_mask(target_logits, 0.1)
    combined = wrapper(input_ids=ids).logits
    assert 0 < kept.sum() < kept.numel() and (kept.sum(-1) >= int(0.1 * VOCAB)).all()
    assert torch.equal(combined[~kept], target_logits[~kept])
    shift = ConstantPerPosition()(ids).logits
    torch.testing.assert_close(combined[kept], target_logits[kept] - 0.8 * shift[kept], atol=1e-5, rtol=0)


def test_assistant_at_lora_init_is_the_targets_first_k_layers_exactly(trained_target):
    target, (ids, _), _ = trained_target
    target = copy.deepcopy(target)  # output_hidden_states installs hooks that do not pickle: keep them off the fixture
    for layers, k in ((0.25, 1), (0.5, 2), (3, 3)):
        wrapper = uld.ULD(assistant_layers=layers).prepare_model(copy.deepcopy(target)).eval()
        assert len(wrapper.assistant.get_base_model().model.layers) == k
        hidden = target(input_ids=ids, output_hidden_states=True).hidden_states[k]  # output of layer k
        truncated = target.lm_head(target.model.norm(hidden))
        assert torch.equal(wrapper.assistant_logits(ids), truncated)
    assert uld.assistant_layer_count(0.25, 32) == 8  # the paper's 8 of Llama-2-7B's 32 layers
    with pytest.raises(ValueError, match="assistant_layers"):
        uld.assistant_layer_count(5, 4)


def test_training_moves_only_lora_and_makes_the_combination_forget(trained_target):
    target, (forget, fmask), (retain, rmask) = trained_target
    torch.manual_seed(0)
    method = uld.ULD(assistant_layers=0.25, lr=1e-2)
    wrapper = method.prepare_model(copy.deepcopy(target))
    target_before = {k: v.clone() for k, v in wrapper.target.state_dict().items()}
    optimizer = method.build_optimizer(wrapper)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    lora = {id(p) for name, p in wrapper.named_parameters() if "lora_" in name}
    assert optimized == lora and lora

    def assistant_stats():
        with torch.no_grad():
            wrapper.eval()
            nll = sequence_nll(wrapper.assistant_logits(forget), forget, fmask, "mean").mean()
            kl = kl_uniform_to_model(wrapper.assistant_logits(retain))
            wrapper.train()
        return float(nll), float(kl)

    def answer_nll(model, ids, mask):
        with torch.no_grad():
            return float(sequence_nll(model(input_ids=ids).logits, ids, mask, "mean").mean())

    nll0, kl0 = assistant_stats()
    forget0, retain0 = answer_nll(target, forget, fmask), answer_nll(target, retain, rmask)
    module = SimpleNamespace(model=wrapper.train())
    for _ in range(40):
        loss = method.unlearning_loss(module, forget, fmask, retain, rmask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    nll1, kl1 = assistant_stats()
    wrapper.eval().set_combination(method.eval_alpha, method.eval_relative_top)
    forget1, retain1 = answer_nll(wrapper, forget, fmask), answer_nll(wrapper, retain, rmask)

    assert all(torch.equal(v, target_before[k]) for k, v in wrapper.target.state_dict().items())
    assert all(p.grad is None for p in wrapper.target.parameters())
    assert any(float(p.abs().max()) > 0 for n, p in wrapper.named_parameters() if "lora_B" in n)  # B left 0
    assert nll1 < 0.5 * nll0  # the assistant learned the forget answers
    assert kl1 < 0.5 * kl0  # and its retain distribution moved toward uniform
    # the unlearned model against the target: forget answers far less likely, retain answers as likely
    assert forget1 - forget0 > 1.0
    assert forget1 - forget0 > 10 * abs(retain1 - retain0)


def test_generation_is_greedy_on_the_combined_logits_with_the_targets_vocab(trained_target):
    target, (ids, _), _ = trained_target
    torch.manual_seed(0)
    wrapper = uld.ULD(assistant_layers=2).prepare_model(copy.deepcopy(target)).eval()
    for p in wrapper.assistant.parameters():  # a trained-looking assistant (LoRA B no longer 0)
        p.data.add_(torch.randn_like(p) * 0.05)
    prompts = ids[:2, :QUESTION].clone()
    mask = torch.ones_like(prompts)
    prompts[1, :2], mask[1, :2] = 0, 0  # the second prompt left-padded
    out = wrapper.generate(prompts, attention_mask=mask, max_new_tokens=5)
    assert out.shape == (2, QUESTION + 5) and torch.equal(out[:, :QUESTION], prompts)
    for row in range(2):  # each new token is the argmax of the wrapper's (uncached) generation logits on the prefix
        real = out[row][mask[row].bool().tolist() + [True] * 5]
        for t in range(5):
            prefix = real[: len(real) - 5 + t][None]
            output = wrapper(input_ids=prefix)
            assert output.logits.shape[-1] == target.config.vocab_size
            assert int(output.generation_logits[0, -1].argmax()) == int(real[len(real) - 5 + t])
    eos = int(out[0, QUESTION])  # stopping: everything after the first EOS is padding
    stopped = wrapper.generate(prompts[:1], max_new_tokens=5, eos_token_id=eos, pad_token_id=0)
    assert stopped.shape == (1, QUESTION + 1)


class ScaledLM(torch.nn.Module):
    """An 'assistant': a causal LM with its logits multiplied by `factor` (KV cache and all)."""

    def __init__(self, lm: torch.nn.Module, factor: float):
        super().__init__()
        self.lm, self.factor = lm, factor

    def forward(self, **kwargs):
        out = self.lm(**kwargs)
        out.logits = out.logits * self.factor
        return out


def test_generation_only_picks_tokens_of_the_targets_relative_top_set(trained_target):
    """The uld.ULD code's greedy decoder sets the tokens outside the target's relative-top set to −1e3 before its
    argmax. An assistant with 3× the target's logits (α = 0.8) reverses the order of the kept tokens, so that the
    argmax over the whole vocabulary leaves the set; both decoders (greedy_generate on full forwards, as
    tasks/qa.py runs it, and the KV-cached generate) stay in it, and the logits (every probability) keep the
    unmasked combination."""
    target, (ids, _), _ = trained_target
    wrapper = uld.LogitDifference(copy.deepcopy(target), ScaledLM(copy.deepcopy(target), 3.0), alpha=0.8,
                              relative_top=0.1).eval()
    prompts, steps = ids[:, :QUESTION], 5
    new = greedy_generate(wrapper, prompts, steps, use_cache=False)
    assert torch.equal(wrapper.generate(prompts, max_new_tokens=steps)[:, QUESTION:], new)
    sequences, outside = torch.cat([prompts, new], dim=1), 0
    with torch.no_grad():
        for t in range(steps):
            prefix, token = sequences[:, :QUESTION + t], sequences[:, QUESTION + t]
            target_logits = target(input_ids=prefix).logits
            keep = relative_top_mask(target_logits[:, -1], 0.1)
            output = wrapper(input_ids=prefix)
            torch.testing.assert_close(output.logits, uld_logits(target_logits, 3 * target_logits, 0.8, 0.1))
            assert keep.gather(1, token[:, None]).all()  # every generated token is in the set ...
            assert torch.equal(token, output.logits[:, -1].masked_fill(~keep, -torch.inf).argmax(-1))  # its best
            outside += int((~keep.gather(1, output.logits[:, -1].argmax(-1, keepdim=True))).sum())
    assert outside >= steps * len(prompts) // 2  # ... where the unmasked argmax mostly leaves it


def test_checkpoint_round_trip_and_evaluation_setting(trained_target):
    target, (ids, _), (_, rmask) = trained_target
    method = uld.ULD(assistant_layers=2)
    wrapper = method.prepare_model(copy.deepcopy(target)).eval()
    for p in wrapper.assistant.parameters():
        p.data.add_(torch.randn_like(p) * 0.05)
    expected = wrapper(input_ids=ids).logits
    buffer = io.BytesIO()
    torch.save(wrapper, buffer)  # the whole module (what a user saves) ...
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(input_ids=ids).logits, expected)
    state = wrapper.state_dict()  # ... and the state dict a Lightning checkpoint holds, target included
    assert any(k.startswith("target.") for k in state) and any("lora_A" in k for k in state)
    torch.manual_seed(123)  # resume: a freshly prepared model (other LoRA draws) loads it back
    fresh = method.prepare_model(copy.deepcopy(target)).eval()
    fresh.load_state_dict(state)
    assert torch.equal(fresh(input_ids=ids).logits, expected)

    metrics = method.evaluate(fresh, data=None)  # the final evaluation uses the code's eval-time combination
    assert (fresh.alpha, fresh.relative_top) == (0.8, 0.01) and metrics["uld_alpha"] == 0.8
    # the retain KL covers question + answer positions and no padding after the answer
    padded = torch.cat([rmask[:1], torch.zeros_like(rmask[:1, :3])], dim=1)
    assert method.retain_kl_mask(padded).tolist() == [[1] * (LENGTH - 1) + [0] * 3]
    assert uld.ULD(retain_positions="answer").retain_kl_mask(padded).tolist() == [padded[0, 1:].tolist()]
    # a dry run's optimizer state counts the LoRA factors only
    lora = sum(p.numel() for p in wrapper.parameters() if p.requires_grad)
    assert method.optimizer_state_bytes(target) == 8 * lora


@pytest.mark.parametrize("override", [{"retain_positions": "all"}, {"relative_top": 0.0}, {"assistant_layers": 1.5},
                                      {"lora_rank": 0}])
def test_bad_options_are_one_line_errors(override):
    with pytest.raises(ValueError, match=f"method.{next(iter(override))}"):
        uld.ULD(**override)
