"""LoRA and LoKr adapters on the DiT: load, combine, switch off, fuse.

Official ACE-Step adapts the DiT only: `q_proj k_proj v_proj o_proj` of `self_attn` and `cross_attn` in every layer.
Three file layouts load:

    PEFT folder (official trainer)   adapter_config.json + adapter_model.safetensors,
                                     keys base_model.model.layers.{i}.{self_attn|cross_attn}.{q,k,v,o}_proj.lora_{A|B}.weight
    diffusers LoRA file              pytorch_lora_weights.safetensors,
                                     keys transformer.layers.{i}.{self_attn|cross_attn}.{to_q,to_k,to_v,to_out.0}.lora_{A|B}.weight
                                     (r / lora_alpha from its `lora_adapter_metadata` header; without it alpha = r)
    LyCORIS LoKr file (lokr.py)      lokr_weights.safetensors

LoRA adds `scale * weight * B (A x)` to a projection's output, scale = lora_alpha / r and weight the user's
(default 1.0). Adapters are applied unmerged by a forward hook on each target Linear: the base weights are neither
copied nor changed, the DiT's state dict keeps its keys, and the condition side (`DiT.prepare_condition`, which
calls cross_attn k_proj / v_proj once per generation) gets the adapters like every other call. `fuse()` folds the
active adapters into the weights for speed and keeps the original tensors (not copies) so `unfuse()` puts back the
exact base weights; any other change unfuses first. Loading is strict: a key that adapts no target module, a rank
or shape mismatch, or an option that changes the formula (DoRA, rs-LoRA, ...) is one error naming the key.
"""

from __future__ import annotations

import json
import logging
import math
import os

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn
from torch.nn.utils import parametrize

from . import lokr
from .layers import linear
from .safetensors_io import CheckpointError, read_safetensors, write_safetensors

log = logging.getLogger("acestep_core")

