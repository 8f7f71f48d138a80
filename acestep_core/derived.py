"""What follows from a validated Request and the checkpoint: lengths, schedule, noise, callbacks.

Each question has one answer here, following `req.behaviour` (behaviour.py) where the references differ.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from . import prompts, sampling, tasks
from .config import AceStepConfig
from .requests import Request

REPAINT_WAV_FADE_SECONDS = 0.05  # official balanced mode: 0.05 * (1 - strength) s of waveform crossfade


def text2music_seconds(req: Request) -> float:
    """The length of a song no source or codes decide: the duration asked for, else the behaviour's default."""
    return req.behaviour.default_seconds if req.audio_duration is None else req.audio_duration


def latent_length(req: Request, config: AceStepConfig, given_frames: int | None) -> int:
    """Latent frames to generate. `given_frames`: the frames of the source latents or code hints, if any."""
    if given_frames is not None:
        return max(given_frames, req.behaviour.min_frames)
    return tasks.latent_length(text2music_seconds(req), config.vae.sampling_rate, config.vae.hop_length, req.behaviour)


def caption_duration(req: Request, rate: int) -> float | None:
    """The duration the caption's metas state (behaviour row 4). None: the template's own default."""
    if req.behaviour.duration_from_source:
        if req.src_audio is not None:
            return req.src_audio.shape[-1] / rate
        return req.audio_duration
    return text2music_seconds(req)


def trim_samples(req: Request, rate: int) -> int | None:
    """Audio samples to keep (row 27): a duration below the model's minimum length gets what it asked for."""
    if not req.behaviour.trim_to_duration or req.audio_duration is None:
        return None
    if req.src_audio is not None or req.codes is not None:
        return None
    return int(round(req.audio_duration * rate))


def padding_side(req: Request, config: AceStepConfig) -> str:
    return config.pipeline.padding_side if req.behaviour.caption_padding == "tokenizer" else "right"


def repaint_plan(req: Request, rate: int) -> tuple[float, int, int]:
    """(injection ratio, latent crossfade frames, waveform crossfade samples): the official "balanced" mode
    (`_resolve_repaint_config`), set by repaint_strength."""
    inverse = 1.0 - req.repaint_strength
    return inverse, round(25 * inverse), int(REPAINT_WAV_FADE_SECONDS * inverse * rate)


def repaint_window_samples(req: Request, rate: int) -> tuple[int, int]:
    start, end = req.repaint_window
    return int(start * rate), int(end * rate)


def captions(req: Request, rate: int, instruction: str | None = None) -> list[str]:
    """The formatted caption of every item (the request's instruction unless another is given)."""
    duration = caption_duration(req, rate)
    return [prompts.format_caption(c, instruction or req.instruction, bpm=req.bpm, timesignature=req.timesignature,
                                   keyscale=req.keyscale, duration=duration) for c in req.prompts]


def lyric_texts(req: Request) -> list[str]:
    return [prompts.format_lyrics(text, lang) for text, lang in zip(req.lyrics, req.languages)]


def timesteps(req: Request, is_turbo: bool, dtype: torch.dtype) -> list[float]:
    if req.behaviour.schedule == "linspace":
        ts = (sampling.base_schedule(req.num_inference_steps, req.shift) if req.custom_timesteps is None
              else sampling.base_schedule(0, 1.0, req.custom_timesteps))
    elif is_turbo:
        ts = sampling.turbo_schedule(req.num_inference_steps, req.shift, req.custom_timesteps,
                                     max_steps=req.behaviour.max_turbo_steps)
    else:
        ts = sampling.base_schedule(req.num_inference_steps, req.shift, req.custom_timesteps)
    sampling.validate_schedule(ts)
    # The official keeps the schedule in the model dtype: bf16 runs step through bf16-rounded times.
    return torch.tensor(ts, dtype=dtype).tolist()


# --- randomness: every draw goes through the request's generators ------------------------------------------

def draw_normal(gens: list[torch.Generator], shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
    """Standard normal noise of `shape` [B, ...]: item i from gens[i] (official: one generator per item, drawing
    [1, ...] in the model dtype), or the whole batch from a single generator (diffusers' convention). Each
    generator draws on its own device; the result moves to `device`."""
    if len(gens) == shape[0]:
        return torch.cat([torch.randn(1, *shape[1:], generator=g, device=g.device, dtype=dtype).to(device)
                          for g in gens])
    return torch.randn(shape, generator=gens[0], device=gens[0].device, dtype=dtype).to(device)


def seeded_generators(seeds: list[int], device) -> list[torch.Generator]:
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


def generators(req: Request, device) -> list[torch.Generator]:
    """Where the request's draws come from, in order: the initial noise, then the SDE re-noising. One
    generator per item seeded from `seed` (official), or the caller's."""
    if req.generator is not None:
        return req.generator if isinstance(req.generator, list) else [req.generator]
    return seeded_generators(req.seeds, device)


def initial_noise(req: Request, shape: tuple, dtype: torch.dtype, device, gens: list[torch.Generator]) -> torch.Tensor:
    """x at t = 1: the caller's `latents`, else a draw [B, T, C] from `gens`."""
    if req.latents is not None:
        if tuple(req.latents.shape) != tuple(shape):
            raise ValueError(f"latents must have shape [B, T, C] = {list(shape)} for this request, "
                             f"got {list(req.latents.shape)}")
        return req.latents.to(device=device, dtype=dtype)
    return draw_normal(gens, shape, dtype, device)


def retake_noise(req: Request, shape: tuple, dtype: torch.dtype, device) -> torch.Tensor:
    """The second noise of a retake, drawn like the main noise from per-item retake seeds."""
    return draw_normal(seeded_generators(req.retake_seeds, device), shape, dtype, device)


def sampler_options(req: Request, gens: list[torch.Generator]) -> sampling.SamplerOptions:
    """The request's sampler, with SDE re-noising continuing each item's generator after its initial noise."""
    def sde_noise(like: torch.Tensor) -> torch.Tensor:
        return draw_normal(gens, tuple(like.shape), like.dtype, like.device)

    return dataclasses.replace(req.sampler, sde_noise=sde_noise)


def step_callback(req: Request, pipe, schedule: list[float]) -> Callable | None:
    """diffusers' callback_on_step_end(pipe, i, t, {"latents": x}) -> optional replacement latents, checked."""
    if req.callback_on_step_end is None:
        return None
    cb = req.callback_on_step_end

    def on_step(i: int, t_next: float, x: torch.Tensor):
        out = cb(pipe, i, schedule[i], {"latents": x})
        if out is not None and not isinstance(out, dict):
            raise TypeError("callback_on_step_end must return None or a dict (e.g. {'latents': tensor})")
        new = (out or {}).get("latents")
        if new is not None and (not isinstance(new, torch.Tensor) or new.shape != x.shape):
            raise ValueError(f"callback_on_step_end returned latents of shape {getattr(new, 'shape', None)}, "
                             f"expected {tuple(x.shape)}")
        if new is not None and not bool(torch.isfinite(new).all()):
            raise ValueError(f"callback_on_step_end returned non-finite latents (NaN or inf) at step {i}")
        return new

    return on_step


def cover_steps(req: Request, num_steps: int) -> int:
    return int(num_steps * req.audio_cover_strength)


def vae_generator(req: Request) -> torch.Generator | None:
    """Posterior sampling of the VAE (sample_posterior=True) draws from its own seeded generator."""
    if not req.sample_posterior:
        return None
    return torch.Generator().manual_seed(req.seeds[0] if req.seeds else 0)
