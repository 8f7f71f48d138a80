"""Classifier-free guidance for the base / SFT models: APG (the official default), plain CFG and ADG.

Each takes the conditional and unconditional velocities [B, T, C] of one step and returns the guided
velocity; the unconditional pass uses the learned null condition embedding (see generate.py).
"""

from __future__ import annotations

import torch

from .checks import check_btc, check_like


class MomentumBuffer:
    """APG's running average of the guidance difference: avg <- diff + momentum * avg (momentum -0.75)."""

    def __init__(self, momentum: float = -0.75):
        self.momentum = momentum
        self.average: torch.Tensor | float = 0.0

    def update(self, diff: torch.Tensor) -> torch.Tensor:
        self.average = diff + self.momentum * self.average
        return self.average


def apg(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, scale: float, buffer: MomentumBuffer | None,
        *, norm_threshold: float = 2.5, eta: float = 0.0, dims: tuple[int, ...] = (1,)) -> torch.Tensor:
    """Adaptive projected guidance as the official base model applies it (dims=(1,): the time axis of [B, T, C]).

    The difference is momentum-averaged, its norm clipped to `norm_threshold`, and only the part orthogonal to
    the conditional prediction is added (eta scales the parallel part).
    """
    diff = pred_cond - pred_uncond
    if buffer is not None:
        diff = buffer.update(diff)
    if norm_threshold > 0:
        norm = diff.norm(p=2, dim=dims, keepdim=True)
        diff = diff * torch.minimum(torch.ones_like(norm), norm_threshold / norm)
    # The projection runs in float64 in the official code: the dot products sum over thousands of frames.
    d64, c64 = diff.double(), pred_cond.double()
    unit = torch.nn.functional.normalize(c64, dim=dims)
    parallel = (d64 * unit).sum(dim=dims, keepdim=True) * unit
    orthogonal = (d64 - parallel).to(diff.dtype)
    update = orthogonal + eta * parallel.to(diff.dtype)
    return pred_cond + (scale - 1.0) * update


def cfg(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    return pred_uncond + scale * (pred_cond - pred_uncond)


def adg(x: torch.Tensor, pred_cond: torch.Tensor, pred_uncond: torch.Tensor, t: float, scale: float,
        *, angle_clip: float = 3.14 / 6) -> torch.Tensor:
    """Angle-based dynamic guidance as the official base model applies it (use_adg), on [B, T, C].

    Works on the predicted clean latents x0 = x - t v of each frame (a C-vector): the conditional x0 is
    rotated away from the unconditional one by (scale - 1) times their angle, clipped to `angle_clip`
    (the official writes pi/6 as 3.14 / 6), and turned back into a velocity (x - x0_new) / t.
    """
    check_btc("x", x)
    check_like("pred_cond", pred_cond, x)
    check_like("pred_uncond", pred_uncond, x)
    if not t > 0.0:
        raise ValueError(f"t: ADG divides by the noise level and needs t > 0, got {t}")
    weight = max(scale - 1.0, 0.0) + 1e-3
    x0_cond = x - t * pred_cond
    x0_uncond = x - t * pred_uncond
    # The angle per frame in float64, as the official (acos is steep near 0).
    c64, u64 = x0_cond.double(), x0_uncond.double()
    cos = ((c64 / c64.norm(dim=-1, keepdim=True)) * (u64 / u64.norm(dim=-1, keepdim=True))).sum(-1, keepdim=True)
    theta = torch.acos(cos.clamp(-1.0 + 1e-6, 1.0 - 1e-6))  # [B, T, 1]
    theta_new = (weight * theta).clamp(-angle_clip, angle_clip)
    # Part of the x0 difference orthogonal to the unconditional x0, per frame; float32 as the official
    # (the difference itself is taken in the model dtype first).
    diff, u32 = (x0_cond - x0_uncond).float(), x0_uncond.float()
    coef = (diff * u32).sum(-1, keepdim=True) / ((u32 * u32).sum(-1, keepdim=True) + 1e-8)
    perp = diff - coef * u32
    sin = torch.sin(theta)
    rotated = torch.where(sin > 1e-3, perp * torch.sin(theta_new) / sin, perp * weight)
    x0_new = torch.cos(theta_new) * x0_cond + rotated  # float64
    return ((x - x0_new) / t).to(x.dtype)
