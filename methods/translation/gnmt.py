"""Google's Neural Machine Translation System: Bridging the Gap between Human and Machine Translation (Wu, Schuster,
Chen, Le, Norouzi et al., arXiv:1609.08144, 2016): maximum-likelihood training of the GNMT architecture
(models/gnmt.py) and its beam search, which ranks hypotheses by (section 7, eq. 14)

    s(Y, X) = log P(Y|X) / lp(Y) + cp(X; Y)
    lp(Y)    = (5 + |Y|)^α / (5 + 1)^α
    cp(X; Y) = β · Σ_{i=1}^{|X|} log(min(Σ_{j=1}^{|Y|} p_{i,j}, 1.0))

(methods/seq2seq.py BeamScorer and beam_search: shared by every encoder-decoder of the pairs data kind, T5 too).
`evaluate` translates the validation sources under each decoding of `decodings` (greedy, beam, beam + lp, beam + lp
+ cp by default) and reports BLEU, chrF and exact match for each, the paper's comparison of Table 2 at small scale;
with `int8_check` it also decodes greedily with the model's weight matrices fake-quantized to int8 (section 6) and
reports the largest change of a validation log-probability.

Training is maximum likelihood (the paper's O_ML, eq. 7) with the baseline's AdamW and schedule.
Deviations (also in configs/method/gnmt.yaml and the README row):
- No RL refinement (the paper's O_RL with the GLEU reward, eq. 8-9, used after ML convergence); no switch from Adam
  to SGD (the paper: Adam at 2e-4 for 60k steps, then SGD at 0.5); AdamW with the baseline's schedule throughout.
- The beam search keeps the beam_size best partial hypotheses by s(Y, X) (their length and attention so far) and
  finishes those ending in EOS; the paper's pruning rules (beam width in score, finished-hypothesis pruning) are
  not applied: a source is done when it holds beam_size finished hypotheses.
- 8-bit weights with float accumulators, fake-quantized (the paper: 8-bit weights, 16-bit accumulators on TPUs).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from methods.base import Method

if TYPE_CHECKING:
    from torch import nn

DEFAULT_DECODINGS = {
    "greedy": {"beam_size": 1},
    "beam": {"beam_size": 4},
    "beam_lp": {"beam_size": 4, "length_penalty": 0.2},
    "beam_lp_cp": {"beam_size": 4, "length_penalty": 0.2, "coverage_penalty": 0.2},
}
DECODING_KEYS = ("beam_size", "length_penalty", "coverage_penalty")


class GNMT(Method):
    needs_task = frozenset({"seq2seq"})
    needs_model = frozenset({"gnmt"})

    def __init__(self, name: str = "gnmt", decodings: dict | None = None, int8_check: bool = True,
                 eval_examples: int | None = None, **kw: Any):
        super().__init__(name=name, **kw)
        decodings = DEFAULT_DECODINGS if decodings is None else dict(decodings)
        if not decodings:
            raise ValueError("method.decodings: name at least one decoding, e.g. {greedy: {beam_size: 1}}")
        for label, d in decodings.items():
            unknown = sorted(set(d or {}) - set(DECODING_KEYS))
            if unknown:
                raise ValueError(f"method.decodings.{label}: unknown key {unknown[0]!r}; choose keys from: {', '.join(DECODING_KEYS)}")
            beam = (d or {}).get("beam_size", 1)
            if not (isinstance(beam, int) and beam >= 1):
                raise ValueError(f"method.decodings.{label}.beam_size: must be a positive integer, got {beam!r}")
            for k in ("length_penalty", "coverage_penalty"):
                if not (d or {}).get(k, 0.0) >= 0:
                    raise ValueError(f"method.decodings.{label}.{k}: must be >= 0, got {d[k]!r}")
        if eval_examples is not None and not (isinstance(eval_examples, int) and eval_examples >= 1):
            raise ValueError(f"method.eval_examples: a positive number of validation pairs or null (all), got {eval_examples!r}")
        self.decodings = {k: {"beam_size": 1, "length_penalty": 0.0, "coverage_penalty": 0.0, **(v or {})}
                          for k, v in decodings.items()}
        self.int8_check, self.eval_examples = bool(int8_check), eval_examples

    def evaluate(self, model: nn.Module, data: Any) -> dict[str, float]:
        """BLEU, chrF and exact match under each decoding; with int8_check the int8 model's greedy BLEU and the
        largest |Δ log p| of the validation targets' tokens."""
        pairs = data.val if self.eval_examples is None else data.val[: self.eval_examples]
        sources = [s for s, _ in pairs]
        refs = data.references[: len(pairs)]
        out: dict[str, float] = {}
        for label, decoding in self.decodings.items():
            scores = data.score(data.translate(model, sources, **decoding), refs)
            out.update({f"{label}/{k}": v for k, v in scores.items()})
        if self.int8_check:
            from models.gnmt import quantize_int8

            quantized = quantize_int8(copy.deepcopy(model))
            scores = data.score(data.translate(quantized, sources, beam_size=1), refs)
            out.update({f"int8_greedy/{k}": v for k, v in scores.items()})
            out["int8_max_abs_logprob_change"] = max_logprob_change(model, quantized, pairs[:64])
        return out


def max_logprob_change(model: nn.Module, other: nn.Module, pairs: list[tuple[list[int], list[int]]]) -> float:
    """max over the target tokens of `pairs` of |log p_model - log p_other| (teacher forced)."""
    import torch

    from methods.seq2seq import seq2seq_logits, shift_right

    width = max(max(len(s), len(t)) for s, t in pairs)
    src = torch.zeros(len(pairs), width, dtype=torch.long)
    tgt = torch.zeros(len(pairs), width, dtype=torch.long)
    for b, (s, t) in enumerate(pairs):
        src[b, :len(s)], tgt[b, :len(t)] = torch.tensor(s), torch.tensor(t)
    device = next(model.parameters()).device
    src, tgt = src.to(device), tgt.to(device)
    real = tgt != model.config.pad_token_id
    with torch.no_grad():
        a, b = (torch.log_softmax(seq2seq_logits(m.eval(), src, shift_right(m, tgt)).double(), -1)
                .gather(-1, tgt[..., None]).squeeze(-1) for m in (model, other))
    return float((a - b).abs()[real].max())
