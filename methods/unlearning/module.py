"""The training step of unlearning methods: forget/retain pair batches and a frozen reference model.

A pair batch is one LongTensor (B, 4, L) (built by runner/qa.py):
    batch[:, 0]  forget input ids   "Question: {q}\\nAnswer: {a}" + EOS, right-padded with EOS
    batch[:, 1]  forget answer mask 1 on the answer tokens and the EOS that ends the answer, 0 elsewhere
    batch[:, 2]  retain input ids   (drawn independently of the forget rows)
    batch[:, 3]  retain answer mask
A method implements `unlearning_loss(module, forget_ids, forget_mask, retain_ids, retain_mask)`; the module
runs it, logs `train/loss`, and validates the retain answers' NLL per token as `val/loss` (what the runner
reads) and the forget answers' as `val/forget_loss`. Methods that say `needs_reference` get a frozen deep
copy of the starting model as `module.reference` (a submodule: it moves with the model and is saved in
checkpoints, so a resumed run keeps the original reference).
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from methods.module import MethodModule
from methods.unlearning.losses import sequence_nll


def split_pair_batch(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(forget_ids, forget_mask, retain_ids, retain_mask), each (B, L)."""
    if batch.ndim != 3 or batch.shape[1] != 4:
        raise ValueError(f"an unlearning batch is (B, 4, L) (forget ids, mask, retain ids, mask); got {tuple(batch.shape)}")
    return batch[:, 0], batch[:, 1], batch[:, 2], batch[:, 3]


def real_token_mask(answer_mask: torch.Tensor) -> torch.Tensor:
    """1 on every token up to and including the last answer token (the question and the answer), 0 on the
    right padding after it."""
    positions = torch.arange(answer_mask.shape[1], device=answer_mask.device)
    last = (answer_mask * positions).amax(dim=1, keepdim=True)
    return (positions <= last).to(answer_mask.dtype)


class UnlearningModule(MethodModule):
    """MethodModule on pair batches. Public names (kept stable for subclasses): `reference`, `logits`,
    `reference_logits`, `answer_nll`, `split_pair_batch`."""

    # val/loss is the retain answers' NLL per token: exp of it is no perplexity TOFU or the papers report
    reports_perplexity = False

    def __init__(self, model: nn.Module, method, kernels_map: dict[str, str] | None = None,
                 kernel_fallback: bool = True, **kwargs):
        super().__init__(model, method, kernels_map, kernel_fallback, **kwargs)
        self.reference: nn.Module | None = None
        self._forget_sum = torch.zeros((), dtype=torch.float64)
        self._forget_count = torch.zeros((), dtype=torch.float64)

    def setup(self, stage: str) -> None:
        if getattr(self.method, "needs_reference", False) and self.reference is None:
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)
            # Lightning warns about submodules in eval mode at the start of training: the reference is meant to be
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")

    def train(self, mode: bool = True):
        super().train(mode)
        if self.reference is not None:  # the reference never leaves eval mode (dropout off)
            self.reference.eval()
        return self

    # -- forward passes ----------------------------------------------------------------------
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T, V) logits of the model being trained."""
        return self.model(input_ids=input_ids).logits

    @torch.no_grad()
    def reference_logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.reference is None:
            raise RuntimeError(f"method={self.method.name} asked for the reference model but does not say "
                               "needs_reference = True")
        return self.reference(input_ids=input_ids).logits

    @staticmethod
    def answer_nll(logits: torch.Tensor, input_ids: torch.Tensor, answer_mask: torch.Tensor,
                   reduction: str = "sum") -> torch.Tensor:
        """(B,) NLL of the answer tokens per sequence: summed ("sum", NPO's) or per token ("mean", TOFU's)."""
        return sequence_nll(logits, input_ids, answer_mask, reduction=reduction)

    # -- steps -------------------------------------------------------------------------------
    def step_loss(self, batch: torch.Tensor) -> torch.Tensor:
        return self.method.unlearning_loss(self, *split_pair_batch(batch))

    def batch_tokens(self, batch: torch.Tensor) -> int:
        forget_ids, _, retain_ids, _ = split_pair_batch(batch)
        return forget_ids.numel() + retain_ids.numel()

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._forget_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._forget_count = torch.zeros((), dtype=torch.float64, device=self.device)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        forget_ids, forget_mask, retain_ids, retain_mask = split_pair_batch(batch)
        for ids, mask, total, count in ((retain_ids, retain_mask, self._val_sum, self._val_count),
                                        (forget_ids, forget_mask, self._forget_sum, self._forget_count)):
            total += self.answer_nll(self.logits(ids), ids, mask, reduction="sum").sum().double()
            count += mask[:, 1:].sum().double()

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()  # val/loss: the retain answers' NLL per token
        total = self.trainer.strategy.reduce(self._forget_sum, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._forget_count, reduce_op="sum")
        self.log("val/forget_loss", (total / count.clamp_min(1)).float(), sync_dist=False)
