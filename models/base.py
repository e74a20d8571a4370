"""The architecture protocol: configs/model/<name>.yaml names its builder in `_target_`.

    _target_: models.llama.Llama       # an Architecture subclass, or any torch.nn.Module class
    name: llama-tiny                   # the runner's keys: name, seq_len, vocab_size (null: the tokenizer's),
    seq_len: 128                       #   init_from (a checkpoint, run dir, HF dir, hf://name, a saved model.pt)
    vocab_size: null
    init_from: null
    hidden_size: 256                   # everything else: the builder's own keys, checked against its signature
    ...

An Architecture builds the model (random init) and says what the runner needs to know of it: its `kind` (what
tasks and methods check it against: causal-lm, masked-lm, seq2seq-lm, ...), its repeated blocks (FSDP's wrap
units, per-block torch.compile, the dry run) and, for the dry run, an activation-memory estimate.

Any other nn.Module class works too (`ModuleArchitecture` wraps it): its constructor gets the YAML's own keys,
plus `vocab_size` and `seq_len` where it takes them; its forward(input_ids) returns logits (or an output with
`.logits`); it may declare a class attribute `kind` (default causal-lm) and a method `repeated_blocks()`.
This package imports no other package of the project.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # torch is imported where a model is built: validating a config needs none
    from torch import nn



def size_problems(num_heads: int | None = None, hidden_size: int | None = None, **sizes: int) -> list[str]:
    """One line per bad size of a model config: every given size must be positive, and hidden_size divisible by
    num_heads (when both are given). For an architecture's __init__: raise ValueError("; ".join(problems))."""
    given = {**({"hidden_size": hidden_size} if hidden_size is not None else {}), **sizes,
             **({"num_heads": num_heads} if num_heads is not None else {})}
    problems = [f"model.{k}: must be positive, got {v}" for k, v in given.items() if not v > 0]
    if hidden_size is not None and num_heads is not None and num_heads > 0 and hidden_size > 0 and hidden_size % num_heads:
        problems.append(f"model.hidden_size ({hidden_size}) must be divisible by model.num_heads ({num_heads})")
    return problems

class Architecture:
    kind: ClassVar[str] = "causal-lm"  # causal-lm | masked-lm | seq2seq-lm | your own
    provides: ClassVar[frozenset[str]] = frozenset()  # further capabilities methods may need (Method.needs_model)
    hf_auto: ClassVar[str | None] = None  # the transformers Auto class of its HF checkpoints (hf://name, HF dirs)
    # The longest model.seq_len the runner accepts (checked before any work). Our builders size positions by
    # seq_len (RoPE, learned tables), so this is a sanity bound, not a limit of the architecture: 131072 tokens,
    # Llama 3.1's context; a longer one is a typo far more often than a plan. Override it per architecture.
    max_seq_len: ClassVar[int] = 131072

    def build(self, vocab_size: int, seq_len: int) -> nn.Module:
        """The model, randomly initialised, on the current default device (the runner sets `meta` for dry runs)."""
        raise NotImplementedError

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        """The repeated blocks (decoder layers, encoder layers, ...), in order."""
        return []

    def from_pretrained(self, name: str, meta: bool = False) -> nn.Module:
        """An HF checkpoint (a hub name or a local directory); meta: its shapes only, nothing allocated."""
        import transformers

        if self.hf_auto is None:
            raise ValueError(f"model.init_from: {type(self).__name__} has no Hugging Face checkpoint format")
        auto = getattr(transformers, self.hf_auto)
        if meta:
            import torch

            config = transformers.AutoConfig.from_pretrained(name)
            with torch.device("meta"):
                return auto.from_config(config)
        return auto.from_pretrained(name)

    def activation_bytes(self, model: nn.Module, batch: int, seq_len: int, act_bytes: int,
                         checkpointing: bool) -> float | None:
        """Activation memory of one training micro-batch, estimated; None: no estimate for this architecture."""
        return None

    def logits_bytes(self, model: nn.Module, batch: int, seq_len: int, act_bytes: int, cross_entropy: str) -> float:
        """Logits and their gradient (activation dtype) plus the loss's fp32 upcast and its gradient, unless the
        loss never forms them: a causal LM's next-token loss goes through the `cross_entropy` kernel
        (hardware.kernels), whose chunked `reference` and Triton backends do not; `naive` and every other
        architecture's loss (from the logits) do."""
        if self.kind == "causal-lm" and cross_entropy != "naive":
            return 0.0
        vocab = model.get_output_embeddings().weight.shape[0] if hasattr(model, "get_output_embeddings") else 0
        return float(batch * seq_len * vocab * (2 * act_bytes + 8))


class ModuleArchitecture(Architecture):
    """Any nn.Module class by `_target_`, built with the YAML's keys."""

    def __init__(self, cls: type[nn.Module], kwargs: dict[str, Any]):
        self.cls, self.kwargs = cls, dict(kwargs)
        self.kind = getattr(cls, "kind", "causal-lm")
        self.provides = frozenset(getattr(cls, "provides", ()))

    def build(self, vocab_size: int, seq_len: int) -> nn.Module:
        params = inspect.signature(self.cls).parameters
        extra = {k: v for k, v in (("vocab_size", vocab_size), ("seq_len", seq_len)) if k in params}
        return self.cls(**self.kwargs, **extra)

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        fn = getattr(model, "repeated_blocks", None)
        return list(fn()) if callable(fn) else []

    def logits_bytes(self, model, batch, seq_len, act_bytes, cross_entropy):
        """Its loss is computed from its logits (methods.module.MethodModule.lm_loss): they are formed."""
        from torch import nn

        head = [m for m in model.modules() if isinstance(m, nn.Linear)]
        vocab = head[-1].out_features if head else 0
        return float(batch * seq_len * vocab * (2 * act_bytes + 8))
