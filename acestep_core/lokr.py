"""LoKr (low-rank Kronecker) adapters in the LyCORIS file layout, as the official ACE-Step trainer writes them.

The official code trains LoKr with the `lycoris` library on the DiT (`decoder`) and saves
`lokr_weights.safetensors`: per adapted module `lycoris_{module path, dots as underscores}` it stores

    lokr_w1    [out_l, in_m]                 or  lokr_w1_a [out_l, r] and lokr_w1_b [r, in_m]
    lokr_w2    [out_k, in_n]                 or  lokr_w2_a [out_k, r] and lokr_w2_b [r, in_n]
    alpha      scalar

with out = out_l * out_k and in = in_m * in_n, and safetensors metadata
`{"algo": "lokr", "format": "lycoris", "lokr_config": "<json of the trainer's LoKRConfig>"}`.

LyCORIS applies it unmerged (its default, non-bypass forward) as

    y = W x + multiplier * scale * kron(W1, W2) x,   W1 = w1 or w1_a @ w1_b,   W2 = w2 or w2_a @ w2_b,

scale = alpha / r when at least one side is rank-decomposed (r: that side's inner size), and 1 when both sides are
full matrices (LyCORIS then forces alpha = r). The official loader takes alpha from the `lokr_config` metadata
(`linear_alpha`); without metadata we use the file's per-module `alpha`.

We never build the [out, in] Kronecker product in a forward: with X = x viewed as [in_m, in_n],
kron(W1, W2) x = vec(W1 X W2^T), two small matrix products instead of a full-size one.

The official trainer's LyCORIS network also wraps the DiT's other Linear / Conv1d modules (MLP, timestep and
condition projections) but freezes them at their zero initialisation; such entries (their product is exactly
zero) are skipped. A non-zero entry for a module that is not an attention projection is an error.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn

from .safetensors_io import CheckpointError

PREFIX = "lycoris_"
WEIGHTS = "lokr_weights.safetensors"  # the official trainer's file name
FACTORS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
# Entries that change the formula beyond what is implemented here: a clear error instead of a wrong delta.
UNSUPPORTED_KEYS = {"lokr_t1": "Tucker decomposition (use_tucker)", "lokr_t2": "Tucker decomposition (use_tucker)",
                    "dora_scale": "weight decomposition (DoRA / weight_decompose)"}
UNSUPPORTED_CONFIG = {"rs_lora": "rank-stabilised scaling (rs_lora)", "weight_decompose": "weight decomposition (DoRA)"}


class LoKr(nn.Module):
    """One adapted Linear: delta W = scale * kron(W1, W2), applied without materialising it."""

    def __init__(self, factors: dict[str, torch.Tensor], scale: float, in_features: int, out_features: int):
        super().__init__()
        for name, value in factors.items():
            self.register_parameter(name, nn.Parameter(value, requires_grad=False))
        self.scale = scale
        self.in_features, self.out_features = in_features, out_features

    def _side(self, n: str) -> torch.Tensor:
        full = getattr(self, f"lokr_w{n}", None)
        return full if full is not None else getattr(self, f"lokr_w{n}_a") @ getattr(self, f"lokr_w{n}_b")

    def kron_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(W1 [out_l, in_m], W2 [out_k, in_n])."""
        return self._side("1"), self._side("2")

    def forward(self, x: torch.Tensor, weight: float) -> torch.Tensor:
        """weight * scale * kron(W1, W2) x for x [..., in] -> [..., out]."""
        w1, w2 = self.kron_factors()
        (out_l, in_m), (out_k, in_n) = w1.shape, w2.shape
        xs = x.reshape(*x.shape[:-1], in_m, in_n)  # [..., in] -> [..., in_m, in_n] (row-major, as kron indexes)
        z = F.linear(xs, w2)  # X W2^T: [..., in_m, out_k]
        y = F.linear(z.transpose(-1, -2), w1)  # (W1 X W2^T)^T: [..., out_k, out_l]
        # [..., out_k, out_l] -> [..., out_l, out_k] -> [..., out]; reshape copies the transposed view once.
        return y.transpose(-1, -2).reshape(*x.shape[:-1], out_l * out_k) * (self.scale * weight)

    def delta_weight(self) -> torch.Tensor:
        """The dense delta [out, in] (for fusing)."""
        w1, w2 = self.kron_factors()
        return torch.kron(w1, w2) * self.scale


def is_lokr_state(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    return metadata.get("algo") == "lokr" or "lokr_config" in metadata or any(".lokr_" in k for k in tensors)


def read_config(metadata: dict[str, str], where: str) -> dict:
    """The trainer's LoKr config from the file metadata ({} when absent); unsupported options are errors."""
    raw = metadata.get("lokr_config")
    if raw is None:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{where}: metadata 'lokr_config' is not valid JSON") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{where}: metadata 'lokr_config' must be a JSON object")
    for option, what in UNSUPPORTED_CONFIG.items():
        if config.get(option):
            raise CheckpointError(f"{where}: lokr_config.{option} is set: {what} is not supported")
    return config


