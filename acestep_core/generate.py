"""The denoising loop: prepared condition + initial noise -> final latents (the official `generate_audio`).

This is the part of the pipeline that works on tensors only, so parity tests can feed it the exact
tensors the official code saw. Everything request-shaped (text, audio, tasks) lives in pipeline.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from . import sampling
from .dit import DiT, CrossKV
from .guidance import MomentumBuffer, adg, apg, cfg

log = logging.getLogger("acestep_core")


@dataclass
class Condition:
    """What the DiT attends to and is conditioned on for one batch."""

    states: torch.Tensor  # [B, L, W] packed condition (lyrics, timbre, caption; valid tokens first)
    mask: torch.Tensor  # [B, L] bool, True = real token
    context: torch.Tensor  # [B, T, 2 * latent_dim]: source latents | chunk mask


@dataclass
class Guidance:
    scale: float = 1.0  # > 1 turns on APG with the learned null condition (base / SFT models)
    interval: tuple[float, float] = (0.0, 1.0)
    interval_on: str = "t"  # "t": start <= t <= end (official); "1-t": diffusers' mirrored convention
    adg: bool = False  # official use_adg: angle-based guidance instead of APG inside the interval

    @property
    def enabled(self) -> bool:
        return self.scale > 1.0

    def active(self, t: float) -> bool:
        u = t if self.interval_on == "t" else 1.0 - t
        return self.interval[0] <= u <= self.interval[1]


@dataclass
class Repaint:
    mask: torch.Tensor  # [B, T] bool, True inside the window
    clean_src: torch.Tensor  # [B, T, C]
    injection_ratio: float = 0.5  # re-inject the noised source outside the window for round(ratio * N) steps
    crossfade_frames: int = 12


def _dit_velocity(dit: DiT, cond: Condition, guidance: Guidance, null_emb: torch.Tensor | None,
                  mask_padding: bool) -> Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor | None]]:
    """A function (x, t) -> (v_cond, v_uncond or None), with the condition's K/V computed once."""
    states, mask, context = cond.states, cond.mask, cond.context
    if guidance.enabled:
        # Unconditional half: the learned null embedding at every packed position (padding included),
        # batched with the conditional half into one forward, as the official base model does.
        states = torch.cat([states, null_emb.to(states).expand_as(states)], dim=0)
        mask = torch.cat([mask, mask], dim=0)
        context = torch.cat([context, context], dim=0)
    kv: CrossKV = dit.prepare_condition(states, mask if mask_padding else None)
    batch = cond.states.shape[0]

    def velocity(x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        xx = torch.cat([x, x], dim=0) if guidance.enabled else x
        # t is handed over in the model dtype, like the official sampler (bf16 rounding included).
        tt = torch.full((xx.shape[0],), t, dtype=x.dtype, device=x.device)
        v = dit(xx, tt, tt, None, context, cross_kv=kv)
        return (v[:batch], v[batch:]) if guidance.enabled else (v, None)

    return velocity


def generate_latents(
    dit: DiT,
    noise: torch.Tensor,
    timesteps: list[float],
    cond: Condition,
    *,
    guidance: Guidance | None = None,
    null_emb: torch.Tensor | None = None,
    non_cover: Condition | None = None,
    cover_steps: int | None = None,
    cover_blend: float | None = None,
    repaint: Repaint | None = None,
    sampler: sampling.SamplerOptions | None = None,
    turbo: bool = True,
    start_latents: torch.Tensor | None = None,
    mask_condition_padding: bool = False,
    on_step: Callable[[int, float, torch.Tensor], torch.Tensor | None] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Flow matching from noise [B, T, C] along `timesteps` (ending with 0) -> latents [B, T, C].

    non_cover / cover_steps: the official audio_cover_strength < 1 switches to the non-cover condition
    from step `cover_steps` on. cover_blend (diffusers' convention instead) mixes the two velocities
    every step: v = s * v_cover + (1 - s) * v_non_cover.
    sampler: SDE / Heun / velocity clamp and EMA / DCW (sampling.SamplerOptions); default plain Euler.
    turbo: the turbo loop (final x0 jump, no injection on it) or the base / SFT loop (sampling.sample).
    start_latents: x at timesteps[0] when it is not `noise` itself (cover noise strength, see
    sampling.cover_start); repaint injection still re-noises the source with `noise`.
    on_step(i, t, x) may return a replacement x (diffusers' callback_on_step_end).
    """
    guidance = guidance or Guidance()
    if guidance.enabled and null_emb is None:
        raise ValueError("null_emb is required when guidance_scale > 1")
    if start_latents is not None and start_latents.shape != noise.shape:
        raise ValueError(f"start_latents: expected shape {list(noise.shape)} ([B, T, C]) like noise, "
                         f"got {list(start_latents.shape)}")
    main = _dit_velocity(dit, cond, guidance, null_emb, mask_condition_padding)
    other = (_dit_velocity(dit, non_cover, guidance, null_emb, mask_condition_padding)
             if non_cover is not None else None)
    buffer = MomentumBuffer()
    num_steps = len(timesteps) - 1

    def predict(x: torch.Tensor, t: float, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(v_cond, v_uncond or None) from the condition in force at step i."""
        switched = other is not None and cover_blend is None and cover_steps is not None and i >= cover_steps
        v_cond, v_uncond = (other if switched else main)(x, t)
        if other is not None and cover_blend is not None:
            v_nc, v_nc_uncond = other(x, t)
            v_cond = cover_blend * v_cond + (1 - cover_blend) * v_nc
            if v_uncond is not None:
                v_uncond = cover_blend * v_uncond + (1 - cover_blend) * v_nc_uncond
        return v_cond, v_uncond

    def velocity(x: torch.Tensor, t: float, i: int) -> torch.Tensor:
        v_cond, v_uncond = predict(x, t, i)
        if v_uncond is None or not guidance.active(t):
            return v_cond  # outside the interval the momentum buffer is left untouched
        if guidance.adg:
            return adg(x, v_cond, v_uncond, t, guidance.scale)
        return apg(v_cond, v_uncond, guidance.scale, buffer)

    def corrector(x: torch.Tensor, t: float, i: int) -> torch.Tensor:
        """Heun's evaluation at t_next: plain CFG instead of APG, so the momentum advances once per step;
        ADG where it can (t > 0)."""
        v_cond, v_uncond = predict(x, t, i)
        if v_uncond is None or not guidance.active(t):
            return v_cond
        if guidance.adg and t > 0:
            return adg(x, v_cond, v_uncond, t, guidance.scale)
        return cfg(v_cond, v_uncond, guidance.scale)

    injection_steps = round(repaint.injection_ratio * num_steps) if repaint is not None else 0

    def after_step(x: torch.Tensor, i: int, t: float) -> torch.Tensor:
        # The turbo loop ends on its x0 jump before injecting; the base loop injects on its last step too.
        last_turbo = turbo and i == num_steps - 1
        if repaint is not None and i < injection_steps and not last_turbo:
            x = sampling.repaint_injection(x, repaint.clean_src, repaint.mask, t, noise)
        if on_step is not None:
            replaced = on_step(i, t, x)
            if replaced is not None:
                x = replaced
        return x

    x = noise if start_latents is None else start_latents
    x = sampling.sample(velocity, x, timesteps, turbo=turbo, options=sampler, corrector=corrector,
                        after_step=after_step, progress=progress)
    if repaint is not None and repaint.crossfade_frames > 0:
        x = sampling.repaint_crossfade(x, repaint.clean_src, repaint.mask, repaint.crossfade_frames)
    return x
