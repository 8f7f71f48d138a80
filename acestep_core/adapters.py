"""LoRA and LoKr adapters on the DiT: load, combine, switch off, fuse (docs/adapters.md).

Official ACE-Step adapts the DiT only: `q_proj k_proj v_proj o_proj` of `self_attn` and `cross_attn` in every
layer. `read_adapter` loads the official PEFT folder or a diffusers LoRA file (lora.py) or a LyCORIS LoKr file
(lokr.py), strictly: a key that adapts no target module, a rank or shape mismatch, or an option that changes the
formula (DoRA, rs-LoRA, ...) is one error naming the key.

The `AdapterManager` of a DiT applies the active adapters unmerged, through a forward hook on each target Linear
(registered while any adapter is loaded, none otherwise): the base weights are neither copied nor changed, the DiT's
state dict keeps its keys, and the condition side (`DiT.prepare_condition`, which calls cross_attn k_proj / v_proj
once per generation) gets the adapters like every other call. `fuse()` folds the active adapters into the weights
for speed, keeping the original tensors (not copies) so `unfuse()` puts back the exact base weights; any other
change unfuses first.
"""

from __future__ import annotations

import logging
import math
import os

import torch
from safetensors import safe_open
from torch import nn
from torch.nn.utils import parametrize

from . import lokr, lora
from .safetensors_io import CheckpointError, read_safetensors

log = logging.getLogger("acestep_core")

ATTENTIONS = ("self_attn", "cross_attn")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def target_modules(dit: nn.Module) -> dict[str, nn.Linear]:
    """"layers.{i}.{self_attn|cross_attn}.{q,k,v,o}_proj" -> that Linear of the DiT."""
    return {f"layers.{i}.{attn}.{proj}": getattr(getattr(layer, attn), proj)
            for i, layer in enumerate(dit.layers) for attn in ATTENTIONS for proj in PROJECTIONS}


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

    def by_path(self) -> dict[str, nn.Module]:
        return {path: self.layers[key] for path, key in self.paths.items()}


def new_lora(dit: nn.Module, rank: int, alpha: float, dropout: float = 0.0, *,
             generator: torch.Generator | None = None) -> Adapter:
    """A fresh trainable fp32 LoRA on every target (PEFT's init: A Kaiming-uniform, B = 0)."""
    return Adapter("lora", lora.new_layers(target_modules(dit), rank, alpha, dropout, generator=generator))


def _read(path: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    tensors = read_safetensors(path)
    with safe_open(path, framework="pt") as f:
        return tensors, dict(f.metadata() or {})


def read_adapter(path: str, dit: nn.Module) -> Adapter:
    """An adapter from a PEFT folder, a diffusers LoRA file (or its folder) or a LyCORIS LoKr file (or folder)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in (lora.PEFT_CONFIG, lokr.WEIGHTS, lora.DIFFUSERS_WEIGHTS):
            if os.path.isfile(os.path.join(path, name)):
                file = os.path.join(path, lora.PEFT_WEIGHTS if name == lora.PEFT_CONFIG else name)
                break
        else:
            raise CheckpointError(f"{path}: no adapter here (expected {lora.PEFT_CONFIG} + {lora.PEFT_WEIGHTS}, "
                                  f"{lokr.WEIGHTS} or {lora.DIFFUSERS_WEIGHTS})")
    elif os.path.isfile(path):
        file = path
    else:
        raise CheckpointError(f"{path}: adapter path not found")
    tensors, metadata = _read(file)
    targets = target_modules(dit)
    if lokr.is_lokr_state(tensors, metadata):
        frozen = {n.replace(".", "_") for n, _ in dit.named_modules() if n} | {"proj_in_1"}  # official Conv1d name
        return Adapter("lokr", lokr.build_modules(tensors, metadata, targets, frozen, file), file)
    if any(k.startswith(lora.PEFT_PREFIX) for k in tensors):
        return Adapter("lora", lora.read_peft(tensors, os.path.dirname(file), targets, file), file)
    return Adapter("lora", lora.read_diffusers(tensors, metadata, targets, file), file)


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
        """Read an adapter (`read_adapter`), register it as `name` (default: its folder / file name), activate it."""
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
