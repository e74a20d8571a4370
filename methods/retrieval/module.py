"""The LightningModule of retrieval (tasks/retrieval.py): a bi-encoder trained with InfoNCE over in-batch, hard and
memory-bank negatives, and full-corpus retrieval at validation.

A batch is a dict (tasks/retrieval.py builds it):

    q_input_ids, q_attention_mask   (B, Lq)   the queries
    p_input_ids, p_attention_mask   (B, Lp)   their positive passages
    n_input_ids, n_attention_mask   (B·H, Lp) H hard negatives per query (rows i·H .. i·H + H − 1 are query i's),
    n_rows                          (B, H)    when the task mines them (dataset.negatives.hard = H > 0)
    index (B,), p_rows (B,)                   the pair's row of train_pairs, the positive's corpus row

`self.model` becomes a methods.retrieval.DualEncoder around the architecture's model (unless it already is one: a
method's own encoder, e.g. VDR's), so that what the run trains, checkpoints and saves is the whole retriever.
The loss (`contrastive_loss`, the baseline's `lm_loss`): each local query against the positives of the global
batch (gathered across ranks: methods/retrieval/losses.py), its own hard negatives and the bank; a positive that
is another query's positive too (the same corpus row) is not that query's negative, nor is a bank copy of a
query's own positive. After each training loss the bank takes the batch's gathered positives (detached) and their
corpus rows.
"""

from __future__ import annotations

import torch

from methods.module import MethodModule
from methods.retrieval.encoder import DualEncoder
from methods.retrieval.losses import MemoryBank, gather, info_nce


class DualEncoderModule(MethodModule):
    """MethodModule on retrieval batches (see the module docstring). tokens_seen counts real query and passage
    tokens. Validation logs val/loss (InfoNCE over the dev pairs, in-batch negatives of each val batch only) and,
    with dataset.eval.val_retrieval, val/ndcg@10 and val/mrr@10 of the dev queries over the whole corpus."""

    reports_perplexity = False

    def __init__(self, model, method, kernels_map=None, kernel_fallback=True, data=None, seed=0):
        if not all(hasattr(data, k) for k in ("pooling", "temperature", "bank_size", "passage_ids", "search")):
            raise TypeError(f"DualEncoderModule needs tasks.retrieval.RetrievalData as data, got {type(data).__name__}")
        if not isinstance(model, DualEncoder):
            model = DualEncoder(model, pooling=data.pooling, normalize=data.normalize)
        super().__init__(model, method, kernels_map, kernel_fallback, data=data, seed=seed)
        self.temperature = float(data.temperature)
        self.bank = MemoryBank(int(data.bank_size), self.model.dim) if int(data.bank_size) > 0 else None

    # -- the loss -------------------------------------------------------------------------------
    def encode_batch(self, batch: dict) -> dict[str, torch.Tensor | None]:
        """{"q": (B, D), "p": (B, D), "hard": (B, H, D) or None}: this rank's vectors (not gathered)."""
        enc = self.model.encode
        q = enc(batch["q_input_ids"], batch["q_attention_mask"], side="query")
        p = enc(batch["p_input_ids"], batch["p_attention_mask"], side="passage")
        hard = None
        if "n_input_ids" in batch:
            n = enc(batch["n_input_ids"], batch["n_attention_mask"], side="passage")
            hard = n.view(q.shape[0], -1, n.shape[-1])
        return {"q": q, "p": p, "hard": hard}

    def contrastive_loss(self, batch: dict, weights: torch.Tensor | None = None, reduction: str = "mean",
                         temperature: float | None = None, vectors: dict | None = None) -> torch.Tensor:
        """InfoNCE of the batch (module docstring); `vectors`: encode_batch's output when the caller has it."""
        v = vectors if vectors is not None else self.encode_batch(batch)
        p_all = gather(v["p"])
        rows = gather(batch["p_rows"])
        bank = self.bank.negatives() if self.bank is not None else None
        bank_rows = self.bank.negative_rows() if self.bank is not None else None
        loss = info_nce(v["q"], p_all, v["hard"], bank, temperature or self.temperature, weights, reduction,
                        p_rows=rows, bank_rows=bank_rows)
        if self.training and self.bank is not None:
            self.bank.push(p_all.detach(), rows)
        return loss

    def lm_loss(self, batch: dict, reduction: str = "mean") -> torch.Tensor:
        return self.contrastive_loss(batch, reduction=reduction)

    def batch_tokens(self, batch: dict) -> int:
        n = int(batch["q_attention_mask"].sum()) + int(batch["p_attention_mask"].sum())
        return n + (int(batch["n_attention_mask"].sum()) if "n_attention_mask" in batch else 0)

    # -- validation -----------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        v = self.encode_batch(batch)
        losses = info_nce(v["q"], v["p"], v["hard"], None, self.temperature, reduction="none", p_rows=batch["p_rows"])
        self._val_sum += losses.double().sum().cpu()
        self._val_count += losses.numel()

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.data.val_retrieval or not self.data.queries_of("dev")[0]:
            return
        m = self.data.metrics(self.data.search(self.model, "dev"), "dev")
        # every process searches the whole corpus for every dev query: the same numbers on every rank
        for k in ("ndcg@10", "mrr@10"):
            self.log(f"val/{k}", float(m[k]), sync_dist=False)
