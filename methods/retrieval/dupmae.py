"""RetroMAE v2: Duplex Masked Auto-Encoder For Pre-Training Retrieval-Oriented Language Models
(arXiv:2211.08769; official code github.com/staoxiao/RetroMAE, src/pretrain/{modeling_duplex.py, data.py,
enhancedDecoder.py, arguments.py}; every rule below is read from it, at commit ee37587).

Pre-training of a BERT encoder on passages x = [CLS] t_1 .. t_n [SEP] with three losses (modeling_duplex.py:80):

    L = dec_weight * L_dec + bow_weight * L_bow + enc_weight * L_enc          (the code: 1, 0.1, 1)

- L_enc, masked-LM of the encoder (lm_out.loss): whole-word masking of the input with p_enc = 0.3 (data.py:105-106,
  HF DataCollatorForWholeWordMask._whole_word_mask: the words, a token starting with '##' joins the word before, are
  shuffled and taken greedily, a word that would overshoot skipped, until max(1, round(p * len(x))) tokens are
  chosen, len(x) counting [CLS] and [SEP], which are never chosen); of the chosen tokens 80% become [MASK], 10% a
  token drawn uniformly from the tokenizer's vocabulary, 10% stay (torch_mask_tokens); CE over the chosen tokens.
- L_dec, [CLS] "enhanced decoding" (modeling_duplex.py:31-51, enhancedDecoder.BertLayerForDecoder): one extra BERT
  layer c_head whose query stream is Emb(h_CLS) at every position (h_CLS, the encoder's last hidden state at [CLS]
  of the *masked* input, through the encoder's own embedding module: + position + token-type embeddings,
  LayerNorm, dropout)
  and whose keys = values are [h_CLS, Emb(x_1), .., Emb(x_n+1)] of the *unmasked* input. Row i of the (L, L)
  attention mask hides one of min(L, 256) whole-word samples drawn with p_dec = 0.5, picked at random for the row,
  and hides i itself (data.py:108-118); [CLS] is never in a sample, so column 0 is visible to every row but
  its own (row 0, [CLS]'s, is unscored). The shared MLM head predicts every original token but [CLS] and [SEP]
  (data.py:122-124): CE over them.
- L_bow, "ordinary-token" (OT) decoding (modeling_duplex.py:53-61, 77-78): the encoder's MLM logits z_j in R^V at
  positions j >= 1 ([SEP] included, [CLS] and padding excluded), max-pooled over positions, r = max_j z_j, and

      L_bow = mean_b  - sum_v w_bv log softmax(r_b)_v,   w_bv = 1/n_b for every token v of passage b (0 elsewhere)

  n_b its number of tokens but [CLS] and [SEP], repeats counted (data.py:129-131: w sums to #unique / n <= 1).

Defaults (arguments.py:20-21, 43-44; data.py:110): p_enc 0.3, p_dec 0.5, bow_loss_weight 0.1, 256 decoder mask
sets. Ablations by weight: bow_weight = 0 is the code's RetroMAE collator/objective on the DupMAE decoder
(`decoder_query: positions` makes it modeling.py's RetroMAE exactly, see below); dec_weight = bow_weight = 0 is
whole-word MLM alone on the same passages. A zero weight skips its term (no forward for it): the loss is then
bitwise the sum of the others.

Two stages (method.stage):
- `pretrain`: the run is the pre-training: DupMAEModule on every corpus passage of the retrieval task (in-domain,
  unsupervised, as RetroMAE pre-trains on the MS MARCO corpus), batches by tasks.batches.ResumableBatchSampler,
  masks from a CPU generator seeded by (seed, global micro-batch index, rank) as tasks/mlm.py's (exact resume).
  Validation: L_enc, L_dec, L_bow on the dev queries' positive passages (in the training corpus: a monitor, not a
  held-out score) with fixed masks (seeded by the val batch index alone); val/loss is their weighted sum. The task
  then evaluates the pre-trained encoder zero-shot (method.pooling, else the dataset's encoder.pooling). `self.model` stays the architecture's model
  (BertForMaskedLM; for a BertModel, e.g. model=minilm, the MLM head, a transformers BertOnlyMLMHead tied to the
  word embeddings, lives on the module beside c_head): its checkpoint loads as model.init_from of a fresh model.
- `finetune` (default): prepare_model asks the runner for that pre-trained encoder (role "dupmae", trained once
  with method stage=pretrain and this run's DupMAE keys for `pretrain_steps` steps, cached; the dataset's
  fine-tuning-only keys pinned: ROLE_DATASET), or loads
  `pretrained` (a run directory or checkpoint of a stage=pretrain run), and the run fine-tunes it with the task's
  own contrastive loss (DualEncoderModule: InfoNCE with in-batch negatives) and evaluates retrieval.

Deviations from the official code (also in configs/method/dupmae.yaml):
- Downstream representation: a dense vector of the encoder, pooled as the dataset says (encoder.pooling, default
  mean) unless method.pooling is set; `method.pooling=cls` is the official bi-encoder fine-tuning's
  (src/bi_encoder/modeling.py sentence_pooling_method 'cls', the vector L_dec trains) and the GPU recipe's. Not the
  default: with the tiny models here [CLS] pooling does not leave chance in 200 fine-tuning steps, method=adamw's
  neither (val/loss ln 16; mean pooling reaches val/ndcg@10 0.17). The dataset's encoder.normalize and
  contrastive.temperature apply (the official: not normalized, temperature 1; the dataset's: normalized, 0.05). The
  paper's duplex
  representation (a dimension-reduced [CLS] concatenated with a sparsified OT vector) is not in the public code and
  is not implemented (reduction unverified).
- Masks are drawn in the module from a torch CPU generator (the code: Python's `random` in the collator): the same
  distributions (greedy whole-word fill of a uniformly random word order; per-row uniform choice among the
  min(n, 256) pre-drawn decoder sets), not the same draws; encoder masks are drawn first, so a zero dec_weight
  leaves the encoder's masks unchanged.
- The OT max-pool excludes padding exactly (-inf) where the code adds -1000 (equal unless a logit is below -1000).
- [CLS], [SEP] and padding are told by id, not by position (the code: first and last position of each passage),
  the same for passages encoded [CLS] .. [SEP]; w of L_bow covers the model's vocabulary (the code: the
  tokenizer's, equal for BERT).
- The code's v2 release (commit 264346f) calls an undefined `self.sparse_embedding`; fixed to `ot_embedding` in
  67a06a2 (modeling_duplex.py:77), which is what this follows.
- `decoder_query: positions` (ours, off by default) forms the decoder query as RetroMAE v1's modeling.py:45-47
  does (h_CLS + position embeddings, no token-type embedding, LayerNorm or dropout); the default `embeddings` is
  modeling_duplex.py:36-37.
- Optimizer and schedule: the runner's AdamW with warmup + cosine (the code: HF Trainer AdamW, linear decay,
  warmup_ratio 0.1, lr 1e-4 pre-training / 2e-5 fine-tuning for bert-base-uncased); the defaults are the
  baseline's (method=adamw) for the tiny models trained from scratch here, the paper's in the GPU recipe.
- The runner's trained models start from random init (runner/trained.py role_config sets model.init_from=null):
  with a pretrained model.init_from (bert-base-uncased, minilm), pre-train with method.stage=pretrain first and
  fine-tune with method.pretrained=<that run>; the finetune stage refuses to pre-train from scratch silently.
  `pretrained` is loaded into this run's own model (load_pretrained: an HF-initialised BERT keeps its 512 positions
  and 2 token types, which the runner's rebuild from our model config lacks).
- Ours, not in the code: the validation losses on the dev positives, the zero-shot retrieval eval of the pre-trained
  encoder; a padding row of the decoder mask sees [CLS] (unscored; the code's sees nothing, finite only through
  finfo.min); no c_head is built when dec_weight = 0 (no unused parameters under DDP). Passage batches need the
  retrieval data to have at least one training pair (the sampler class is taken from its own train loader).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from methods.base import Method
from methods.batching import pad_right
from methods.module import MethodModule
from methods.retrieval.encoder import DualEncoder, base_encoder

STAGE_CHOICES = ("finetune", "pretrain")
POOLING_CHOICES = ("cls", "mean")
QUERY_CHOICES = ("embeddings", "positions")
TRAIN_STREAM, VAL_STREAM = "dupmae-train", "dupmae-val"
VAL_SEED = 0  # validation masks: the same for every run, whatever its seed
MAX_PREDICTIONS = 512  # DataCollatorForWholeWordMask._whole_word_mask(max_predictions=512)
TERMS = ("dec", "bow", "enc")  # the code's order of the sum (modeling_duplex.py:80)
# The retrieval task's fine-tuning-only keys, pinned in the pre-training role (its cache key): changing them for the
# fine-tuning does not pre-train again, and the role mines no hard negatives it would not use.
ROLE_DATASET = {"negatives": {"hard": 0, "skip": 0}, "contrastive": {"temperature": 0.05, "bank_size": 0},
                "encoder": {"pooling": "mean", "normalize": True}}


# ---------------------------------------------------------------------------------------------- vocabulary
@dataclass
class MaskVocab:
    """What masking needs of the tokenizer: which ids continue a word ('##' pieces), the special ids, and how many
    ids a random replacement draws from (len(tokenizer), as torch_mask_tokens)."""

    continuation: torch.Tensor  # (V,) bool
    cls_id: int
    sep_id: int
    pad_id: int
    mask_id: int
    random_size: int

    @classmethod
    def from_tokenizer(cls, tokenizer, vocab_size: int | None = None) -> MaskVocab:
        n = len(tokenizer)
        size = max(n, int(vocab_size or 0))
        tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
        cont = torch.zeros(size, dtype=torch.bool)
        cont[:n] = torch.tensor([str(t).startswith("##") for t in tokens], dtype=torch.bool)
        ids = {k: getattr(tokenizer, f"{k}_token_id", None) for k in ("cls", "sep", "pad", "mask")}
        missing = [k for k, v in ids.items() if v is None]
        if missing:
            raise ValueError(f"dataset.tokenizer: method=dupmae needs a BERT-style WordPiece with [CLS], [SEP], [PAD] "
                             f"and [MASK]; this one lacks {', '.join(missing)} (dataset.tokenizer.kind: auto | train | hf)")
        return cls(cont, ids["cls"], ids["sep"], ids["pad"], ids["mask"], n)

    def special(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids == self.cls_id) | (ids == self.sep_id) | (ids == self.pad_id)


def mask_seed(seed: int, index: int, stream: str = TRAIN_STREAM) -> int:
    """The seed of batch `index`'s masks (tasks/mlm.py's: hashed into 32 bits, the generator's seed width)."""
    key = f"{stream}:{int(seed)}:{int(index)}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "big")


