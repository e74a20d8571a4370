"""textTOvec: Deep Contextualized Neural Autoregressive Topic Models of Language with Distributed Compositional Prior
(Pankaj Gupta, Yatin Chaudhary, Florian Buettner & Hinrich Schütze, ICLR 2019; code github.com/pgcool/textTOvec,
model/model_supervised_lstm.py and train_model_lstm.py, TF1, read for the facts below).

The model is models/docnade.py (`model=ctx-docnade`; `model=docnade` is the DocNADE baseline). For a document's
topic words v_1 .. v_D in document order and its full token sequence (stop words included):

    h^DN_i = g(c + sum_{k<i} W[:, v_k])                  DocNADE
    h_i    = h^DN_i + lam * h^LM_i                       ctx-DocNADE (the code's sum; model.combine=pre: g(. + lam h^LM_i))
    p(v_i = w | v_<i) = softmax(b + U h_i)_w,    log p(v) = sum_i log p(v_i | v_<i)

with h^LM_i the output of an LSTM-LM, whose input embedding is W, over the tokens that precede v_i. This method
trains the negative log-likelihood, the mean over a batch of the documents' NLL_d = -sum_i log p(v_i | v_<i) (the
code's `loss_unnormed`), with Adam at the code's learning rate 1e-3, constant; and evaluates:
  ppl                      exp(mean_d NLL_d / |d|) over the validation documents (the paper's and the code's
                           perplexity: per-document normalised, then averaged; also logged as val/ppl)
  ir_precision@f           cosine retrieval of the training documents by each validation document's representation
                           (h after the last word), the share of the top fraction f with the query's label
                           (methods/topics/metrics.py, the code's perform_IR_prec), at `ir_fractions`
  classification/*         accuracy and macro-F1 of a logistic regression (C = `classifier_c`) from the same
                           representations, fitted on the training split, scored on validation

Choices and deviations (also in configs/method/ctx_docnade.yaml and the README row):
- The LSTM gets no LM loss of its own: the code's scripts all run with --include-lstm-loss False.
- The code starts ctx-DocNADE from a trained DocNADE's W (--initialize-docnade True, --reload-docnade-embeddings);
  here both models start from random init and train for the same steps (the comparison the issue asks for).
- λ: the code's 0.1 for its perplexity runs (sigmoid) and 0.5 for IR (tanh); the paper grid-searches it.
- The BoW view is the document order (tasks/topics.py), so the LM context of v_i is exactly the text before it;
  the code's view is the log-count bag in a shuffled order and its context sums the LSTM at all occurrences of
  v_{i-1}, which can lie after v_i (the likelihood is then not a proper autoregressive one).
- The code selects the best validation checkpoint (early stopping on validation PPL or IR); here the last step.
- IR: validation documents query the training documents (the code: test queries the training set); n >= 1
  document at the smallest fractions. Classification: one C, validation split (the code: C list, test split).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from methods.base import Method
from methods.topics.metrics import IR_FRACTIONS

if TYPE_CHECKING:
    import torch
    from torch import nn


class CtxDocNADE(Method):
    """The document NLL with Adam (the textTOvec code's settings); perplexity, IR precision and classification."""

    needs_task = frozenset({"bag-of-words"})
    needs_model = frozenset({"topic-model"})

    def __init__(self, name: str = "ctx_docnade", lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, warmup_steps: int = 0, min_lr_ratio: float = 1.0,
                 ir_fractions: list[float] | tuple[float, ...] = IR_FRACTIONS, classifier_c: float = 1.0,
                 eval_batch_size: int = 64):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        problems = []
        fr = list(ir_fractions) if isinstance(ir_fractions, (list, tuple)) else None
        if not fr or not all(isinstance(f, (int, float)) and 0 < f <= 1 for f in fr):
            problems.append(f"method.ir_fractions: must be a non-empty list of fractions in (0, 1], got {ir_fractions!r}")
        if not (isinstance(classifier_c, (int, float)) and math.isfinite(classifier_c) and classifier_c > 0):
            problems.append(f"method.classifier_c: must be a positive number, got {classifier_c!r}")
        if not (isinstance(eval_batch_size, int) and eval_batch_size >= 1):
            problems.append(f"method.eval_batch_size: must be an integer >= 1, got {eval_batch_size!r}")
        if problems:
            raise ValueError("; ".join(problems))
        self.ir_fractions = tuple(float(f) for f in fr)
        self.classifier_c = float(classifier_c)
        self.eval_batch_size = int(eval_batch_size)

    def loss(self, module: Any, batch: dict) -> torch.Tensor:
        """mean_d NLL_d, NLL_d = -sum_i log p(v_i | v_<i) (the topic module's likelihood)."""
        return module.lm_loss(batch)

    def representations(self, model: nn.Module, data: Any, split: str):
        """(NLL_d (N,), |d| (N,), h after the last word (N, H)) of one split's documents, in order, float64."""
        import numpy as np
        import torch

        from methods.topics.module import model_inputs

        device = next(model.parameters()).device
        was = model.training
        model.eval()
        nll, lengths, reps = [], [], []
        with torch.no_grad():
            for batch in data.batches(split, self.eval_batch_size):
                batch = {k: v.to(device) for k, v in batch.items()}
                word, doc = model.word_nll(**model_inputs(batch))
                nll.append(word.double().sum(1).cpu())
                lengths.append(batch["bow_mask"].sum(1).cpu())
                reps.append(doc.double().cpu())
        model.train(was)
        return torch.cat(nll).numpy(), torch.cat(lengths).numpy().astype(np.float64), torch.cat(reps).numpy()

    def evaluate(self, model: nn.Module, data: Any) -> dict[str, float]:
        import numpy as np

        from methods.topics.metrics import classification, ir_precision

        nll, lengths, val_reps = self.representations(model, data, "val")
        _, _, train_reps = self.representations(model, data, "train")
        val_y, train_y = data.labels("val"), data.labels("train")
        out = {"ppl": float(np.exp(np.mean(nll / lengths))),
               "nll_per_doc": float(np.mean(nll))}
        for f, p in ir_precision(val_reps, val_y, train_reps, train_y, self.ir_fractions).items():
            out[f"ir_precision@{f:g}"] = p
        if len(np.unique(train_y)) > 1:
            for k, v in classification(train_reps, train_y, val_reps, val_y, self.classifier_c).items():
                out[f"classification/{k}"] = v
        return out
