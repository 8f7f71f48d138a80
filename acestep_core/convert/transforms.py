"""Tensor transforms applied during conversion, kept apart from the key renames in `keymaps.py`."""

from __future__ import annotations

import torch


def fold_weight_norm(weight_g: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
    """weight = g * v / ||v||, the norm taken over every dim but 0 (torch weight_norm's default dim=0).

    Computed in float32 (a bf16 norm over 2048*7 values loses digits) and returned in v's dtype.
    """
    if weight_g.shape[0] != weight_v.shape[0] or weight_g.dim() != weight_v.dim():
        raise ValueError(f"weight_g {tuple(weight_g.shape)} does not fit weight_v {tuple(weight_v.shape)}")
    v = weight_v.float()
    norm = v.flatten(1).norm(dim=1).view(-1, *([1] * (v.dim() - 1)))  # [out, 1, 1]
    return (weight_g.float() * v / norm).to(weight_v.dtype)


def fold_all_weight_norms(state_dict: dict[str, torch.Tensor],
                          origins: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    """Replace every `X.weight_g`/`X.weight_v` pair by `X.weight`; a lone half is an error.

    Newer diffusers checkpoints may instead use torch parametrizations
    (`X.parametrizations.weight.original0/original1`); they are folded the same way.
    origins: filled with {"X.weight": "X.weight_g + X.weight_v"} (the source names) for error messages.
    """
    out: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, tuple[str, torch.Tensor]]] = {}
    for key, tensor in state_dict.items():
        for g_suffix, v_suffix in ((".weight_g", ".weight_v"),
                                   (".parametrizations.weight.original0", ".parametrizations.weight.original1")):
            if key.endswith(g_suffix):
                pairs.setdefault(key[: -len(g_suffix)], {})["g"] = (key, tensor)
                break
            if key.endswith(v_suffix):
                pairs.setdefault(key[: -len(v_suffix)], {})["v"] = (key, tensor)
                break
        else:
            out[key] = tensor
    for base, pair in pairs.items():
        if set(pair) != {"g", "v"}:
            missing = "weight_v" if "g" in pair else "weight_g"
            raise KeyError(f"{base}: weight norm pair is missing its {missing}")
        if base + ".weight" in out:
            raise KeyError(f"{base}: has both a plain weight and a weight-norm pair")
        (g_key, g), (v_key, v) = pair["g"], pair["v"]
        try:
            out[base + ".weight"] = fold_weight_norm(g, v)
        except ValueError as e:
            raise KeyError(f"source keys {g_key!r} and {v_key!r}: {e}") from None
        if origins is not None:
            origins[base + ".weight"] = f"{g_key} + {v_key}"
    return out


def unfold_weight_norm(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """weight -> (weight_g, weight_v) such that fold_weight_norm(g, v) gives weight back (to rounding).

    v is the weight itself and g its norm over every dim but 0 (torch weight_norm's dim=0: the output
    channels of a Conv1d, the input channels of a ConvTranspose1d), shaped [dim0, 1, 1].
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
        raise ValueError(f"weight must be a tensor with at least 2 dims [out, ...], got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    # float32 norm: a bf16 sum over in_channels * kernel values loses digits (as in fold_weight_norm).
    norm = weight.float().flatten(1).norm(dim=1)  # [out, in, k] -> [out]
    return norm.view(-1, *([1] * (weight.dim() - 1))).to(weight.dtype), weight  # [out] -> [out, 1, 1]


def unfold_all_weight_norms(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every `X.weight` -> `X.weight_g` + `X.weight_v`; other keys unchanged.

    In diffusers' AutoencoderOobleck every conv is weight-normed and nothing else has a `.weight`
    (Snake1d has `alpha`/`beta`), so all of them unfold; the test checks this against the class itself.
    """
    out = {}
    for key, tensor in state_dict.items():
        if key.endswith(".weight"):
            base = key[: -len(".weight")]
            out[base + ".weight_g"], out[base + ".weight_v"] = unfold_weight_norm(tensor)
        else:
            out[key] = tensor
    return out


def silence_latent_from_official(tensor: torch.Tensor) -> torch.Tensor:
    """The official `silence_latent.pt` is channels-first [1, 64, T]; we store it time-major [1, T, 64]."""
    if tensor.dim() != 3 or tensor.shape[0] != 1:
        raise ValueError(f"silence_latent.pt: expected a [1, C, T] tensor, got {tuple(tensor.shape)}")
    return tensor.transpose(1, 2).contiguous()  # [1, C, T] -> [1, T, C]