ATTENTIONS = ("self_attn", "cross_attn")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
DIFFUSERS_WEIGHTS, DIFFUSERS_METADATA = "pytorch_lora_weights.safetensors", "lora_adapter_metadata"
LOKR_WEIGHTS = "lokr_weights.safetensors"
PEFT_PREFIX, DIFFUSERS_PREFIX = "base_model.model.", "transformer."
DIFFUSERS_NAMES = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out.0": "o_proj"}
# LoRA options that change the formula. A value other than the "off" value is refused.
UNSUPPORTED = {"use_dora": False, "use_rslora": False, "lora_bias": False, "fan_in_fan_out": False,
               "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None, "layer_replication": None}


def target_modules(dit: nn.Module) -> dict[str, nn.Linear]:
    """"layers.{i}.{self_attn|cross_attn}.{q,k,v,o}_proj" -> that Linear of the DiT."""
    return {f"layers.{i}.{attn}.{proj}": getattr(getattr(layer, attn), proj)
            for i, layer in enumerate(dit.layers) for attn in ATTENTIONS for proj in PROJECTIONS}


class LoRA(nn.Module):
    """One adapted Linear: x -> scale * weight * B (A dropout(x)); A [r, in], B [out, r]."""

    def __init__(self, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float, dropout: float = 0.0):
        super().__init__()
        self.lora_A, self.lora_B = nn.Parameter(lora_a), nn.Parameter(lora_b)
        self.scale, self.dropout = scale, dropout

    def forward(self, x: torch.Tensor, weight: float) -> torch.Tensor:
        if self.training and self.dropout > 0:
            x = F.dropout(x, self.dropout)  # PEFT's lora_dropout: on the adapter's input only, training only
        # The scale multiplies the rank-r intermediate: r columns instead of `out`.
        return linear(linear(x, self.lora_A) * (self.scale * weight), self.lora_B)

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scale


class Adapter(nn.Module):
    """A named set of per-module adapters (LoRA or LoKr), keyed by DiT module path."""

    def __init__(self, kind: str, layers: dict[str, nn.Module], source: str = ""):
        super().__init__()
        self.kind, self.source = kind, source
        # ModuleDict keys cannot hold dots; `paths` maps the DiT path to the registered name.
        self.paths = {path: path.replace(".", "_") for path in layers}
        self.layers = nn.ModuleDict({self.paths[p]: m for p, m in layers.items()})

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def get(self, path: str) -> nn.Module | None:
        key = self.paths.get(path)
        return None if key is None else self.layers[key]


def new_lora(dit: nn.Module, rank: int, alpha: float, dropout: float = 0.0, *,
             generator: torch.Generator | None = None) -> Adapter:
    """A fresh trainable fp32 LoRA on every target (PEFT's init: A Kaiming-uniform(a=sqrt(5)), B = 0)."""
    layers = {}
    for path, module in target_modules(dit).items():
        # Kaiming-uniform with a = sqrt(5) on [r, in] is U(-1/sqrt(in), 1/sqrt(in)).
        bound = 1.0 / math.sqrt(module.in_features)
        a = torch.rand(rank, module.in_features, generator=generator) * (2 * bound) - bound
        layers[path] = LoRA(a, torch.zeros(module.out_features, rank), alpha / rank, dropout)
    return Adapter("lora", layers)


# --- reading ---------------------------------------------------------------------------------------------------

def _read(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = read_safetensors(path)
    with safe_open(path, framework="pt") as f:
        return tensors, dict(f.metadata() or {})


def _check_options(config: dict, where: str) -> None:
    for option, off in UNSUPPORTED.items():
        if config.get(option, off) not in (off, None, {}, False):
            raise CheckpointError(f"{where}: {option} is set: this LoRA option is not supported")
    if config.get("bias", "none") != "none":
        raise CheckpointError(f"{where}: bias={config['bias']!r}: only bias='none' LoRAs are supported")


def _lora_layers(tensors: dict[str, torch.Tensor], targets: dict[str, nn.Linear], rank: int | None,
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
        if (a.dim(), b.dim()) != (2, 2) or a.shape[1] != module.in_features or tuple(b.shape) != (module.out_features, r):
            raise CheckpointError(f"{where}: {path}: lora_A {list(a.shape)} / lora_B {list(b.shape)} do not fit "
                                  f"[r, {module.in_features}] / [{module.out_features}, r]")
        if rank is not None and r != rank:
            raise CheckpointError(f"{where}: {path}.lora_A.weight has rank {r}, the config says r={rank}")
        layers[path] = LoRA(a, b, (alpha if alpha is not None else r) / r)
    if not layers:
        raise CheckpointError(f"{where}: holds no adapter weights")
    return layers


def read_adapter(path: str, dit: nn.Module) -> Adapter:
    """An adapter from a PEFT folder, a diffusers LoRA file (or its folder) or a LyCORIS LoKr file (or folder)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in (PEFT_CONFIG, LOKR_WEIGHTS, DIFFUSERS_WEIGHTS):
            if os.path.isfile(os.path.join(path, name)):
                file = os.path.join(path, PEFT_WEIGHTS if name == PEFT_CONFIG else name)
                break
        else:
            raise CheckpointError(f"{path}: no adapter here (expected {PEFT_CONFIG} + {PEFT_WEIGHTS}, {LOKR_WEIGHTS} "
                                  f"or {DIFFUSERS_WEIGHTS})")
    elif os.path.isfile(path):
        file = path
    else:
        raise CheckpointError(f"{path}: adapter path not found")
    tensors, metadata = _read(file)
    targets = target_modules(dit)
    if lokr.is_lokr_state(tensors, metadata):
        frozen = {n.replace(".", "_") for n, _ in dit.named_modules() if n} | {"proj_in_1"}  # official Conv1d name
        return Adapter("lokr", lokr.build_modules(tensors, metadata, targets, frozen, file), file)
    if any(k.startswith(PEFT_PREFIX) for k in tensors):
        config_file = os.path.join(os.path.dirname(file), PEFT_CONFIG)
        try:
            with open(config_file, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{config_file}: a PEFT adapter needs a readable {PEFT_CONFIG} ({e})") from None
        if not isinstance(config, dict) or config.get("peft_type") != "LORA":
            raise CheckpointError(f"{config_file}: peft_type must be 'LORA', got {config.get('peft_type')!r}")
        _check_options(config, config_file)
        return Adapter("lora", _lora_layers(tensors, targets, int(config["r"]), float(config["lora_alpha"]), file),
                       file)
    raw = metadata.get(DIFFUSERS_METADATA)
    config = {k.removeprefix(DIFFUSERS_PREFIX): v for k, v in json.loads(raw).items()} if raw else {}
    _check_options(config, file)
    rank, alpha = config.get("r"), config.get("lora_alpha")
    return Adapter("lora", _lora_layers(tensors, targets, None if rank is None else int(rank),
                                        None if alpha is None else float(alpha), file), file)


def save_peft(adapter: Adapter, folder: str, *, rank: int, alpha: float, dropout: float = 0.0) -> None:
    """Write a LoRA as the official trainer does (PEFT folder), fp32.

    The weights' header also carries diffusers' `lora_adapter_metadata` (r, lora_alpha, its module names), so
    diffusers' `load_lora_weights(folder, weight_name="adapter_model.safetensors")` applies the same alpha / r.
    """
    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for path, key in adapter.paths.items():
        layer = adapter.layers[key]
        tensors[f"{PEFT_PREFIX}{path}.lora_A.weight"] = layer.lora_A.detach().float().cpu()
        tensors[f"{PEFT_PREFIX}{path}.lora_B.weight"] = layer.lora_B.detach().float().cpu()
    diffusers_meta = {f"{DIFFUSERS_PREFIX}{k}": v for k, v in
                      {"r": rank, "lora_alpha": alpha, "target_modules": list(DIFFUSERS_NAMES)}.items()}
    write_safetensors(tensors, os.path.join(folder, PEFT_WEIGHTS),
                      metadata={"format": "pt", DIFFUSERS_METADATA: json.dumps(diffusers_meta, sort_keys=True)})
    config = {"peft_type": "LORA", "task_type": "FEATURE_EXTRACTION", "r": rank, "lora_alpha": alpha,
              "lora_dropout": dropout, "target_modules": list(PROJECTIONS), "bias": "none", "use_dora": False,
              "use_rslora": False, "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
              "rank_pattern": {}, "alpha_pattern": {}, "modules_to_save": None, "base_model_name_or_path": None}
    tmp = os.path.join(folder, PEFT_CONFIG + ".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
    os.replace(tmp, os.path.join(folder, PEFT_CONFIG))


# --- the manager -----------------------------------------------------------------------------------------------

def _stored_weight(module: nn.Module) -> nn.Parameter:
    """The Parameter that holds a Linear's weight (under precision.py's fp32-compute parametrization: the original)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations["weight"].original
    return module.weight


class AdapterManager:
    """The adapters of one DiT. Get it with `manager(dit)`; the pipeline's adapter methods delegate here."""

    def __init__(self, dit: nn.Module):
        self.dit = dit
        self.targets = target_modules(dit)
        self.adapters: dict[str, Adapter] = {}
        self.active: dict[str, float] = {}  # name -> user weight, applied in this order
        self._hooks: list = []
        self._originals: dict[str, torch.Tensor] | None = None  # path -> base weight while fused

    @property
    def fused(self) -> bool:
        return self._originals is not None

    def add(self, name: str, adapter: Adapter, scale: float = 1.0, *, dtype: torch.dtype | None = None) -> str:
        """Register an adapter (already built) and make it active too, with weight `scale`.

        dtype: the adapter's dtype; default the activations' (no casts in the hook). A trainer passes float32.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty str, got {name!r}")
        if name in self.adapters:
            raise ValueError(f"name: an adapter called {name!r} is already loaded; unload it or pick another name")
        scale = _weight(scale, "scale")
        self.unfuse()
        # The activations' dtype: fp32 under the fp32-compute mode of precision.py, else the model dtype.
        ref = self.dit.scale_shift_table
        adapter = adapter.to(device=ref.device, dtype=dtype or ref.dtype)
        if not self._hooks:
            self._hooks = [m.register_forward_hook(self._hook(p)) for p, m in self.targets.items()]
        self.adapters[name] = adapter
        self.active[name] = scale
        return name

    def load(self, path, name: str | None = None, scale: float = 1.0) -> str:
        """Read an adapter (see `read_adapter`), register it as `name` (default: its folder or file name), activate it."""
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or path, got {type(path).__name__}")
        path = os.fspath(path)
        if name is None:
            base = os.path.basename(os.path.normpath(path))
            name = base if os.path.isdir(path) else os.path.splitext(base)[0]
        _weight(scale, "scale")
        if name in self.adapters:
            raise ValueError(f"name: an adapter called {name!r} is already loaded; unload it or pick another name")
        adapter = read_adapter(path, self.dit)
        log.info("adapter %r: %s on %d modules from %s", name, adapter.kind, len(adapter.paths), adapter.source)
        return self.add(name, adapter, scale)

    def set_active(self, names, weights=None) -> None:
        """Exactly these adapters, in this order, with these weights (default 1.0 each)."""
        names = [names] if isinstance(names, str) else list(names)
        if weights is None:
            weights = [1.0] * len(names)
        elif isinstance(weights, (int, float)):
            weights = [weights] * len(names)
        weights = list(weights)
        if len(weights) != len(names):
            raise ValueError(f"weights: {len(weights)} given for {len(names)} adapter names")
        for n in names:
            if n not in self.adapters:
                raise ValueError(f"names: no adapter called {n!r} is loaded (loaded: {sorted(self.adapters)})")
        checked = [_weight(w, "weights[]") for w in weights]
        self.unfuse()
        self.active = dict(zip(names, checked))

    def disable(self) -> None:
        """No adapter active: the base model's output. The adapters stay loaded for `set_active`."""
        self.unfuse()
        self.active = {}

    def unload(self, name: str) -> None:
        if name not in self.adapters:
            raise ValueError(f"name: no adapter called {name!r} is loaded (loaded: {sorted(self.adapters)})")
        self.unfuse()
        del self.adapters[name]
        self.active.pop(name, None)
        if not self.adapters:
            for h in self._hooks:
                h.remove()
            self._hooks = []

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the active adapters into the target weights (base weights kept aside, not copied)."""
        if self.fused or not self.active:
            return
        originals = {}
        for path, module in self.targets.items():
            layers = [(a.get(path), w) for a, w in ((self.adapters[n], w) for n, w in self.active.items())]
            layers = [(m, w) for m, w in layers if m is not None]
            if not layers:
                continue
            param = _stored_weight(module)
            delta = sum(w * m.delta_weight().float() for m, w in layers)
            originals[path] = param.data
            # Added in fp32, rounded once to the weight dtype; a new tensor, so the original stays intact.
            param.data = (param.data.float() + delta.to(param.device)).to(param.dtype)
        self._originals = originals

    def unfuse(self) -> None:
        """Put back the exact base weights (no-op when not fused)."""
        if self._originals is None:
            return
        for path, original in self._originals.items():
            _stored_weight(self.targets[path]).data = original
        self._originals = None

    def _hook(self, path: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            if self._originals is not None or not self.active:
                return None  # fused (already in the weights) or nothing active: output unchanged
            x = args[0]
            for name, weight in self.active.items():
                adapter = self.adapters[name]
                layer = adapter.get(path)
                if layer is not None:
                    # No-ops at inference (same dtype); fp32 training adapters on lower-precision activations.
                    output = output + layer(x.to(adapter.dtype), weight).to(output.dtype)
            return output
        return hook


def _weight(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def manager(dit: nn.Module) -> AdapterManager:
    """The AdapterManager of `dit`, created on first use (kept as a plain attribute: not in the state dict)."""
    mgr = dit.__dict__.get("_adapter_manager")
    if mgr is None or mgr.dit is not dit:  # none yet, or one copied along with a deep-copied DiT
        mgr = AdapterManager(dit)
        dit.__dict__["_adapter_manager"] = mgr
    return mgr
