"""DCW: the official optional wavelet-domain correction of each sampler step, with a hand-written Haar DWT."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .checks import check_btc, check_like


@dataclass(frozen=True)
class DCW:
    """Differential Correction in Wavelet domain (Yu et al., CVPR 2026), one-level Haar DWT along time.

    After each step, the bands of x_next are pushed away from those of the predicted clean latents
    x0 = x - v t: "low" scales the low band by t * scaler, "high" the high band by (1 - t) * scaler,
    "double" both (high with (1 - t) * high_scaler), "pix" the latents themselves by scaler.

    Opt-in here: the official generate_audio defaults to DCW on, but its handler silently skips the
    correction when the optional pytorch_wavelets package is missing, so the same call gives two
    different results depending on the install. We write the Haar transform ourselves and apply DCW
    only when asked (the official default values are the defaults of this class; haar is its only wavelet).
    """

    mode: str = "double"
    scaler: float = 0.05
    high_scaler: float = 0.02

    def __post_init__(self):
        if self.mode not in ("low", "high", "double", "pix"):
            raise ValueError(f"DCW mode: expected 'low', 'high', 'double' or 'pix', got {self.mode!r}")



_HAAR = 0.5 ** 0.5


def haar_dwt(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, T, C] -> (low, high) [B, ceil(T / 2), C]; odd T gets one zero frame at the end ("zero" mode)."""
    check_btc("x", x)
    if x.shape[1] % 2:
        x = F.pad(x, (0, 0, 0, 1))  # [B, T, C] -> [B, T + 1, C]
    even, odd = x[:, 0::2], x[:, 1::2]
    return (even + odd) * _HAAR, (even - odd) * _HAAR


def haar_idwt(low: torch.Tensor, high: torch.Tensor, length: int) -> torch.Tensor:
    """Inverse of haar_dwt: (low, high) [B, T2, C] -> [B, length, C] (length <= 2 * T2)."""
    even, odd = (low + high) * _HAAR, (low - high) * _HAAR
    x = torch.stack([even, odd], dim=2).flatten(1, 2)  # [B, T2, 2, C] -> [B, 2 * T2, C], frames interleaved
    return x[:, :length]


def dcw_correct(x_next: torch.Tensor, denoised: torch.Tensor, t: float, dcw: DCW) -> torch.Tensor:
    """Push x_next [B, T, C] away from the predicted clean latents `denoised` in the bands `dcw` selects."""
    check_btc("x_next", x_next)
    check_like("denoised", denoised, x_next)
    if dcw.mode == "pix":
        return x_next + dcw.scaler * (x_next - denoised)
    # Low bands are corrected most at high noise, high bands near the end.
    low_s = {"low": t * dcw.scaler, "high": 0.0, "double": t * dcw.scaler}[dcw.mode]
    high_s = {"low": 0.0, "high": (1.0 - t) * dcw.scaler, "double": (1.0 - t) * dcw.high_scaler}[dcw.mode]
    # float32 transform, as the official: the correction is a small difference of close values.
    xl, xh = haar_dwt(x_next.float())
    yl, yh = haar_dwt(denoised.float())
    xl = xl + low_s * (xl - yl)
    xh = xh + high_s * (xh - yh)
    return haar_idwt(xl, xh, x_next.shape[1]).to(x_next.dtype)
