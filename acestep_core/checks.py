"""The one tensor-argument check of the library: a wrong tensor fails with the argument named and what was
expected, instead of an error from deep inside torch."""

from __future__ import annotations

import torch

# A size constraint per dimension: an int (exactly), None (any size >= 1) or a range (a size inside it).
Size = int | None | range
KINDS = ("float", "int", "any")


def _fits(size: int, want: Size) -> bool:
    if want is None:
        return size >= 1
    if isinstance(want, range):
        return size in want
    return size == want


def _kind_ok(x: torch.Tensor, kind: str) -> bool:
    if kind == "float":
        return x.is_floating_point()
    if kind == "int":
        return not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)
    return True


def check_tensor(name: str, x, sizes: tuple[Size, ...], expected: str, *, kind: str = "float",
                 dtype: torch.dtype | None = None, device: torch.device | None = None) -> None:
    """x must be a tensor with len(sizes) dimensions fitting `sizes`, of `kind` values ("float", "int" or
    "any"), and the given dtype / device when those are set. `expected` is how the message shows the shape,
    e.g. "[B, T, 64] with T >= 1"."""
    kind_word = {"float": " of floating-point values", "int": " of integer values", "any": ""}[kind]
    described = f"{len(sizes)}-D tensor {expected}{kind_word}"
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor ({described}), got {type(x).__name__}")
    if x.dim() != len(sizes) or not _kind_ok(x, kind) or not all(_fits(s, w) for s, w in zip(x.shape, sizes)):
        raise ValueError(f"{name} must be a {described}, got shape {tuple(x.shape)} {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"{name} must have the model dtype {dtype}, got {x.dtype}")
    if device is not None and x.device != device:
        raise ValueError(f"{name} must be on the model device {device}, got {x.device}")


def check_values(name: str, x: torch.Tensor, low: int, high: int) -> None:
    """Every value of an integer tensor in [low, high) (token ids, code ids, batch indices)."""
    if x.numel() and (bool((x < low).any()) or bool((x >= high).any())):
        raise ValueError(f"{name} values must lie in [{low}, {high}), got values in [{int(x.min())}, {int(x.max())}]")


def check_btc(name: str, x: torch.Tensor) -> None:
    """A [B, T, C] tensor (sampler states, velocities)."""
    check_tensor(name, x, (None, None, None), "[B, T, C]", kind="any")


def check_like(name: str, value: torch.Tensor, like: torch.Tensor) -> None:
    """A tensor of exactly `like`'s shape."""
    check_tensor(name, value, tuple(like.shape), f"{list(like.shape)} ([B, T, C])", kind="any")
