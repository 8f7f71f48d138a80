"""From a request to the DiT's per-task inputs: latent length, source latents, chunk mask, repaint window.

Official handler numerics (acestep/core/generation/handler/, see docs/parity.md for each):
- length: T = max(128, int(max(0.1, round(seconds, 1)) * 48000) // 1920); no duration means 120 s;
  a source audio or audio codes set T instead (floor(samples / 1920), or 5 frames per code);
- text2music context: the silence latent tiled from frame 0; source tasks: the source's VAE latents,
  right-padded with silence; repaint: the window replaced by the position-aligned silence;
- chunk mask: ones for every task (the official default mode "auto" overwrites the repaint window
  row to all ones); `chunk_mask_mode="explicit"` keeps the 0/1 window, which is what diffusers uses;
- repaint window frames: int(seconds * 48000 // 1920), clamped to [0, T-1] / [start+1, T].
The rules where diffusers 0.42.1 differs follow a `Behaviour` (behaviour.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .behaviour import OFFICIAL, Behaviour

TASKS = ("text2music", "repaint", "cover", "cover-nofsq", "extract", "lego", "complete")
SOURCE_TASKS = ("repaint", "cover", "cover-nofsq", "extract", "lego", "complete")
WINDOW_TASKS = ("repaint", "lego")


def latent_length(seconds: float | None, sample_rate: int, hop: int, behaviour: Behaviour = OFFICIAL) -> int:
    """Latent frames for a song of `seconds` (None: the behaviour's default length), behaviour row 3."""
    if seconds is None:
        seconds = behaviour.default_seconds
    if behaviour.length_rule == "ceil":
        # diffusers: ceil(duration * latents per second).
        return max(behaviour.min_frames, math.ceil(float(seconds) * sample_rate / hop))
    seconds = max(0.1, round(float(seconds), 1))
    return max(behaviour.min_frames, int(seconds * sample_rate) // hop)


def tile_silence(silence: torch.Tensor, length: int, start: int = 0) -> torch.Tensor:
    """silence [1, S, C] -> [length, C]: frames start.. of the silence latent, tiled when it is too short."""
    s = silence[0]
    if start + length > s.shape[0]:
        reps = math.ceil((start + length) / s.shape[0])
        s = s.repeat(reps, 1)  # [S, C] -> [reps * S, C]
    return s[start:start + length]


def pad_with_silence(latents: torch.Tensor, length: int, silence: torch.Tensor) -> torch.Tensor:
    """[T0, C] -> [length, C]: crop, or append silence frames restarting at silence frame 0."""
    if latents.shape[0] >= length:
        return latents[:length]
    fill = tile_silence(silence, length - latents.shape[0]).to(latents)
    return torch.cat([latents, fill], dim=0)


def repaint_frames(start_s: float, end_s: float, total: int, sample_rate: int, hop: int,
                   behaviour: Behaviour = OFFICIAL) -> tuple[int, int]:
    """Window in seconds -> [start, end) in latent frames, clamped inside [0, total] (behaviour row 6)."""
    if behaviour.repaint_frame_rule == "truncate":
        start, end = int(start_s * sample_rate / hop), int(end_s * sample_rate / hop)
    else:
        # Evaluated left to right like the official: (seconds * 48000) // 1920.
        start, end = int(start_s * sample_rate // hop), int(end_s * sample_rate // hop)
    start = max(0, min(start, total - 1))
    end = max(start + 1, min(end, total))
    return start, end


@dataclass
class TaskInputs:
    src_latents: torch.Tensor  # [B, T, C] context latents before the cover replacement
    chunk_mask: torch.Tensor  # [B, T] float, 1 = generate
    is_cover: torch.Tensor  # [B] bool: context = FSQ round trip of src_latents (or code hints)
    repaint_mask: torch.Tensor | None  # [B, T] bool, True inside the window (repaint / lego only)
    clean_src: torch.Tensor | None  # [B, T, C] source latents for injection / crossfade


def build_task_inputs(
    task: str,
    length: int,
    batch_size: int,
    silence: torch.Tensor,
    *,
    source: torch.Tensor | None = None,
    code_hints: torch.Tensor | None = None,
    window: tuple[int, int] | None = None,
    chunk_mask_mode: str = "auto",
) -> TaskInputs:
    """source: [B, T0, C] VAE latents of the source audio; code_hints: [B, T0, C] detokenized codes.

    `window` is the repaint/lego window in frames (None: the whole length, which makes repaint a no-op).
    """
    dtype, device = silence.dtype, silence.device
    silence_t = tile_silence(silence, length)  # [T, C]
    if code_hints is not None:
        src = torch.stack([pad_with_silence(h, length, silence) for h in code_hints])
        is_cover = torch.ones(batch_size, dtype=torch.bool, device=device)
    elif source is not None:
        src = torch.stack([pad_with_silence(s, length, silence) for s in source])
        is_cover = torch.full((batch_size,), task == "cover", dtype=torch.bool, device=device)
    else:
        src = silence_t[None].expand(batch_size, -1, -1).clone()
        is_cover = torch.zeros(batch_size, dtype=torch.bool, device=device)

    chunk = torch.ones(batch_size, length, dtype=dtype, device=device)
    repaint_mask = clean_src = None
    if task in WINDOW_TASKS and source is not None:
        start, end = window if window is not None else (0, length)
        repaint_mask = torch.zeros(batch_size, length, dtype=torch.bool, device=device)
        repaint_mask[:, start:end] = True
        clean_src = src.clone()
        if task == "repaint":
            # The window starts from the silence at the same positions; lego keeps the source there.
            src[:, start:end] = silence_t[start:end]
        if chunk_mask_mode == "explicit":
            chunk = repaint_mask.to(dtype)
    return TaskInputs(src, chunk, is_cover, repaint_mask, clean_src)
