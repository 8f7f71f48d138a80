"""`pipe(..., thinking=True)`: the 5 Hz LM plans a text2music request before the DiT runs (official default).

The planner writes the metadata the caller left empty (bpm, key, time signature, duration, language), a
rewritten caption, and int(duration * 5) audio codes; the request then runs as the cover-from-codes path
(the official handler switches text2music with codes to cover the same way). What the caller gave always
wins over the plan. Differences from the official inference path are in docs/parity.md (the language the
LM picks is passed on; the official drops it by a key mismatch).
"""

from __future__ import annotations

import logging
from typing import Callable

from .lm.planner import Plan, Planner
from .prompts import VOCAL_LANGUAGES
from .requests import Request

log = logging.getLogger("acestep_core")

LM_UNKNOWN = "unknown"  # the LM's and our "no vocals / no language" code


def _plans(planner: Planner, req: Request, language_given: bool) -> tuple[Plan, ...]:
    t = req.thinking
    options = dict(
        bpm=req.bpm, keyscale=req.keyscale, timesignature=req.timesignature,
        duration=req.audio_duration, temperature=t.lm_temperature, cfg_scale=t.lm_cfg_scale, top_k=t.lm_top_k,
        top_p=t.lm_top_p, repetition_penalty=t.lm_repetition_penalty, negative_prompt=t.lm_negative_prompt,
        use_cot_metas=t.use_cot_metas, use_cot_caption=t.use_cot_caption, use_cot_language=t.use_cot_language)
    seeds = req.seeds or [None] * req.batch_size
    same_text = len(set(zip(req.prompts, req.lyrics, req.languages))) == 1
    language = req.languages[0] if language_given and req.languages[0] != LM_UNKNOWN else None
    if same_text:
        # The official batch call: phase 1 once (from the first seed), phase 2 per item from its own seed.
        return planner.plan_batch(req.prompts[0], req.lyrics[0], seeds=list(seeds), seed=seeds[0],
                                  vocal_language=language, **options)
    # Different texts: one plan each; every item then takes the first plan's duration, so that the batch
    # has one length (the DiT batch shares it).
    plans = []
    for i, (caption, lyrics, seed) in enumerate(zip(req.prompts, req.lyrics, seeds)):
        item = dict(options)
        if plans and item["duration"] is None:
            item["duration"] = plans[0].metadata.get("duration")
        lang = req.languages[i] if language_given and req.languages[i] != LM_UNKNOWN else None
        plans.append(planner.plan(caption, lyrics, seed=seed, vocal_language=lang, **item))
    return tuple(plans)


def _language(code) -> str:
    """The LM's language code as a vocal_language (its 51 codes are ours; anything else is "unknown")."""
    return code if code in VOCAL_LANGUAGES else LM_UNKNOWN


def plan_kwargs(planner: Planner | None, req: Request, kwargs: dict,
                fits: Callable[[str], bool]) -> tuple[dict, tuple[Plan, ...] | None]:
    """The pipeline's keyword arguments with the plan filled in (and thinking turned off), and the plans.

    A `vocal_language` in kwargs is the caller's and is kept (and given to the LM); without one, the LM's
    language is used (use_cot_language).

    fits(caption): whether a caption stays within the caption encoder's token limit once formatted. An LM
    caption that does not is replaced by the caller's (with a warning) rather than refused or truncated."""
    if req.thinking is None:
        return kwargs, None
    if req.task != "text2music" or req.codes is not None:
        log.warning("thinking=True plans text2music requests without audio_codes; task %r runs without the LM",
                    req.task)
        return {**kwargs, "thinking": False}, None
    if planner is None:
        raise ValueError("thinking=True needs the 5 Hz LM planner: load_pipeline(..., planner=LM_DIR) "
                         "(e.g. checkpoints/acestep-5Hz-lm-1.7B)")
    language_given = "vocal_language" in kwargs
    plans = _plans(planner, req, language_given)
    first = plans[0].metadata
    out = {**kwargs, "thinking": False}
    # Plan.caption is already the CoT caption when use_cot_caption is on and one was written.
    out["prompt"] = []
    for i, (p, caption) in enumerate(zip(plans, req.prompts)):
        if p.caption and p.caption != caption and not fits(p.caption):
            log.warning("item %d: the LM's caption is over the caption token limit; using the given caption", i)
            out["prompt"].append(caption)
        else:
            out["prompt"].append(p.caption or caption)
    for ours, theirs in (("bpm", "bpm"), ("keyscale", "keyscale"), ("timesignature", "timesignature")):
        if getattr(req, ours) is None and first.get(theirs) is not None:
            out[ours] = str(first[theirs]) if ours == "timesignature" else first[theirs]
    if req.audio_duration is None and first.get("duration") is not None:
        out["audio_duration"] = float(first["duration"])
    if not language_given and req.thinking.use_cot_language:
        # The official passes this under a key the DiT side never reads; we follow the user-visible intent.
        out["vocal_language"] = [_language(p.metadata.get("language")) for p in plans]
    out["audio_codes"] = [p.audio_codes for p in plans]
    return out, plans
