"""ULD — "Reversing the Forget-Retain Objectives: An Efficient LLM Unlearning Framework from Logit Difference"
(Ji, Liu, Zhang, Hong, Chen, Zhang, Chang; arXiv:2406.08607), sec. 3, eq. (3)-(5).

The target LLM stays frozen. An assistant LLM is trained on the *reversed* objectives — remember the forget
set, forget the retain set — and the unlearned model is the logit difference:

    assistant      = the target's first K decoder layers (with its embeddings, final norm and lm_head)
                     + LoRA on every linear projection of those layers (q, k, v, o, gate, up, down)
    training loss  L = CE_assistant(forget answers) + λ·KL(uniform ‖ p_assistant) on the retain set
    unlearned      z = z_target − α·m ⊙ z_assistant,   m = relative-top mask of the target (ρ)
    generation     argmax over the tokens with m = 1 of z (the others at −1e3, the code's greedy_search)

(methods/unlearning/losses.py holds the formulas: `uld_logits`, `relative_top_mask`, `uld_generation_logits`,
`uld_assistant_loss`.) Every probability (TOFU's answer probability, truth ratio, NLLs) uses z over the whole
vocabulary; only generation is restricted to the set, as in the code.
Where the assistant's distribution is uniform (a constant logit vector), z and z_target give the same
softmax, so the retain set is untouched by construction; on the forget set the assistant is confident on
the true answer and the difference removes it.

Defaults from the authors' code (`UCSB-NLP-Chang/ULD`: configs/model_mode/uld.yaml, configs/unlearn_loss/
remember+uniform.yaml, bashes/tofu/uld_train.sh): K = 8 of Llama-2-7B's 32 layers (here a fraction, 0.25,
so that it fits any depth), LoRA r = 16, α_LoRA = 32, dropout 0.05, no bias; λ = 5.0; lr 1e-3, weight decay
0.01, batch 8 × 2 accumulation. The logit weight and filter differ between the code's training config
(w = −1, ρ = 0.1: α = 1.0, `relative_top`) and its TOFU evaluation script (w = −0.8, ρ = 1e-2:
`eval_alpha`, `eval_relative_top`). Training never uses the combination (only the assistant is trained), so
here the training setting serves the validation curves logged during training and the evaluation setting
the final metrics (`evaluate` switches the model to it, before the dataset's own evaluation runs).
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from torch import nn

from methods.base import Method
from methods.unlearning import losses
from methods.unlearning.module import UnlearningModule, real_token_mask

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # all but lm_head
RETAIN_POSITIONS = ("sequence", "answer")


class LogitsOutput:
    """What the runner and the evaluation read from a causal LM's output: `.logits` (the probabilities), and
    `.generation_logits`, what greedy decoding takes the argmax of (methods/inference/evaluation.py:
    `greedy_generate`): the logits with the tokens outside the target's relative-top set `keep` at −1e3, as
    the ULD code's decoder (computed when read; the logits themselves where there is no filter)."""

    def __init__(self, logits: torch.Tensor, keep: torch.Tensor | None = None):
        self.logits = logits
        self.keep = keep

    @property
    def generation_logits(self) -> torch.Tensor:
        return losses.uld_generation_logits(self.logits, self.keep)


def assistant_layer_count(assistant_layers: int | float, target_layers: int) -> int:
    """K: an int ≥ 1 is that many layers; a float in (0, 1] that fraction of the target's, rounded up."""
    if isinstance(assistant_layers, float):
        count = math.ceil(assistant_layers * target_layers - 1e-9) if 0 < assistant_layers <= 1 else 0
    else:
        count = int(assistant_layers)
    if not 1 <= count <= target_layers:
        raise ValueError(f"method.assistant_layers: {assistant_layers} does not fit a {target_layers}-layer target; "
                         f"choose an int in 1..{target_layers} or a fraction in (0, 1]")
    return count


def truncated_copy(target: nn.Module, layers: int) -> nn.Module:
    """A causal LM with the target's config but `layers` decoder layers, holding copies of the target's
    embeddings, first `layers` decoder layers, final norm and lm_head (the code's `init_small_llm`)."""
    config = copy.deepcopy(target.config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types)[:layers]
    param = next(target.parameters())
    with torch.device(param.device):
        small = type(target)(config)
    keep = {f"model.layers.{i}." for i in range(layers)}
    state = {k: v for k, v in target.state_dict().items()
             if not k.startswith("model.layers.") or any(k.startswith(p) for p in keep)}
    small.load_state_dict(state, strict=True)
    return small.to(param.dtype)