# ---------------------------------------------------------------------------------------------- masks
def word_ids(ids: torch.Tensor, attention_mask: torch.Tensor, vocab: MaskVocab) -> torch.Tensor:
    """(B, L) the whole-word index of every candidate position (0, 1, .. in order), -1 for [CLS], [SEP] and padding.
    A '##' piece joins the word before it; the first candidate of a row starts a word whatever it is."""
    cand = attention_mask.bool() & ~vocab.special(ids)
    cont = vocab.continuation[ids.clamp(0, len(vocab.continuation) - 1)]
    first = cand & (cand.long().cumsum(1) == 1)
    start = cand & (~cont | first)
    return torch.where(cand, start.long().cumsum(1) - 1, torch.full_like(ids, -1))


def whole_word_mask(words: torch.Tensor, lengths: torch.Tensor, prob: float, samples: int,
                    generator: torch.Generator) -> torch.Tensor:
    """(B, S, L) bool: S independent whole-word masks per row, as DataCollatorForWholeWordMask._whole_word_mask:
    the words in a uniformly random order, each taken when it fits, until max(1, round(prob * length)) tokens
    (at most 512) are taken; `lengths` (B,) counts the row's tokens, [CLS] and [SEP] included. Draws: one
    (B, S, L) uniform tensor, whatever the words."""
    B, L = words.shape
    n_words = int(words.max()) + 1 if words.numel() else 0
    u = torch.rand((B, samples, L), generator=generator)
    if n_words <= 0:
        return torch.zeros((B, samples, L), dtype=torch.bool)
    valid = words >= 0
    lens = torch.zeros((B, L), dtype=torch.long).scatter_add_(1, words.clamp_min(0), valid.long())[:, :n_words]
    budget = torch.round(lengths.double() * float(prob)).long().clamp(1, MAX_PREDICTIONS)  # Python's round: half to even
    prio = u[..., :n_words].masked_fill((lens == 0)[:, None, :], 2.0)  # absent words last
    order = prio.argsort(dim=-1)
    sorted_lens = lens[:, None, :].expand(B, samples, n_words).gather(2, order)
    count = torch.zeros((B, samples), dtype=torch.long)
    take = torch.zeros((B, samples, n_words), dtype=torch.bool)
    cap = budget[:, None]
    for j in range(n_words):
        fits = (sorted_lens[..., j] > 0) & (count + sorted_lens[..., j] <= cap)
        take[..., j] = fits
        count += fits.long() * sorted_lens[..., j]
    chosen = torch.zeros_like(take).scatter_(2, order, take)  # by word index
    per_pos = chosen.gather(2, words.clamp_min(0)[:, None, :].expand(B, samples, L))
    return per_pos & valid[:, None, :]


