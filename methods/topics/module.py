"""The LightningModule of topic models (tasks/topics.py batches): the document likelihood of a DocNADE-style model
(models/docnade.py), and the paper's perplexity at validation.

A batch is a dict (tasks/topics.py): bow_ids, bow_mask (B, D), lm_ids, lm_mask (B, L), align (B, D), labels, index.
`lm_loss` is the training loss of the textTOvec code (`loss_unnormed`): the mean over the batch's documents of
NLL_d = -sum_i log p(v_i | v_<i). Validation logs val/loss = mean_d NLL_d / |d| over the validation documents and
val/ppl = exp(val/loss): the perplexity of the DocNADE papers and of the code (exp of the mean length-normalised
document NLL; not the word-weighted exp(sum NLL / sum |d|)).
"""

from __future__ import annotations

import torch

from methods.module import MethodModule


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("bow_ids", "bow_mask", "lm_ids", "lm_mask", "align")}


class TopicModule(MethodModule):
    """MethodModule on document batches; the model's topic vocabulary is set from the data (its K)."""

    reports_perplexity = True

    def __init__(self, model, method, kernels_map=None, kernel_fallback=True, data=None, seed=0):
        if not hasattr(data, "bow_vocab_size"):
            raise TypeError(f"TopicModule needs tasks.topics.TopicData as data, got {type(data).__name__}")
        if not callable(getattr(model, "word_nll", None)):
            raise TypeError(f"TopicModule needs a topic model (models.docnade.DocNADE), got {type(model).__name__}")
        model.set_bow_vocab(int(data.bow_vocab_size))
        super().__init__(model, method, kernels_map, kernel_fallback, data=data, seed=seed)

    def doc_nll(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(NLL_d (B,), |d| (B,), document representations (B, H))."""
        nll, doc = self.model.word_nll(**model_inputs(batch))
        return nll.sum(1), batch["bow_mask"].sum(1), doc

    def lm_loss(self, batch: dict, reduction: str = "mean") -> torch.Tensor:
        nll, _, _ = self.doc_nll(batch)
        return nll.mean() if reduction == "mean" else nll.sum() if reduction == "sum" else nll

    def batch_tokens(self, batch: dict) -> int:
        return int(batch["bow_mask"].sum())  # the words the likelihood covers

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        nll, length, _ = self.doc_nll(batch)
        self._val_sum += (nll.double() / length.clamp(min=1).double()).sum()
        self._val_count += nll.numel()
