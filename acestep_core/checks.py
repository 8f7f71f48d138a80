"""Shape checks shared by the sampler pieces: a wrong tensor fails with the argument named."""

from __future__ import annotations

import torch


def check_btc(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a tensor of shape [B, T, C], got {got}")


def check_like(name: str, value: torch.Tensor, like: torch.Tensor) -> None:
    if not isinstance(value, torch.Tensor) or value.shape != like.shape:
        got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name}: expected a tensor of shape {list(like.shape)} ([B, T, C]), got {got}")
