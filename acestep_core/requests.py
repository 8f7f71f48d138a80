"""The pipeline's public arguments, validated into one plain `Request`.

`validate_request(config, **kwargs)` checks every argument before any model runs, one small function
per group of arguments; a bad one raises ValueError or TypeError naming the argument and what was
expected. It needs only the checkpoint's config, so a batch of requests can be checked before any
weights load. What is derived from a valid request (lengths, schedule, noise, callbacks) lives in
derived.py; which reference's rules apply is `req.behaviour` (behaviour.py).
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable

import torch

from . import behaviour as behaviours
from . import prompts, sampling, tasks
from .behaviour import Behaviour
from .config import AceStepConfig, vae_encoder_mismatch
from .fsq import parse_audio_codes
from .oobleck import DECODE_CHUNK_FRAMES, DECODE_OVERLAP_FRAMES

log = logging.getLogger("acestep_core")

OUTPUT_TYPES = ("pt", "np", "latent")
MAX_BATCH = 64
MAX_SECONDS = 20 * 60.0
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Request:
    """One validated call of the pipeline; lists hold one entry per batch item."""

    # text and metadata
    batch_size: int
    prompts: list[str]
    lyrics: list[str]
    languages: list[str]
    bpm: Any
    keyscale: Any
    timesignature: Any
    audio_duration: float | None  # None: the source / codes / behaviour.default_seconds decide
    # task
    task: str
    instruction: str
    src_audio: torch.Tensor | None  # [B, 2, S] float32, silence-padded when a repaint window reaches outside
    reference_audio: torch.Tensor | None  # [1 or B, 2, S] float32
    codes: torch.Tensor | None  # [B, N] FSQ code ids
    repaint_window: tuple[float, float] | None  # seconds in src_audio
    repaint_strength: float
    audio_cover_strength: float
    # guidance and schedule
    guidance_scale: float
    cfg_interval: tuple[float, float]
    use_adg: bool
    num_inference_steps: int
    shift: float
    custom_timesteps: list[float] | None
    # randomness
    generator: Any  # a torch.Generator or a list of them (diffusers' convention), or None
    seeds: list[int] | None  # per-item seeds when no generator is given
    latents: torch.Tensor | None
    retake_seeds: list[int] | None
    retake_variance: float
    cover_noise_strength: float
    sample_posterior: bool
    sampler: sampling.SamplerOptions
    # output and rules
    output_type: str
    return_dict: bool
    vae_chunk_size: int | None
    callback_on_step_end: Callable | None
    progress: bool
    behaviour: Behaviour
    mask_condition_padding: bool
    chunk_mask_mode: str
    thinking: "Thinking | None"  # the 5 Hz LM planner's options when thinking=True, else None


@dataclass(frozen=True)
class Thinking:
    """`thinking=True`: the 5 Hz LM plans metadata and audio codes first (official default path). The lm_*
    options are the planner's sampling settings (acestep_core.lm, `Planner.plan`), with the official defaults."""

    use_cot_metas: bool
    use_cot_caption: bool
    use_cot_language: bool
    lm_temperature: float
    lm_cfg_scale: float
    lm_top_k: int | None
    lm_top_p: float | None
    lm_repetition_penalty: float
    lm_negative_prompt: str


# --- small checkers ----------------------------------------------------------------------------------------

