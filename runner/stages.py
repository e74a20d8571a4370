"""The stages the runner runs for a method (Method.stages), beside the train stage's `trainer.fit`.

The compress protocol lives here, once, for every compress method: evaluate before and after with the same
evaluator (the module's validation loop), the next-token KL of the compressed model to the dense one, parameter
and non-zero counts, and the final model saved whole to `<run dir>/compressed/model.pt` (with the tokenizer),
which `model.init_from=<that file>` loads again.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from runner.models import count_params

log = logging.getLogger("methodbench")


def validate(trainer, module, val_dl) -> dict[str, float]:
    """Run the module's validation loop; its val/* metrics."""
    trainer.validate(module, dataloaders=val_dl, verbose=False)
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def nonzeros(model) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


def loss_and_kl(dense, model, batches, device=None) -> tuple[float, float]:
    """(mean next-token cross-entropy of `model`, mean KL(p_dense || p_model)) over the tokens of `batches`,
    an iterable of (B, T+1) token blocks: the compress stage's KL to the dense model, and the benches'."""
    ce = kl = 0.0
    count = 0
    with torch.no_grad():
        for batch in batches:
            ids, targets = batch[:, :-1].to(device), batch[:, 1:].to(device)
            lp = torch.log_softmax(dense(input_ids=ids).logits.float(), -1)
            lq = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
            ce += float(F.nll_loss(lq.flatten(0, 1), targets.flatten(), reduction="sum"))
            kl += float((lp.exp() * (lp - lq)).sum())
            count += targets.numel()
    return ce / max(count, 1), kl / max(count, 1)


def _token_blocks(val_dl):
    """The validation batches as (B, T+1) token blocks, or None where the task's batches are of another shape."""
    first = next(iter(val_dl), None)
    if not isinstance(first, torch.Tensor) or first.ndim != 2:
        return None
    return val_dl


def compress(trainer, module, method, data, val_dl) -> dict[str, Any]:
    """Evaluate, compress, evaluate again with the same evaluator; KL to the dense model (next-token tasks)."""
    module.model.eval()
    dense = copy.deepcopy(module.model)
    before = validate(trainer, module, val_dl)["val/loss"]
    params_before, nnz_before = count_params(dense), nonzeros(dense)
    t0 = time.perf_counter()
    with torch.random.fork_rng():
        module.model = method.compress(module.model, data)
    seconds = time.perf_counter() - t0
    module.model.eval()
    after = validate(trainer, module, val_dl)["val/loss"]
    blocks = _token_blocks(val_dl)
    kl = loss_and_kl(dense.to(module.device), module.model, blocks, module.device)[1] if blocks is not None else None
    out = {
        "compress/val_loss_before": before, "compress/val_ppl_before": math.exp(before),
        "compress/val_loss_after": after, "compress/val_ppl_after": math.exp(after),
        **({"compress/kl_to_dense": kl} if kl is not None else {}),
        "compress/params_before": params_before, "compress/params_after": count_params(module.model),
        "compress/nonzeros_before": nnz_before, "compress/nonzeros_after": nonzeros(module.model),
        "compress/seconds": seconds,
    }
    log.info("compress: val loss %.4f -> %.4f | KL to dense %s | params %.2fM -> %.2fM | non-zeros %.2fM -> %.2fM",
             before, after, "n/a" if kl is None else f"{kl:.4f}", params_before / 1e6,
             out["compress/params_after"] / 1e6, nnz_before / 1e6, out["compress/nonzeros_after"] / 1e6)
    return out


def save_compressed(model, data, run_dir: Path) -> dict[str, Any]:
    """The run's final model, whole (compressed models change shapes), and the tokenizer, for model.init_from."""
    out_dir = run_dir / "compressed"
    out_dir.mkdir(exist_ok=True)
    torch.save(model, out_dir / "model.pt")
    data.save(out_dir / "tokenizer")
    log.info("saved the compressed model: %s (load it with model.init_from=)", out_dir / "model.pt")
    return {"compress/file_mib": (out_dir / "model.pt").stat().st_size / 2**20, "compress/saved": str(out_dir / "model.pt")}
