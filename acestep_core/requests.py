"""Validation of the pipeline's public arguments into one `Request`.

Every argument is checked here, before any model runs, and a bad one raises ValueError or TypeError with
the argument's name and what was expected. The rest of the pipeline can then assume clean inputs.
"""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable

import torch

from . import prompts, sampling, tasks
from .fsq import parse_audio_codes
from .oobleck import ENCODE_CHUNK_SECONDS

log = logging.getLogger("acestep_core")

COMPAT = ("official", "diffusers")
OUTPUT_TYPES = ("pt", "np", "latent")
MAX_BATCH = 64
MAX_SECONDS = 20 * 60.0
REPAINT_WAV_FADE_SECONDS = 0.05  # official balanced mode: 0.05 * (1 - strength) s of waveform crossfade


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
        return _per_item(name, list(value), batch, lambda n, v: _number(n, v, lo=0, hi=2**63 - 1, integer=True))
    first = _number(name, value, lo=0, hi=2**63 - 1 - batch, integer=True)
    return [first + i for i in range(batch)]


def _seeded_noise(seeds: list[int], length: int, channels: int, dtype: torch.dtype, device) -> torch.Tensor:
    """Official noise: one generator per item, on the model device, drawing [1, T, C] in the model dtype."""
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    return torch.cat([torch.randn(1, length, channels, generator=g, device=device, dtype=dtype) for g in gens])


