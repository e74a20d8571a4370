"""ERNIE-Gram: Pre-Training with Explicitly N-Gram Masked Language Modeling for Natural Language Understanding.
Dongling Xiao, Yu-Kun Li, Han Zhang, Yu Sun, Hao Tian, Hua Wu, Haifeng Wang (NAACL 2021, arXiv:2010.12148).
The official code (PaddlePaddle/ERNIE, repro branch) was not read: this follows the paper's description.

1. N-gram lexicon V_N by t-statistic over the pre-training corpus of N tokens (methods/pretraining/ngrams.py):
       t(w_1..w_n) = (p(w_1..w_n) - prod_i p(w_i)) / sqrt(p(w_1..w_n) / N),   2 <= n <= 3,
   the `lexicon_size` highest; text is segmented by forward maximum matching against V_N.
2. Explicit n-gram MLM: ~15% of the tokens are masked by units (a token or a lexicon n-gram); a masked n-gram is
   replaced by ONE [MASK] (the input shrinks by n - 1) whose label is its identity y in V_F ∪ V_N:
       L_coarse = - sum_{masked units} log p_theta(y | context)
3. Comprehensive n-gram prediction: n more [M] positions per masked n-gram predict its tokens; the attention mask lets
   them see the context but not each other:     L_fine = - sum_{[M] positions} log p_theta(w_j | context)
4. Enhanced relation modelling: a small generator G (its own MLM over V_F ∪ V_N, loss L_gen) samples y' ~ p_G(. | c)
   for every masked unit; y' replaces the [MASK] in the main model's input, which recovers the original units
   (coarse and fine) and detects the replaced positions (ELECTRA's replaced-token detection):
       L_rtd = - sum_{coarse positions i} [r_i log D(h_i) + (1 - r_i) log(1 - D(h_i))],   r_i = [x'_i != x_i]
   L = gen_weight L_gen + L_coarse + fine_weight L_fine + rtd_weight L_rtd. Fine-tuning discards the extra heads.

The masked inputs, the attention mask and the losses' module: methods/pretraining/ngram_mlm.py. The run's data is
the masked-LM task (dataset=stdlib-docs-mlm, tasks/mlm.py) and its model a BertForMaskedLM (model=bert-tiny);
validation is that task's: BERT's token-level masked-LM loss with fixed masks (val/loss), comparable across the
objectives below and method=adamw. Baselines on the same units and budget (`objective`): `span` = contiguous span MLM
(each token of a masked unit masked in place and predicted), `token` = token-level MLM (100% [MASK]).

The downstream probe (`probe`, evaluate stage): the trained encoder's mean-pooled last hidden states of labelled
texts (stdlib-packages: real docstrings by package; or keyword-cls, position variant), tokenized by the run's
tokenizer, into scikit-learn's logistic regression (methods/topics/metrics.py classification), fitted on a
stratified train split and scored on the rest: eval/probe_accuracy, eval/probe_macro_f1.

Choices and deviations (the paper's code was not read; everything below the four steps is ours or unverified):
- Units are tokens of the run's BPE (the paper: words, and Chinese characters); n-grams of orders 2 and 3 are
  ranked together by t; the lexicon is built from the run's training stream (EOS and special tokens never inside).
- Masking: units in a random order, taken while they fit a budget of round(mask_prob * T) tokens; a masked unit is
  always [MASK] (no 80/10/10 replacement); special tokens are never masked.
- Position ids: a collapsed n-gram sits at its first token's position; each [M] at its own token's position.
  A fine [M] sees the whole coarse stream (its n-gram's coarse position included: a [MASK] or the generator's
  sample), itself, and no other [M].
- The generator is a separate BertForMaskedLM (generator_hidden/layers/heads; not sharing embeddings with the main
  model, unlike ELECTRA), with its own n-gram table; it reads the coarse stream with [MASK]s; its samples are drawn
  by Gumbel-max from CPU noise (special tokens banned) and are not differentiated through. RTD is scored at every
  coarse position; rtd_weight defaults to 1 (ELECTRA weighs its discriminator by 50 against its generator).
- The n-gram table is tied between the input (embedding generator samples) and the output (the lexicon's logits),
  as BERT ties its word embeddings; it and the generator and RTD head are trained with the model (the same AdamW and
  schedule) and are not part of the saved model's weights (model.init_from of a fine-tune loads a plain BERT).
- Probe: a frozen-feature linear probe (the paper fine-tunes on GLUE/SQuAD); the stdlib-packages texts are
  docstrings, as the pre-training corpus is (in-domain, labels never seen in pre-training).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from methods.base import Method
from methods.pretraining.ngrams import OBJECTIVES

if TYPE_CHECKING:
    from torch import nn

log = logging.getLogger(__name__)

PROBE_SOURCES = ("stdlib-packages", "keyword-cls", "none")
PROBE_KEYS = {"source": "stdlib-packages", "min_chars": 40, "max_per_class": 200, "val_fraction": 0.4, "c": 1.0,
              "keyword_n": 1200}


class ErnieGram(Method):
    needs_task = frozenset({"masked-tokens"})
    needs_model = frozenset({"masked-lm"})

    def __init__(self, name: str = "ernie_gram", lr: float = 3e-3, betas=(0.9, 0.95), eps: float = 1e-8,
                 weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 objective: str = "explicit", comprehensive: bool = True, generator: bool = True,
                 mask_prob: float = 0.15, lexicon_size: int = 500, max_n: int = 3, min_count: int = 5,
                 generator_hidden: int = 64, generator_layers: int = 1, generator_heads: int = 2,
                 gen_weight: float = 1.0, fine_weight: float = 1.0, rtd_weight: float = 1.0,
                 probe: dict | None = None):
        problems = []
        try:
            super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        except ValueError as e:
            problems += str(e).split("; ")
        if objective not in OBJECTIVES:
            problems.append(f"method.objective: must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if not 0.0 < float(mask_prob) <= 1.0:
            problems.append(f"method.mask_prob: must be in (0, 1], got {mask_prob}")
        for key, v, lo in (("lexicon_size", lexicon_size, 1), ("max_n", max_n, 2), ("min_count", min_count, 1),
                           ("generator_hidden", generator_hidden, 1), ("generator_layers", generator_layers, 1),
                           ("generator_heads", generator_heads, 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                problems.append(f"method.{key}: must be an integer >= {lo}, got {v!r}")
        if isinstance(generator_hidden, int) and isinstance(generator_heads, int) and generator_heads > 0 \
                and generator_hidden % generator_heads:
            problems.append(f"method.generator_hidden: must be divisible by method.generator_heads "
                            f"({generator_hidden} % {generator_heads} != 0)")
        for key, v in (("gen_weight", gen_weight), ("fine_weight", fine_weight), ("rtd_weight", rtd_weight)):
            if float(v) < 0:
                problems.append(f"method.{key}: must be >= 0, got {v}")
        spec = dict(probe or {})
        for k in spec:
            if k not in PROBE_KEYS:
                problems.append(f"method.probe.{k}: unknown key; choose among: {', '.join(PROBE_KEYS)}")
        spec = {**PROBE_KEYS, **spec}
        if spec["source"] not in PROBE_SOURCES:
            problems.append(f"method.probe.source: must be one of {', '.join(PROBE_SOURCES)}, got {spec['source']!r}")
        if not 0.0 < float(spec["val_fraction"]) < 1.0:
            problems.append(f"method.probe.val_fraction: must be in (0, 1), got {spec['val_fraction']}")
        if problems:
            raise ValueError("; ".join(problems))
        self.name = name
        self.objective, self.comprehensive, self.generator = objective, bool(comprehensive), bool(generator)
        self.mask_prob = float(mask_prob)
        self.lexicon_size, self.max_n, self.min_count = int(lexicon_size), int(max_n), int(min_count)
        self.generator_hidden, self.generator_layers = int(generator_hidden), int(generator_layers)
        self.generator_heads = int(generator_heads)
        self.gen_weight, self.fine_weight, self.rtd_weight = float(gen_weight), float(fine_weight), float(rtd_weight)
        self.probe = spec
        self.lexicon = None  # NgramLexicon, built by prepare_data
        self.task_module = None  # the masked-LM task's module class (prepare_data reads it; NgramMLM extends it)

    @property
    def module_class(self):
        from methods.pretraining.ngram_mlm import with_task_module

        if self.task_module is None:
            raise RuntimeError("method=ernie_gram: module_class before prepare_data (which reads the task's module)")
        return with_task_module(self.task_module)

    # -- stages ----------------------------------------------------------------------------------
    def prepare_data(self, data: Any) -> Any:
        """The n-gram lexicon of the training stream (the data itself is unchanged)."""
        from methods.pretraining.ngrams import NgramLexicon

        if not hasattr(data, "mask_id"):
            raise ValueError(f"dataset: method=ernie_gram needs masked-LM data (dataset=stdlib-docs-mlm), got "
                             f"{type(data).__name__}")
        self.task_module = type(data).module_class
        exclude = tuple(sorted(set(data.special_ids) | {int(data.mask_id)}))
        self.lexicon = NgramLexicon.build(data.train, data.vocab_size, self.lexicon_size, self.max_n, self.min_count,
                                          exclude)
        tok = getattr(data, "tokenizer", None)
        top = ", ".join(repr(tok.decode(list(g))) if tok is not None else str(g) for g in self.lexicon.ngrams[:8])
        log.info("ernie_gram: lexicon of %d n-grams (t from %.1f to %.1f); top: %s", len(self.lexicon),
                 float(self.lexicon.scores[0]) if len(self.lexicon) else 0.0,
                 float(self.lexicon.scores[-1]) if len(self.lexicon) else 0.0, top)
        return data

    def loss(self, module: Any, batch):
        return module.ernie_loss(batch)

    def configure_optimizers(self, module: Any) -> dict:
        """The baseline's AdamW + schedule over the model and the module's n-gram tables, generator and RTD head."""
        import torch

        opt = self.build_optimizer(module)
        total = max(1, int(module.trainer.max_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_lambda(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- the probe -------------------------------------------------------------------------------
    def probe_texts(self, cache_dir=None):
        """(texts, labels) of the probe's labelled data."""
        from methods.classification import corpora

        p = self.probe
        if p["source"] == "stdlib-packages":
            d = corpora.stdlib_packages(min_chars=int(p["min_chars"]), max_per_class=p["max_per_class"],
                                        cache_dir=cache_dir)
        else:
            d = corpora.keyword_cls(n=int(p["keyword_n"]), variant="position")
        return list(d.texts), list(d.labels)

    def evaluate(self, model: nn.Module, data: Any) -> dict[str, float]:
        """The linear probe on the frozen encoder (see the module docstring)."""
        import numpy as np

        from methods.classification import corpora
        from methods.pretraining.ngram_mlm import mean_pooled
        from methods.topics.metrics import classification

        if self.probe["source"] == "none":
            return {}
        texts, labels = self.probe_texts()
        train_idx, val_idx = corpora.stratified_split(np.asarray(labels), float(self.probe["val_fraction"]), texts)
        ids = data.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=int(data.seq_len))["input_ids"]
        feats = mean_pooled(model.base_model, ids)
        y = np.asarray(labels)
        out = classification(feats[train_idx], y[train_idx], feats[val_idx], y[val_idx], float(self.probe["c"]))
        return {"probe_accuracy": out["accuracy"], "probe_macro_f1": out["macro_f1"],
                "probe_majority": float(np.mean(y[val_idx] == np.bincount(y[train_idx]).argmax()))}
