"""Checked planner options: user metadata in the official types, sampling settings, token budgets, seeds.

`lm_request` validates everything a caller passes before any model work, with one clear error naming the
argument: bpm 30..300, duration 10..max_duration, a known keyscale / language, time signature 2/3/4/6.
The accepted values are then converted the way the official `generate_music` builds `user_metadata`
(bpm and duration as ints of the numbers, keyscale and time signature as stripped strings).
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch

from . import prompts
from .constrained import check_user_metadata
from .sample import Sampling

DURATION_MIN, DURATION_MAX = 10, 600  # seconds (official constants.py)
MAX_MODEL_LEN = 4096  # the official handler's max_model_len: new tokens are capped at 4096 - 64
CODES_PER_SECOND = 5


@dataclass(frozen=True)
class PlanRequest:
    caption: str
    lyrics: str
    user_metadata: dict  # only the given fields
    target_duration: float | None  # seconds; sets the number of codes (5 per second)
    sampling: Sampling
    cfg_scale: float
    negative_prompt: str
    use_cot_metas: bool
    use_cot_caption: bool
    use_cot_language: bool
    constrained: bool
    max_duration: int

    def replace(self, **changes) -> "PlanRequest":
        return dataclasses.replace(self, **changes)


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def lm_request(caption: str, lyrics: str, *, bpm=None, keyscale=None, timesignature=None, duration=None,
               vocal_language=None, temperature=0.85, cfg_scale=2.0, top_k=None, top_p=0.9, repetition_penalty=1.0,
               negative_prompt=prompts.DEFAULT_NEGATIVE_PROMPT, use_cot_metas=True, use_cot_caption=True,
               use_cot_language=True, constrained=True, max_duration=DURATION_MAX) -> PlanRequest:
    for name, text in (("caption", caption), ("lyrics", lyrics), ("negative_prompt", negative_prompt)):
        if not isinstance(text, str):
            raise TypeError(f"{name} must be a string, got {type(text).__name__}")
    if (isinstance(max_duration, bool) or not isinstance(max_duration, int)
            or not DURATION_MIN <= max_duration <= DURATION_MAX):
        raise ValueError(f"max_duration must be an integer in {DURATION_MIN}..{DURATION_MAX} seconds, "
                         f"got {max_duration!r}")
    if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, (int, float)):
        raise TypeError(f"cfg_scale must be a number, got {cfg_scale!r}")
    raw = {}
    if bpm is not None:
        raw["bpm"] = bpm
    if keyscale is not None:
        raw["keyscale"] = keyscale.strip() if isinstance(keyscale, str) else keyscale
    if timesignature is not None:
        raw["timesignature"] = timesignature.strip() if isinstance(timesignature, str) else timesignature
    if duration is not None:
        raw["duration"] = duration
    if vocal_language is not None:
        if not isinstance(vocal_language, str):
            raise TypeError(f"vocal_language must be a string such as 'en', got {vocal_language!r}")
        if vocal_language.strip() and vocal_language.strip().lower() != "unknown":  # "unknown" = let the LM say
            raw["language"] = vocal_language.strip()
    checked = check_user_metadata(raw, max_duration)
    user = {}
    for key, value in checked.items():
        # generate_music passes int(float(bpm)) and int(float(duration)); strings for the rest.
        user[key] = int(float(value)) if key in ("bpm", "duration") else str(value)
    target = float(checked["duration"]) if "duration" in checked else None
    return PlanRequest(
        caption=caption, lyrics=lyrics, user_metadata=user, target_duration=target,
        sampling=Sampling(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty),
        cfg_scale=float(cfg_scale), negative_prompt=negative_prompt,
        use_cot_metas=_flag("use_cot_metas", use_cot_metas), use_cot_caption=_flag("use_cot_caption", use_cot_caption),
        use_cot_language=_flag("use_cot_language", use_cot_language), constrained=_flag("constrained", constrained),
        max_duration=max_duration,
    )


def max_new_tokens(target_duration: float | None, phase: str, max_duration: int) -> int:
    """The official `_compute_max_new_tokens`: the duration clamped to 10..max_duration, 5 codes a second,
    plus 10 (codes phase) or 500 (other phases); without a duration 3500; never above 4096 - 64."""
    if target_duration is not None and target_duration > 0:
        codes = int(max(DURATION_MIN, min(max_duration, target_duration)) * CODES_PER_SECOND)
        budget = codes + (10 if phase == "codes" else 500)
    else:
        budget = min(4096, DURATION_MAX * CODES_PER_SECOND + 500)
    return min(budget, MAX_MODEL_LEN - 64)


def new_generator(seed: int | None, device) -> tuple[torch.Generator, int]:
    """A generator seeded with `seed` (a fresh random seed when None, as the official draws them)."""
    if seed is None:
        seed = random.randint(0, 2**32 - 1)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    return torch.Generator(device=device).manual_seed(seed), seed
