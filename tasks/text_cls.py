"""Text classification and regression for encoders: labelled texts, an exact stratified split, (B, L) batches
that resume exactly, a classifier head on any encoder, and scikit-learn's metrics.

    python -m runner model=bert-tiny dataset=stdlib-packages        # 11-way: which stdlib package wrote it
    python -m runner model=minilm dataset=aigt                      # human vs machine text (real MiniLM)
    python -m runner model=bert-tiny dataset=synthetic-essays       # essay scoring (regression, QWK)

Sources (methods/classification/corpora.py says exactly what each is):
  stdlib-packages   real text and real labels: this Python's standard-library docstrings by top-level package
  keyword-cls       generated; the label is carried by the order of two keywords (variant=position) or by
                    which keyword occurs (variant=bag): a bag of words cannot solve the first
  synthetic-essays  generated regression: an integer score that is a noisy function of keyword counts and
                    length (TextRegression)
  aigt              AI-generated-text detection: human = held-out prose of the embedded corpus, machine = the
                    continuations of the same openings by a causal LM the runner trains and caches (`lm`),
                    cut to the same lengths; `generator.length` short (< 55 tokens) or long

Splits are exact and stratified (per class, by a hash of each text): `val_fraction` of every class goes to
validation. The tokenizer (`tokenizer.kind`): `auto` takes a pretrained model's own (model.init_from an HF
directory with a tokenizer, e.g. model=minilm's WordPiece, or hf://name) and otherwise trains `train`: an uncased WordPiece
on the training texts ([PAD]=0, [UNK], [CLS], [SEP], [MASK]; every text is [CLS] ... [SEP]), cached by
content; `hf` loads `tokenizer.name`.

The module (ClassifierModule) wraps the architecture's model in a methods.classification.SequenceClassifier
(pooling `head.pooling` -> dropout -> linear) and trains it with cross-entropy, or MSE for regression (the
baseline's loss, `lm_loss`; a method overrides `Method.loss`). Validation logs val/loss, val/accuracy,
val/macro_f1, val/auc (binary), or val/loss (MSE), val/qwk, val/pearson; the task's evaluate reports the same
on the whole validation split as eval/* and writes a confusion-matrix figure (`figures`).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from methods.classification import corpora
from tasks.base import BuildContext, Task, TaskData
from tasks.common import (
    cached_stdlib_documents,
    check_encoder_tokenizer,
    content_hash,
    encoder_tokenizer,
    split_documents,
)
from tasks.errors import ConfigError

log = logging.getLogger(__name__)

# source name -> (the corpora function that makes it, whether it is a regression source)
SOURCES: dict[str, tuple[str, bool]] = {
    "stdlib-packages": ("stdlib_packages", False),
    "keyword-cls": ("keyword_cls", False),
    "synthetic-essays": ("synthetic_essays", True),
    "aigt": ("aigt_pairs", False),
}
POOLING = ("cls", "mean", "max")  # methods.classification.classifier.POOLING (not imported here: it imports torch)
# the causal LM that writes aigt's machine side: a model and a dataset option of configs/, trained once and
# cached by the runner (runner/trained.py); its own seed, so that every run's data is the same
LM_DEFAULTS = {"model": "llama-tiny", "model_args": {}, "dataset": "stdlib-docs", "dataset_args": {"val_fraction": 0.5},
               "seed": 0, "temperature": 1.0, "top_k": 0, "batch_size": 64}


# ---------------------------------------------------------------------------------------------- data
@dataclass
class TextClsData(TaskData):
    """Labelled texts, encoded: what the run and every method hook get (see the module docstring)."""

    source: str
    task_type: str  # classification | regression
    label_names: list[str]
    train_texts: list[str]
    val_texts: list[str]
    train_labels: np.ndarray
    val_labels: np.ndarray
    tokenizer: Any
    vocab_size: int
    seq_len: int
    pooling: str = "cls"
    dropout: float = 0.1
    score_range: tuple[int, int] | None = None
    meta: dict = field(default_factory=dict)
    train_ids: list[list[int]] = field(default_factory=list)
    val_ids: list[list[int]] = field(default_factory=list)

    @property
    def module_class(self):  # imported when a run builds its module (Lightning and torch), not to validate a config
        from methods.classification.module import ClassifierModule

        return ClassifierModule

    def __post_init__(self):
        if not self.train_ids:
            self.train_ids = self.encode(self.train_texts)
        if not self.val_ids:
            self.val_ids = self.encode(self.val_texts)

    @property
    def num_labels(self) -> int:
        return 1 if self.task_type == "regression" else len(self.label_names)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids with the tokenizer's special tokens ([CLS] ... [SEP]), truncated to seq_len."""
        if not texts:
            return []
        return self.tokenizer(list(texts), truncation=True, max_length=self.seq_len)["input_ids"]

    def replace(self, train_texts=None, train_labels=None, val_texts=None, val_labels=None) -> TextClsData:
        """A new data object with these examples (re-encoded): what a method's prepare_data returns."""
        def pick(new, old):
            return old if new is None else new

        tt, vt = pick(train_texts, self.train_texts), pick(val_texts, self.val_texts)
        tl = np.asarray(pick(train_labels, self.train_labels))
        vl = np.asarray(pick(val_labels, self.val_labels))
        if len(tt) != len(tl) or len(vt) != len(vl):
            raise ValueError(f"replace: {len(tt)} train texts for {len(tl)} labels, {len(vt)} val texts for {len(vl)}")
        return replace(self, train_texts=list(tt), val_texts=list(vt), train_labels=tl, val_labels=vl,
                       train_ids=self.encode(tt) if train_texts is not None else self.train_ids,
                       val_ids=self.encode(vt) if val_texts is not None else self.val_ids)

    # -- the task protocol -------------------------------------------------------------------
    def make_loaders(self, batch_size: int, total_micro_batches: int, seed: int, start=lambda: 0, rank: int = 0,
                     world: int = 1, val_batches: int | None = None, num_workers: int = 0):
        """Training batches are a pure function of the global micro-batch index (ResumableBatchSampler);
        validation is the val split in order (capped at `val_batches` batches per rank)."""
        import torch

        from tasks.batches import labelled_loaders

        return labelled_loaders((self.train_ids, self.train_labels), (self.val_ids, self.val_labels), self.pad_id,
                                batch_size, total_micro_batches, seed, start, rank, world, val_batches, num_workers,
                                label_dtype=torch.float32 if self.task_type == "regression" else torch.long)

    def counts(self) -> dict[str, int]:
        out = {"train_examples": len(self.train_texts), "val_examples": len(self.val_texts)}
        if self.task_type == "classification":
            out["classes"] = len(self.label_names)
        return out

    def baselines(self, val_dl) -> dict[str, float]:
        """What predicting the training majority class (classification) or the training mean score
        (regression) scores on the validation split: the floor to beat."""
        y = np.asarray(self.val_labels)
        if self.task_type == "regression":
            return {"val/mean_predictor_mse": float(np.mean((y - float(np.mean(self.train_labels))) ** 2))}
        majority = np.bincount(np.asarray(self.train_labels, dtype=np.int64), minlength=self.num_labels).argmax()
        return {"val/majority_accuracy": float(np.mean(y == majority))}

    def predict(self, model, texts_ids: list[list[int]] | None = None, batch_size: int = 64) -> np.ndarray:
        """The model's class probabilities (N, C), or scores (N,) for regression, on `texts_ids` (default: the
        validation split)."""
        import torch

        ids = self.val_ids if texts_ids is None else texts_ids
        device = next(model.parameters()).device
        from methods.batching import pad_right

        was_training = model.training
        model.eval()
        out = []
        with torch.no_grad():
            for i in range(0, len(ids), batch_size):
                x, mask = pad_right(ids[i:i + batch_size], self.pad_id)
                logits = model(x.to(device), mask.to(device)).float()
                out.append(logits.cpu() if self.task_type == "regression" else logits.softmax(-1).cpu())
        model.train(was_training)
        return torch.cat(out).numpy() if out else np.zeros((0,) if self.task_type == "regression" else (0, self.num_labels))

    def evaluate(self, model) -> dict[str, float]:
        """scikit-learn's metrics of the final model on the whole validation split."""
        from methods.classification.metrics import classification_metrics, regression_metrics

        pred = self.predict(model)
        if self.task_type == "regression":
            return regression_metrics(self.val_labels, pred, self.score_range)
        return classification_metrics(self.val_labels, pred)

    def figures(self, model, directory: Path) -> dict[str, Path]:
        """The confusion matrix of the final model on the validation split (classification)."""
        if self.task_type == "regression":
            return {}
        from methods.classification.metrics import confusion_matrix_figure

        preds = self.predict(model).argmax(-1)
        path = confusion_matrix_figure(self.val_labels, preds, self.label_names, Path(directory) / "confusion_matrix.png",
                                       title=f"{self.source}: validation confusion matrix")
        return {"confusion_matrix": path}


