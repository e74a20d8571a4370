"""Pairs sources for black-box prompt search (methods/inference/claps.py): a generated two-class task whose labels
depend on planted trigger tokens in a prompt slot (`TriggerCls`, dataset=trigger-cls), and SST-2 from the hub
(`HubSST2`, the paper's GPU recipe). Both write ClaPS's SST-2 template (Zhou et al. 2023, official code
rewards/text_classification_reward.py: " {prompt}. Sentence: {sentence_1}, Sentiment: ") as words:

    source = <prompt tokens> sentence: <sentence words> sentiment:        target = positive | negative

Validation pairs carry the empty prompt (source = "sentence: ... sentiment:"): the search prepends its prompt's
token ids to them, and the labels there follow the task's true rule.

TriggerCls, the design (our choice; the catalog's smoke: a tiny T5 made sensitive to a few trigger tokens):
    every sentence holds one cue of aspect A (a+<i>: positive, a-<i>: negative) and one of aspect B (b+<i>, b-<i>),
    independent of A, shuffled among neutral words w<i>.
    training prompts: 0..prompt_len filler words (p<i> or w<i>), and with probability trigger_rate one trigger
    at a random place in it, its kind uniform over
        tA<i>   the label follows aspect A (the task's "sentiment": what validation labels follow)
        tB<i>   the label follows aspect B
        tF<i>   the label is the opposite of aspect A
    no trigger: the label follows aspect B (the default rule; a B trigger only confirms it).
So a model trained on it labels the empty-prompt validation sentences (labels by A) right ~50% of the time (where
A and B agree), ~100% behind an A trigger, ~0% behind a flip trigger. `triggers` of each kind
are planted in a vocabulary of ~prompt_words + sentence words + cues candidate tokens: the prompts that matter are
rare, as in a real vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TEMPLATE_OPEN, TEMPLATE_CLOSE = "sentence:", "sentiment:"
VERBALIZERS = ("negative", "positive")  # class 0, class 1 (SST-2's order)
TRIGGER_KINDS = ("tA", "tB", "tF")


@dataclass
class PromptCorpus:
    """The fields of tasks/pair_sources.py's PairCorpus (methods do not import tasks/; the pairs task reads these)."""

    train_source: list[str]
    train_target: list[str]
    val_source: list[str]
    val_target: list[str]
    vocabulary: list[str] | None = None
    notes: dict = field(default_factory=dict)


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(stream)])))


def _positive(**values) -> None:
    for k, v in values.items():
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"dataset.generator.{k}: must be a positive integer, got {v!r}")


