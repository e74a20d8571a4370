"""Learn Your Tokens: Word-Pooled Tokenization for Language Modeling (Avijit Thawani, Saurabh Ghanekar, Xiaoyuan Zhu
& Jay Pujara, Findings of EMNLP 2023; official code `avi-jit/eTok`, newmodel.py `myGPT` with num_prefix > 0, read for
the facts below). The network is models/etok.py (`model=etok`), the data and the evaluator tasks/words.py
(`dataset=stdlib-words`); this file is the training recipe and the LightningModule of word-canvas batches.

The text is split at word boundaries; word w_j is a canvas of c characters x_j (PAD after them), prefixed with p
learned CLS ids. With e_j = Emb([CLS; x_j]) + P_in:

    z_j = WordEncoder(e_j)[:p]                      intra-word attention (block-diagonal over words)
    h   = GPT(z_1 + P_w, .., z_{n-1} + P_w)        causal over words: one position per word (p = 1)
    y_j = Head(WordDecoder([h_{j-1}; e_j[p:]] + P_in)[p-1 : p-1+c])   causal inside the canvas; all words in parallel
    L   = -sum_{j=2..n} sum_{k=1..c} log softmax(y_jk)[x_jk]           (PAD targets included: the word's end)

Metric: next-word exact match: given the preceding text, the whole next word predicted greedily, right only if all
its characters match (tasks/words.py NextWordEval, the same for eTok, a BPE LM and a character LM). The paper's
claim: eTok beats subword and byte/character models by over 300% in next-word accuracy, 30x on rare words.

Recipe (the code): AdamW, lr 3e-4 (myGPT's default; unitrain.py trains with 1e-4), betas (0.9, 0.95), weight decay
0.1, constant learning rate (its LearningRateDecayCallback body is commented out), gradient clipping 1.0 (the
runner's trainer.grad_clip, default 1.0).

Choices and deviations (also in configs/method/word_pooled_tok.yaml, configs/model/etok.yaml and the README row):
- Word encoder: bidirectional inside the canvas, as the code's nn.TransformerEncoder (post-LN, ReLU); its mask
  here keeps every slot from attending to the PAD slots, where the code's blocks only PAD-to-PAD attention (real
  slots there also read the PAD slots, which carry only the PAD embedding and a position). Its MLP is 4 x n_embd
  (the code: torch's default 2048, = 4 x the paper's 512).
- Dropout 0 (the code: 0.1 on embeddings, attention, residuals): short CPU runs, and the Llama baselines have none.
- Weight decay on every matrix (ndim >= 2: embeddings, position tables) and none on biases and LayerNorm weights;
  the code excludes by name ("bias", "LayerNorm.weight"), which matches no LayerNorm of its modules, so it decays
  their weights too.
- The main transformer runs over words 1..n-1 of an (n)-word block and the decoder over words 2..n; the code runs
  it over all n and drops the last output (the same outputs, causal).
- Sizes: small for the CPU (configs/model/etok.yaml); the code's defaults n_embd 768, n_layer 12, n_head 4, block
  128 words, canvas 12, num_prefix 0/1/4 (unitrain.py: n_embd 512, n_layer 8, n_head 8, num_prefix 4, block 192).
- Inference is greedy (the code samples each character, temperature 1, do_sample for its baselines too) and the
  predicted word ends at its first PAD (the code compares all c slots, PAD included). The code gives eTok 90 words
  of context and the char model 90 characters; here every model gets the same preceding words (eval.context_words).
- The code's datasets put words longer than 9 characters as "@" (or truncate them); here they are cut into pieces
  of canvas_size, which are words for every unit.
"""

from __future__ import annotations

import torch

from methods.base import Method
from methods.module import MethodModule


class WordPooledTok(Method):
    """eTok's training recipe: AdamW (0.9, 0.95), weight decay 0.1, constant lr 3e-4; the loss is the model's
    character cross-entropy (WordPooledModule.lm_loss)."""

    needs_task = frozenset({"words"})
    needs_model = frozenset({"word-pooled-lm"})

    def __init__(self, name: str = "word_pooled_tok", lr: float = 3e-4, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, weight_decay: float = 0.1, warmup_steps: int = 0, min_lr_ratio: float = 1.0):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)


class WordPooledModule(MethodModule):
    """MethodModule on (B, n + 1, canvas_size) word-canvas batches (tasks/words.py, unit word-pooled): `lm_loss` is
    the model's character cross-entropy of words 2..n+1 (a method changes it through Method.loss); val/loss is its
    mean over every canvas slot (PAD included); tokens_seen counts words (main-transformer positions)."""

    reports_perplexity = False  # a per-slot loss over PAD-filled canvases: its exp is no perplexity of the text

    def __init__(self, model, method, kernels_map=None, kernel_fallback=True, data=None, seed=0):
        want, have = getattr(data, "canvas_size", None), getattr(model, "canvas_size", None)
        if want is not None and have is not None and want != have:
            raise ValueError(f"model.canvas_size: {have} must equal dataset.canvas_size ({want})")
        super().__init__(model, method, kernels_map, kernel_fallback, data=data, seed=seed)

    def lm_loss(self, batch: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return self.model.loss(batch, reduction=reduction)

    def batch_tokens(self, batch: torch.Tensor) -> int:
        return batch[:, 1:, 0].numel()