# ---------------------------------------------------------------------------------------------- the task
def _check_args(fn, args: dict, key: str, skip: tuple[str, ...] = ()) -> None:
    params = inspect.signature(fn).parameters
    unknown = sorted(set(args) - set(params) - set(skip))
    if unknown:
        valid = [p for p in params if p not in ("human_texts", "generate")]
        raise ValueError(f"{key}.{unknown[0]}: not an argument of {fn.__name__}; choose from: {', '.join(valid)}")


class TextClassification(Task):
    """Labelled texts for an encoder with a classifier head (see the module docstring)."""

    provides = frozenset({"text-classification"})
    model_kinds = ("encoder", "masked-lm")
    regression = False

    def __init__(self, source: str = "stdlib-packages", generator: dict | None = None, val_fraction: float = 0.2,
                 tokenizer: dict | None = None, head: dict | None = None, lm: dict | None = None,
                 max_examples: int | None = None):
        if source not in SOURCES:
            raise ValueError(f"dataset.source: {source!r}; choose one of: {', '.join(SOURCES)}")
        if SOURCES[source][1] != self.regression:
            other = "tasks.text_cls.TextRegression" if SOURCES[source][1] else "tasks.text_cls.TextClassification"
            raise ValueError(f"dataset.source: {source} is a {'regression' if SOURCES[source][1] else 'classification'} "
                             f"source; its task is {other}")
        self.source = source
        self.fn = getattr(corpora, SOURCES[source][0])
        self.generator = dict(generator or {})
        _check_args(self.fn, self.generator, "dataset.generator")
        if not 0 < float(val_fraction) < 1:
            raise ValueError(f"dataset.val_fraction: {val_fraction}; a fraction in (0, 1)")
        self.val_fraction = float(val_fraction)
        self.tokenizer = check_encoder_tokenizer(tokenizer)
        self.head = {"pooling": "cls", "dropout": 0.1, **(head or {})}
        if self.head["pooling"] not in POOLING:
            raise ValueError(f"dataset.head.pooling: {self.head['pooling']!r}; choose one of: {', '.join(POOLING)}")
        unknown = sorted(set(lm or {}) - set(LM_DEFAULTS))
        if unknown:
            raise ValueError(f"dataset.lm.{unknown[0]}: unknown; choose from: {', '.join(LM_DEFAULTS)}")
        self.lm = {**LM_DEFAULTS, **(lm or {})}
        if max_examples is not None and int(max_examples) < 2:
            raise ValueError(f"dataset.max_examples: {max_examples}; at least 2 (or null: all)")
        self.max_examples = None if max_examples is None else int(max_examples)

    # -- building ------------------------------------------------------------------------------
    def _texts(self, ctx: BuildContext) -> corpora.LabelledTexts:
        if "cache_dir" in inspect.signature(self.fn).parameters:  # a source that caches what it reads
            return self.fn(**{"cache_dir": ctx.cache_dir, **self.generator})
        if self.source != "aigt":
            return self.fn(**self.generator)
        return self._aigt(ctx)

    def _aigt(self, ctx: BuildContext) -> corpora.LabelledTexts:
        """aigt's texts, cached under the cache dir by the writer LM (its run directory's key), the sampling and
        the generator's arguments: sampling them takes minutes, every later run with the same data reads them."""
        import json
        import os

        path = self._writer_path(ctx)
        sampling = {k: self.lm[k] for k in ("seed", "temperature", "top_k", "batch_size")}
        key = content_hash("aigt-v1", Path(path).name, sampling, self.generator,
                           content_hash(*self._human_texts(ctx)))
        cached = Path(ctx.cache_dir) / "aigt" / f"{key}.json"
        if cached.exists():
            d = json.loads(cached.read_text())
            return corpora.LabelledTexts(d["texts"], np.asarray(d["labels"]), d["label_names"], d["task_type"],
                                         meta={k: np.asarray(v) for k, v in d["meta"].items()})
        log.info("aigt: writing the machine side with the writer LM %s (cached at %s)", path, cached)
        texts = self.fn(self._human_texts(ctx), self._writer(ctx, path), **self.generator)
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"texts": texts.texts, "labels": texts.labels.tolist(), "label_names": texts.label_names,
                                   "task_type": texts.task_type,
                                   "meta": {k: np.asarray(v).tolist() for k, v in texts.meta.items()}}))
        os.replace(tmp, cached)
        return texts

    def _human_texts(self, ctx: BuildContext) -> list[str]:
        """The embedded corpus's documents the writer LM did not train on (its dataset's validation split)."""
        if self.lm["dataset"] != "stdlib-docs":
            raise ConfigError("dataset.lm.dataset: aigt's human side is the embedded stdlib-docs prose the writer "
                              "LM did not train on; the writer trains on stdlib-docs")
        fraction = float({"val_fraction": 0.05, **self.lm["dataset_args"]}["val_fraction"])
        return split_documents(cached_stdlib_documents(ctx.cache_dir), fraction)[1]

    def _writer_path(self, ctx: BuildContext) -> Path:
        """The run directory of the writer LM: the base LM of its own model and corpus (the runner's shared cache)."""
        if ctx.trained_model is None:
            raise ConfigError("dataset=aigt: its machine texts come from a causal LM the runner trains; build it "
                              "through the runner (python -m runner dataset=aigt ...)")
        lm = self.lm
        spec = {"model": (lm["model"], dict(lm["model_args"])), "dataset": (lm["dataset"], dict(lm["dataset_args"])),
                "seed": int(lm["seed"])}
        return Path(ctx.trained_model.path("base", **spec))

    def _writer(self, ctx: BuildContext, path: Path):
        """generate(openings, lengths) -> continuations by the writer LM saved at `path`."""
        lm = self.lm
        from transformers import AutoTokenizer

        model = ctx.trained_model.load(str(path))
        tok = AutoTokenizer.from_pretrained(str(Path(path) / "tokenizer"))
        return LMWriter(model, tok, seed=int(lm["seed"]), temperature=float(lm["temperature"]), top_k=int(lm["top_k"]),
                        batch_size=int(lm["batch_size"]), max_len=int(getattr(model.config, "max_position_embeddings", 0) or 0))

    def build(self, ctx: BuildContext) -> TextClsData:
        texts = self._texts(ctx)
        idx = np.arange(len(texts.texts))
        if self.max_examples is not None and len(idx) > self.max_examples:  # a stratified subsample, by hash
            keys = [str(k) for k in texts.meta["openings"]] if "openings" in texts.meta else texts.texts
            keep, _ = corpora.stratified_split(texts.labels, 1 - self.max_examples / len(idx), keys)
            idx = np.sort(np.asarray(keep))
        pick = [texts.texts[i] for i in idx]
        labels = np.asarray(texts.labels)[idx]
        # examples that share a key stay on one side (aigt: the human and machine sides of one opening)
        keys = [str(k) for k in np.asarray(texts.meta["openings"])[idx]] if "openings" in texts.meta else pick
        train_idx, val_idx = corpora.stratified_split(labels, self.val_fraction, keys)
        train_idx, val_idx = np.asarray(train_idx, dtype=np.int64), np.asarray(val_idx, dtype=np.int64)
        train_texts, val_texts = [pick[i] for i in train_idx], [pick[i] for i in val_idx]
        tok = encoder_tokenizer(self.tokenizer, ctx.model_source, train_texts, ctx.cache_dir)
        meta = {k: np.asarray(v)[idx] for k, v in texts.meta.items() if len(v) == len(texts.texts)}
        meta = {**{f"train_{k}": v[train_idx] for k, v in meta.items()}, **{f"val_{k}": v[val_idx] for k, v in meta.items()}}
        data = TextClsData(self.source, texts.task_type, list(texts.label_names), train_texts, val_texts,
                           labels[train_idx], labels[val_idx], tok, len(tok), int(ctx.seq_len),
                           pooling=self.head["pooling"], dropout=float(self.head["dropout"]),
                           score_range=texts.score_range, meta=meta)
        log.info("%s: %d train / %d val examples%s, tokenizer %d tokens", self.source, len(train_texts), len(val_texts),
                 f", {len(texts.label_names)} classes" if texts.label_names else " (regression)", len(tok))
        return data


