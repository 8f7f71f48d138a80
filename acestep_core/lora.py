"""LoRA adapters in the PEFT layout (the official trainer's) and in diffusers' layout.

    PEFT folder       adapter_config.json (r, lora_alpha, options) + adapter_model.safetensors with keys
                      base_model.model.layers.{i}.{self_attn|cross_attn}.{q,k,v,o}_proj.lora_{A|B}.weight
    diffusers file    pytorch_lora_weights.safetensors with keys
                      transformer.layers.{i}.{self_attn|cross_attn}.{to_q,to_k,to_v,to_out.0}.lora_{A|B}.weight;
                      r / lora_alpha from its `lora_adapter_metadata` header (JSON, keys "transformer.r", ...),
                      without it alpha = r (diffusers' convention: scale 1)

A LoRA adds `scale * weight * B (A x)` to a projection's output: A [r, in], B [out, r], scale = lora_alpha / r,
weight the user's. Options that change this formula are refused (UNSUPPORTED), as are keys that are not a
lora_A / lora_B of a target module.
"""

from __future__ import annotations

import json
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from .safetensors_io import CheckpointError, write_safetensors

PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
DIFFUSERS_WEIGHTS, DIFFUSERS_METADATA = "pytorch_lora_weights.safetensors", "lora_adapter_metadata"
PEFT_PREFIX, DIFFUSERS_PREFIX = "base_model.model.", "transformer."
DIFFUSERS_NAMES = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out.0": "o_proj"}
# LoRA options that change the formula. A value other than the "off" value is refused.
UNSUPPORTED = {"use_dora": False, "use_rslora": False, "lora_bias": False, "fan_in_fan_out": False,
               "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None, "layer_replication": None}


class LoRA(nn.Module):
    """One adapted Linear: x -> scale * weight * B (A dropout(x)); A [r, in], B [out, r]."""

    def __init__(self, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float, dropout: float = 0.0):
        super().__init__()
        self.lora_A, self.lora_B = nn.Parameter(lora_a), nn.Parameter(lora_b)
        self.scale, self.dropout = scale, dropout

    def forward(self, x: torch.Tensor, weight: float) -> torch.Tensor:
        if self.training and self.dropout > 0:
            x = F.dropout(x, self.dropout)  # PEFT's lora_dropout: on the adapter's input only, training only
        # The scale multiplies the rank-r intermediate: r columns instead of `out`. Plain F.linear: for these thin
        # matrices it beats layers.linear's oneDNN route (2-4x less CPU time with 2 threads, measured).
        return F.linear(F.linear(x, self.lora_A) * (self.scale * weight), self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scale


def new_layers(targets: dict[str, nn.Linear], rank: int, alpha: float, dropout: float = 0.0, *,
               generator: torch.Generator | None = None) -> dict[str, LoRA]:
    """Fresh trainable fp32 LoRAs (PEFT's init: A Kaiming-uniform(a=sqrt(5)), B = 0)."""
    layers = {}
    for path, module in targets.items():
        # Kaiming-uniform with a = sqrt(5) on [r, in] is U(-1/sqrt(in), 1/sqrt(in)).
        bound = 1.0 / math.sqrt(module.in_features)
        a = torch.rand(rank, module.in_features, generator=generator) * (2 * bound) - bound
        layers[path] = LoRA(a, torch.zeros(module.out_features, rank), alpha / rank, dropout)
    return layers


def _check_options(config: dict, where: str) -> None:
    for option, off in UNSUPPORTED.items():
        if config.get(option, off) not in (off, None, {}, False):
            raise CheckpointError(f"{where}: {option} is set: this LoRA option is not supported")
    if config.get("bias", "none") != "none":
        raise CheckpointError(f"{where}: bias={config['bias']!r}: only bias='none' LoRAs are supported")


def build_layers(tensors: dict[str, torch.Tensor], targets: dict[str, nn.Linear], rank: int | None,
                 alpha: float | None, where: str) -> dict[str, LoRA]:
    """LoRA modules from PEFT- or diffusers-named keys; rank/alpha None: per module, alpha = r (diffusers)."""
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name = key.removeprefix(PEFT_PREFIX).removeprefix(DIFFUSERS_PREFIX)
        for theirs, ours in DIFFUSERS_NAMES.items():
            name = name.replace(f".{theirs}.lora_", f".{ours}.lora_")
        path, dot, field = name.rpartition(".lora_")
        if not dot or field not in ("A.weight", "B.weight"):
            what = "DoRA" if "lora_magnitude_vector" in key else "a LoRA bias" if key.endswith(".bias") else None
            detail = f"{what} is not supported" if what else "not a lora_A / lora_B weight"
            raise CheckpointError(f"{where}: key {key!r}: {detail}")
        if path not in targets:
            raise CheckpointError(f"{where}: key {key!r} adapts no target module (targets: layers.{{i}}."
                                  f"{{self_attn|cross_attn}}.{{q,k,v,o}}_proj of this {len(targets) // 8}-layer DiT)")
        pairs.setdefault(path, {})[field[0]] = value
    layers = {}
    for path, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{where}: {path}: lora_{'B' if 'A' in ab else 'A'}.weight is missing")
        a, b, module = ab["A"], ab["B"], targets[path]
        r = a.shape[0]
        fits = a.dim() == b.dim() == 2 and a.shape[1] == module.in_features
        if not fits or tuple(b.shape) != (module.out_features, r):
            raise CheckpointError(f"{where}: {path}: lora_A {list(a.shape)} / lora_B {list(b.shape)} do not fit "
                                  f"[r, {module.in_features}] / [{module.out_features}, r]")
        if rank is not None and r != rank:
            raise CheckpointError(f"{where}: {path}.lora_A.weight has rank {r}, the config says r={rank}")
        layers[path] = LoRA(a, b, (alpha if alpha is not None else r) / r)
    if not layers:
        raise CheckpointError(f"{where}: holds no adapter weights")
    return layers


def read_peft(tensors: dict[str, torch.Tensor], folder: str, targets: dict[str, nn.Linear],
              where: str) -> dict[str, LoRA]:
    """The LoRA of a PEFT folder, its options from `folder/adapter_config.json`."""
    config_file = os.path.join(folder, PEFT_CONFIG)
    try:
        with open(config_file, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_file}: a PEFT adapter needs a readable {PEFT_CONFIG} ({e})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        got = config.get("peft_type") if isinstance(config, dict) else config
        raise CheckpointError(f"{config_file}: peft_type must be 'LORA', got {got!r}")
    _check_options(config, config_file)
    try:
        rank, alpha = int(config["r"]), float(config["lora_alpha"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{config_file}: needs numbers 'r' and 'lora_alpha'") from None
    return build_layers(tensors, targets, rank, alpha, where)


def read_diffusers(tensors: dict[str, torch.Tensor], metadata: dict[str, str], targets: dict[str, nn.Linear],
                   where: str) -> dict[str, LoRA]:
    """The LoRA of a diffusers file; r / lora_alpha from its header when there is one."""
    raw = metadata.get(DIFFUSERS_METADATA)
    try:
        config = {k.removeprefix(DIFFUSERS_PREFIX): v for k, v in json.loads(raw).items()} if raw else {}
    except (json.JSONDecodeError, AttributeError):
        raise CheckpointError(f"{where}: header {DIFFUSERS_METADATA!r} is not a JSON object") from None
    _check_options(config, where)
    rank, alpha = config.get("r"), config.get("lora_alpha")
    return build_layers(tensors, targets, None if rank is None else int(rank), None if alpha is None else float(alpha),
                        where)


def save_peft(layers: dict[str, LoRA], folder: str, *, rank: int, alpha: float, dropout: float = 0.0) -> None:
    """Write a LoRA as the official trainer does (PEFT folder), fp32.

    The weights' header also carries diffusers' `lora_adapter_metadata` (r, lora_alpha, its module names), so
    diffusers' `load_lora_weights(folder, weight_name="adapter_model.safetensors")` applies the same alpha / r.
    """
    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for path, layer in layers.items():
        tensors[f"{PEFT_PREFIX}{path}.lora_A.weight"] = layer.lora_A.detach().float().cpu()
        tensors[f"{PEFT_PREFIX}{path}.lora_B.weight"] = layer.lora_B.detach().float().cpu()
    diffusers_meta = {f"{DIFFUSERS_PREFIX}{k}": v for k, v in
                      {"r": rank, "lora_alpha": alpha, "target_modules": list(DIFFUSERS_NAMES)}.items()}
    write_safetensors(tensors, os.path.join(folder, PEFT_WEIGHTS),
                      metadata={"format": "pt", DIFFUSERS_METADATA: json.dumps(diffusers_meta, sort_keys=True)})
    config = {"peft_type": "LORA", "task_type": "FEATURE_EXTRACTION", "r": rank, "lora_alpha": alpha,
              "lora_dropout": dropout, "target_modules": list(DIFFUSERS_NAMES.values()), "bias": "none",
              "use_dora": False, "use_rslora": False, "fan_in_fan_out": False, "init_lora_weights": True,
              "inference_mode": True, "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None,
              "base_model_name_or_path": None}
    tmp = os.path.join(folder, PEFT_CONFIG + ".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    os.replace(tmp, os.path.join(folder, PEFT_CONFIG))