def _module_entries(tensors: dict[str, torch.Tensor], where: str) -> dict[str, dict[str, torch.Tensor]]:
    """Group `lycoris_NAME.FIELD` keys by NAME; a key of another shape is an error naming it."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, dot, field = key.rpartition(".")
        if not dot or not name.startswith(PREFIX):
            raise CheckpointError(f"{where}: key {key!r} is not a LyCORIS LoKr key ('{PREFIX}<module>.<field>')")
        if field in UNSUPPORTED_KEYS:
            raise CheckpointError(f"{where}: key {key!r}: {UNSUPPORTED_KEYS[field]} is not supported")
        if field not in FACTORS and field != "alpha":
            raise CheckpointError(f"{where}: key {key!r}: unknown LoKr field {field!r}")
        groups.setdefault(name[len(PREFIX):], {})[field] = value
    return groups


def _side(entry: dict[str, torch.Tensor], n: str, name: str, where: str) -> tuple[tuple[int, int], int | None]:
    """Shape [rows, cols] of side n (1 or 2) and its rank (None when stored full)."""
    full, a, b = (entry.get(f"lokr_w{n}{s}") for s in ("", "_a", "_b"))
    key = f"{PREFIX}{name}.lokr_w{n}"
    if full is not None and a is None and b is None and full.dim() == 2:
        return tuple(full.shape), None
    if full is None and a is not None and b is not None and a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[0]:
        return (a.shape[0], b.shape[1]), a.shape[1]
    raise CheckpointError(f"{where}: {key}: needs either a 2-D lokr_w{n} or lokr_w{n}_a [m, r] with lokr_w{n}_b "
                          f"[r, n] (a Linear module's factors)")


def _is_zero(entry: dict[str, torch.Tensor]) -> bool:
    """Whether kron(W1, W2) is exactly zero, i.e. one side is (any layout, conv kernels included)."""
    def side(n):
        full = entry.get(f"lokr_w{n}")
        if full is not None:
            return full
        a, b = entry.get(f"lokr_w{n}_a"), entry.get(f"lokr_w{n}_b")
        return a.flatten(1).float() @ b.flatten(1).float() if a is not None and b is not None else torch.ones(1)
    return not bool(side("1").any()) or not bool(side("2").any())


def build_modules(tensors: dict[str, torch.Tensor], metadata: dict[str, str], targets: dict[str, nn.Linear],
                  frozen: set[str], where: str) -> dict[str, LoKr]:
    """LoKr modules keyed by DiT module path ("layers.0.self_attn.q_proj").

    targets: path -> Linear that may carry an adapter. frozen: paths (LyCORIS spelling, underscores) of other DiT
    modules whose entries are accepted only when their delta is exactly zero.
    """
    config = read_config(metadata, where)
    by_flat = {path.replace(".", "_"): path for path in targets}
    modules: dict[str, LoKr] = {}
    for name, entry in _module_entries(tensors, where).items():
        path = by_flat.get(name)
        if path is None:
            if name not in frozen:
                raise CheckpointError(f"{where}: key {PREFIX}{name}.*: no DiT module is called {name!r}")
            if _is_zero(entry):
                continue  # a module the official trainer froze at its zero initialisation: no effect
            raise CheckpointError(f"{where}: key {PREFIX}{name}.*: a non-zero LoKr on a module that is not an "
                                  "attention projection (supported: self_attn / cross_attn q_proj, k_proj, v_proj, "
                                  "o_proj)")
        (rows1, cols1), r1 = _side(entry, "1", name, where)
        (rows2, cols2), r2 = _side(entry, "2", name, where)
        factors = {k: v for k, v in entry.items() if k != "alpha"}
        target = targets[path]
        if (rows1 * rows2, cols1 * cols2) != (target.out_features, target.in_features):
            raise CheckpointError(f"{where}: {PREFIX}{name}: kron of [{rows1}, {cols1}] and [{rows2}, {cols2}] is "
                                  f"[{rows1 * rows2}, {cols1 * cols2}], but {path} is [{target.out_features}, "
                                  f"{target.in_features}]")
        rank = r2 if r2 is not None else r1
        if r1 is not None and r2 is not None and r1 != r2:
            raise CheckpointError(f"{where}: {PREFIX}{name}: the two sides have different ranks {r1} and {r2}")
        if rank is None:
            scale = 1.0  # both sides full: LyCORIS uses alpha = r, i.e. no scaling
        else:
            if "linear_dim" in config and int(config["linear_dim"]) != rank:
                raise CheckpointError(f"{where}: {PREFIX}{name}: rank {rank} differs from lokr_config.linear_dim "
                                      f"{config['linear_dim']}")
            if "linear_alpha" in config:
                alpha = float(config["linear_alpha"])
            elif "alpha" in entry:
                alpha = float(entry["alpha"].float().item())
            else:
                alpha = float(rank)
            scale = alpha / rank
        modules[path] = LoKr(factors, scale, target.in_features, target.out_features)
    return modules