class TextRegression(TextClassification):
    """Texts with integer scores (synthetic-essays): a regressor head, MSE, QWK."""

    provides = frozenset({"text-regression"})
    regression = True

    def __init__(self, source: str = "synthetic-essays", **kwargs):
        super().__init__(source, **kwargs)


# ---------------------------------------------------------------------------------------------- the writer LM
class LMWriter:
    """Continuations of openings by a causal LM (transformers `generate`, KV-cached), sampled (temperature,
    top-k) with a seeded RNG: the machine side of aigt. `__call__(openings, lengths)`: each opening continued
    to `lengths[i]` words (EOS is never sampled; the text is cut to words after decoding)."""

    def __init__(self, model, tokenizer, seed: int = 0, temperature: float = 1.0, top_k: int = 0,
                 batch_size: int = 64, max_len: int = 0):
        self.model, self.tok, self.seed = model, tokenizer, seed
        self.temperature, self.top_k, self.batch_size, self.max_len = temperature, top_k, batch_size, max_len

    def __call__(self, openings: list[str], lengths: list[int]) -> list[str]:
        import torch

        out: list[str] = []
        with torch.random.fork_rng():  # the caller's RNG is left as it was
            for k, i in enumerate(range(0, len(openings), self.batch_size)):
                torch.manual_seed(self.seed * 100_003 + k)  # each batch its own stream: the same text on resume
                out += self._batch(openings[i:i + self.batch_size], lengths[i:i + self.batch_size])
        return out

    def _batch(self, openings: list[str], lengths: list[int]) -> list[str]:
        import torch

        device = next(self.model.parameters()).device
        prompts = [self.tok(o, add_special_tokens=False)["input_ids"] for o in openings]
        width = max(map(len, prompts))
        # tokens to sample: ~1.5-2.5 per word for a small BPE (cut to words after); within the model's length
        budget = int(3 * max(lengths) + 8)
        if self.max_len:
            budget = max(1, min(budget, 2 * self.max_len - width))
        eos = self.tok.eos_token_id
        ids = torch.full((len(prompts), width), eos, dtype=torch.long)  # left-padded: rows continue together
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for b, prompt in enumerate(prompts):
            ids[b, width - len(prompt):] = torch.tensor(prompt)
            mask[b, width - len(prompt):] = 1
        with torch.no_grad():
            tokens = self.model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True, max_new_tokens=budget,
                min_new_tokens=budget, temperature=max(self.temperature, 1e-6), top_k=self.top_k or None, top_p=None,
                pad_token_id=eos, eos_token_id=None, suppress_tokens=[eos], use_cache=True)[:, width:]
        texts = self.tok.batch_decode(tokens.tolist(), skip_special_tokens=True)
        return [" ".join(t.split()[:n]) for t, n in zip(texts, lengths)]
