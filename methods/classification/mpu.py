"""Multiscale Positive-Unlabeled Detection of AI-Generated Texts (Tian et al., ICLR 2024, arXiv:2305.18149).

Official code: github.com/YuchuanTian/AIGC_text_detector (pu_loss_mod.py, prior_kit.py, train.py,
multiscale_kit.py, option.py); every rule below is read from it.

Labels as in the code: y = 1 machine (AI) text, y = 0 human text; the CE head and the F1 (machine = positive
class, train.py's accuracy_sum) use that convention. The PU term turns it around: its *positive* class is
**human** text, its score is s = softmax(logits)[:, 0] = P(human), and short machine texts are "unlabeled".

Pseudo-labels, by the token length L of each example (non-pad tokens, special tokens included: the code's
(input_ids != pad_id).sum(-1), here batch["attention_mask"].sum(1)) and len_thres = 55:

    long human  (y = 0, L >= len_thres) -> P        short machine (y = 1, L < len_thres) -> U
    short human (y = 0, L <  len_thres) -> ignored  long machine  (y = 1, L >= len_thres) -> ignored (CE only)

Length-sensitive prior pi(L) (prior_kit.expectation_matrix, "a recurrent model in abstraction"): a walk on
{0..L} starts at 0 and moves +1 with probability 1 - pi, -1 with probability pi (clamped at both ends); after
L steps

    pi(L) = 1 - E[state_L] / L          (L >= 3),        pi(L) = pi    (L < 3)

which rises from pi (0.2) towards 2 pi (0.4): pi(10) = 0.367, pi(55) = 0.394, pi(512) = 0.399.

PU risk (pu_loss_mod.PULossauto, nnPU with beta = 0, gamma unused), with l(z) = sigmoid(-z) applied to the
probability s:

    R_P  = sum_{i in P} pi(L_i) l(s_i) / |P|
    R_N  = sum_{i in U} l(-s_i) / |U|  -  sum_{i in P} pi(L_i) l(-s_i) / |P|        (|.| floored at 1)
    L_PU = R_P + R_N,   or R_P alone when R_N < 0

Since s is a probability, l(-s) = sigmoid(s) lies in [0.5, 0.73]: for pi < 0.34 (pi(L) < 2 pi) R_N > 0 whenever the
batch has a U example, so the clamp fires exactly on batches with P examples and no U example.

    loss = CE + lambda * L_PU,    lambda = pu_weight = 0.4;   lambda = 0: the plain CE (module.lm_loss), bitwise.

Text multiscaling (multiscale_kit.py, `sentence_deletion-0.25`): each training text is split into sentences;
a text of one sentence is kept as it is; otherwise each sentence is dropped with probability p = 0.25 and the
rest are joined by one space; if every sentence was dropped, the original text is kept. Only whole sentences
are removed and no text becomes empty.

Defaults from option.py / the README command: prior 0.2, len_thres 55, lambda 0.4, p 0.25; AdamW at lr 5e-5,
weight decay 0, constant rate, batch 32, max length 512, one epoch (transformers 4.27's AdamW, which
`from transformers import *` puts over torch's: eps 1e-6, betas (0.9, 0.999)).

Deviations from the official code (also in configs/method/mpu.yaml):
- Sentence splitting: nltk's Punkt algorithm *untrained* (`PunktSentenceTokenizer()`: no pretrained English
  abbreviation list, which needs the punkt data download) by default; `sentence_splitter: nltk` uses
  nltk.sent_tokenize as the code does, where its data is installed.
- Sentence deletion is drawn once, before training, in `prepare_data` (one fixed deleted copy per text, seeded by
  (seed, row)); the code re-draws it each time a text is loaded (the same distribution for the paper's single
  epoch; with more epochs every pass here sees the same deleted copy). As in the code, every training text of both
  classes is multiscaled and the validation texts are not.
- pi(L) is computed by one walk propagated over all lengths at once, in float64 (the clamp at L is never reached
  within L steps, so the distribution after L steps is the same for every walk length >= L); the code raises a
  float32 (L+1)x(L+1) matrix to the L-th power per length. They agree to 5e-6 for L <= 512 (measured: the
  code's float32 rounding over L matrix products).
- The CE term (lambda > 0) is F.cross_entropy of the same forward's logits (one forward, as in the code); lambda = 0
  returns module.lm_loss(batch) itself.
- The PU term is computed in float32 from the logits, whatever the autocast dtype.
- `evaluate` (ours) adds accuracy and machine-class F1 on the short (L < len_thres tokens) and the long validation
  texts (eval/short/*, eval/long/*), beside the task's own eval/* metrics of the whole split.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods.base import Method
from methods.batching import pad_right

SPLITTERS = ("punkt", "nltk")
POSITIVE, UNLABELED, IGNORED = 1, -1, 0  # PU pseudo-labels (the code's convention)


# -- the length-sensitive prior ----------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _prior_table(max_length: int, prior: float) -> np.ndarray:
    dist = np.zeros(max_length + 1)
    dist[0] = 1.0
    states = np.arange(max_length + 1, dtype=np.float64)
    table = np.full(max_length + 1, prior, dtype=np.float64)
    for length in range(1, max_length + 1):
        nxt = np.zeros_like(dist)
        nxt[1:] += (1.0 - prior) * dist[:-1]   # +1 with probability 1 - pi
        nxt[:-1] += prior * dist[1:]            # -1 with probability pi
        nxt[0] += prior * dist[0]               # clamped at 0
        dist = nxt
        if length >= 3:
            table[length] = 1.0 - (dist * states).sum() / length
    table.setflags(write=False)
    return table


def length_prior(max_length: int, prior: float) -> np.ndarray:
    """pi(L) for L = 0..max_length (float64): pi for L < 3, else 1 - E[state after L steps] / L."""
    if max_length < 0 or not 0 < prior < 1:
        raise ValueError(f"length_prior: max_length >= 0 and 0 < prior < 1, got {max_length}, {prior}")
    return _prior_table(int(max_length), float(prior))


# -- pseudo-labels and the PU risk -------------------------------------------------------------------------
def pu_pseudo_labels(labels: torch.Tensor, lengths: torch.Tensor, len_thres: int) -> torch.Tensor:
    """1 (P) for long human texts, -1 (U) for short machine texts, 0 (ignored) otherwise; labels 1 = machine."""
    human, short = labels == 0, lengths < len_thres
    out = torch.zeros_like(labels, dtype=torch.long)
    out[human & ~short] = POSITIVE
    out[~human & short] = UNLABELED
    return out


def pu_risks(scores: torch.Tensor, pseudo: torch.Tensor, prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(R_P, R_N) of the human-probability scores s (B,), pseudo-labels (B,) and per-example priors (B,)."""
    def ell(z):
        return torch.sigmoid(-z)

    pos = (pseudo == POSITIVE).to(scores.dtype)
    unl = (pseudo == UNLABELED).to(scores.dtype)
    n_pos, n_unl = pos.sum().clamp_min(1), unl.sum().clamp_min(1)
    prior = prior.to(scores.dtype)
    r_p = (prior * pos / n_pos * ell(scores)).sum()
    r_n = ((unl / n_unl - prior * pos / n_pos) * ell(-scores)).sum()
    return r_p, r_n