def _is_number(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _number(name: str, value, *, lo=None, hi=None, allow_none=False, integer=False):
    if value is None and allow_none:
        return None
    kind = "an integer" if integer else "a number"
    if not _is_number(value):
        raise TypeError(f"{name} must be {kind}{' or None' if allow_none else ''}, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if integer and int(value) != value:
        raise TypeError(f"{name} must be {kind}{' or None' if allow_none else ''}, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got {value!r}")
    return int(value) if integer else float(value)


def _per_item(name: str, value, batch: int, check: Callable[[str, Any], Any]) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != batch:
            raise ValueError(f"{name} has {len(value)} items but the batch has {batch}")
        return [check(f"{name}[{i}]", v) for i, v in enumerate(value)]
    return [check(name, value)] * batch


def _seed_list(name: str, value, batch: int) -> list[int]:
    """A per-item seed list, or one seed: then item i gets seed + i (the official handler seeds only item 0
    and draws the others at random; this keeps batches reproducible)."""
    if isinstance(value, (list, tuple)):
        return _per_item(name, list(value), batch, lambda n, v: _number(n, v, lo=0, hi=MAX_SEED, integer=True))
    first = _number(name, value, lo=0, hi=MAX_SEED - batch, integer=True)
    return [first + i for i in range(batch)]


def _text(name: str, value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        # Lone surrogates: what Python makes of undecodable bytes in a command-line argument or a file.
        raise ValueError(f"{name} is not valid UTF-8 text (undecodable character at index {e.start})") from None
    return value


def _language(name: str, value) -> str:
    if not isinstance(value, str) or value not in prompts.VOCAL_LANGUAGES:
        raise ValueError(f"{name} must be one of the vocal language codes {', '.join(prompts.VOCAL_LANGUAGES)}; "
                         f"got {value!r}")
    return value


def _audio(name: str, value, channels: int, min_samples: int, clamp: bool) -> torch.Tensor:
    """A waveform [C, S] or [B, C, S] at the model's sample rate -> float32 [B, C, S]."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [{channels}, samples] or [B, {channels}, samples], "
                        f"got {type(value).__name__}")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating-point waveform, got dtype {value.dtype}")
    if value.dim() == 2:
        value = value[None]
    if value.dim() != 3 or value.shape[1] != channels or value.shape[0] == 0:
        raise ValueError(f"{name} must have shape [{channels}, samples] or [B, {channels}, samples], "
                         f"got {tuple(value.shape)}")
    if value.shape[-1] < min_samples:
        raise ValueError(f"{name} is too short: {value.shape[-1]} samples, at least {min_samples} needed")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{name} contains NaN or infinite samples")
    # float32: the VAE input dtype is decided by the VAE itself (behaviour.clamp_source_audio: row 24).
    value = value.float()
    return value.clamp(-1.0, 1.0) if clamp else value


# --- one function per group of arguments -------------------------------------------------------------------

def _text_group(prompt, lyrics, vocal_language) -> dict:
    # Batch size: from the first list among prompt / lyrics / vocal_language (diffusers: from prompt).
    lists = [v for v in (prompt, lyrics, vocal_language) if isinstance(v, (list, tuple))]
    batch = len(lists[0]) if lists else 1
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"prompt: the batch must hold 1 to {MAX_BATCH} items, got {batch}")
    return dict(batch_size=batch, prompts=_per_item("prompt", "" if prompt is None else prompt, batch, _text),
                lyrics=_per_item("lyrics", lyrics, batch, _text),
                languages=_per_item("vocal_language", vocal_language, batch, _language))


def _metadata_group(bpm, keyscale, timesignature, audio_duration) -> dict:
    prompts.format_metas(bpm=bpm, timesignature=timesignature, keyscale=keyscale)  # its messages name the argument
    return dict(bpm=bpm, keyscale=keyscale, timesignature=timesignature,
                audio_duration=_number("audio_duration", audio_duration, lo=0.1, hi=MAX_SECONDS, allow_none=True))


def _audio_group(cfg: AceStepConfig, rules: Behaviour, batch: int, task_type, src_audio, reference_audio,
                 audio_codes) -> dict:
    """Source audio, reference audio and audio codes; codes turn text2music into cover."""
    if task_type not in tasks.TASKS:
        raise ValueError(f"task_type must be one of {tasks.TASKS}, got {task_type!r}")
    channels, hop, rate = cfg.vae.audio_channels, cfg.vae.hop_length, cfg.vae.sampling_rate
    if src_audio is not None:
        src_audio = _audio("src_audio", src_audio, channels, hop, clamp=rules.clamp_source_audio)
        if src_audio.shape[0] not in (1, batch):
            raise ValueError(f"src_audio has {src_audio.shape[0]} items but the batch has {batch}")
        src_audio = src_audio.expand(batch, -1, -1)
        if src_audio.shape[-1] > MAX_SECONDS * rate:
            raise ValueError(f"src_audio is {src_audio.shape[-1] / rate:.1f} s long; at most {MAX_SECONDS:g} s")
    if reference_audio is not None:
        reference_audio = _audio("reference_audio", reference_audio, channels, hop, clamp=rules.clamp_source_audio)
        if reference_audio.shape[0] not in (1, batch):
            raise ValueError(f"reference_audio has {reference_audio.shape[0]} items but the batch has {batch}")
    codes = None
    if audio_codes is not None:
        levels = math.prod(cfg.audio_tokenizer.fsq_levels)
        parsed = []
        for i, text in enumerate(_per_item("audio_codes", audio_codes, batch, _text)):
            try:
                parsed.append(parse_audio_codes(text, levels))
            except ValueError as e:
                raise ValueError(f"audio_codes{'' if batch == 1 else f'[{i}]'}: {e}") from None
        if len({len(p) for p in parsed}) != 1:
            raise ValueError(f"audio_codes: every item must hold the same number of codes (got {[len(p) for p in parsed]})")
        codes = torch.stack(parsed)  # [B, N]
        seconds = codes.shape[1] * cfg.audio_tokenizer.pool_window_size * hop / rate
        if seconds > MAX_SECONDS:
            raise ValueError(f"audio_codes: {codes.shape[1]} codes make a {seconds:g} s song; at most {MAX_SECONDS:g} s")
        if task_type == "text2music":
            task_type = "cover"  # official and diffusers: codes turn text2music into cover
        elif task_type != "cover":
            raise ValueError(f"audio_codes can only be used with task_type 'cover' (or 'text2music'), not {task_type!r}")
    if task_type in tasks.SOURCE_TASKS and src_audio is None and codes is None:
        raise ValueError(f"task_type {task_type!r} needs src_audio" + (" or audio_codes" if task_type == "cover" else ""))
    if task_type == "text2music" and src_audio is not None:
        raise ValueError("src_audio is not used by task_type 'text2music'; choose repaint, cover, extract, lego or complete")
    return dict(task=task_type, src_audio=src_audio, reference_audio=reference_audio, codes=codes)


def _instruction(task: str, instruction, track_name, complete_track_classes) -> str:
    # The task's own instruction unless given (the official UI / API and diffusers derive it the same way).
    if instruction is None:
        return prompts.task_instruction(task, track_name, complete_track_classes)
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"instruction must be a non-empty str or None, got {instruction!r}")
    return _text("instruction", instruction)


def _window_group(rules: Behaviour, task: str, src_audio, rate: int, repainting_start, repainting_end,
                  repaint_strength) -> dict:
    """The repaint / lego window in seconds; outpainting pads the source with silence (behaviour row 6)."""
    if (repainting_start is not None or repainting_end is not None) and task not in tasks.WINDOW_TASKS:
        raise ValueError(f"repainting_start / repainting_end are used by {tasks.WINDOW_TASKS}, not {task!r}")
    strength = _number("repaint_strength", repaint_strength, lo=0.0, hi=1.0)
    if task not in tasks.WINDOW_TASKS or src_audio is None:
        return dict(repaint_window=None, repaint_strength=strength)
    src_seconds = src_audio.shape[-1] / rate
    start = _number("repainting_start", repainting_start, allow_none=True)
    end = _number("repainting_end", repainting_end, allow_none=True)
    start = 0.0 if start is None else start
    if end is None or end < 0 or (not rules.repaint_outpaint and end == 0):
        end = src_seconds
    if end <= start:
        raise ValueError(f"repainting_end ({end}) must be greater than repainting_start ({start})")
    if rules.repaint_outpaint:
        left, right = max(0.0, -start), max(0.0, end - src_seconds)
        if src_seconds + left + right > MAX_SECONDS:
            # Checked before the padding is allocated: a window far outside the source grows the song.
            raise ValueError(f"repainting_start / repainting_end ({start:g}, {end:g} s) outside the "
                             f"{src_seconds:.1f} s source make a {src_seconds + left + right:.1f} s song; "
                             f"at most {MAX_SECONDS:g} s")
        if left or right:
            src_audio = torch.nn.functional.pad(src_audio, (int(left * rate), int(right * rate)))
        start, end = start + left, end + left
    elif start < 0 or start >= src_seconds:
        raise ValueError(f"repainting_start must lie in [0, {src_seconds:.2f}) s of src_audio, got {start}")
    return dict(repaint_window=(start, end), repaint_strength=strength, src_audio=src_audio)


def _guidance_group(cfg: AceStepConfig, guidance_scale, cfg_interval_start, cfg_interval_end, use_adg,
                    audio_cover_strength) -> dict:
    start = _number("cfg_interval_start", cfg_interval_start, lo=0.0, hi=1.0)
    end = _number("cfg_interval_end", cfg_interval_end, lo=0.0, hi=1.0)
    if start > end:
        raise ValueError(f"cfg_interval_start ({start}) must not exceed cfg_interval_end ({end})")
    turbo = cfg.pipeline.is_turbo
    scale = _number("guidance_scale", (1.0 if turbo else 7.0) if guidance_scale is None else guidance_scale,
                    lo=0.0, hi=100.0)
    if turbo and scale > 1.0:
        log.warning("guidance_scale=%g ignored: turbo checkpoints are guidance-distilled (no CFG pass)", scale)
        scale = 1.0
    return dict(guidance_scale=scale, cfg_interval=(start, end), use_adg=bool(use_adg),
                audio_cover_strength=_number("audio_cover_strength", audio_cover_strength, lo=0.0, hi=1.0))


def _schedule_group(cfg: AceStepConfig, rules: Behaviour, num_inference_steps, shift, timesteps) -> dict:
    turbo = cfg.pipeline.is_turbo
    max_steps = rules.max_turbo_steps if turbo else 1000
    steps = (8 if turbo else 30) if num_inference_steps is None else num_inference_steps
    custom = None
    if timesteps is not None:
        if isinstance(timesteps, torch.Tensor):
            timesteps = timesteps.tolist()
        if not isinstance(timesteps, (list, tuple)) or not timesteps:
            raise TypeError("timesteps must be a non-empty list of floats in [0, 1] or None")
        custom = [_number(f"timesteps[{i}]", t, lo=0.0, hi=1.0) for i, t in enumerate(timesteps)]
    return dict(num_inference_steps=_number("num_inference_steps", steps, lo=1, hi=max_steps, integer=True),
                shift=_number("shift", 3.0 if shift is None else shift, lo=0.01, hi=100.0), custom_timesteps=custom)


def _randomness_group(batch: int, latents, generator, seed, retake_seed, retake_variance) -> dict:
    """latents > generator > seed > fresh random seeds (logged so a run can be repeated). With `latents`
    given, the seeds still drive every later draw (SDE re-noising)."""
    if latents is not None:
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            raise TypeError("latents must be a floating-point torch.Tensor [B, T, 64] or None")
        if not bool(torch.isfinite(latents).all()):
            raise ValueError("latents contains NaN or infinite values")
    seeds = None
    if generator is not None:
        gens = generator if isinstance(generator, list) else [generator]
        if not all(isinstance(g, torch.Generator) for g in gens):
            raise TypeError("generator must be a torch.Generator or a list of them")
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"generator list has {len(generator)} items but the batch has {batch}")
    elif seed is None:
        seeds = [int(torch.randint(0, 2**31 - 1, ()).item()) for _ in range(batch)]
        log.info("random seeds: %s", seeds)
    else:
        seeds = _seed_list("seed", seed, batch)
    retake_variance = _number("retake_variance", retake_variance, lo=0.0, hi=1.0)
    retake_seeds = None
    if retake_variance > 0:
        if retake_seed is None:
            raise ValueError("retake_seed is required when retake_variance > 0")
        retake_seeds = _seed_list("retake_seed", retake_seed, batch)
    return dict(latents=latents, generator=generator, seeds=seeds, retake_seeds=retake_seeds,
                retake_variance=retake_variance)


def _sampler_group(rules: Behaviour, infer_method, sampler_mode, velocity_norm_threshold, velocity_ema_factor,
                   dcw_enabled, use_adg, retake_variance, cover_noise_strength) -> dict:
    cover_noise_strength = _number("cover_noise_strength", cover_noise_strength, lo=0.0, hi=1.0)
    threshold = _number("velocity_norm_threshold", velocity_norm_threshold, lo=0.0, hi=1e6)
    ema = _number("velocity_ema_factor", velocity_ema_factor, lo=0.0, hi=0.999)
    try:
        options = sampling.SamplerOptions(method=infer_method, solver=sampler_mode, velocity_norm_threshold=threshold,
                                          velocity_ema=ema, dcw=sampling.DCW() if dcw_enabled else None)
    except ValueError as e:
        raise ValueError(f"infer_method / sampler_mode: {e}") from None
    if not rules.official_sampler_options:
        used = dict(retake_variance=retake_variance > 0, cover_noise_strength=cover_noise_strength > 0,
                    velocity_norm_threshold=threshold > 0, velocity_ema_factor=ema > 0,
                    infer_method=infer_method != "ode", sampler_mode=sampler_mode != "euler",
                    dcw_enabled=bool(dcw_enabled), use_adg=bool(use_adg))
        name = next((k for k, v in used.items() if v), None)
        if name is not None:
            raise ValueError(f"{name} is an official-only sampler option; diffusers has no equivalent "
                             "(behaviour.official_sampler_options is off)")
    return dict(sampler=options, cover_noise_strength=cover_noise_strength)


def _output_group(output_type, return_dict, vae_chunk_size, callback_on_step_end, progress, sample_posterior) -> dict:
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if vae_chunk_size is not None:
        # A decode window must be wider than the two overlaps it throws away.
        vae_chunk_size = _number("vae_chunk_size", vae_chunk_size, lo=2 * DECODE_OVERLAP_FRAMES + 1, hi=2**31,
                                 integer=True)
    if callback_on_step_end is not None and not callable(callback_on_step_end):
        raise TypeError("callback_on_step_end must be callable or None")
    return dict(output_type=output_type, return_dict=bool(return_dict), vae_chunk_size=vae_chunk_size,
                callback_on_step_end=callback_on_step_end, progress=bool(progress),
                sample_posterior=bool(sample_posterior))


def _thinking_group(thinking, use_cot_metas, use_cot_caption, use_cot_language,
                    lm_temperature, lm_cfg_scale, lm_top_k, lm_top_p, lm_repetition_penalty,
                    lm_negative_prompt) -> Thinking | None:
    for name, value in (("thinking", thinking), ("use_cot_metas", use_cot_metas), ("use_cot_caption", use_cot_caption),
                        ("use_cot_language", use_cot_language)):
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")
    if not thinking:
        return None
    return Thinking(
        use_cot_metas=use_cot_metas, use_cot_caption=use_cot_caption, use_cot_language=use_cot_language,
        lm_temperature=_number("lm_temperature", lm_temperature, lo=0.0, hi=10.0),
        lm_cfg_scale=_number("lm_cfg_scale", lm_cfg_scale, lo=0.0, hi=100.0),
        lm_top_k=_number("lm_top_k", lm_top_k, lo=1, hi=2**31, integer=True, allow_none=True),
        lm_top_p=_number("lm_top_p", lm_top_p, lo=0.0, hi=1.0, allow_none=True),
        lm_repetition_penalty=_number("lm_repetition_penalty", lm_repetition_penalty, lo=0.01, hi=100.0),
        lm_negative_prompt=_text("lm_negative_prompt", lm_negative_prompt))


def validate_request(
    config: AceStepConfig,
    *,
    prompt=None, lyrics="", audio_duration=None, vocal_language="en", num_inference_steps=None, guidance_scale=None,
    shift=None, generator=None, latents=None, output_type="pt", return_dict=True, bpm=None, keyscale=None,
    timesignature=None, task_type="text2music", instruction=None, track_name=None, complete_track_classes=None,
    src_audio=None, reference_audio=None, audio_codes=None, repainting_start=None, repainting_end=None,
    audio_cover_strength=1.0, cfg_interval_start=0.0, cfg_interval_end=1.0, timesteps=None, callback_on_step_end=None,
    seed=None, mask_condition_padding=False, compat=None, behaviour=None, chunk_mask_mode=None, repaint_strength=0.5,
    sample_posterior=False, vae_chunk_size=DECODE_CHUNK_FRAMES, progress=False, retake_seed=None,
    retake_variance=0.0, cover_noise_strength=0.0, infer_method="ode", sampler_mode="euler",
    velocity_norm_threshold=0.0, velocity_ema_factor=0.0, dcw_enabled=False, use_adg=False,
    thinking=False, use_cot_metas=True, use_cot_caption=True, use_cot_language=True, lm_temperature=0.85,
    lm_cfg_scale=2.0, lm_top_k=None, lm_top_p=0.9, lm_repetition_penalty=1.0, lm_negative_prompt="NO USER INPUT",
) -> Request:
    """Every public argument of `AceStepPipeline.__call__` checked against `config`; -> a Request."""
    rules = behaviours.pick(compat, behaviour)
    think = _thinking_group(thinking, use_cot_metas, use_cot_caption, use_cot_language,
                            lm_temperature, lm_cfg_scale, lm_top_k, lm_top_p, lm_repetition_penalty,
                            lm_negative_prompt)
    if chunk_mask_mode is None:
        chunk_mask_mode = rules.chunk_mask_mode
    elif chunk_mask_mode not in behaviours.CHUNK_MASK_MODES:
        raise ValueError(f"chunk_mask_mode must be one of {behaviours.CHUNK_MASK_MODES}, got {chunk_mask_mode!r}")
    fields = _text_group(prompt, lyrics, vocal_language)
    batch = fields["batch_size"]
    fields.update(_metadata_group(bpm, keyscale, timesignature, audio_duration))
    fields.update(_audio_group(config, rules, batch, task_type, src_audio, reference_audio, audio_codes))
    fields["instruction"] = _instruction(fields["task"], instruction, track_name, complete_track_classes)
    fields.update(_window_group(rules, fields["task"], fields["src_audio"], config.vae.sampling_rate,
                                repainting_start, repainting_end, repaint_strength))
    fields.update(_guidance_group(config, guidance_scale, cfg_interval_start, cfg_interval_end, use_adg,
                                  audio_cover_strength))
    fields.update(_schedule_group(config, rules, num_inference_steps, shift, timesteps))
    fields.update(_randomness_group(batch, latents, generator, seed, retake_seed, retake_variance))
    fields.update(_sampler_group(rules, infer_method, sampler_mode, velocity_norm_threshold, velocity_ema_factor,
                                 dcw_enabled, use_adg, fields["retake_variance"], cover_noise_strength))
    fields.update(_output_group(output_type, return_dict, vae_chunk_size, callback_on_step_end, progress,
                                sample_posterior))
    if fields["src_audio"] is not None or fields["reference_audio"] is not None:
        # Last, once every argument is known to be well formed: can this checkpoint encode audio at all?
        problem = vae_encoder_mismatch(config)
        if problem is not None:
            raise ValueError(f"{'src_audio' if fields['src_audio'] is not None else 'reference_audio'}: {problem}")
    return Request(**fields, behaviour=rules, mask_condition_padding=bool(mask_condition_padding),
                   chunk_mask_mode=chunk_mask_mode, thinking=think)


def parse_request(pipe, **kwargs) -> Request:
    """`validate_request` with the pipeline's config (what `pipe(...)` runs before any compute)."""
    return validate_request(pipe.config, **kwargs)
