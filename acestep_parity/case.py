"""The request a parity run gives both implementations, and reproducible stand-in sources for it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class ParityCase:
    """One request, given identically to both pipelines (batch of one)."""

    task: str = "text2music"  # text2music, repaint or cover
    prompt: str = "upbeat synth pop with a driving bassline"
    lyrics: str = "[verse]\nhello parity, hello"
    duration: float = 10.0  # seconds (text2music); a source or codes set the length otherwise
    steps: int | None = None  # None: 8 on turbo, 30 on base / sft
    guidance_scale: float | None = None  # None: 1 on turbo (no guidance pass), 7 on base / sft
    shift: float = 3.0
    seed: int = 0  # the initial noise: randn [1, T, 64] from torch.Generator().manual_seed(seed), float32, CPU
    src_audio: torch.Tensor | None = None  # [2, S] at the VAE rate: repaint, cover
    audio_codes: str | None = None  # cover from 5 Hz codes "<|audio_code_N|>..." instead of src_audio
    repaint_window: tuple[float, float] | None = None  # seconds; None: the middle third of the source
    # Official only (diffusers has no equivalent):
    src_latents: torch.Tensor | None = None  # [T, 64]: stands in for the VAE encoding of src_audio in both
    cover_noise_strength: float = 0.0  # cover: start from the source noised to t = 1 - strength
    dcw: bool = False  # the official wavelet correction after every sampler step

    def check(self) -> None:
        if self.task not in ("text2music", "repaint", "cover"):
            raise ValueError(f"task must be text2music, repaint or cover, got {self.task!r}")
        if not (self.duration > 0 and math.isfinite(self.duration)):
            raise ValueError(f"duration must be a positive number of seconds, got {self.duration!r}")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise ValueError(f"steps must be an int >= 1 or None, got {self.steps!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        if self.src_audio is not None and self.audio_codes is not None:
            raise ValueError("give src_audio or audio_codes, not both")
        if self.task == "text2music" and (self.src_audio is not None or self.audio_codes is not None):
            raise ValueError("task text2music takes neither src_audio nor audio_codes")
        if self.task == "repaint" and self.src_audio is None:
            raise ValueError("task repaint needs src_audio [2, S]")
        if self.task == "cover" and self.src_audio is None and self.audio_codes is None:
            raise ValueError("task cover needs src_audio [2, S] or audio_codes")
        if self.src_audio is not None and (self.src_audio.dim() != 2 or self.src_audio.shape[0] != 2):
            raise ValueError(f"src_audio must have shape [2, S], got {list(self.src_audio.shape)}")
        if self.src_latents is not None:
            if self.src_audio is None:
                raise ValueError("src_latents stand in for the encoding of src_audio: give both")
            if self.src_latents.dim() != 2:
                raise ValueError(f"src_latents must have shape [T, 64], got {list(self.src_latents.shape)}")
        if not 0.0 <= self.cover_noise_strength <= 1.0:
            raise ValueError(f"cover_noise_strength must lie in [0, 1], got {self.cover_noise_strength!r}")
        if self.cover_noise_strength > 0 and self.task != "cover":
            raise ValueError("cover_noise_strength is used by task cover only")

    def official_only(self) -> str | None:
        """The first option set that only the official implementation has (None when there is none)."""
        for name, on in (("src_latents", self.src_latents is not None), ("dcw", self.dcw),
                         ("cover_noise_strength", self.cover_noise_strength > 0)):
            if on:
                return name
        return None


def pipeline_request(case: ParityCase, pipe) -> dict:
    """Keyword arguments for our pipeline (and diffusers', which takes the same), every default spelled out
    (the implementations' defaults differ)."""
    turbo, rate, hop = pipe.config.pipeline.is_turbo, pipe.sample_rate, pipe.hop
    kw = dict(prompt=case.prompt, lyrics=case.lyrics, task_type=case.task, shift=case.shift,
              num_inference_steps=case.steps or (8 if turbo else 30),
              guidance_scale=case.guidance_scale if case.guidance_scale is not None else (1.0 if turbo else 7.0))
    seconds = case.duration
    if case.src_audio is not None:
        # float32 and clamped to [-1, 1]: what our pipeline makes of any source (as the official loader);
        # diffusers takes the source as given, so both get the prepared one.
        kw["src_audio"] = case.src_audio.float().clamp(-1.0, 1.0)
        seconds = case.src_audio.shape[-1] / rate
    elif case.audio_codes is not None:
        kw["audio_codes"] = case.audio_codes
        n = case.audio_codes.count("<|audio_code_")
        seconds = n * pipe.config.audio_tokenizer.pool_window_size * hop / rate
    if case.task == "repaint":
        start, end = case.repaint_window or (seconds / 3, 2 * seconds / 3)
        kw.update(repainting_start=float(start), repainting_end=float(end))
    kw["audio_duration"] = seconds
    return kw


def stand_in_source(seconds: float, rate: int, hop: int, seed: int = 0) -> torch.Tensor:
    """A reproducible stand-in source [2, S] (S a whole number of latent frames): two chords and some noise."""
    n = max(1, round(seconds * rate / hop)) * hop
    t = torch.arange(n, dtype=torch.float64) / rate
    left = sum(torch.sin(2 * math.pi * f * t) for f in (220.0, 277.2, 329.6))
    right = sum(torch.sin(2 * math.pi * f * t) for f in (196.0, 246.9, 293.7))
    noise = torch.randn(2, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    wave = torch.stack([left, right]) + 0.3 * noise  # [2, S]
    return (0.5 * wave / wave.abs().max()).float()


def stand_in_latents(frames: int, channels: int, seed: int = 0) -> torch.Tensor:
    """Reproducible stand-in source latents [T, C] (std 1, like real ones), for a VAE whose encoder cannot feed
    the DiT (the official tiny fixture's encoder yields 2 channels, its DiT takes 64)."""
    return torch.randn(frames, channels, generator=torch.Generator().manual_seed(seed + 1))
