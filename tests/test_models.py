"""Models (paper sizes, vocab rules, init_from, seeding), the W&B config flattening, the kernel registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import kernels
from runner.errors import ConfigError
from runner.loggers import flatten
from runner.models import build_model, count_params, model_vocab_size
from tests.test_configs import compose_cfg

# Parameter counts the GaLore / FRUGAL code prints for these models (T5 vocab 32000, untied head).
PUBLISHED = {"llama-60m": 58.07e6, "llama-130m": 134.11e6, "llama-350m": 367.97e6, "llama-1b": 1339.08e6}


def model_cfg(name: str = "llama-tiny", **over):
    m = compose_cfg([f"model={name}"]).model
    for k, v in over.items():
        m[k] = v
    return m


def tiny(**over):
    base = dict(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, seq_len=16, vocab_size=None)
    return model_cfg("llama-tiny", **{**base, **over})


def expected_params(m, vocab: int) -> int:
    h, i, n = m.hidden_size, m.intermediate_size, m.num_layers
    embeddings = vocab * h * (1 if m.tie_embeddings else 2)  # input embedding + untied lm_head
    per_layer = 4 * h * h + 3 * h * i + 2 * h                # q,k,v,o + gate,up,down + 2 RMSNorms
    return embeddings + n * per_layer + h                    # + final norm


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_paper_model_parameter_counts(name):
    m = model_cfg(name)
    model = build_model(m, model_vocab_size(m, None), device="meta")
    n = count_params(model)
    assert n == expected_params(m, 32000)
    assert abs(n - PUBLISHED[name]) / PUBLISHED[name] < 0.02
    assert all(p.device.type == "meta" for p in model.parameters())


def test_tied_embeddings_count_once():
    m = tiny(tie_embeddings=True)
    assert count_params(build_model(m, 64, device="meta")) == expected_params(m, 64)
    m = tiny(tie_embeddings=False)
    assert count_params(build_model(m, 64, device="meta")) == expected_params(m, 64)


def test_gqa_shrinks_kv_projections():
    m = tiny(num_kv_heads=2)  # head_dim 8: k and v are 32 x 16 instead of 32 x 32
    n = count_params(build_model(m, 64, device="meta"))
    assert n == expected_params(m, 64) - m.num_layers * 2 * (32 * 32 - 32 * 16)


def test_model_vocab_size():
    assert model_vocab_size(tiny(vocab_size=None), 300) == 300
    assert model_vocab_size(tiny(vocab_size=512), 300) == 512
    assert model_vocab_size(tiny(vocab_size=512), 512) == 512
    assert model_vocab_size(tiny(vocab_size=512), None) == 512
    with pytest.raises(ConfigError, match="model.vocab_size"):
        model_vocab_size(tiny(vocab_size=100), 300)
    with pytest.raises(ConfigError, match="model.vocab_size"):
        model_vocab_size(tiny(vocab_size=None), None)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_same_init():
    torch.manual_seed(123)
    a = build_model(tiny(), 64)
    torch.manual_seed(123)
    b = build_model(tiny(), 64)
    torch.manual_seed(124)
    c = build_model(tiny(), 64)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)


def test_init_from_lightning_checkpoint(tmp_path):
    torch.manual_seed(0)
    src = build_model(tiny(), 64)
    ckpt = tmp_path / "step.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in src.state_dict().items()}, "global_step": 7}, ckpt)
    torch.manual_seed(1)
    loaded = build_model(tiny(init_from=str(ckpt)), 64)
    assert _same_weights(src, loaded)
    # a run directory: its newest checkpoint
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    ckpt.rename(tmp_path / "run" / "checkpoints" / "last.ckpt")
    torch.manual_seed(2)
    assert _same_weights(src, build_model(tiny(init_from=str(tmp_path / "run")), 64))


def test_init_from_checkpoint_of_another_model(tmp_path):
    src = build_model(tiny(hidden_size=16), 64)
    ckpt = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model." + k: v for k, v in src.state_dict().items()}}, ckpt)
    with pytest.raises((ConfigError, RuntimeError), match="init_from|size mismatch"):
        build_model(tiny(init_from=str(ckpt)), 64)


def test_init_from_run_dir_without_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="model.init_from"):
        build_model(tiny(init_from=str(tmp_path)), 64)


def test_init_from_hf_directory(tmp_path):
    torch.manual_seed(0)
    src = build_model(tiny(), 64)
    src.save_pretrained(str(tmp_path / "hf"))
    torch.manual_seed(1)
    loaded = build_model(tiny(init_from=str(tmp_path / "hf")), 64)
    assert type(loaded) is type(src)
    assert _same_weights(src, loaded)


# ---------------------------------------------------------------------------------------------- loggers
def test_flatten():
    cfg = {"model": {"hidden_size": 8, "rope": {"theta": 1e4}}, "method": {"_target_": "methods.base.Method",
           "betas": [0.9, 0.95]}, "seed": 0, "resume": None}
    assert flatten(cfg) == {"model.hidden_size": 8, "model.rope.theta": 1e4, "method.target": "methods.base.Method",
                            "method.betas": [0.9, 0.95], "seed": 0, "resume": None}


def test_flatten_resolved_omegaconf_container():
    c = OmegaConf.create({"a": {"b": 1, "c": "${a.b}"}})
    assert flatten(OmegaConf.to_container(c, resolve=True)) == {"a.b": 1, "a.c": 1}


# ---------------------------------------------------------------------------------------------- kernels
def test_kernels_unknown_backend_lists_known():
    with pytest.raises(KeyError) as ei:
        kernels.get("cross_entropy", "nope")
    msg = str(ei.value)
    assert "nope" in msg and "reference" in msg
    with pytest.raises(KeyError, match="cross_entropy"):
        kernels.get("softmax_of_doom")
    assert "cross_entropy" in kernels.known_ops()
    assert "reference" in kernels.known_backends("cross_entropy")


def test_kernels_cuda_backend_without_cuda(monkeypatch):
    monkeypatch.setitem(kernels.REGISTRY, "cross_entropy",
                        {**kernels.REGISTRY["cross_entropy"], "fast": kernels.Backend("no.such:module", needs_cuda=True)})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="kernel_fallback"):
        kernels.get("cross_entropy", "fast")
    assert kernels.get("cross_entropy", "fast", fallback=True) is kernels.get("cross_entropy", "reference")


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reference_cross_entropy(reduction):
    ce = kernels.get("cross_entropy", "reference")
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 16, generator=g)
    W = torch.randn(40, 16, generator=g)
    t = torch.randint(0, 40, (3, 5), generator=g)
    t[0, 1] = t[2, 4] = t[1, 0] = -100
    got = ce(hidden, W, t, reduction=reduction)
    want = F.cross_entropy((hidden @ W.T).reshape(-1, 40), t.reshape(-1), ignore_index=-100, reduction=reduction)
    torch.testing.assert_close(got, want)
    # ignored targets contribute nothing
    keep = t.reshape(-1) != -100
    full = F.cross_entropy((hidden @ W.T).reshape(-1, 40)[keep], t.reshape(-1)[keep], reduction=reduction)
    torch.testing.assert_close(got, full)


def test_reference_cross_entropy_gradients_and_dtype():
    ce = kernels.get("cross_entropy", "reference")
    g = torch.Generator().manual_seed(1)
    h = torch.randn(6, 8, generator=g, requires_grad=True)
    W = torch.randn(10, 8, generator=g, requires_grad=True)
    t = torch.randint(0, 10, (6,), generator=g)
    ce(h, W, t).backward()
    h2, W2 = h.detach().clone().requires_grad_(), W.detach().clone().requires_grad_()
    F.cross_entropy(h2 @ W2.T, t).backward()
    torch.testing.assert_close(h.grad, h2.grad)
    torch.testing.assert_close(W.grad, W2.grad)
    assert ce(h.detach().bfloat16(), W.detach().bfloat16(), t).dtype == torch.float32
