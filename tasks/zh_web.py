"""Synthetic Chinese web text (tasks.zh_web.ZhWebTask) for MDFG-tool (method=mdfg_filter): a multi-domain task
(tasks/mixture.py MixtureData) with two domains,
    web     the raw crawl: methods/data/mdfg_corpus.py web_corpus (clean, mixed, boilerplate and toxic documents
            from wordfreq's Chinese words, plus the 12 stage-1 rule probes); sampled for training
    clean   held-out clean documents (another seed), `sample: false`: its val split gives val/loss/clean
and the labelled examples the filter's classifiers train on (`labelled`: quality lines and toxicity documents,
generated with a seed of their own). Documents are split train/val by a hash of their text; one byte-level BPE
tokenizer is trained on the train documents. Provides the capability "zh-web" (data.labelled).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from methods.data.mdfg_corpus import labelled_lines, web_corpus
from tasks.base import BuildContext, Task
from tasks.errors import ConfigError
from tasks.lm_corpus import check_tokenizer
from tasks.mixture import MixtureData, mixture_from_documents


@dataclass
class ZhWebData(MixtureData):
    labelled: dict = field(default_factory=dict, repr=False)  # {"quality": (texts, labels), "toxicity": (...)}


class ZhWebTask(Task):
    provides = frozenset({"tokens", "documents", "domains", "zh-web"})
    model_kinds = ("causal-lm",)

    def __init__(self, documents: int = 300, clean_documents: int = 60, labelled: int = 100, seed: int = 0,
                 val_fraction: float = 0.1, tokenizer: dict | None = None):
        problems = [f"dataset.{k}: must be a positive integer, got {v!r}" for k, v in
                    (("documents", documents), ("clean_documents", clean_documents), ("labelled", labelled))
                    if not isinstance(v, int) or isinstance(v, bool) or v <= 0]
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            problems.append(f"dataset.seed: must be a non-negative integer, got {seed!r}")
        if not 0.0 < float(val_fraction) < 1.0:
            problems.append(f"dataset.val_fraction: must be in (0, 1), got {val_fraction}")
        tokenizer = check_tokenizer(tokenizer, problems)
        if problems:
            raise ValueError("; ".join(problems))
        self.spec = OmegaConf.create({"documents": documents, "clean_documents": clean_documents,
                                      "labelled": labelled, "seed": seed, "val_fraction": float(val_fraction),
                                      "tokenizer": tokenizer})

    def vocab_size_hint(self) -> int | None:
        return int(self.spec.tokenizer.vocab_size) if self.spec.tokenizer.kind == "train" else None

    def build(self, ctx: BuildContext) -> ZhWebData:
        s, cache = self.spec, Path(ctx.cache_dir).expanduser()
        web = [d["text"] for d in web_corpus(int(s.documents), int(s.seed))]
        clean = [d["text"] for d in web_corpus(4 * int(s.clean_documents), int(s.seed) + 1, probes=False)
                 if d["kind"] == "clean"][: int(s.clean_documents)]
        docs = {"web": list(dict.fromkeys(web)), "clean": [t for t in dict.fromkeys(clean) if t not in set(web)]}
        data = mixture_from_documents(docs, [True, False], s, ctx.seq_len, cache, "zh-web-v1", data_class=ZhWebData,
                                      tokenizer_domains=["web"], where=lambda name: "dataset.documents",
                                      fix="raise the documents",
                                      labelled=labelled_lines(int(s.labelled), seed=1000 + int(s.seed)))
        names = list(docs)
        data.accumulate, data.max_steps = int(ctx.accumulate_grad_batches), int(ctx.max_steps)
        for name in names:
            if data.n_blocks(name, "val") == 0 or data.n_blocks(name, "train") == 0:
                raise ConfigError(f"dataset.documents: domain {name} has a split shorter than model.seq_len + 1 "
                                  "tokens; raise dataset.documents / dataset.clean_documents")
        return data