def pu_loss(scores: torch.Tensor, pseudo: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """L_PU = R_P + R_N, or exactly R_P when R_N < 0 (the non-negative clamp, beta = 0)."""
    r_p, r_n = pu_risks(scores, pseudo, prior)
    return r_p if bool(r_n < 0) else r_p + r_n


def mpu_loss(logits: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, pu_weight: float,
             prior: float = 0.2, len_thres: int = 55) -> torch.Tensor:
    """CE + lambda * L_PU of binary logits (B, 2), labels (B,) with 1 = machine, token lengths (B,)."""
    logits32 = logits.float()
    ce = F.cross_entropy(logits32, labels)  # = ClassifierModule.lm_loss on these logits
    if pu_weight == 0:
        return ce
    scores = torch.softmax(logits32, dim=-1)[:, 0]  # P(human): the PU positive class
    longest = int(lengths.max())
    size = 512 if longest <= 512 else 1 << (longest - 1).bit_length()  # a few table sizes, each computed once
    table = torch.tensor(length_prior(size, prior), dtype=torch.float32, device=logits.device)
    pseudo = pu_pseudo_labels(labels, lengths, len_thres)
    return ce + pu_weight * pu_loss(scores, pseudo, table[lengths.long()])


# -- text multiscaling -------------------------------------------------------------------------------------
def split_sentences(text: str, splitter: str = "punkt") -> list[str]:
    """The sentences of `text`, by nltk's untrained Punkt (`punkt`) or nltk.sent_tokenize (`nltk`, needs its data)."""
    if splitter == "punkt":
        return _punkt().tokenize(text)
    if splitter == "nltk":
        from nltk.tokenize import sent_tokenize

        return sent_tokenize(text)
    raise ValueError(f"sentence_splitter: {splitter!r}; choose one of: {', '.join(SPLITTERS)}")


@lru_cache(maxsize=1)
def _punkt():
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PunktSentenceTokenizer()  # untrained: the Punkt rules without a learned abbreviation list


def delete_sentences(text: str, p: float, rng: np.random.Generator, splitter: str = "punkt") -> str:
    """multiscale_kit's sentence_deletion-p: drop each sentence with probability p, keep at least one."""
    sentences = split_sentences(text, splitter)
    if len(sentences) <= 1:
        return text
    keep = rng.random(len(sentences)) > p  # the code keeps a sentence when uniform(0, 1) > p
    if not keep.any():
        return text
    return " ".join(s for s, k in zip(sentences, keep) if k)


def multiscale(texts: list[str], p: float, seed: int, splitter: str = "punkt") -> list[str]:
    """Sentence deletion of every text; text i's draws come from a generator seeded by (seed, i)."""
    if p == 0:
        return list(texts)
    return [delete_sentences(t, p, np.random.default_rng([seed, i]), splitter) for i, t in enumerate(texts)]


# -- evaluation by length ----------------------------------------------------------------------------------
def binary_f1(pred: np.ndarray, labels: np.ndarray) -> float:
    """F1 of class 1 (machine), as train.py's accuracy_sum counts TP/FP/FN; 0 without any positive."""
    tp = int(((pred == 1) & (labels == 1)).sum())
    denom = 2 * tp + int(((pred == 1) & (labels == 0)).sum()) + int(((pred == 0) & (labels == 1)).sum())
    return 2 * tp / denom if denom else 0.0


@torch.no_grad()
def predict(model: nn.Module, ids: list[list[int]], pad_id: int, batch_size: int = 64) -> np.ndarray:
    """argmax class of each token-id row."""
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(ids), batch_size):
        rows = ids[start:start + batch_size]
        x, mask = pad_right(rows, pad_id)
        out.append(model(x.to(device), mask.to(device)).argmax(-1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


class MPU(Method):
    """CE + lambda * length-sensitive PU loss on short texts, with sentence-deletion multiscaling of the train set."""

    needs_task = frozenset({"text-classification"})

    def __init__(self, name: str = "mpu", lr: float = 5e-5, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0, warmup_steps: int = 0, min_lr_ratio: float = 1.0,
                 pu_weight: float = 0.4, prior: float = 0.2, len_thres: int = 55, deletion_prob: float = 0.25,
                 sentence_splitter: str = "punkt", seed: int | None = None):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        problems = [f"method.{k}: must be {want}, got {v}" for k, v, want, ok in (
            ("pu_weight", pu_weight, ">= 0", pu_weight >= 0), ("prior", prior, "in (0, 1)", 0 < prior < 1),
            ("len_thres", len_thres, ">= 0", len_thres >= 0),
            ("deletion_prob", deletion_prob, "in [0, 1]", 0 <= deletion_prob <= 1),
            ("sentence_splitter", sentence_splitter, f"one of {', '.join(SPLITTERS)}",
             sentence_splitter in SPLITTERS)) if not ok]
        if problems:
            raise ValueError("; ".join(problems))
        self.pu_weight, self.prior, self.len_thres = float(pu_weight), float(prior), int(len_thres)
        self.deletion_prob, self.sentence_splitter, self.seed = float(deletion_prob), sentence_splitter, seed
        self.stats: dict[str, float] = {}

    def _seed(self) -> int:
        return int(torch.initial_seed() if self.seed is None else self.seed)  # null: the run's seed

    def prepare_data(self, data):
        if data.task_type != "classification" or data.num_labels != 2:
            raise ValueError(f"mpu: needs a binary classification task (label 1 = machine text), got "
                             f"{data.task_type} with {data.num_labels} labels (dataset source {data.source!r})")
        if self.deletion_prob == 0:
            return data
        texts = multiscale(list(data.train_texts), self.deletion_prob, self._seed(), self.sentence_splitter)
        changed = sum(a != b for a, b in zip(texts, data.train_texts))
        self.stats = {"texts_changed": changed / max(1, len(texts)),
                      "chars_kept": sum(map(len, texts)) / max(1, sum(map(len, data.train_texts)))}
        return data.replace(train_texts=texts, train_labels=data.train_labels)

    def stage_log(self, stage: str) -> list[dict[str, float]]:
        return [dict(self.stats)] if stage == "prepare_data" and self.stats else []

    def loss(self, module, batch: dict) -> torch.Tensor:
        if self.pu_weight == 0:
            return module.lm_loss(batch)  # the baseline's loss, bit for bit
        lengths = batch["attention_mask"].sum(1)
        return mpu_loss(module.logits(batch), batch["labels"], lengths, self.pu_weight, self.prior, self.len_thres)

    def evaluate(self, model: nn.Module, data) -> dict[str, float]:
        """Accuracy and machine-class F1 on the short (L < len_thres tokens) and long validation texts."""
        ids = getattr(data, "val_ids", None) or data.encode(list(data.val_texts))
        labels = np.asarray(data.val_labels)
        pred = predict(model, ids, data.pad_id)
        lengths = np.array([len(r) for r in ids])
        out = {}
        for part, sel in (("short", lengths < self.len_thres), ("long", lengths >= self.len_thres)):
            out[f"{part}/n"] = float(sel.sum())
            if sel.any():
                out[f"{part}/f1"] = binary_f1(pred[sel], labels[sel])
                out[f"{part}/accuracy"] = float((pred[sel] == labels[sel]).mean())
        return out
