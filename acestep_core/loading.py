"""Build the model components from a config and load their weights.

Loading never materialises random weights: modules are built on the meta device, then
`load_state_dict(strict=True, assign=True)` adopts the (memory-mapped) checkpoint tensors directly.
Official and diffusers folders are converted in memory by `weights_convert` first.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from .config import AceStepConfig, check_consistency, load_config
from .precision import native_compute, store_low_compute_fp32
from .safetensors_io import CheckpointError, read_safetensors

log = logging.getLogger("acestep_core")

# component name -> (module, class); each class is built as cls(config_section).
_REGISTRY = {
    "text_encoder": ("acestep_core.qwen3", "Qwen3Encoder", "text_encoder"),
    "vae": ("acestep_core.oobleck", "Oobleck", "vae"),
    "dit": ("acestep_core.dit", "DiT", "dit"),
    "condition": ("acestep_core.condition", "ConditionEncoder", "condition"),
    "audio_tokenizer": ("acestep_core.fsq", "AudioTokenizer", "audio_tokenizer"),
    "audio_detokenizer": ("acestep_core.fsq", "AudioDetokenizer", "audio_tokenizer"),
}
COMPONENTS = tuple(_REGISTRY)


def build_module(component: str, config: AceStepConfig, device: str | torch.device = "cpu") -> nn.Module:
    """Construct one component from its config section (random init, or no storage on device="meta")."""
    module_name, class_name, section = _REGISTRY[component]
    cls = getattr(importlib.import_module(module_name), class_name)
    with torch.device(device):
        return cls(getattr(config, section))


def expected_shapes(component: str, config: AceStepConfig) -> dict[str, tuple[int, ...]]:
    """Parameter (and persistent buffer) names and shapes of a component, from a meta-device build."""
    return {k: tuple(v.shape) for k, v in build_module(component, config, "meta").state_dict().items()}


def load_module(component: str, config: AceStepConfig, tensors: dict[str, torch.Tensor], *,
                device: str | torch.device = "cpu", dtype: torch.dtype | None = None, where: str = "") -> nn.Module:
    check_finite_sample(tensors, where or component)
    module = build_module(component, config, "meta")
    try:
        module.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "state dict mismatch"
        raise CheckpointError(f"{where or component}: {first}") from None
    # Anything not in the state dict (non-persistent buffers) must not stay on meta.
    for name, buf in module.named_buffers():
        if buf.is_meta:
            raise CheckpointError(f"{where or component}: buffer {name!r} was not initialised")
    module = module.to(device=device, dtype=dtype) if dtype is not None else module.to(device)
    return module.eval().requires_grad_(False)


SAMPLE_ELEMENTS = 4096  # per tensor, for the cheap non-finite check at load


def check_finite_sample(tensors: dict[str, torch.Tensor], where: str) -> None:
    """A cheap load-time guard against NaN / inf weights: small tensors are checked whole, large ones at
    about SAMPLE_ELEMENTS evenly strided elements (a memory-mapped file then reads only those pages).
    weights_convert checks every element once, at conversion."""
    for key, t in tensors.items():
        if not t.is_floating_point():
            continue
        flat = t.reshape(-1)
        step = max(1, flat.numel() // SAMPLE_ELEMENTS)
        if not bool(torch.isfinite(flat[::step]).all()):
            raise CheckpointError(f"{where}: tensor {key!r} holds non-finite values (NaN or inf)")


def check_silence_latent(silence: torch.Tensor, config: AceStepConfig, where: str) -> None:
    """[1, T, latent_dim] with at least the timbre reference's frames, all finite."""
    frames, dim = config.condition.timbre_fix_frame, config.dit.latent_dim
    if silence.dim() != 3 or silence.shape[0] != 1 or silence.shape[2] != dim or silence.shape[1] < frames:
        raise CheckpointError(f"{where}: the silence latent has shape {list(silence.shape)}, expected "
                              f"[1, T, {dim}] with T >= {frames}")
    if not bool(torch.isfinite(silence).all()):
        raise CheckpointError(f"{where}: the silence latent holds non-finite values (NaN or inf)")


@dataclass
class LoadedCheckpoint:
    config: AceStepConfig
    modules: dict[str, nn.Module]
    silence_latent: torch.Tensor  # [1, T, 64]
    tokenizer_json: str


def load_checkpoint(path: str | os.PathLike, *, device="cpu", dtype: torch.dtype = torch.float32,
                    variant: str | None = None, compute_dtype: torch.dtype | None = None) -> LoadedCheckpoint:
    """Load our layout, or convert an official / diffusers folder in memory and load that.

    dtype is the weights' dtype. compute_dtype=None computes in `dtype` where the device has hardware for
    it, and otherwise keeps the weights in `dtype` but computes in fp32 (see precision.py); pass
    torch.float32 to force that mode, or `dtype` to force native low-precision compute.
    """
    from weights_convert.convert import convert_checkpoint, detect_layout

    path = os.fspath(path)
    try:
        if torch.device(device).type == "meta":
            raise ValueError("device 'meta' holds no data, so no song can be made on it; use cpu or cuda")
    except RuntimeError as e:
        raise ValueError(f"device {device!r}: {e}") from None
    layout, root = detect_layout(path, variant)
    if layout == "ours":
        config = load_config(root)
        tensors = {c: read_safetensors(os.path.join(root, c + ".safetensors")) for c in COMPONENTS}
        silence = read_safetensors(os.path.join(root, "silence_latent.safetensors"))
        if "silence_latent" not in silence:
            raise CheckpointError(f"{os.path.join(root, 'silence_latent.safetensors')}: missing key 'silence_latent'")
        silence_latent = silence["silence_latent"]
        tokenizer_json = os.path.join(root, "tokenizer.json")
        if not os.path.isfile(tokenizer_json):
            raise CheckpointError(f"{tokenizer_json}: file not found")
    else:
        log.warning("%s is in the %s layout: converting in memory. `python -m weights_convert %s OUT` once "
                    "makes later loads faster.", root, layout, path)
        conv = convert_checkpoint(path, variant)
        config, tensors, silence_latent, tokenizer_json = (conv.config, conv.components, conv.silence_latent,
                                                           conv.tokenizer_json)
    check_consistency(config, root)
    check_silence_latent(silence_latent, config, os.path.join(root, "silence_latent"))
    if compute_dtype is None:
        compute_dtype = dtype if native_compute(dtype, device) else torch.float32
    if compute_dtype not in (dtype, torch.float32):
        raise ValueError(f"compute_dtype must be None, torch.float32 or the weight dtype {dtype}, got {compute_dtype}")
    emulated = compute_dtype != dtype
    if emulated:
        log.warning("%s weights with float32 compute: %s has no %s arithmetic (half the weight memory, fp32 speed)",
                    dtype, device, dtype)
    modules = {}
    for c in COMPONENTS:
        # Emulated mode: the VAE (small, convolution-bound) simply runs in fp32.
        weight_dtype = torch.float32 if (emulated and c == "vae") else dtype
        module = load_module(c, config, tensors[c], device=device, dtype=weight_dtype, where=os.path.join(root, c))
        modules[c] = store_low_compute_fp32(module, dtype) if (emulated and c != "vae") else module
    # The silence latent feeds the DiT context and the timbre encoder: in the compute dtype.
    silence_latent = silence_latent.to(device=device, dtype=compute_dtype)
    return LoadedCheckpoint(config, modules, silence_latent, tokenizer_json)
