"""Build the model components from a config and load their weights.

Loading never materialises random weights: modules are built on the meta device, then
`load_state_dict(strict=True, assign=True)` adopts the (memory-mapped) checkpoint tensors directly.
Official and diffusers folders are converted in memory by `acestep_core.convert` first.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from .checkpoint import LoadedCheckpoint, detect_layout, read_ours
from .components import COMPONENTS, build_module, expected_shapes  # noqa: F401  (expected_shapes: public here too)
from .config import AceStepConfig, check_consistency
from .convert.convert import convert_checkpoint, convert_config
from .precision import apply_precision, resolve_precision
from .quantize import QUANTIZED_COMPONENTS, SCHEMES, quantize_linears
from .safetensors_io import CheckpointError

log = logging.getLogger("acestep_core")


def load_module(component: str, config: AceStepConfig, tensors: dict[str, torch.Tensor], *,
                device: str | torch.device = "cpu", dtype: torch.dtype | None = None, where: str = "",
                origins: dict[str, str] | None = None, source: str = "ours", quantized: bool = False) -> nn.Module:
    """Build `component` on the meta device and adopt `tensors` (strict, assign=True: no copy, no random init).

    origins: our key -> the key in the source file (from the converter), so every error names both.
    quantized: the tensors hold int8 Linear weights with scales (quantize.py); the module is built to match."""
    where = where or component
    check_finite_sample(tensors, where)
    module = build_module(component, config, "meta")
    if quantized:
        quantize_linears(module)
    expected = module.state_dict()

    def name(key: str) -> str:
        theirs = (origins or {}).get(key)
        return f"source key {theirs!r} (ours {key!r})" if theirs and theirs != key else f"key {key!r} ({source})"

    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise CheckpointError(f"{where}: missing {name(missing[0])}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""))
    if extra:
        raise CheckpointError(f"{where}: unexpected {name(extra[0])}" + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""))
    for key, want in expected.items():
        if tuple(tensors[key].shape) != tuple(want.shape):
            raise CheckpointError(f"{where}: {name(key)} has shape {tuple(tensors[key].shape)}, the config implies "
                                  f"{tuple(want.shape)}")
        if (tensors[key].dtype == torch.int8) != (want.dtype == torch.int8):
            raise CheckpointError(f"{where}: {name(key)} is {tensors[key].dtype}, expected "
                                  f"{'int8 (quantized)' if want.dtype == torch.int8 else 'a float dtype'}")
    module.load_state_dict(tensors, strict=True, assign=True)
    # Anything not in the state dict (non-persistent buffers) must not stay on meta.
    for buffer_name, buf in module.named_buffers():
        if buf.is_meta:
            raise CheckpointError(f"{where}: buffer {buffer_name!r} was not initialised")
    module = module.to(device=device, dtype=dtype) if dtype is not None else module.to(device)
    return module.eval().requires_grad_(False)


SAMPLE_ELEMENTS = 4096  # per tensor, for the cheap non-finite check at load


def check_finite_sample(tensors: dict[str, torch.Tensor], where: str) -> None:
    """A cheap load-time guard against NaN / inf weights: small tensors are checked whole, large ones at
    about SAMPLE_ELEMENTS evenly strided elements (a memory-mapped file then reads only those pages).
    the converter checks every element once, at conversion."""
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


def load_checkpoint(path: str | os.PathLike, *, device="cpu", dtype: torch.dtype | str = torch.float32,
                    variant: str | None = None, compute_dtype: torch.dtype | None = None,
                    precision: str | None = None, quantize: str | None = None) -> LoadedCheckpoint:
    """Load our layout, or convert an official / diffusers folder in memory and load that.

    dtype is the weights' dtype ("auto": bf16 where the device has bf16 arithmetic, else fp32). bf16 / fp16
    weights compute in mixed precision (bf16 matmuls, fp32 state) where the device has the arithmetic, and
    otherwise in fp32 (precision.py); precision="pure-bf16" runs everything in bf16, compute_dtype=torch.float32
    forces the fp32-compute mode. quantize="int8": int8 weight-only Linear layers in the DiT, condition and text
    encoders (quantize.py); a checkpoint written with `weights_convert --quantize int8` loads that way anyway.
    """
    if quantize is not None and quantize not in SCHEMES:
        raise ValueError(f"quantize must be None or one of {SCHEMES}, got {quantize!r}")
    path = os.fspath(path)
    try:
        if torch.device(device).type == "meta":
            raise ValueError("device 'meta' holds no data, so no song can be made on it; use cpu or cuda")
    except RuntimeError as e:
        raise ValueError(f"device {device!r}: {e}") from None
    layout, root = detect_layout(path, variant)
    if layout == "ours":
        conv = read_ours(root)
    else:
        log.warning("%s is in the %s layout: converting in memory. `python -m weights_convert %s OUT` once "
                    "makes later loads faster.", root, layout, path)
        conv = convert_checkpoint(path, variant)
    config, tensors, silence_latent, tokenizer_json = (conv.config, conv.components, conv.silence_latent,
                                                       conv.tokenizer_json)
    check_consistency(config, root)
    check_silence_latent(silence_latent, config, os.path.join(root, "silence_latent"))
    mode = resolve_precision(dtype, device, precision, compute_dtype)
    if mode.name == "emulated":
        log.warning("%s weights with float32 compute: %s has no %s arithmetic (half the weight memory, fp32 speed)",
                    mode.weights, device, mode.weights)
    modules = {}
    for c in COMPONENTS:
        stored = conv.quantize is not None and c in QUANTIZED_COMPONENTS
        module = load_module(c, config, tensors[c], device=device, where=os.path.join(root, c),
                             origins=conv.origins.get(c), source=conv.source, quantized=stored)
        if quantize is not None and c in QUANTIZED_COMPONENTS and not stored:
            quantize_linears(module, quantize)  # from the weights as stored, before any precision change
        modules[c] = apply_precision(module, c, mode)
    # The silence latent feeds the DiT context and the timbre encoder: in the state dtype.
    silence_latent = silence_latent.to(device=device, dtype=mode.state)
    return LoadedCheckpoint(config, modules, silence_latent, tokenizer_json)


def read_config(path: str | os.PathLike, variant: str | None = None) -> AceStepConfig:
    """The config of a checkpoint of any layout, from its config files alone (no weights are read): what
    requests can be validated against before a model loads."""
    config = convert_config(os.fspath(path), variant)
    check_consistency(config, os.fspath(path))
    return config