def encoder_inputs(ids: torch.Tensor, selected: torch.Tensor, vocab: MaskVocab,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """torch_mask_tokens: (inputs, labels) of (B, L) ids with the chosen positions `selected` (B, L): 80% [MASK],
    half the rest a uniform id of the tokenizer's vocabulary, the rest unchanged; labels -100 off `selected`.
    Draws (on the CPU, from `generator`): two (B, L) uniforms and one (B, L) randint, whatever is selected."""
    shape = ids.shape
    replace = torch.rand(shape, generator=generator) < 0.8
    random = torch.rand(shape, generator=generator) < 0.5
    words = torch.randint(vocab.random_size, shape, generator=generator)
    to_mask = selected & replace
    to_random = selected & ~replace & random
    inputs = torch.where(to_random, words, ids.masked_fill(to_mask, vocab.mask_id))
    return inputs, ids.masked_fill(~selected, -100)


def decoder_visible(words: torch.Tensor, lengths: torch.Tensor, prob: float, mask_sets: int,
                    generator: torch.Generator) -> torch.Tensor:
    """(B, L, L) bool, True = row i may attend to column j (data.py:108-118): min(length, mask_sets) whole-word
    masks are drawn per passage; row i hides one of them, picked uniformly, and itself; padding columns are hidden.
    A padding row (unscored) sees [CLS] alone, so that no row is empty (the code's is: finite only by finfo.min)."""
    B, L = words.shape
    samples = max(1, min(L, int(mask_sets)))
    sets = whole_word_mask(words, lengths, prob, samples, generator)  # (B, S, L)
    n_sets = lengths.clamp(1, samples)  # min(len(tokens), 256) sets for this passage
    pick = (torch.rand((B, L), generator=generator) * n_sets[:, None]).long().clamp_max(n_sets[:, None] - 1)
    hidden = sets.gather(1, pick[:, :, None].expand(B, L, L))
    hidden |= torch.eye(L, dtype=torch.bool)[None]
    real = torch.arange(L)[None, :] < lengths[:, None]  # (B, L)
    visible = ~hidden & real[:, None, :] & real[:, :, None]
    visible[:, :, 0] |= ~real
    return visible


def decoder_labels(ids: torch.Tensor, attention_mask: torch.Tensor, vocab: MaskVocab) -> torch.Tensor:
    """Every original token is a target but [CLS], [SEP] and padding (-100)."""
    return ids.masked_fill(vocab.special(ids) | ~attention_mask.bool(), -100)


def bow_weights(ids: torch.Tensor, attention_mask: torch.Tensor, vocab: MaskVocab, vocab_size: int) -> torch.Tensor:
    """(B, V) float: 1/n at every token id of the passage, n its token count but [CLS], [SEP] and padding (repeats
    counted, data.py:129-131); a passage without such tokens has all zeros."""
    keep = attention_mask.bool() & ~vocab.special(ids)
    n = keep.sum(1, keepdim=True).clamp_min(1).float()
    present = torch.zeros((ids.shape[0], vocab_size), dtype=torch.float32, device=ids.device)
    present.scatter_reduce_(1, ids, keep.float(), reduce="amax")
    return present / n


# ---------------------------------------------------------------------------------------------- losses
def ot_vector(logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, V) max over the positions j >= 1 of the real tokens of the (B, L, V) MLM logits (modeling_duplex.py:53)."""
    z, m = logits[:, 1:], attention_mask[:, 1:].bool()
    return z.masked_fill(~m[..., None], float("-inf")).amax(dim=1)


def bow_loss(logits: torch.Tensor, attention_mask: torch.Tensor, weights: torch.Tensor,
             reduction: str = "mean") -> torch.Tensor:
    """-sum_v w_v log softmax(r)_v per passage (r = ot_vector), in fp32: the mean over passages, their sum or (B,)."""
    per = -(weights * F.log_softmax(ot_vector(logits.float(), attention_mask), dim=-1)).sum(-1)
    return per.mean() if reduction == "mean" else per.sum() if reduction == "sum" else per


# ---------------------------------------------------------------------------------------------- decoder
class EnhancedDecoder(nn.Module):
    """enhancedDecoder.BertLayerForDecoder: one post-norm BERT layer whose queries come from their own stream
    (query) and whose keys and values from another (key_value), with a per-row attention mask."""

    def __init__(self, config):
        super().__init__()
        from transformers.models.bert.modeling_bert import BertIntermediate, BertOutput, BertSelfOutput

        h, heads = config.hidden_size, config.num_attention_heads
        if h % heads:
            raise ValueError(f"model.num_heads: {heads} does not divide model.hidden_size {h}")
        self.heads, self.head_dim = heads, h // heads
        self.query, self.key, self.value = nn.Linear(h, h), nn.Linear(h, h), nn.Linear(h, h)
        self.attn_dropout = float(config.attention_probs_dropout_prob)
        self.attention_output = BertSelfOutput(config)  # dense, dropout, LayerNorm(x + query)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        B, L, H = query.shape

        def heads(x):
            return x.view(B, -1, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.query(query)), heads(self.key(key_value)), heads(self.value(key_value))
        # the code's extended mask: (1 - mask) * finfo.min added to the scores (a fully hidden row stays finite)
        bias = torch.zeros(visible.shape, dtype=q.dtype, device=q.device)
        bias = bias.masked_fill(~visible, torch.finfo(q.dtype).min)[:, None]
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.attn_dropout if self.training else 0.0)
        att = self.attention_output(ctx.transpose(1, 2).reshape(B, L, H), query)
        return self.output(self.intermediate(att), att)


def mlm_head_for(model: nn.Module) -> nn.Module | None:
    """The model's own MLM head (BertForMaskedLM.cls), or None when it has none (a BertModel)."""
    head = getattr(model, "cls", None)
    return head if isinstance(head, nn.Module) else None


def check_bert(model: nn.Module) -> None:
    """DupMAE needs a transformers BERT (its embedding module feeds the decoder): one line otherwise."""
    base = base_encoder(model)
    emb = getattr(base, "embeddings", None)
    if getattr(model, "config", None) is None or not all(hasattr(emb, k) for k in ("word_embeddings",
                                                                                   "position_embeddings")):
        raise ValueError(f"model: method=dupmae needs a BERT encoder (model=bert-tiny | minilm | an HF BERT through "
                         f"model.init_from), got {type(model).__name__}")


# ---------------------------------------------------------------------------------------------- module
class DupMAEModule(MethodModule):
    """The pre-training module: encoder (self.model), the decoder layer c_head and, for a model without one, an
    MLM head tied to the word embeddings (mlm_head). Batches: {"input_ids", "attention_mask"} (B, L) passages.
    `lm_loss(batch)` is L with the current step's masks."""

    reports_perplexity = False

    def __init__(self, model: nn.Module, method: Method, kernels_map: dict[str, str] | None = None,
                 kernel_fallback: bool = True, data: Any = None, seed: int = 0):
        super().__init__(model, method, kernels_map, kernel_fallback, data=data, seed=seed)
        check_bert(model)
        if not isinstance(method, DupMAE):
            raise TypeError(f"DupMAEModule needs method=dupmae, got {type(method).__name__}")
        config = model.config
        self.vocab_size = int(base_encoder(model).embeddings.word_embeddings.num_embeddings)
        self.vocab = MaskVocab.from_tokenizer(data.tokenizer, self.vocab_size)
        self.c_head = EnhancedDecoder(config) if method.dec_weight != 0 else None  # no unused parameters (DDP)
        init = getattr(model, "_init_weights", None)
        self.mlm_head = None
        if mlm_head_for(model) is None:
            from transformers.models.bert.modeling_bert import BertOnlyMLMHead

            self.mlm_head = BertOnlyMLMHead(config)
            pred = self.mlm_head.predictions
            pred.decoder.weight = base_encoder(model).embeddings.word_embeddings.weight  # tied, as BertForMaskedLM
            pred.decoder.bias = pred.bias
            if init is not None:
                self.mlm_head.apply(init)
            with torch.no_grad():
                pred.bias.zero_()
        if init is not None and self.c_head is not None:  # modeling_duplex.py:25: c_head.apply(lm._init_weights)
            self.c_head.apply(init)
        self.mask_seed_now: int | None = None
        self._val: dict[str, torch.Tensor] = {}

    # -- parts ---------------------------------------------------------------------------------
    @property
    def head(self) -> nn.Module:
        return self.mlm_head if self.mlm_head is not None else mlm_head_for(self.model)

    def trainable(self) -> nn.Module:
        """The encoder, c_head and the module's MLM head: what the optimizer updates (tied weights once)."""
        return nn.ModuleList([m for m in (self.model, self.c_head, self.mlm_head) if m is not None])

    def batch_tokens(self, batch) -> int:
        return int(batch["attention_mask"].sum())  # real passage tokens (as DualEncoderModule counts)

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "_trainer", None)
        return (int(trainer.global_rank), int(trainer.world_size)) if trainer is not None else (0, 1)

    # -- masks ---------------------------------------------------------------------------------
    def masks(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, seed: int, decoder: bool = True) -> dict:
        """Every mask of a batch from the CPU generator of `seed`: the encoder's first, then the decoder's."""
        m = self.method
        g = torch.Generator().manual_seed(int(seed))
        ids, att = input_ids.detach().cpu(), attention_mask.detach().cpu()
        words, lengths = word_ids(ids, att, self.vocab), att.long().sum(1)
        selected = whole_word_mask(words, lengths, m.enc_mask_prob, 1, g)[:, 0]
        enc_in, enc_labels = encoder_inputs(ids, selected, self.vocab, g)
        dev = input_ids.device
        out = {"enc_inputs": enc_in.to(dev), "enc_labels": enc_labels.to(dev)}
        if decoder:
            out["visible"] = decoder_visible(words, lengths, m.dec_mask_prob, m.mask_sets, g).to(dev)
        return out

    # -- losses --------------------------------------------------------------------------------
    def decoder_hidden(self, h_cls: torch.Tensor, input_ids: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """c_head over [h_CLS, Emb(x_1..)] with the query stream from h_CLS (modeling_duplex.py:31-48)."""
        emb = base_encoder(self.model).embeddings
        B, L = input_ids.shape
        kv = torch.cat([h_cls[:, None], emb(input_ids=input_ids)[:, 1:]], dim=1)
        cls = h_cls[:, None].expand(B, L, h_cls.shape[-1])
        if self.method.decoder_query == "embeddings":
            query = emb(inputs_embeds=cls)
        else:  # RetroMAE v1, modeling.py:45-47
            query = emb.position_embeddings(emb.position_ids[:, :L]) + cls
        return self.c_head(query, kv, visible)

    def terms(self, batch: dict, seed: int, reduction: str = "mean") -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{term: (loss, count)} of the terms with a non-zero weight; `mean`: loss is the term's mean (count 1),
        `sum`: its sum over its count (masked tokens, decoded tokens, passages)."""
        m = self.method
        ids, att = batch["input_ids"], batch["attention_mask"]
        masks = self.masks(ids, att, seed, decoder=m.dec_weight != 0)
        hidden = base_encoder(self.model)(input_ids=masks["enc_inputs"], attention_mask=att).last_hidden_state
        logits = self.head(hidden).float()  # (B, L, V) in fp32 once, for L_bow and L_enc
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        one = torch.ones((), device=ids.device)
        if m.dec_weight != 0:
            labels = decoder_labels(ids, att, self.vocab)
            dec_logits = self.head(self.decoder_hidden(hidden[:, 0], ids, masks["visible"])).float()
            loss = F.cross_entropy(dec_logits.flatten(0, 1), labels.flatten(), reduction=reduction)
            out["dec"] = (loss, (labels != -100).sum() if reduction == "sum" else one)
        if m.bow_weight != 0:
            weights = bow_weights(ids, att, self.vocab, logits.shape[-1])
            out["bow"] = (bow_loss(logits, att, weights, reduction), one * ids.shape[0] if reduction == "sum" else one)
        if m.enc_weight != 0:
            labels = masks["enc_labels"]
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction=reduction)
            out["enc"] = (loss, (labels != -100).sum() if reduction == "sum" else one)
        return out

    def combine(self, means: dict[str, torch.Tensor]) -> torch.Tensor:
        """dec_weight * L_dec + bow_weight * L_bow + enc_weight * L_enc, in the code's order; absent terms skipped."""
        weights = {"dec": self.method.dec_weight, "bow": self.method.bow_weight, "enc": self.method.enc_weight}
        total = None
        for k in TERMS:
            if k in means:
                x = means[k] if weights[k] == 1 else weights[k] * means[k]
                total = x if total is None else total + x
        return total

    def lm_loss(self, batch: dict, reduction: str = "mean", seed: int | None = None) -> torch.Tensor:
        """L of a batch with the current step's masks (or `seed`'s)."""
        if reduction != "mean":
            raise ValueError(f"DupMAEModule.lm_loss: reduction {reduction!r}; choose one of: mean")
        if seed is None:
            seed = self.mask_seed_now if self.mask_seed_now is not None else mask_seed(VAL_SEED, 0, VAL_STREAM)
        return self.combine({k: v for k, (v, _) in self.terms(batch, seed).items()})

    # -- steps ---------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        rank, world = self._rank_world()
        self.mask_seed_now = mask_seed(self.seed, self.micro_batches_seen * world + rank)
        return super().training_step(batch, batch_idx)

    def on_validation_epoch_start(self) -> None:
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self._val = {f"{k}_{p}": zero.clone() for k in TERMS for p in ("sum", "count")}

    def validation_step(self, batch, batch_idx: int) -> None:
        rank, world = self._rank_world()
        for k, (s, c) in self.terms(batch, mask_seed(VAL_SEED, batch_idx * world + rank, VAL_STREAM), "sum").items():
            self._val[f"{k}_sum"] += s.double()
            self._val[f"{k}_count"] += c.double()

    def on_validation_epoch_end(self) -> None:
        reduce = self.trainer.strategy.reduce
        means = {}
        for k in TERMS:
            count = reduce(self._val[f"{k}_count"], reduce_op="sum")
            if float(count) > 0:
                means[k] = reduce(self._val[f"{k}_sum"], reduce_op="sum") / count
                self.log(f"val/{k}_loss", means[k].float(), sync_dist=False)
        if means:
            self.log("val/loss", self.combine(means).float(), prog_bar=True, sync_dist=False)
        self.last_val_step = self.trainer.global_step


# ---------------------------------------------------------------------------------------------- data
class _Passages(torch.utils.data.Dataset):
    def __init__(self, ids: list[list[int]]):
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> list[int]:
        return self.ids[i]


class _Pad:
    def __init__(self, pad_id: int):
        self.pad_id = int(pad_id)

    def __call__(self, rows: list[list[int]]) -> dict[str, torch.Tensor]:
        ids, att = pad_right(rows, self.pad_id)
        return {"input_ids": ids, "attention_mask": att}


class PassageData:
    """The retrieval task's data, its batches replaced by passages for pre-training: every corpus passage
    (`passage_ids`) for training, the dev queries' positive passages (the test queries' where dev has none) for
    validation. The task protocol of tasks/base.TaskData (make_loaders, counts, baselines, evaluate, figures, save;
    not a subclass: methods do not import tasks/); every other attribute (tokenizer, vocab_size, corpus, ...) is the
    retrieval data's. evaluate scores the encoder's pooled vectors: zero-shot retrieval of the pre-trained model."""

    module_class = DupMAEModule

    def __init__(self, retrieval: Any, pooling: str | None = None, zero_shot_eval: bool = True):
        self.retrieval, self.pooling_override, self.zero_shot_eval = retrieval, pooling, bool(zero_shot_eval)
        self.train_ids = [list(p) for p in retrieval.passage_ids]
        qrels = retrieval.corpus.qrels
        split = "dev" if qrels.get("dev") else "test"
        rows = sorted({retrieval.corpus_row[pid] for judged in qrels.get(split, {}).values()
                       for pid, rel in judged.items() if rel > 0 and pid in retrieval.corpus_row})
        self.val_ids = [self.train_ids[r] for r in rows]

    def __getattr__(self, name: str):  # the retrieval data's attributes (tokenizer, vocab_size, corpus, ...)
        if name == "retrieval":
            raise AttributeError(name)
        return getattr(self.retrieval, name)

    def make_loaders(self, batch_size: int, total_micro_batches: int, seed: int, start=lambda: 0, rank: int = 0,
                     world: int = 1, val_batches: int | None = None, num_workers: int = 0):
        # tasks.batches.ResumableBatchSampler: the class of the retrieval data's own train sampler (a method does not
        # import tasks/: DESIGN's layers); probed with one pair, so the corpus's passages set the batch limits
        sampler_cls = type(self.retrieval.make_loaders(1, 1, seed, val_batches=0)[0].batch_sampler)
        pad = _Pad(self.retrieval.tokenizer.pad_token_id)
        sampler = sampler_cls(len(self.train_ids), batch_size, total_micro_batches, seed, start, rank, world)
        train = torch.utils.data.DataLoader(_Passages(self.train_ids), batch_sampler=sampler, collate_fn=pad,
                                            num_workers=num_workers, generator=torch.Generator().manual_seed(seed))
        n_val = len(self.val_ids) if val_batches is None else min(len(self.val_ids), val_batches * batch_size * world)
        val = torch.utils.data.DataLoader(_Passages(self.val_ids[:n_val][rank::world]), batch_size=batch_size,
                                          shuffle=False, collate_fn=pad)
        return train, val

    def counts(self) -> dict[str, int]:
        return {"train_passages": len(self.train_ids), "val_passages": len(self.val_ids)}

    def baselines(self, val_dl) -> dict[str, float]:
        return {}

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        if not self.zero_shot_eval:  # a corpus of millions of passages is hours to encode
            return {}
        r = self.retrieval
        return r.evaluate(DualEncoder(model, pooling=self.pooling_override or r.pooling, normalize=r.normalize))

    def figures(self, model, directory) -> dict:
        return {}

    def save(self, directory) -> None:
        self.retrieval.save(directory)


def load_pretrained(model: nn.Module, path: str) -> nn.Module:
    """`model` with the encoder weights of a stage=pretrain run (its directory: checkpoints/last.ckpt, else its newest
    step file; or a .ckpt): the module's `model.` entries, strictly. Into this run's own model, built as its config
    and model.init_from say (an HF BERT keeps its 512 positions and 2 token types, which a model rebuilt from our
    config lacks), so both runs must share model= and model.init_from."""
    from pathlib import Path

    src = Path(path).expanduser()
    if src.is_dir():
        ckdir = src / "checkpoints"
        found = [ckdir / "last.ckpt"] if (ckdir / "last.ckpt").exists() else sorted(ckdir.glob("step*.ckpt"))[-1:]
        if not found:
            raise ValueError(f"method.pretrained: no checkpoint in {src}/checkpoints (a run dir or .ckpt of a "
                             f"method.stage=pretrain run)")
        src = found[0]
    if not src.is_file():
        raise ValueError(f"method.pretrained: {path} is neither a run directory nor a checkpoint file")
    state = torch.load(src, map_location="cpu", weights_only=False)
    state = {k.removeprefix("model."): v for k, v in state.get("state_dict", state).items() if k.startswith("model.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"method.pretrained: {src} does not fit this run's model (missing {list(missing)[:3]}, "
                         f"unexpected {list(unexpected)[:3]}): pre-train with the same model= and model.init_from")
    return model


# ---------------------------------------------------------------------------------------------- method
class DupMAE(Method):
    """DupMAE pre-training (stage=pretrain) or fine-tuning of the DupMAE-pre-trained encoder (stage=finetune)."""

    needs_task = frozenset({"retrieval"})
    # The decoder reads the encoder's embedding module outside the model's forward, which FSDP's flat shards do not
    # allow; the code trains with DDP (torchrun), as hardware=h100x8 can without FSDP.
    supports_fsdp = False

    def __init__(self, name: str = "dupmae", lr: float = 3e-3, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 stage: str = "finetune", enc_weight: float = 1.0, dec_weight: float = 1.0, bow_weight: float = 0.1,
                 enc_mask_prob: float = 0.3, dec_mask_prob: float = 0.5, mask_sets: int = 256,
                 decoder_query: str = "embeddings", pretrain_steps: int = 200, pretrain_lr: float | None = None,
                 pretrain_weight_decay: float | None = None, pretrain_warmup_steps: int | None = None,
                 pooling: str | None = None, zero_shot_eval: bool = True, pretrained: str | None = None,
                 model_init_from: str | None = None):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        problems = [f"method.{k}: must be {want}, got {v}" for k, v, want, ok in (
            ("stage", stage, f"one of {', '.join(STAGE_CHOICES)}", stage in STAGE_CHOICES),
            ("decoder_query", decoder_query, f"one of {', '.join(QUERY_CHOICES)}", decoder_query in QUERY_CHOICES),
            ("enc_weight", enc_weight, ">= 0", enc_weight >= 0), ("dec_weight", dec_weight, ">= 0", dec_weight >= 0),
            ("bow_weight", bow_weight, ">= 0", bow_weight >= 0),
            ("enc_mask_prob", enc_mask_prob, "in (0, 1]", 0 < enc_mask_prob <= 1),
            ("dec_mask_prob", dec_mask_prob, "in (0, 1]", 0 < dec_mask_prob <= 1),
            ("pooling", pooling, f"one of {', '.join(POOLING_CHOICES)} or null", pooling in (*POOLING_CHOICES, None)),
            ("mask_sets", mask_sets, ">= 1", mask_sets >= 1), ("pretrain_steps", pretrain_steps, ">= 1",
                                                                 pretrain_steps >= 1),
            ("pretrain_lr", pretrain_lr, "positive or null", pretrain_lr is None or pretrain_lr > 0),
            ("pretrain_weight_decay", pretrain_weight_decay, ">= 0 or null",
             pretrain_weight_decay is None or pretrain_weight_decay >= 0),
            ("pretrain_warmup_steps", pretrain_warmup_steps, ">= 0 or null",
             pretrain_warmup_steps is None or pretrain_warmup_steps >= 0)) if not ok]
        if enc_weight == 0 and dec_weight == 0 and bow_weight == 0:
            problems.append("method.enc_weight: enc_weight, dec_weight and bow_weight are all 0 (no loss); "
                            "set at least one > 0")
        if problems:
            raise ValueError("; ".join(problems))
        self.stage, self.decoder_query = stage, decoder_query
        self.enc_weight, self.dec_weight, self.bow_weight = float(enc_weight), float(dec_weight), float(bow_weight)
        self.enc_mask_prob, self.dec_mask_prob, self.mask_sets = float(enc_mask_prob), float(dec_mask_prob), int(mask_sets)
        self.pretrain_steps = int(pretrain_steps)
        self.pretrain_lr, self.pretrain_weight_decay = pretrain_lr, pretrain_weight_decay
        self.pretrain_warmup_steps = pretrain_warmup_steps
        self.pretrained, self.model_init_from = pretrained, model_init_from
        self.pooling, self.zero_shot_eval = pooling, bool(zero_shot_eval)
        self.normalize: bool | None = None  # the task's dataset.encoder.normalize (prepare_data reads it)

    # -- stages --------------------------------------------------------------------------------
    @property
    def module_class(self):
        return DupMAEModule if self.stage == "pretrain" else None  # None: the task's (DualEncoderModule)

    @property
    def stages(self) -> list[str]:
        return ["prepare_data", "train"] if self.stage == "pretrain" else ["prepare_data", "prepare_model", "train"]

    def prepare_data(self, data):
        """stage=pretrain: the corpus passages as batches (PassageData); finetune: the data as it is (its
        encoder.normalize noted for the encoder prepare_model returns)."""
        if not hasattr(data, "passage_ids"):
            raise ValueError(f"dataset: method=dupmae needs retrieval data with passage_ids "
                             f"(dataset=stdlib-retrieval | keyword-pairs | beir-local), got {type(data).__name__}")
        self.normalize = bool(getattr(data, "normalize", False))
        return PassageData(data, self.pooling, self.zero_shot_eval) if self.stage == "pretrain" else data

    def pretrain_overrides(self) -> dict:
        """The method keys of the pre-training run this fine-tuning starts from (the runner's role "dupmae")."""
        return {"stage": "pretrain", "enc_weight": self.enc_weight, "dec_weight": self.dec_weight,
                "bow_weight": self.bow_weight, "enc_mask_prob": self.enc_mask_prob, "dec_mask_prob": self.dec_mask_prob,
                "mask_sets": self.mask_sets, "decoder_query": self.decoder_query,
                "lr": self.lr if self.pretrain_lr is None else float(self.pretrain_lr),
                "weight_decay": self.weight_decay if self.pretrain_weight_decay is None else float(self.pretrain_weight_decay),
                "warmup_steps": self.warmup_steps if self.pretrain_warmup_steps is None else int(self.pretrain_warmup_steps),
                "betas": list(self.betas), "eps": self.eps, "min_lr_ratio": self.min_lr_ratio,
                "zero_shot_eval": self.zero_shot_eval, "pretrained": None}

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """stage=finetune: the DupMAE-pre-trained encoder (the runner's cached role, or `pretrained`)."""
        if self.stage == "pretrain":
            return model
        check_bert(model)
        if self.pretrained:
            encoder = load_pretrained(model, str(self.pretrained))
        else:
            if self.model_init_from:
                raise ValueError(f"method.pretrained: null pre-trains from random init (the runner's trained models "
                                 f"ignore model.init_from={self.model_init_from}); pre-train it first with "
                                 f"method.stage=pretrain and pass method.pretrained=<that run dir>")
            if self.trained_model is None:
                raise RuntimeError("method=dupmae: no trained-model provider (the runner sets Method.trained_model)")
            path = str(self.trained_model.path("dupmae", ROLE_DATASET, method=("dupmae", self.pretrain_overrides()),
                                               steps=self.pretrain_steps))
            encoder = self.trained_model.load(path)
            if type(encoder) is not type(model) or encoder.config.vocab_size != model.config.vocab_size:
                raise ValueError(f"model: the runner's pre-trained {path} holds a {type(encoder).__name__} of vocabulary "
                                 f"{encoder.config.vocab_size}, this run's model is a {type(model).__name__} of "
                                 f"vocabulary {model.config.vocab_size}")
        if self.pooling is None:  # the task's encoder.pooling (DualEncoderModule wraps it)
            return encoder
        return DualEncoder(encoder, pooling=self.pooling, normalize=bool(self.normalize))

    # -- optimizer -----------------------------------------------------------------------------
    def configure_optimizers(self, module: Any) -> dict:
        """The baseline's AdamW + schedule, over the encoder and (pre-training) c_head and the MLM head."""
        if not isinstance(module, DupMAEModule):
            return super().configure_optimizers(module)
        opt = self.build_optimizer(module.trainable())
        total = max(1, int(module.trainer.max_steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self.lr_lambda(total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