class TriggerCls:
    """trigger-cls: a 2-class task whose label rule the prompt's planted trigger tokens select (module docstring)."""

    provides = frozenset({"prompt-classification"})

    def __init__(self, sentence_words: int = 200, cue_words: int = 20, prompt_words: int = 600, triggers: int = 2,
                 min_words: int = 2, max_words: int = 5, prompt_len: int = 5, trigger_rate: float = 0.5,
                 train_size: int = 20000, val_size: int = 600, seed: int = 0):
        _positive(sentence_words=sentence_words, cue_words=cue_words, prompt_words=prompt_words, triggers=triggers,
                  min_words=min_words, max_words=max_words, prompt_len=prompt_len, train_size=train_size,
                  val_size=val_size)
        if min_words < 2 or max_words < min_words:
            raise ValueError(f"dataset.generator.min_words/max_words: need 2 <= min_words <= max_words (two cues a "
                             f"sentence), got {min_words}, {max_words}")
        if not 0.0 <= trigger_rate <= 1.0:
            raise ValueError(f"dataset.generator.trigger_rate: a probability in [0, 1], got {trigger_rate!r}")
        self.sentence_words, self.cue_words, self.prompt_words, self.triggers = (sentence_words, cue_words,
                                                                                  prompt_words, triggers)
        self.min_words, self.max_words, self.prompt_len = min_words, max_words, prompt_len
        self.trigger_rate, self.train_size, self.val_size, self.seed = float(trigger_rate), train_size, val_size, seed

    @property
    def max_target_words(self) -> int:
        """The longest source in words (prompt, template words, sentence); targets are one word."""
        return self.prompt_len + self.max_words + 2

    def trigger_words(self, kind: str) -> list[str]:
        return [f"{kind}{i}" for i in range(self.triggers)]

    def vocabulary(self) -> list[str]:
        from methods.losses.noisy_copy import SPECIALS

        cues = [f"{c}{i}" for c in ("a+", "a-", "b+", "b-") for i in range(self.cue_words)]
        return [*SPECIALS[:3], *VERBALIZERS, TEMPLATE_OPEN, TEMPLATE_CLOSE, *cues,
                *(f"w{i}" for i in range(self.sentence_words)), *(f"p{i}" for i in range(self.prompt_words)),
                *(w for k in TRIGGER_KINDS for w in self.trigger_words(k))]

    def sentences(self, n: int, rng: np.random.Generator) -> tuple[list[list[str]], np.ndarray, np.ndarray]:
        """(sentences, aspect-A labels, aspect-B labels), labels 1 = positive."""
        a, b = rng.integers(2, size=n), rng.integers(2, size=n)
        out = []
        for i in range(n):
            length = int(rng.integers(self.min_words, self.max_words + 1))
            words = [f"w{j}" for j in rng.integers(self.sentence_words, size=length - 2)]
            words += [f"a{'+-'[1 - a[i]]}{rng.integers(self.cue_words)}", f"b{'+-'[1 - b[i]]}{rng.integers(self.cue_words)}"]
            out.append([words[j] for j in rng.permutation(length)])
        return out, a, b

    def training_prompt(self, rng: np.random.Generator) -> tuple[list[str], str | None]:
        length = int(rng.integers(0, self.prompt_len + 1))
        share = self.prompt_words / (self.prompt_words + self.sentence_words)
        fill = [f"p{rng.integers(self.prompt_words)}" if rng.random() < share else f"w{rng.integers(self.sentence_words)}"
                for _ in range(length)]
        if length == 0 or rng.random() >= self.trigger_rate:
            return fill, None
        kind = TRIGGER_KINDS[int(rng.integers(len(TRIGGER_KINDS)))]
        fill[int(rng.integers(length))] = f"{kind}{rng.integers(self.triggers)}"
        return fill, kind

    @staticmethod
    def text(prompt: list[str], sentence: list[str]) -> str:
        return " ".join([*prompt, TEMPLATE_OPEN, *sentence, TEMPLATE_CLOSE])

    def generate(self, cache_dir: Path | None = None) -> PromptCorpus:
        train, a, b = self.sentences(self.train_size, _rng(self.seed, 0))
        rng = _rng(self.seed, 1)
        src, tgt, kinds = [], [], {k: 0 for k in (*TRIGGER_KINDS, "none")}
        for s, la, lb in zip(train, a, b):
            prompt, kind = self.training_prompt(rng)
            if kind == "tA":
                label = la
            elif kind == "tB":
                label = lb
            elif kind == "tF":
                label = 1 - la
            else:
                label = lb
            kinds[kind or "none"] += 1
            src.append(self.text(prompt, s))
            tgt.append(VERBALIZERS[label])
        val, va, _ = self.sentences(self.val_size, _rng(self.seed, 2))
        return PromptCorpus(src, tgt, [self.text([], s) for s in val], [VERBALIZERS[y] for y in va],
                            vocabulary=self.vocabulary(), notes={f"prompts_{k}": v for k, v in kinds.items()})


class HubSST2:
    """hf-sst2: SST-2 from the Hugging Face hub by name (the paper's task; clusters: needs a network or the datasets
    cache when the run builds its data), in ClaPS's SST-2 template: source ". Sentence: <sentence>, Sentiment:" (the
    prompt's ids go in front, so prompt + source reads " {prompt}. Sentence: {sentence_1}, Sentiment: "), target
    "negative" | "positive". Training pairs: `train_split` (unused by a search that does not train); validation:
    `val_split`, from which the search draws its few-shot sets and tests on the rest."""

    provides = frozenset({"prompt-classification"})

    def __init__(self, name: str = "stanfordnlp/sst2", config: str | None = None, text_key: str = "sentence",
                 label_key: str = "label", train_split: str = "train", val_split: str = "validation",
                 max_train: int | None = 2000, max_val: int | None = None):
        if not name:
            raise ValueError("dataset.generator.name: the hub dataset of SST-2 (e.g. stanfordnlp/sst2, SetFit/sst2)")
        for k, v in (("max_train", max_train), ("max_val", max_val)):
            if v is not None:
                _positive(**{k: v})
        self.name, self.config, self.text_key, self.label_key = name, config, text_key, label_key
        self.train_split, self.val_split, self.max_train, self.max_val = train_split, val_split, max_train, max_val

    max_target_words = None  # unknown before reading: the task truncates to model.seq_len

    def split(self, split: str, cap: int | None) -> tuple[list[str], list[str]]:
        import datasets

        rows = datasets.load_dataset(self.name, self.config, split=split if cap is None else f"{split}[:{cap}]")
        return ([f". Sentence: {r[self.text_key].strip()}, Sentiment:" for r in rows],
                [VERBALIZERS[int(r[self.label_key])] for r in rows])

    def generate(self, cache_dir: Path | None = None) -> PromptCorpus:
        ts, tt = self.split(self.train_split, self.max_train)
        vs, vt = self.split(self.val_split, self.max_val)
        return PromptCorpus(ts, tt, vs, vt, notes={"hub": self.name})
