"""One sampling step of the planner, in the official order, on float32 logits [B, V].

The official custom loops (`_generate_with_cfg_custom`, `_generate_with_constrained_decoding`) do:
CFG (codes phase only: on the allowed ids) -> constrained-decoding FSM -> repetition penalty -> top-k ->
top-p (the first sorted token always kept) -> softmax(logits / temperature) -> one multinomial draw.
The FSM is the caller's business (it sits between CFG and the penalty); the rest is here.

Without constrained decoding and without CFG the official code calls transformers `generate`, whose order
differs (penalty -> temperature -> top-k -> top-p with transformers' own top-p rule): `transformers_step`.

Random draws: `torch.multinomial` with 1 sample draws one exponential variate per vocabulary entry from the
generator, so a generator seeded with s gives the same tokens as the global generator after
`torch.manual_seed(s)`, provided the logits have the same width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.85
    top_k: int | None = None
    top_p: float | None = 0.9
    repetition_penalty: float = 1.0

    def __post_init__(self):
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 0):
            raise ValueError(f"top_k must be None or an integer >= 0, got {self.top_k!r}")
        if self.top_p is not None and (not isinstance(self.top_p, (int, float)) or not 0 <= self.top_p <= 1):
            raise ValueError(f"top_p must be None or a number in [0, 1], got {self.top_p!r}")
        if not isinstance(self.repetition_penalty, (int, float)) or self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be a number > 0, got {self.repetition_penalty!r}")


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + scale * (cond - uncond) in float32; NaN (from -inf - -inf) becomes -inf, as official."""
    out = uncond.float() + scale * (cond.float() - uncond.float())
    return torch.nan_to_num(out, nan=float("-inf"))


def repetition_penalty(scores: torch.Tensor, context: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor: every id seen in `context` [B, n] (prompt included)
    has its score divided by `penalty` when positive, multiplied when negative."""
    if penalty == 1.0:
        return scores
    seen = torch.gather(scores, 1, context)
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    return scores.scatter(1, context, seen)


def top_k_filter(scores: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep the k best scores (ties with the k-th kept), -inf elsewhere; in place."""
    if k is not None and k > 0:
        kth = torch.topk(scores, k)[0][..., -1, None]
        scores[scores < kth] = float("-inf")
    return scores


def top_p_filter(scores: torch.Tensor, p: float | None) -> torch.Tensor:
    """The official nucleus: drop sorted tokens once the cumulative probability exceeds p, shifted by one so
    the token that crosses p (and always the best one) stays; in place."""
    if p is not None and 0.0 < p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.cumsum(torch.softmax(sorted_scores.float(), dim=-1), dim=-1)  # fp32 as official
        drop_sorted = cumulative > p
        drop_sorted[..., 1:] = drop_sorted[..., :-1].clone()
        drop_sorted[..., 0] = False
        scores[drop_sorted.scatter(1, order, drop_sorted)] = float("-inf")
    return scores


def draw(scores: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """softmax(scores / temperature) -> one multinomial sample per row [B]; argmax when temperature is 0."""
    if temperature > 0:
        probs = torch.softmax(scores.float() / temperature, dim=-1)  # fp32 softmax, as the official upcasts
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return torch.argmax(scores, dim=-1)


def official_step(scores: torch.Tensor, context: torch.Tensor, s: Sampling,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Everything after the FSM in the official custom loops: penalty, top-k, top-p, temperature, draw."""
    scores = repetition_penalty(scores, context, s.repetition_penalty)
    scores = top_k_filter(scores, s.top_k)
    scores = top_p_filter(scores, s.top_p)
    return draw(scores, s.temperature, generator)


def transformers_step(scores: torch.Tensor, context: torch.Tensor, s: Sampling,
                      generator: torch.Generator | None) -> torch.Tensor:
    """transformers `generate` as the official unconstrained, CFG-free path calls it (do_sample = T > 0)."""
    scores = repetition_penalty(scores, context, s.repetition_penalty)
    if s.temperature <= 0:
        return torch.argmax(scores, dim=-1)
    if s.temperature != 1.0:
        scores = scores / s.temperature
    if s.top_k is not None and s.top_k > 0:
        kth = torch.topk(scores, min(s.top_k, scores.shape[-1]))[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if s.top_p is not None and 0.0 < s.top_p < 1.0:
        # transformers' rule: ascending sort, drop while the cumulative mass is <= 1 - p, keep the best one.
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1 - s.top_p)
        drop_sorted[..., -1:] = False
        scores = scores.masked_fill(drop_sorted.scatter(1, order, drop_sorted), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