def _text(name: str, value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
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
    # float32: the VAE input dtype is decided by the VAE itself. The official loader clamps to [-1, 1];
    # diffusers takes the tensor as given.
    value = value.float()
    return value.clamp(-1.0, 1.0) if clamp else value


@dataclass
class Request:
    batch_size: int
    prompts: list[str]
    lyrics: list[str]
    languages: list[str]
    task: str
    instruction: str
    bpm: Any
    keyscale: Any
    timesignature: Any
    audio_duration: float | None
    metas_duration: float | None
    src_audio: torch.Tensor | None  # [B, 2, S] (outpaint padding applied for repaint / lego)
    src_audio_padded: torch.Tensor | None
    reference_audio: torch.Tensor | None  # [1 or B, 2, S]
    codes: torch.Tensor | None  # [B, N]
    repaint_window: tuple[float, float] | None  # seconds in the (padded) source
    repaint_schedule: tuple[float, int]  # (injection ratio, latent crossfade frames)
    repaint_wav_crossfade: int  # samples
    audio_cover_strength: float
    guidance_scale: float
    cfg_interval_start: float
    cfg_interval_end: float
    num_inference_steps: int
    shift: float
    custom_timesteps: list[float] | None
    generator: Any
    seeds: list[int] | None
    latents: torch.Tensor | None
    output_type: str
    return_dict: bool
    compat: str
    mask_condition_padding: bool
    chunk_mask_mode: str
    sample_posterior: bool
    vae_generator: torch.Generator | None
    vae_chunk_size: int | None
    callback_on_step_end: Callable | None
    progress: bool
    retake_seeds: list[int] | None
    retake_variance: float
    cover_noise_strength: float
    sampler: sampling.SamplerOptions
    use_adg: bool

    @property
    def vae_encode_chunk_seconds(self) -> float | None:
        # The official handler tiles long sources; diffusers encodes them in one pass.
        return None if self.compat == "diffusers" else ENCODE_CHUNK_SECONDS

    @property
    def padding_side(self) -> str:
        # diffusers tokenizes the batch in one call with the Qwen tokenizer's padding side, which is left.
        return "left" if self.compat == "diffusers" else "right"

    def repaint_window_samples(self, rate: int) -> tuple[int, int]:
        start, end = self.repaint_window
        return int(start * rate), int(end * rate)

    def timesteps_for(self, is_turbo: bool, dtype: torch.dtype) -> list[float]:
        if self.compat == "diffusers":
            ts = (sampling.base_schedule(self.num_inference_steps, self.shift) if self.custom_timesteps is None
                  else sampling.base_schedule(0, 1.0, self.custom_timesteps))
        elif is_turbo:
            ts = sampling.turbo_schedule(self.num_inference_steps, self.shift, self.custom_timesteps)
        else:
            ts = sampling.base_schedule(self.num_inference_steps, self.shift, self.custom_timesteps)
        sampling.validate_schedule(ts)
        # The official keeps the schedule in the model dtype: bf16 runs step through bf16-rounded times.
        return torch.tensor(ts, dtype=dtype).tolist()

    def noise(self, length: int, channels: int, dtype: torch.dtype, device) -> torch.Tensor:
        shape = (self.batch_size, length, channels)
        if self.latents is not None:
            if tuple(self.latents.shape) != shape:
                raise ValueError(f"latents must have shape [B, T, C] = {list(shape)} for this request, "
                                 f"got {list(self.latents.shape)}")
            return self.latents.to(device=device, dtype=dtype)
        gens = self.generator
        if gens is None:
            return _seeded_noise(self.seeds, length, channels, dtype, device)
        # diffusers' convention: a list draws per item, one generator draws the whole batch (on its own device).
        if isinstance(gens, list):
            return torch.cat([torch.randn(1, length, channels, generator=g, device=g.device, dtype=dtype).to(device)
                              for g in gens])
        return torch.randn(shape, generator=gens, device=gens.device, dtype=dtype).to(device)

    def retake_noise(self, length: int, channels: int, dtype: torch.dtype, device) -> torch.Tensor:
        """The second noise of a retake, drawn like the main noise from per-item retake seeds."""
        return _seeded_noise(self.retake_seeds, length, channels, dtype, device)

    def step_callback(self, pipe, timesteps: list[float]):
        if self.callback_on_step_end is None:
            return None
        cb = self.callback_on_step_end

        def on_step(i: int, t_next: float, x: torch.Tensor):
            out = cb(pipe, i, timesteps[i], {"latents": x})
            if out is not None and not isinstance(out, dict):
                raise TypeError("callback_on_step_end must return None or a dict (e.g. {'latents': tensor})")
            new = (out or {}).get("latents")
            if new is not None and (not isinstance(new, torch.Tensor) or new.shape != x.shape):
                raise ValueError(f"callback_on_step_end returned latents of shape "
                                 f"{getattr(new, 'shape', None)}, expected {tuple(x.shape)}")
            return new

        return on_step


def parse_request(
    pipe,
    *,
    prompt=None,
    lyrics="",
    audio_duration=None,
    vocal_language="en",
    num_inference_steps=None,
    guidance_scale=None,
    shift=None,
    generator=None,
    latents=None,
    output_type="pt",
    return_dict=True,
    bpm=None,
    keyscale=None,
    timesignature=None,
    task_type="text2music",
    instruction=None,
    track_name=None,
    complete_track_classes=None,
    src_audio=None,
    reference_audio=None,
    audio_codes=None,
    repainting_start=None,
    repainting_end=None,
    audio_cover_strength=1.0,
    cfg_interval_start=0.0,
    cfg_interval_end=1.0,
    timesteps=None,
    callback_on_step_end=None,
    seed=None,
    mask_condition_padding=False,
    compat="official",
    chunk_mask_mode="auto",
    repaint_strength=0.5,
    sample_posterior=False,
    vae_chunk_size=512,
    progress=False,
    retake_seed=None,
    retake_variance=0.0,
    cover_noise_strength=0.0,
    infer_method="ode",
    sampler_mode="euler",
    velocity_norm_threshold=0.0,
    velocity_ema_factor=0.0,
    dcw_enabled=False,
    use_adg=False,
) -> Request:
    cfg = pipe.config
    if compat not in COMPAT:
        raise ValueError(f"compat must be one of {COMPAT}, got {compat!r}")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if task_type not in tasks.TASKS:
        raise ValueError(f"task_type must be one of {tasks.TASKS}, got {task_type!r}")
    if chunk_mask_mode not in ("auto", "explicit"):
        raise ValueError(f"chunk_mask_mode must be 'auto' or 'explicit', got {chunk_mask_mode!r}")
    if compat == "diffusers":
        chunk_mask_mode = "explicit"  # diffusers keeps the 0/1 repaint window in the chunk mask

    # Batch size: from the first list among prompt / lyrics / vocal_language (diffusers: from prompt).
    lists = [v for v in (prompt, lyrics, vocal_language) if isinstance(v, (list, tuple))]
    batch = len(lists[0]) if lists else 1
    if not 1 <= batch <= MAX_BATCH:
        raise ValueError(f"prompt: the batch must hold 1 to {MAX_BATCH} items, got {batch}")
    prompt = "" if prompt is None else prompt
    prompts_ = _per_item("prompt", prompt, batch, _text)
    lyrics_ = _per_item("lyrics", lyrics, batch, _text)
    languages = _per_item("vocal_language", vocal_language, batch, _language)

    # Metadata: validated by formatting once (the messages name bpm / keyscale / timesignature).
    prompts.format_metas(bpm=bpm, timesignature=timesignature, keyscale=keyscale)
    audio_duration = _number("audio_duration", audio_duration, lo=0.1, hi=MAX_SECONDS, allow_none=True)

    channels, hop, rate = cfg.vae.audio_channels, cfg.vae.hop_length, cfg.vae.sampling_rate
    if src_audio is not None:
        src_audio = _audio("src_audio", src_audio, channels, hop, clamp=compat == "official")
        if src_audio.shape[0] not in (1, batch):
            raise ValueError(f"src_audio has {src_audio.shape[0]} items but the batch has {batch}")
        src_audio = src_audio.expand(batch, -1, -1)
    if reference_audio is not None:
        reference_audio = _audio("reference_audio", reference_audio, channels, hop, clamp=compat == "official")
        if reference_audio.shape[0] not in (1, batch):
            raise ValueError(f"reference_audio has {reference_audio.shape[0]} items but the batch has {batch}")

    codes = None
    if audio_codes is not None:
        texts = _per_item("audio_codes", audio_codes, batch, _text)
        parsed = []
        for i, t in enumerate(texts):
            try:
                parsed.append(parse_audio_codes(t, pipe.audio_tokenizer.codebook_size))
            except ValueError as e:
                raise ValueError(f"audio_codes{'' if batch == 1 else f'[{i}]'}: {e}") from None
        if len({len(p) for p in parsed}) != 1:
            raise ValueError("audio_codes: every item must hold the same number of codes "
                             f"(got {[len(p) for p in parsed]})")
        codes = torch.stack(parsed)  # [B, N]
        if task_type == "text2music":
            task_type = "cover"  # official and diffusers: codes turn text2music into cover
        elif task_type not in ("cover",):
            raise ValueError(f"audio_codes can only be used with task_type 'cover' (or 'text2music'), "
                             f"not {task_type!r}")
    if task_type in tasks.SOURCE_TASKS and src_audio is None and codes is None:
        raise ValueError(f"task_type {task_type!r} needs src_audio"
                         + (" or audio_codes" if task_type == "cover" else ""))
    if task_type == "text2music" and src_audio is not None:
        raise ValueError("src_audio is not used by task_type 'text2music'; choose repaint, cover, extract, lego or complete")

    # Instruction: the task's own unless given (the official UI / API and diffusers derive it the same way).
    if instruction is None:
        instruction = prompts.task_instruction(task_type, track_name, complete_track_classes)
    elif not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"instruction must be a non-empty str or None, got {instruction!r}")

    # Repaint / lego window (seconds). The official pads the source with silence for a window outside it.
    window = None
    src_padded = src_audio
    if repainting_start is not None or repainting_end is not None:
        if task_type not in tasks.WINDOW_TASKS:
            raise ValueError(f"repainting_start / repainting_end are used by {tasks.WINDOW_TASKS}, not {task_type!r}")
    if task_type in tasks.WINDOW_TASKS and src_audio is not None:
        src_seconds = src_audio.shape[-1] / rate
        start = _number("repainting_start", repainting_start, allow_none=True)
        end = _number("repainting_end", repainting_end, allow_none=True)
        start = 0.0 if start is None else start
        if end is None or end < 0 or (compat == "diffusers" and end == 0):
            end = src_seconds
        if end <= start:
            raise ValueError(f"repainting_end ({end}) must be greater than repainting_start ({start})")
        if compat == "official":
            left, right = max(0.0, -start), max(0.0, end - src_seconds)
            if left or right:
                src_padded = torch.nn.functional.pad(src_audio, (int(left * rate), int(right * rate)))
            start, end = start + left, end + left
        elif start < 0 or start >= src_seconds:
            raise ValueError(f"repainting_start must lie in [0, {src_seconds:.2f}) s of src_audio, got {start}")
        window = (start, end)
        src_audio = src_padded
    strength = _number("repaint_strength", repaint_strength, lo=0.0, hi=1.0)
    inv = 1.0 - strength
    repaint_schedule = (inv, round(25 * inv))  # official "balanced" mode (_resolve_repaint_config)

    if compat == "diffusers" and audio_duration is None:
        # diffusers' default, which its prompt states even when a source or codes set the length.
        audio_duration = 60.0
    metas_duration = audio_duration
    if src_audio is not None and compat == "official":
        metas_duration = src_audio.shape[-1] / rate  # official: the caption states the source's length

    audio_cover_strength = _number("audio_cover_strength", audio_cover_strength, lo=0.0, hi=1.0)
    cfg_interval_start = _number("cfg_interval_start", cfg_interval_start, lo=0.0, hi=1.0)
    cfg_interval_end = _number("cfg_interval_end", cfg_interval_end, lo=0.0, hi=1.0)
    if cfg_interval_start > cfg_interval_end:
        raise ValueError(f"cfg_interval_start ({cfg_interval_start}) must not exceed cfg_interval_end ({cfg_interval_end})")

    is_turbo = cfg.pipeline.is_turbo
    if guidance_scale is None:
        guidance_scale = 1.0 if is_turbo else 7.0
    guidance_scale = _number("guidance_scale", guidance_scale, lo=0.0, hi=100.0)
    if is_turbo and guidance_scale > 1.0:
        log.warning("guidance_scale=%g ignored: turbo checkpoints are guidance-distilled (no CFG pass)", guidance_scale)
        guidance_scale = 1.0
    max_steps = sampling.MAX_TURBO_STEPS if (is_turbo and compat == "official") else 1000
    if num_inference_steps is None:
        num_inference_steps = 8 if is_turbo else 30
    num_inference_steps = _number("num_inference_steps", num_inference_steps, lo=1, hi=max_steps, integer=True)
    shift = _number("shift", 3.0 if shift is None else shift, lo=0.01, hi=100.0)
    custom = None
    if timesteps is not None:
        if isinstance(timesteps, torch.Tensor):
            timesteps = timesteps.tolist()
        if not isinstance(timesteps, (list, tuple)) or not timesteps:
            raise TypeError("timesteps must be a non-empty list of floats in [0, 1] or None")
        custom = [_number(f"timesteps[{i}]", t, lo=0.0, hi=1.0) for i, t in enumerate(timesteps)]

    # Randomness: latents > generator > seed > fresh random seeds (logged so a run can be repeated).
    seeds = None
    if latents is not None:
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            raise TypeError("latents must be a floating-point torch.Tensor [B, T, 64] or None")
        if not bool(torch.isfinite(latents).all()):
            raise ValueError("latents contains NaN or infinite values")
    elif generator is not None:
        gens = generator if isinstance(generator, list) else [generator]
        if not all(isinstance(g, torch.Generator) for g in gens):
            raise TypeError("generator must be a torch.Generator or a list of them")
        if isinstance(generator, list) and len(generator) != batch:
            raise ValueError(f"generator list has {len(generator)} items but the batch has {batch}")
    else:
        if seed is None:
            seeds = [int(torch.randint(0, 2**31 - 1, ()).item()) for _ in range(batch)]
            log.info("random seeds: %s", seeds)
        else:
            seeds = _seed_list("seed", seed, batch)

    vae_generator = None
    if sample_posterior:
        vae_generator = torch.Generator().manual_seed(seeds[0] if seeds else 0)
    if vae_chunk_size is not None:
        vae_chunk_size = _number("vae_chunk_size", vae_chunk_size, lo=16, integer=True)
    if callback_on_step_end is not None and not callable(callback_on_step_end):
        raise TypeError("callback_on_step_end must be callable or None")

    # Official-only sampler options (diffusers has none of them).
    retake_variance = _number("retake_variance", retake_variance, lo=0.0, hi=1.0)
    cover_noise_strength = _number("cover_noise_strength", cover_noise_strength, lo=0.0, hi=1.0)
    velocity_norm_threshold = _number("velocity_norm_threshold", velocity_norm_threshold, lo=0.0, hi=1e6)
    velocity_ema_factor = _number("velocity_ema_factor", velocity_ema_factor, lo=0.0, hi=0.999)
    if infer_method not in ("ode", "sde"):
        raise ValueError(f"infer_method must be 'ode' or 'sde', got {infer_method!r}")
    if sampler_mode not in ("euler", "heun"):
        raise ValueError(f"sampler_mode must be 'euler' or 'heun', got {sampler_mode!r}")
    if infer_method == "sde" and sampler_mode == "heun":
        raise ValueError("sampler_mode 'heun' needs infer_method 'ode'")
    extras = dict(retake_variance=retake_variance, cover_noise_strength=cover_noise_strength,
                  velocity_norm_threshold=velocity_norm_threshold, velocity_ema_factor=velocity_ema_factor,
                  infer_method=infer_method != "ode", sampler_mode=sampler_mode != "euler",
                  dcw_enabled=bool(dcw_enabled), use_adg=bool(use_adg))
    if compat == "diffusers" and any(extras.values()):
        name = next(k for k, v in extras.items() if v)
        raise ValueError(f"{name} is an official-only sampler option; diffusers has no equivalent (compat='diffusers')")
    retake_seeds = None
    if retake_variance > 0:
        if retake_seed is None:
            raise ValueError("retake_seed is required when retake_variance > 0")
        retake_seeds = _seed_list("retake_seed", retake_seed, batch)
    sampler = sampling.SamplerOptions(
        method=infer_method, solver=sampler_mode, velocity_norm_threshold=velocity_norm_threshold,
        velocity_ema=velocity_ema_factor, dcw=sampling.DCW() if dcw_enabled else None)

    return Request(
        batch_size=batch, prompts=prompts_, lyrics=lyrics_, languages=languages, task=task_type,
        instruction=instruction, bpm=bpm, keyscale=keyscale, timesignature=timesignature,
        audio_duration=audio_duration, metas_duration=metas_duration, src_audio=src_audio,
        src_audio_padded=src_padded, reference_audio=reference_audio, codes=codes, repaint_window=window,
        repaint_schedule=repaint_schedule, repaint_wav_crossfade=int(REPAINT_WAV_FADE_SECONDS * inv * rate),
        audio_cover_strength=audio_cover_strength, guidance_scale=guidance_scale,
        cfg_interval_start=cfg_interval_start, cfg_interval_end=cfg_interval_end,
        num_inference_steps=num_inference_steps, shift=shift, custom_timesteps=custom, generator=generator,
        seeds=seeds, latents=latents, output_type=output_type, return_dict=bool(return_dict), compat=compat,
        mask_condition_padding=bool(mask_condition_padding), chunk_mask_mode=chunk_mask_mode,
        sample_posterior=bool(sample_posterior), vae_generator=vae_generator, vae_chunk_size=vae_chunk_size,
        callback_on_step_end=callback_on_step_end, progress=bool(progress), retake_seeds=retake_seeds,
        retake_variance=retake_variance, cover_noise_strength=cover_noise_strength, sampler=sampler,
        use_adg=bool(use_adg),
    )