def with_lora(model: nn.Module, rank: int, lora_alpha: float, dropout: float) -> nn.Module:
    """LoRA adapters (peft) on every attention/MLP projection; everything else frozen by peft."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    targets = [t for t in LORA_TARGETS if t in present]
    config = LoraConfig(r=rank, lora_alpha=lora_alpha, lora_dropout=dropout, bias="none", target_modules=targets,
                        task_type="CAUSAL_LM")
    with warnings.catch_warnings():  # peft asks transformers a deprecated question (is_gradient_checkpointing)
        warnings.filterwarnings("ignore", category=FutureWarning)
        return get_peft_model(model, config)


class LogitDifference(nn.Module):
    """The unlearned model: a frozen target and a trainable assistant, combined as
    z = z_target − α·m ⊙ z_assistant (methods/unlearning/losses.py: `uld_logits`)."""

    def __init__(self, target: nn.Module, assistant: nn.Module, alpha: float = losses.ULD_ALPHA,
                 relative_top: float | None = losses.ULD_RELATIVE_TOP):
        super().__init__()
        self.target = target.requires_grad_(False).eval()
        self.assistant = assistant
        self.alpha = float(alpha)
        self.relative_top = relative_top
        self.config = target.config

    def train(self, mode: bool = True) -> LogitDifference:
        super().train(mode)
        self.target.eval()  # frozen: no dropout, whatever Lightning asks of the wrapper
        return self

    def get_decoder(self) -> nn.Module:
        return self.target.get_decoder()

    def set_combination(self, alpha: float, relative_top: float | None) -> None:
        self.alpha, self.relative_top = float(alpha), relative_top

    def target_logits(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        with torch.no_grad():
            return self.target(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits

    def assistant_logits(self, input_ids, attention_mask=None, position_ids=None) -> torch.Tensor:
        return self.assistant(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits

    def forward(self, input_ids: torch.Tensor, attention_mask=None, position_ids=None, logits_to_keep: int = 0,
                **_ignored) -> LogitsOutput:
        """The combined logits (B, T, V) (the last `logits_to_keep` positions only, when it is > 0); the output's
        `generation_logits` are what greedy decoding uses (−1e3 outside the relative-top set)."""
        keep_last = {"logits_to_keep": int(logits_to_keep)} if logits_to_keep else {}
        with torch.no_grad():
            target = self.target(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                 **keep_last).logits.float()
        assistant = self.assistant(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   **keep_last).logits.float()
        keep = None if self.relative_top is None else losses.relative_top_mask(target, self.relative_top)
        return LogitsOutput(losses.uld_logits(target, assistant, self.alpha, self.relative_top, keep), keep)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 32,
                 eos_token_id: int | None = None, pad_token_id: int | None = None, do_sample: bool = False,
                 **_ignored) -> torch.Tensor:
        """Greedy decoding of the unlearned model (both LMs keep a KV cache), HF-style: returns the prompt
        (left-padded where `attention_mask` says so) followed by the new tokens; after EOS, pad tokens. Each token
        is the argmax of the combined logits over the target's relative-top set (the ULD code's decoder: the rest
        at −1e3), the same as `greedy_generate` on the wrapper."""
        if do_sample:
            raise ValueError("LogitDifference.generate: greedy decoding only (do_sample=False)")
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.dtype)
        pad = pad_token_id if pad_token_id is not None else (eos_token_id if eos_token_id is not None else 0)
        out, step_ids = input_ids, input_ids
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        caches = {"target": None, "assistant": None}
        for _ in range(max_new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp_min(0)[:, -step_ids.shape[1]:]
            logits = {}
            for name, lm in (("target", self.target), ("assistant", self.assistant)):
                o = lm(input_ids=step_ids, attention_mask=mask, position_ids=positions, cache=caches[name],
                       use_cache=True, logits_to_keep=1)
                caches[name], logits[name] = o.cache, o.logits[:, -1].float()
            keep = None if self.relative_top is None else losses.relative_top_mask(logits["target"], self.relative_top)
            combined = losses.uld_logits(logits["target"], logits["assistant"], self.alpha, self.relative_top, keep)
            scores = losses.uld_generation_logits(combined, keep)  # −1e3 outside the target's relative-top set
            token = torch.where(done, torch.full_like(done, pad, dtype=out.dtype), scores.argmax(-1))
            out = torch.cat([out, token[:, None]], dim=1)
            if eos_token_id is not None:
                done |= token == eos_token_id
                if bool(done.all()):
                    break
            step_ids = token[:, None]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        return out


class ULD(Method):
    """ULD: train an assistant on the reversed objectives; the model is the target minus the assistant."""

    module_class = UnlearningModule  # pair batches (forget ids, mask, retain ids, mask); val/forget_loss
    needs_task = frozenset({"forget-retain"})
    needs_model = frozenset({"causal-lm"})
    supports_fsdp = False  # a frozen target and LoRA adapters in one module; single-device or DDP

    def __init__(self, name: str = "uld", lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01, warmup_steps: int = 20, min_lr_ratio: float = 0.1,
                 assistant_layers: int | float = 0.25, lora_rank: int = 16, lora_alpha: float = 32.0,
                 lora_dropout: float = 0.05, retain_weight: float = losses.ULD_RETAIN_WEIGHT,
                 retain_positions: str = "sequence", alpha: float = losses.ULD_ALPHA,
                 relative_top: float | None = losses.ULD_RELATIVE_TOP, eval_alpha: float = 0.8,
                 eval_relative_top: float | None = 0.01):
        super().__init__(name, lr, betas, eps, weight_decay, warmup_steps, min_lr_ratio)
        for key, value in (("relative_top", relative_top), ("eval_relative_top", eval_relative_top)):
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"method.{key}: {value}; choose 0 < {key} <= 1, or null for no filter")
        if retain_positions not in RETAIN_POSITIONS:
            raise ValueError(f"method.retain_positions: {retain_positions!r}; choose one of {', '.join(RETAIN_POSITIONS)}")
        if lora_rank < 1:
            raise ValueError(f"method.lora_rank: {lora_rank}; choose an int >= 1")
        if not 0 <= lora_dropout < 1:
            raise ValueError(f"method.lora_dropout: {lora_dropout}; choose 0 <= lora_dropout < 1")
        if isinstance(assistant_layers, bool) or not (
                (isinstance(assistant_layers, int) and assistant_layers >= 1)
                or (isinstance(assistant_layers, float) and 0 < assistant_layers <= 1)):
            raise ValueError(f"method.assistant_layers: {assistant_layers}; choose an int >= 1 (layers) "
                             "or a float in (0, 1] (fraction of the target's layers)")
        self.assistant_layers = assistant_layers
        self.lora_rank, self.lora_alpha, self.lora_dropout = int(lora_rank), float(lora_alpha), float(lora_dropout)
        self.retain_weight = float(retain_weight)
        self.retain_positions = retain_positions
        self.alpha, self.relative_top = float(alpha), relative_top
        self.eval_alpha, self.eval_relative_top = float(eval_alpha), eval_relative_top

    @property
    def needs_trained_model(self) -> bool:
        return True

    # -- the model ---------------------------------------------------------------------------
    def prepare_model(self, model: nn.Module) -> LogitDifference:
        if isinstance(model, LogitDifference):  # a saved ULD model: train its assistant further
            return model
        layers = assistant_layer_count(self.assistant_layers, model.config.num_hidden_layers)
        assistant = with_lora(truncated_copy(model, layers), self.lora_rank, self.lora_alpha, self.lora_dropout)
        return LogitDifference(model, assistant, self.alpha, self.relative_top)

    def evaluate(self, model: LogitDifference, data) -> dict[str, float]:
        """Switch to the evaluation-time combination (the code's TOFU evaluation: w = −0.8, ρ = 1e-2); the
        dataset's metrics that follow are computed with it."""
        model.set_combination(self.eval_alpha, self.eval_relative_top)
        return {"uld_alpha": self.eval_alpha,
                "uld_relative_top": self.eval_relative_top if self.eval_relative_top is not None else 0.0}

    # -- training ----------------------------------------------------------------------------
    def unlearning_loss(self, module, forget_ids, forget_mask, retain_ids, retain_mask) -> torch.Tensor:
        """CE of the assistant on the forget answers (mean over the batch's answer tokens, as HF's
        `outputs.loss`) + λ·KL(uniform ‖ p_assistant) over the retain positions."""
        model: LogitDifference = module.model
        forget_logits = model.assistant_logits(forget_ids)
        forget_nll = losses.token_mean_nll(forget_logits, forget_ids, forget_mask)
        retain_logits = model.assistant_logits(retain_ids)[:, :-1]
        return losses.uld_assistant_loss(forget_nll, retain_logits, self.retain_kl_mask(retain_mask), self.retain_weight)

    def retain_kl_mask(self, retain_mask: torch.Tensor) -> torch.Tensor:
        """(B, T−1): the positions whose next-token distribution is pushed to uniform. "answer": those
        predicting an answer token; "sequence": those predicting any token up to the last answer token
        (question and answer; the code averages over every position, padding included)."""
        positions = retain_mask if self.retain_positions == "answer" else real_token_mask(retain_mask)
        return positions[:, 1:]

    def optimizer_state_bytes(self, model: nn.Module) -> int:
        """Dry runs: AdamW's two fp32 moments of the LoRA factors only (r·(in + out) per adapted projection)."""
        layers = assistant_layer_count(self.assistant_layers, model.config.num_hidden_layers)
        lora_params = 0
        for name, m in model.named_modules():
            parts = name.split(".")
            if (isinstance(m, nn.Linear) and parts[-1] in LORA_TARGETS and "layers" in parts
                    and int(parts[parts.index("layers") + 1]) < layers):
                lora_params += self.lora_rank * (m.in_features + m.out_features)
        return 2 * 4 * lora_params
