"""The report's rows for `--against official`, from our recorded run and the official worker's tensors.

The worker's tensors are named `<run>.<what>`: run "accumulated" (the official handler on its own), "isolated"
(its stages fed our previous stage's output; its sampler advanced with our velocities), "sampler" (its
sampler and DiT on our condition and context) and "direct" (the VAE encoding of the source). See
official_worker.py.
"""

from __future__ import annotations

import torch

from .case import ParityCase
from .ours import Ours
from .report import StageResult, _Judge

REPAINT_STRENGTH = 0.5  # both sides' default ("balanced" repaint): injection in the first half of the steps


def _get(theirs: dict, run: str, what: str):
    return theirs.get(f"{run}.{what}")


def _steps(theirs: dict, run: str) -> list[dict]:
    out, i = [], 0
    while f"{run}.dit.{i}.x" in theirs:
        out.append({k: theirs[f"{run}.dit.{i}.{k}"] for k in ("x", "t", "v")})
        i += 1
    return out


def _sampler_note(case: ParityCase, step: int, last: bool, injected: bool) -> str:
    parts = ["x0 = x - v t" if last else "Euler step"]
    if case.dcw:
        parts.append("DCW")
    if injected:
        parts.append("repaint injection")
    if last and case.task == "repaint":
        parts.append("repaint crossfade")
    return " + ".join(parts)


def official_rows(ours: Ours, theirs: dict, judge: _Judge, case: ParityCase, *,
                  vae_alone: torch.Tensor | None = None) -> list[StageResult]:
    rows = []
    acc = lambda what: _get(theirs, "accumulated", what)  # noqa: E731
    iso = lambda what: _get(theirs, "isolated", what)  # noqa: E731

    # 1. Text: the handler's formatting and tokenization (direct), its encoders on our ids (isolated) and on
    #    its own ids (accumulated).
    ids = [acc(k) for k in ("text_ids", "text_mask", "lyric_ids", "lyric_mask")]
    rows.append(judge.exact("token_ids", "direct", list(zip(ours.ids, ids))))
    rows += [judge.tensors("text_encoder", "isolated", ours.text, iso("text")),
             judge.tensors("text_encoder", "accumulated", ours.text, acc("text")),
             judge.tensors("lyric_embeddings", "isolated", ours.lyric, iso("lyric")),
             judge.tensors("lyric_embeddings", "accumulated", ours.lyric, acc("lyric"))]

    # 2. The VAE encoding of the source: the handler's tiled_encode on the same waveform.
    if "direct.vae_encode" in theirs:
        mine = vae_alone if vae_alone is not None else ours.source
        row = judge.tensors("vae_encode", "direct", mine, theirs["direct.vae_encode"])
        if vae_alone is not None:
            row.note = "the DiT got the given source latents; this row compares the VAE on its own"
        rows.append(row)

    # 3. Condition and context: prepare_condition on our text, lyrics and source latents (isolated).
    rows += [judge.tensors("condition", "isolated", ours.states, iso("states"), mask=(ours.mask, iso("mask"))),
             judge.tensors("condition", "accumulated", ours.states, acc("states"), mask=(ours.mask, acc("mask")))]
    if ours.source is None:
        # No source latents of ours to feed it (text2music; codes, which both sides decode from the same string).
        rows.append(judge.tensors("context", "direct", ours.context, acc("context")))
    else:
        rows += [judge.tensors("context", "isolated", ours.context, iso("context")),
                 judge.tensors("context", "accumulated", ours.context, acc("context"))]

    # 4. Sampling: the schedule, the start latents of a cover with noise, then per step the DiT velocity (its
    #    DiT on our exact inputs / along its own run) and the latents after the step (its update rule on our
    #    velocity / along its own run).
    mine, own, fed = ours.dit_calls, _steps(theirs, "accumulated"), _steps(theirs, "isolated")
    rows.append(judge.schedule([float(c[1][0]) for c in mine], [float(s["t"][0]) for s in own]))
    if case.cover_noise_strength > 0 and mine and fed:
        rows += [judge.tensors("cover_noise", "isolated", mine[0][0], fed[0]["x"], step=0, t=float(mine[0][1][0])),
                 judge.tensors("cover_noise", "accumulated", mine[0][0], own[0]["x"], step=0, t=float(mine[0][1][0]))]
    n = len(mine)
    inject = round((1.0 - REPAINT_STRENGTH) * n) if case.task == "repaint" else 0
    for i, (x, t, _states, _context, v) in enumerate(mine):
        where = dict(step=i, t=float(t[0]))
        if i < len(fed):
            rows.append(judge.tensors("dit_velocity", "isolated", v, fed[i]["v"], **where))
        if i < len(own):
            rows.append(judge.tensors("dit_velocity", "accumulated", v, own[i]["v"], **where))
        note = _sampler_note(case, i, i == n - 1, i < inject)
        if i == n - 1:
            # Its loop's output when every velocity was ours: the last step and the post-processing alone.
            row = judge.tensors("sampler_step", "isolated", ours.latents, iso("latents"), **where)
            row.note = note
            rows.append(row)
            continue
        nxt = mine[i + 1][0]
        for view, run in (("isolated", fed), ("accumulated", own)):
            if i + 1 < len(run):
                row = judge.tensors("sampler_step", view, nxt, run[i + 1]["x"], **where)
                row.note = note
                rows.append(row)
    if len(mine) != len(own):
        rows.append(StageResult("dit_velocity", "direct", False, "same number of steps",
                                note=f"{len(mine)} DiT calls in ours, {len(own)} in the official run"))

    # 5. Final latents: its sampler and DiT on our condition and context (isolated), its own run (accumulated).
    rows += [judge.tensors("final_latents", "isolated", ours.latents, _get(theirs, "sampler", "latents")),
             judge.tensors("final_latents", "accumulated", ours.latents, acc("latents"))]

    # 6. Decoded audio: the handler's tiled_decode on our latents (isolated) and on its own (accumulated).
    rows += [judge.audio("decoded_audio", "isolated", ours.audio, iso("audio")),
             judge.audio("decoded_audio", "accumulated", ours.audio, acc("audio"))]
    return rows
