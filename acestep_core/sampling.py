"""Flow-matching sampling as plain functions over a velocity callable.

Convention (official ACE-Step): x_t = t * noise + (1 - t) * x0, the model predicts v = noise - x0, and
sampling integrates from t = 1 to t = 0 with Euler steps x <- x - v * (t - t_next). The last step, to
t_next = 0, is exactly the official "jump to x0" x0 = x_t - v * t.

Schedules are lists of Python floats that always end with 0.0; every value is rounded to float32
first because the official code builds its schedules as float32 tensors.

`sample` is the loop of the official `generate_audio`, with its options (SDE, Heun, velocity clamp / EMA,
DCW). The official turbo and base loops differ in three places, all marked `turbo` in `sample`:
  - last step: turbo jumps to x0 = x - v t and stops (no SDE noise, no Heun corrector, no repaint
    injection); base takes an ordinary step to t = 0 (a Heun corrector evaluates the model at t = 0).
  - SDE: turbo re-noises to the schedule's next time; base to 1 - (i + 1) / N, ignoring shift and
    custom timesteps, and also draws (and discards, t = 0) noise on the last step.
  - the schedules themselves (`turbo_schedule` / `base_schedule`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch
from tqdm.auto import tqdm

from .checks import check_btc, check_like
from .dcw import DCW, dcw_correct

# velocity(x [B, T, C], t: float, step: int) -> v [B, T, C]
Velocity = Callable[[torch.Tensor, float, int], torch.Tensor]
# Where SDE re-noising draws from: None = the global torch generator (official), a torch.Generator, or
# a callable like(x) -> eps shaped like x (tests inject recorded draws with it).
NoiseSource = Union[None, torch.Generator, Callable[[torch.Tensor], torch.Tensor]]

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


def turbo_schedule(num_steps: int = 8, shift: float = 3.0, timesteps: Sequence[float] | None = None,
                   max_steps: int = MAX_TURBO_STEPS) -> list[float]:
    """The official turbo schedule: shifted linspace computed in float64 (clamped to `max_steps`), or the user's
    `timesteps` snapped to the nearest valid turbo value (trailing zeros dropped). Ends with 0.0."""
    if timesteps is not None:
        ts = [float(t) for t in timesteps]
        while ts and ts[-1] == 0.0:
            ts.pop()
        if not ts:
            raise ValueError("timesteps: needs at least one non-zero value")
        ts = [min(TURBO_VALID_TIMESTEPS, key=lambda v: abs(v - t)) for t in ts[:max_steps]]
        return _f32(ts + [0.0])
    n = min(int(num_steps), max_steps)
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


# --- starting point --------------------------------------------------------------------------------------

def mix_retake_noise(noise: torch.Tensor, retake_noise: torch.Tensor, variance: float) -> torch.Tensor:
    """Retake: rotate the noise towards an independent draw, cos(v pi/2) noise + sin(v pi/2) retake_noise.

    Variance preserving; variance 0 keeps `noise`, 1 gives `retake_noise` (the official draws it from a
    second list of per-item seeds, exactly like the main noise)."""
    check_like("retake_noise", retake_noise, noise)
    if not 0.0 <= variance <= 1.0:
        raise ValueError(f"variance: must lie in [0, 1], got {variance}")
    if variance == 0.0:
        return noise
    angle = variance * math.pi / 2
    return math.cos(angle) * noise + math.sin(angle) * retake_noise


def cover_start(noise: torch.Tensor, src_latents: torch.Tensor, timesteps: Sequence[float],
                strength: float) -> tuple[torch.Tensor, list[float]]:
    """Cover noise strength: start from the source noised to the schedule time nearest to 1 - strength.

    Returns (x at that time, the schedule from that time on). Both official loops search the non-final
    times (turbo its t list, base t[:-1]) and count audio_cover_strength's switch step on the truncated
    schedule, so the caller computes cover_steps from the returned one. strength 0 changes nothing.
    """
    check_like("src_latents", src_latents, noise)
    validate_schedule(timesteps)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength: must lie in [0, 1], got {strength}")
    ts = list(timesteps)
    if strength == 0.0:
        return noise, ts
    start = min(range(len(ts) - 1), key=lambda k: abs(ts[k] - (1.0 - strength)))  # first of ties, as min()
    t0 = ts[start]
    return t0 * noise + (1.0 - t0) * src_latents, ts[start:]


# --- the loop -----------------------------------------------------------------------------------------------

@dataclass
class Step:
    """What a solver sees at step i of n: x at time t, its (clamped / smoothed) velocity v, the next time."""

    x: torch.Tensor
    v: torch.Tensor
    t: float
    t_next: float
    i: int
    n: int
    turbo: bool
    options: "SamplerOptions"
    corrector: Velocity | None
    memory: dict  # a multistep solver's state, kept across the steps of one run


# A solver: Step -> (x at the new time, that time, the velocity the step used). The loop in `sample`
# handles everything shared: velocity clamp / EMA, turbo's final x0 jump, DCW and after_step.
Solver = Callable[[Step], tuple[torch.Tensor, float, torch.Tensor]]


def euler_step(s: Step):
    # Step sizes are Python floats (float64 differences of float32 times) rounded once by torch, which
    # equals the official float32 arithmetic.
    return s.x - s.v * (s.t - s.t_next), s.t_next, s.v


def heun_step(s: Step):
    """Official Heun: a corrector evaluation at t_next, then a step with the average velocity."""
    clamp, ema = s.options.velocity_norm_threshold, s.options.velocity_ema
    x_pred = s.x - s.v * (s.t - s.t_next)
    v2 = s.corrector(x_pred, s.t_next, s.i)
    if clamp > 0:
        v2 = clamp_velocity(v2, x_pred, clamp)
    if ema > 0:
        v2 = (1.0 - ema) * v2 + ema * s.v  # against this step's v, on every step
    v_avg = 0.5 * (s.v + v2)
    return s.x - v_avg * (s.t - s.t_next), s.t_next, v_avg


def sde_step(s: Step):
    """Official SDE: predict x0, then re-noise it with fresh noise to the next time (turbo) or to the
    unshifted linear time 1 - (i + 1) / n (base, ignoring shift and custom timesteps)."""
    t_after = s.t_next if s.turbo else 1.0 - (s.i + 1) / s.n
    x0 = s.x - s.v * s.t
    return t_after * _draw(s.options.sde_noise, s.x) + (1.0 - t_after) * x0, t_after, s.v


def dpm_solver_2m_step(s: Step):
    """DPM-Solver++(2M) (Lu et al. 2022) on the flow x_t = t * noise + (1 - t) * x0, i.e. alpha = 1 - t,
    sigma = t, lambda = log(alpha / sigma); the data prediction is x0 = x - t v.

        x_next = (sigma_next / sigma) x - alpha_next (exp(-h) - 1) D,   h = lambda_next - lambda
        D = x0 (first step), else (1 + 1 / (2 r)) x0 - 1 / (2 r) x0_prev,   r = h_prev / h

    A step from t = 1 (lambda = -inf) is the Euler step and leaves h_prev infinite, so the next one is
    first order too; a step to t = 0 returns x0 (sigma_next = 0)."""
    x0 = s.x - s.v * s.t
    prev = s.memory.get("dpm2m")  # (x0_prev, h_prev) of the previous step, or None
    s.memory["dpm2m"] = None
    if s.t_next == 0.0:
        return x0, 0.0, s.v
    lam = (lambda u: math.log((1.0 - u) / u) if u < 1.0 else -math.inf)
    h = lam(s.t_next) - lam(s.t)
    d = x0
    if prev is not None and math.isfinite(prev[1]):
        r = prev[1] / h
        d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * prev[0]
    # expm1(-h) = exp(-h) - 1 without cancellation; -1 when h is infinite (a step from t = 1).
    x_next = (s.t_next / s.t) * s.x - (1.0 - s.t_next) * math.expm1(-h) * d
    s.memory["dpm2m"] = (x0, h)
    return x_next, s.t_next, s.v


# name -> solver. The official method "sde" is a solver here too; adding one is a function and a row.
SOLVERS: dict[str, Solver] = {
    "euler": euler_step,
    "heun": heun_step,
    "sde": sde_step,
    "dpm++2m": dpm_solver_2m_step,
}
ODE_SOLVERS = tuple(name for name in SOLVERS if name != "sde")


@dataclass(frozen=True)
class SamplerOptions:
    """The official sampler switches; the defaults give plain Euler ODE sampling. The one place sampler
    names are validated.

    method: "ode" or "sde" (official infer_method): SDE predicts x0 = x - v t each step and re-noises it
        to the next time with fresh noise drawn from `sde_noise`.
    solver: an ODE solver of SOLVERS (official sampler_mode: "euler" or "heun"; "dpm++2m" is ours). Heun
        adds a corrector evaluation at t_next; with method="sde" only "euler" is allowed (the official
        silently falls back to Euler).
    velocity_norm_threshold: > 0 scales each item's v down so that ||v|| <= threshold * ||x||.
    velocity_ema: > 0 smooths v <- (1 - a) v + a v_prev from the second step on.
    dcw: wavelet correction after every step, None = off (see DCW).
    """

    method: str = "ode"
    solver: str = "euler"
    velocity_norm_threshold: float = 0.0
    velocity_ema: float = 0.0
    dcw: DCW | None = None
    sde_noise: NoiseSource = None

    def __post_init__(self):
        if self.method not in ("ode", "sde"):
            raise ValueError(f"method: expected 'ode' or 'sde', got {self.method!r}")
        if self.solver not in ODE_SOLVERS:
            raise ValueError(f"solver: expected one of {ODE_SOLVERS}, got {self.solver!r}")
        if self.method == "sde" and self.solver != "euler":
            raise ValueError(f"solver: {self.solver!r} is an ODE solver; use method='ode' or solver='euler'")
        if not self.velocity_norm_threshold >= 0.0:
            raise ValueError(f"velocity_norm_threshold: must be >= 0, got {self.velocity_norm_threshold}")
        if not 0.0 <= self.velocity_ema < 1.0:
            raise ValueError(f"velocity_ema: must lie in [0, 1), got {self.velocity_ema}")
        if self.dcw is not None and not isinstance(self.dcw, DCW):
            raise ValueError(f"dcw: expected a sampling.DCW or None, got {type(self.dcw).__name__}")

    @property
    def step(self) -> Solver:
        return SOLVERS["sde" if self.method == "sde" else self.solver]


def clamp_velocity(v: torch.Tensor, x: torch.Tensor, threshold: float) -> torch.Tensor:
    """Scale each item's v [B, T, C] down so that ||v|| <= threshold * ||x|| (norms over T and C)."""
    check_btc("x", x)
    check_like("v", v, x)
    v_norm = torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True)  # [B, 1, 1]
    x_norm = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True) + 1e-10
    return v * torch.clamp(threshold * x_norm / (v_norm + 1e-10), max=1.0)


