"""Where the official ACE-Step code and diffusers 0.42.1 behave differently, as data.

One frozen `Behaviour` holds one field per documented difference (docs/parity.md, "Differences, and which
one we follow"; each field names its row). Two presets stand for the two references:

    OFFICIAL   the official handler and models (our default, the ground truth)
    DIFFUSERS  diffusers' AceStepPipeline, for bit-level comparisons against it

`pipe(..., compat="diffusers")` picks a preset; a researcher who wants one rule switched passes their own:

    pipe(..., behaviour=dataclasses.replace(OFFICIAL, guidance_interval_on="1-t"))

Code reads `req.behaviour.<field>`; nothing else in the library tests which reference is being followed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .oobleck import ENCODE_CHUNK_SECONDS

LENGTH_RULES = ("official", "ceil")
CHUNK_MASK_MODES = ("auto", "explicit")
COVER_MIXES = ("switch", "blend")
INTERVAL_CONVENTIONS = ("t", "1-t")
SCHEDULES = ("official", "linspace")
PADDING_RULES = ("right", "tokenizer")
REPAINT_FRAME_RULES = ("floor_div", "truncate")


@dataclass(frozen=True)
class Behaviour:
    caption_padding: str
    """Row 1 / 28. "right": each item right-padded (official); "tokenizer": pad on the side the checkpoint's
    tokenizer_config.json names (diffusers; config `pipeline.padding_side`)."""

    length_rule: str
    """Row 3. "official": max(min_frames, int(max(0.1, round(d, 1)) * rate) // hop); "ceil": ceil(d * 25)."""

    min_frames: int
    """Row 3. The fewest latent frames ever generated (official 128 = 5.12 s; diffusers 1)."""

    default_seconds: float
    """Row 3. The length without a duration, source or codes (official 120 s; diffusers 60 s)."""

    duration_from_source: bool
    """Row 4. The caption's duration line states the source audio's length, else `audio_duration`, else the
    template's 30 s (official); or `audio_duration`, else default_seconds (diffusers)."""

    chunk_mask_mode: str
    """Row 5. "auto": all-ones chunk mask for every task (official); "explicit": the 0/1 repaint window."""

    repaint_frame_rule: str
    """Row 6. "floor_div": int(s * rate // hop) (official); "truncate": int(s * rate / hop) (diffusers)."""

    repaint_outpaint: bool
    """Row 6. A window outside the source pads it with silence (official); else the start must lie in the
    source, and an end of 0 means "to the end" (diffusers)."""

    repaint_injection: bool
    """Row 7. Re-inject the noised source outside the window, then crossfade latents and splice the
    waveform ("balanced" mode, official); diffusers does none of it."""

    cover_mix: str
    """Row 8. audio_cover_strength < 1: "switch" to the text2music condition (silence context) after
    int(N * s) steps for any task (official); "blend" the two velocities every step, cover only (diffusers)."""

    guidance_interval_on: str
    """Row 9. The cfg interval applies to t ("t", official) or to 1 - t ("1-t", diffusers)."""

    schedule: str
    """Rows 10-11. "official": the turbo tables / snapping and the base float32 schedule; "linspace":
    diffusers' float32 linspace + shift with user timesteps verbatim, for every model."""

    max_turbo_steps: int
    """Row 10. The most steps a turbo model takes (official 20; diffusers 1000, i.e. no cap)."""

    clamp_source_audio: bool
    """Row 24. Source / reference audio clamped to [-1, 1] (official) or used as given (diffusers)."""

    encode_chunk_seconds: float | None
    """Row 25. Long audio encoded in windows of this many seconds (official 30) or in one pass (None)."""

    official_sampler_options: bool
    """Row 30. Retake, cover noise, SDE, Heun, velocity clamp / EMA, DCW and ADG exist (official) or are
    refused as having no equivalent (diffusers)."""

    trim_to_duration: bool
    """Row 27. Audio of a request below the minimum length is trimmed to the asked duration (ours, on the
    official numbers); diffusers returns every frame it made."""

    def __post_init__(self):
        choices = {"caption_padding": PADDING_RULES, "length_rule": LENGTH_RULES,
                   "chunk_mask_mode": CHUNK_MASK_MODES, "repaint_frame_rule": REPAINT_FRAME_RULES,
                   "cover_mix": COVER_MIXES, "guidance_interval_on": INTERVAL_CONVENTIONS, "schedule": SCHEDULES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"Behaviour.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.min_frames < 1 or self.max_turbo_steps < 1 or not self.default_seconds > 0:
            raise ValueError("Behaviour: min_frames and max_turbo_steps must be >= 1, default_seconds > 0")
        if self.encode_chunk_seconds is not None and not self.encode_chunk_seconds > 0:
            raise ValueError(f"Behaviour.encode_chunk_seconds must be > 0 or None, got {self.encode_chunk_seconds!r}")


OFFICIAL = Behaviour(
    caption_padding="right", length_rule="official", min_frames=128, default_seconds=120.0,
    duration_from_source=True, chunk_mask_mode="auto", repaint_frame_rule="floor_div", repaint_outpaint=True,
    repaint_injection=True, cover_mix="switch", guidance_interval_on="t", schedule="official", max_turbo_steps=20,
    clamp_source_audio=True, encode_chunk_seconds=ENCODE_CHUNK_SECONDS, official_sampler_options=True, trim_to_duration=True,
)

DIFFUSERS = Behaviour(
    caption_padding="tokenizer", length_rule="ceil", min_frames=1, default_seconds=60.0,
    duration_from_source=False, chunk_mask_mode="explicit", repaint_frame_rule="truncate", repaint_outpaint=False,
    repaint_injection=False, cover_mix="blend", guidance_interval_on="1-t", schedule="linspace",
    max_turbo_steps=1000, clamp_source_audio=False, encode_chunk_seconds=None, official_sampler_options=False,
    trim_to_duration=False,
)

PRESETS = {"official": OFFICIAL, "diffusers": DIFFUSERS}


def pick(compat: str | None, behaviour: Behaviour | None) -> Behaviour:
    """The one place a preset is chosen by name: `compat` names a preset, `behaviour` is a custom table."""
    if behaviour is not None:
        if compat is not None:
            raise ValueError("give either compat (a preset name) or behaviour (a Behaviour), not both")
        if not isinstance(behaviour, Behaviour):
            raise TypeError(f"behaviour must be an acestep_core.behaviour.Behaviour, got {type(behaviour).__name__}")
        return behaviour
    if compat is None:
        return OFFICIAL
    if compat not in PRESETS:
        raise ValueError(f"compat must be one of {tuple(PRESETS)}, got {compat!r}")
    return PRESETS[compat]


FIELDS = tuple(f.name for f in fields(Behaviour))
