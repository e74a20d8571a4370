"""The LightningModule of text classification and regression (tasks/text_cls.py): dict batches, a classifier
head on any encoder, cross-entropy or MSE, scikit-learn's metrics at validation.

A batch is a dict: input_ids and attention_mask (B, L), labels (B,) (long, or float for regression), index (B,)
(the example's row of the split). `self.model` becomes a SequenceClassifier around the architecture's model
(unless it already is one: a saved classifier loaded again), so that what the run trains, checkpoints,
compresses and saves is the whole classifier.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from methods.classification.classifier import SequenceClassifier
from methods.classification.metrics import classification_metrics, regression_metrics
from methods.module import MethodModule


class ClassifierModule(MethodModule):
    """MethodModule on classification batches. The baseline's loss (`lm_loss`) is cross-entropy, or MSE for
    regression; a method changes it through `Method.loss(module, batch)`. tokens_seen counts real (unpadded)
    tokens. Validation logs val/loss (mean CE or MSE per example) and val/accuracy, val/macro_f1, val/auc
    (binary tasks), or val/qwk, val/pearson."""

    reports_perplexity = False

    def __init__(self, model, method, kernels_map=None, kernel_fallback=True, data=None, seed=0):
        if not all(hasattr(data, k) for k in ("task_type", "num_labels", "pooling", "score_range")):
            raise TypeError(f"ClassifierModule needs tasks.text_cls.TextClsData as data, got {type(data).__name__}")
        if not isinstance(model, SequenceClassifier):
            model = SequenceClassifier(model, data.num_labels, pooling=data.pooling, dropout=data.dropout)
        super().__init__(model, method, kernels_map, kernel_fallback, data=data, seed=seed)
        self.regression = data.task_type == "regression"
        self._val_outputs: list[torch.Tensor] = []
        self._val_labels: list[torch.Tensor] = []

    def logits(self, batch: dict) -> torch.Tensor:
        """(B, C) logits, or (B,) scores for regression."""
        return self.model(batch["input_ids"], batch["attention_mask"])

    def lm_loss(self, batch: dict, reduction: str = "mean") -> torch.Tensor:
        out = self.logits(batch).float()
        if self.regression:
            return F.mse_loss(out, batch["labels"].float(), reduction=reduction)
        return F.cross_entropy(out, batch["labels"], reduction=reduction)

    def batch_tokens(self, batch: dict) -> int:
        return int(batch["attention_mask"].sum())  # real tokens, not padding

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._val_outputs, self._val_labels = [], []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.logits(batch).float()
        self._val_sum += self.lm_loss(batch, reduction="sum").double()
        self._val_count += batch["labels"].numel()
        self._val_outputs.append((out if self.regression else out.softmax(-1)).detach().cpu())
        self._val_labels.append(batch["labels"].detach().cpu())

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self._val_outputs:
            return
        preds = torch.cat(self._val_outputs).numpy()
        labels = torch.cat(self._val_labels).numpy()
        if self.regression:
            m = regression_metrics(labels, preds, self.data.score_range)
            shown = {"qwk": m["qwk"], "pearson": m["pearson"]}
        else:
            m = classification_metrics(labels, preds)
            shown = {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
            if self.data.num_labels == 2:
                shown["auc"] = m["roc_auc"]
        # the metrics of this process's share of the validation split (one process on the CPU path)
        for k, v in shown.items():
            self.log(f"val/{k}", float(v), sync_dist=False)
