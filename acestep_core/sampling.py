"""Flow-matching sampling as plain functions over a velocity callable.

Convention (official ACE-Step): x_t = t * noise + (1 - t) * x0, the model predicts v = noise - x0, and
sampling integrates from t = 1 to t = 0 with Euler steps x <- x - v * (t - t_next). The last step, to
t_next = 0, is exactly the official "jump to x0" x0 = x_t - v * t.

Schedules are lists of Python floats that always end with 0.0; every value is rounded to float32
first because the official code builds its schedules as float32 tensors.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

# velocity(x [B, T, C], t: float, step: int) -> v [B, T, C]
Velocity = Callable[[torch.Tensor, float, int], torch.Tensor]

# The official turbo sampler's fixed 8-step schedules (modeling_acestep_v15_turbo.py, SHIFT_TIMESTEPS); they
# equal shift * t / (1 + (shift - 1) * t) on t = 1 - i / 8, i = 0..7 (tests/test_sampling.py checks it).
TURBO_TABLES = {
    1.0: (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125),
    2.0: (1.0, 0.9333333333333333, 0.8571428571428571, 0.7692307692307693, 0.6666666666666666,
          0.5454545454545454, 0.4, 0.2222222222222222),
    3.0: (1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75, 0.6428571428571429, 0.5, 0.3),
}
# Custom turbo timesteps are snapped to the union of those tables (the distilled model saw only these).
TURBO_VALID_TIMESTEPS = tuple(sorted({t for table in TURBO_TABLES.values() for t in table}, reverse=True))
MAX_TURBO_STEPS = 20


def _f32(values) -> list[float]:
    # Round to float32: the official keeps its schedule in a float32 tensor and reads steps back with .item().
    return torch.tensor(list(values), dtype=torch.float32).tolist()


def shift_time(t: float, shift: float) -> float:
    """The flow-matching time shift t' = s t / (1 + (s - 1) t); s > 1 spends more steps at high noise."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def turbo_schedule(num_steps: int = 8, shift: float = 3.0, timesteps: Sequence[float] | None = None) -> list[float]:
    """The official turbo schedule: shifted linspace computed in float64 (clamped to 20 steps), or the user's
    `timesteps` snapped to the nearest valid turbo value (trailing zeros dropped). Ends with 0.0."""
    if timesteps is not None:
        ts = [float(t) for t in timesteps]
        while ts and ts[-1] == 0.0:
            ts.pop()
        if not ts:
            raise ValueError("timesteps: needs at least one non-zero value")
        ts = [min(TURBO_VALID_TIMESTEPS, key=lambda v: abs(v - t)) for t in ts[:MAX_TURBO_STEPS]]
        return _f32(ts + [0.0])
    n = min(int(num_steps), MAX_TURBO_STEPS)
    raw = [1.0 - i / n for i in range(n)]
    if shift != 1.0:
        raw = [shift_time(t, shift) for t in raw]
    return _f32(raw + [0.0])


def base_schedule(num_steps: int, shift: float = 1.0, timesteps: Sequence[float] | None = None) -> list[float]:
    """The official base/SFT schedule: linspace(1, 0, N + 1) shifted in float32 tensor math, or the user's
    `timesteps` as given (a final 0.0 is appended when missing)."""
    if timesteps is not None:
        ts = [float(t) for t in timesteps]
        if not ts or ts[-1] != 0.0:
            ts.append(0.0)
        return _f32(ts)
    t = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float32)
    if shift != 1.0:
        t = shift * t / (1 + (shift - 1) * t)
    return t.tolist()


def validate_schedule(timesteps: Sequence[float]) -> None:
    ts = list(timesteps)
    if len(ts) < 2:
        raise ValueError("timesteps: need at least one step (two values including the final 0)")
    if any(not math.isfinite(t) or t < 0.0 or t > 1.0 for t in ts):
        raise ValueError(f"timesteps: every value must lie in [0, 1], got {ts}")
    if any(a <= b for a, b in zip(ts, ts[1:])):
        raise ValueError(f"timesteps: must be strictly decreasing, got {ts}")


def euler(
    velocity: Velocity,
    x: torch.Tensor,
    timesteps: Sequence[float],
    *,
    after_step: Callable[[torch.Tensor, int, float], torch.Tensor] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Integrate dx/dt = v from timesteps[0] down to timesteps[-1] (= 0) with Euler steps.

    after_step(x, step, t_next) may replace x after each step (repaint injection, callbacks).
    """
    validate_schedule(timesteps)
    steps = list(zip(timesteps[:-1], timesteps[1:]))
    for i, (t, t_next) in enumerate(tqdm(steps, desc="sampling", disable=not progress, leave=False)):
        v = velocity(x, t, i)
        # dt is formed in float64 from float32 values and rounded once, as the official does.
        x = x - v * (t - t_next)
        if after_step is not None:
            x = after_step(x, i, t_next)
    return x


# --- guidance (base / SFT models) ---------------------------------------------------------------------------

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


def in_cfg_interval(t: float, start: float, end: float) -> bool:
    """Guidance applies while start <= t <= end, t being the current noise level (official convention)."""
    return start <= t <= end


# --- repaint helpers (official generate_audio) --------------------------------------------------------------

def repaint_injection(x: torch.Tensor, clean_src: torch.Tensor, repaint_mask: torch.Tensor, t_next: float,
                      noise: torch.Tensor) -> torch.Tensor:
    """Outside the repaint window, replace x by the source noised to t_next (keeps the untouched part on track)."""
    renoised = t_next * noise + (1.0 - t_next) * clean_src
    return torch.where(repaint_mask[..., None].bool(), x, renoised)  # mask [B, T] -> [B, T, 1]


def repaint_crossfade(x: torch.Tensor, clean_src: torch.Tensor, repaint_mask: torch.Tensor, frames: int) -> torch.Tensor:
    """Blend generated and source latents with linear ramps of `frames` frames just outside each window edge."""
    soft = repaint_mask.float().clone()  # [B, T]; float so the ramps can hold fractions
    if frames > 0:
        length = soft.shape[1]
        for b in range(soft.shape[0]):
            row = repaint_mask[b].bool()
            if row.all() or not row.any():
                continue
            idx = torch.nonzero(row).flatten()
            left, right = int(idx[0]), int(idx[-1]) + 1
            lo, hi = max(left - frames, 0), min(right + frames, length)
            if left > lo:
                soft[b, lo:left] = torch.linspace(0, 1, left - lo + 2)[1:-1]
            if hi > right:
                soft[b, right:hi] = torch.linspace(1, 0, hi - right + 2)[1:-1]
    m = soft[..., None].to(x.dtype)  # [B, T] -> [B, T, 1]
    return m * x + (1.0 - m) * clean_src