def _draw(source: NoiseSource, like: torch.Tensor) -> torch.Tensor:
    if source is None:
        return torch.randn_like(like)  # the global generator, as the official renoise()
    if isinstance(source, torch.Generator):
        return torch.randn(like.shape, generator=source, dtype=like.dtype, device=like.device)
    eps = source(like)
    check_like("sde_noise(x)", eps, like)
    return eps.to(like)


def sample(
    velocity: Velocity,
    x: torch.Tensor,
    timesteps: Sequence[float],
    *,
    turbo: bool,
    options: SamplerOptions | None = None,
    corrector: Velocity | None = None,
    after_step: Callable[[torch.Tensor, int, float], torch.Tensor] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Integrate from timesteps[0] down to timesteps[-1] (= 0): the official generate_audio loop.

    turbo: follow the turbo loop's last step and SDE times instead of the base loop's (module docstring).
    corrector(x, t, step): the velocity for Heun's second evaluation (the base model guides it with
    plain CFG instead of APG); required when options.solver == "heun".
    after_step(x, step, t) may replace x after each step; t is the time x now sits at (repaint
    injection, callbacks).
    """
    check_btc("x", x)
    validate_schedule(timesteps)
    options = options or SamplerOptions()
    if options.solver == "heun" and corrector is None:
        raise ValueError("corrector: a velocity callable is required for solver='heun'")
    clamp, ema, solver = options.velocity_norm_threshold, options.velocity_ema, options.step
    n = len(timesteps) - 1
    v_prev, memory = None, {}
    for i in tqdm(range(n), desc="sampling", disable=not progress, leave=False):
        t, t_next = timesteps[i], timesteps[i + 1]
        v = velocity(x, t, i)
        if clamp > 0:
            v = clamp_velocity(v, x, clamp)
        if ema > 0 and v_prev is not None:
            v = (1.0 - ema) * v + ema * v_prev
        x_before = x
        if turbo and i == n - 1:
            x, t_after, v_step = x - v * t, 0.0, v  # turbo's final jump to x0, nothing else
        else:
            x, t_after, v_step = solver(Step(x, v, t, t_next, i, n, turbo, options, corrector, memory))
        if options.dcw is not None:
            # x0 is estimated from the single evaluation at t, not from Heun's average.
            x = dcw_correct(x, x_before - v * t, t, options.dcw)
        v_prev = v_step
        if after_step is not None:
            x = after_step(x, i, t_after)
    return x


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
