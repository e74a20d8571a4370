"""The dry run for every architecture and for `model.init_from`: the planned parameter count is that of the model
the run would train (built on the meta device: nothing allocated); each architecture's repeated blocks, which the
dry run, FSDP's wrap policy and per-block torch.compile use."""

from __future__ import annotations

import pytest
import torch

from models.bert import Bert
from models.llama import Llama
from models.t5 import T5
from runner.config import architecture
from runner.dryrun import plan
from runner.models import count_params
from tests.conftest import compose_cfg
from tests.helpers import tiny_llama


@pytest.mark.parametrize("arch,layer,n", [
    (Llama(hidden_size=32, intermediate_size=64, num_layers=3, num_heads=2), "LlamaDecoderLayer", 3),
    (T5(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2), "T5Block", 4),  # encoder + decoder
    (Bert(hidden_size=32, intermediate_size=64, num_layers=3, num_heads=2), "BertLayer", 3),
])
def test_repeated_blocks(arch, layer, n):
    with torch.device("meta"):
        model = arch.build(vocab_size=50, seq_len=16)
    blocks = arch.blocks(model)
    assert len(blocks) == n and {type(b).__name__ for b in blocks} == {layer}
    assert all(any(b is m for m in model.modules()) for b in blocks)  # the model's own modules, in place


def test_dry_run_of_an_encoder_decoder(tmp_path, capsys):
    cfg = compose_cfg(["model=t5-tiny", "dataset=noisy-copy", "dry_run=true"])
    out = plan(cfg, tmp_path)
    assert f"the plan as JSON: {tmp_path / 'dry_run.json'}" in capsys.readouterr().out.replace("\n", "")  # says where
    from runner.data import build_task_data

    vocab = build_task_data(cfg).vocab_size  # no size hint: the dry run asks the task's tokenizer, as the run does
    with torch.device("meta"):
        real = architecture(cfg.model).build(vocab, cfg.model.seq_len)
    assert out["params"] == count_params(real)
    assert out["dry_run/activations (estimate)"] > 0 and out["dry_run/logits + grads"] > 0  # T5's loss forms logits


def test_dry_run_honours_init_from(tmp_path):
    # an HF checkpoint of another shape than model=llama-tiny: the plan is that model's
    hf = tiny_llama(vocab=300, hidden=48, intermediate=96, layers=3, heads=4)
    hf.save_pretrained(str(tmp_path / "hf"))
    cfg = compose_cfg(["dry_run=true", f"model.init_from={tmp_path / 'hf'}"])
    assert plan(cfg, tmp_path)["params"] == count_params(hf) != count_params(
        architecture(cfg.model).build(300, cfg.model.seq_len))
    # a whole saved model (a compress stage's model.pt, shapes changed): its own parameters
    smaller = tiny_llama(vocab=300, hidden=32, intermediate=40, layers=2, heads=4)
    torch.save(smaller, tmp_path / "model.pt")
    cfg = compose_cfg(["dry_run=true", f"model.init_from={tmp_path / 'model.pt'}"])
    assert plan(cfg, tmp_path)["params"] == count_params(smaller)
