"""Precision modes as data: which dtype the matmul weights are stored in, which the matmuls and attention
run in, and which holds the state (residual stream, norms, AdaLN, timestep path, sampler latents).

    mode        weights  compute  state   when
    fp32        fp32     fp32     fp32    dtype=torch.float32
    mixed       bf16     bf16     fp32    dtype=torch.bfloat16 on hardware with bf16 arithmetic (the default)
    pure-bf16   bf16     bf16     bf16    precision="pure-bf16": everything bf16, what the official code does on GPU
    emulated    bf16     fp32     fp32    dtype=torch.bfloat16 on hardware without bf16 arithmetic (below)

Mixed mode keeps the small, precision-sensitive parts in fp32 (norm weights, AdaLN tables, the DiT's timestep
MLPs and patch convolutions; the FSQ tokenizer and detokenizer whole) and casts the fp32 activations to bf16
once before each attention / MLP; their bf16 outputs join the fp32 residual stream by type promotion. The
VAE runs in bf16 in both bf16 modes.

A CPU without bf16 units (no AVX512-BF16 / AMX; most laptops and many servers) runs bf16 matmuls through
a slow generic kernel: about 24x slower than fp32 for the DiT. There, `load_pipeline(dtype=torch.bfloat16)`
keeps every matmul weight in bf16 (half the memory) but computes in fp32: each Linear / Conv / Embedding
weight is upcast just when it is used (a torch parametrization), and the small parameters (norms, AdaLN
tables, special tokens) are held in fp32. Activations stay fp32 throughout. The VAE is small and runs
fully in fp32 in this mode.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from .layers import Attention, SwiGLU

log = logging.getLogger("acestep_core")

_MATMUL_MODULES = (nn.Linear, nn.Conv1d, nn.ConvTranspose1d, nn.Embedding)


@functools.lru_cache(maxsize=None)
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_compute(dtype: torch.dtype, device: torch.device | str) -> bool:
    """Whether `device` has hardware arithmetic for `dtype` (always true for fp32 and for GPUs)."""
    device = torch.device(device)
    if dtype == torch.float32 or device.type != "cpu":
        return True
    flags = _cpu_flags()
    if dtype == torch.bfloat16:
        # x86: AVX512-BF16 or AMX; Arm (Linux): the BF16 extension. Unknown platforms count as "no".
        return bool({"avx512_bf16", "amx_bf16", "bf16"} & flags)
    if dtype == torch.float16:
        return bool({"avx512_fp16", "amx_fp16", "fphp", "asimdhp"} & flags)
    return False


class _Upcast(nn.Module):
    """Parametrization: the stored low-precision weight, read as float32."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.float()


def store_low_compute_fp32(module: nn.Module, storage: torch.dtype) -> nn.Module:
    """Matmul weights stored in `storage`, read as fp32; every other parameter and buffer in fp32."""
    matmul_weights = set()
    for m in module.modules():
        if isinstance(m, _MATMUL_MODULES):
            matmul_weights.add(id(m.weight))
    for p in module.parameters():
        # The storage dtype for the big matrices, fp32 for the rest (norms, tables: a few MB).
        p.data = p.data.to(storage if id(p) in matmul_weights else torch.float32)
    for name, b in module.named_buffers():
        if b.is_floating_point():
            b.data = b.data.float()
    for m in module.modules():
        if isinstance(m, _MATMUL_MODULES):
            parametrize.register_parametrization(m, "weight", _Upcast(), unsafe=True)
    return module.requires_grad_(False)


@dataclass(frozen=True)
class Precision:
    """One precision mode (see the module docstring)."""

    name: str
    weights: torch.dtype  # the matmul weights' storage
    compute: torch.dtype  # matmuls and attention
    state: torch.dtype  # residual stream, norms, AdaLN, timestep path, sampler latents, small parameters

    @property
    def summary(self) -> str:
        """One line for logs: e.g. "mixed (weights bf16, compute bf16, state fp32)"."""
        short = {torch.float32: "fp32", **_SHORT}
        return f"{self.name} (weights {short[self.weights]}, compute {short[self.compute]}, state {short[self.state]})"


PRECISIONS = ("mixed", "pure-bf16", "pure-fp16")
_SHORT = {torch.bfloat16: "bf16", torch.float16: "fp16"}
# Kept in the state dtype in mixed mode: a few MB at most, and where bf16 rounding costs the most accuracy.
_MIXED_FP32_PREFIXES = {"dit": ("proj_in.", "proj_out.", "time_embed.", "time_embed_r.")}
_MIXED_FP32_COMPONENTS = ("audio_tokenizer", "audio_detokenizer")


def resolve_precision(dtype: torch.dtype | str, device, precision: str | None = None,
                      compute_dtype: torch.dtype | None = None) -> Precision:
    """The mode for load_pipeline's arguments. dtype="auto": bf16 where `device` has bf16 arithmetic, else fp32.

    precision: None (mixed where the hardware computes in `dtype`, emulated elsewhere), "mixed" or "pure-bf16" /
    "pure-fp16". compute_dtype (the older switch): `dtype` means pure, torch.float32 means emulated."""
    if isinstance(dtype, str):
        if dtype != "auto":
            raise ValueError(f"dtype must be a torch dtype or 'auto', got {dtype!r}")
        dtype = torch.bfloat16 if native_compute(torch.bfloat16, device) else torch.float32
        log.info("dtype='auto': %s on %s (%s)", _SHORT.get(dtype, "fp32"), torch.device(device),
                 "native bf16 arithmetic" if dtype == torch.bfloat16 else "no native bf16 arithmetic")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be None or one of {PRECISIONS}, got {precision!r}")
    if compute_dtype is not None and precision is not None:
        raise ValueError("pass precision or compute_dtype, not both")
    if dtype == torch.float32:
        if precision is not None or compute_dtype not in (None, torch.float32):
            raise ValueError(f"precision / compute_dtype apply to bf16 and fp16 weights; dtype is {dtype}")
        return Precision("fp32", dtype, dtype, dtype)
    if dtype not in _SHORT:
        raise ValueError(f"dtype must be torch.float32, torch.bfloat16, torch.float16 or 'auto', got {dtype}")
    if compute_dtype is not None:
        if compute_dtype not in (dtype, torch.float32):
            raise ValueError(f"compute_dtype must be None, torch.float32 or the weight dtype {dtype}, got {compute_dtype}")
        precision = f"pure-{_SHORT[dtype]}" if compute_dtype == dtype else None
        if precision is None:
            return Precision("emulated", dtype, torch.float32, torch.float32)
    if precision is not None and precision.startswith("pure-") and precision != f"pure-{_SHORT[dtype]}":
        raise ValueError(f"precision {precision!r} does not match dtype {dtype}")
    if precision is None and not native_compute(dtype, device):
        return Precision("emulated", dtype, torch.float32, torch.float32)
    if precision is not None and precision.startswith("pure-"):
        return Precision(precision, dtype, dtype, dtype)
    return Precision("mixed", dtype, dtype, torch.float32)


def apply_precision(module: nn.Module, component: str, mode: Precision) -> nn.Module:
    """Put a loaded component (in any dtype) into `mode`: parameter dtypes, and the cast points of mixed mode."""
    if mode.name == "emulated":
        # The VAE (small, convolution-bound) simply runs in fp32 there.
        return module.float() if component == "vae" else store_low_compute_fp32(module, mode.weights)
    if mode.name != "mixed" or component == "vae":
        return module.to(mode.weights)
    if component in _MIXED_FP32_COMPONENTS:
        return module.to(mode.state)
    keep = _MIXED_FP32_PREFIXES.get(component, ())
    matmul = {id(m.weight) for m in module.modules() if isinstance(m, _MATMUL_MODULES)}
    matmul |= {id(m.bias) for m in module.modules() if isinstance(m, _MATMUL_MODULES) and getattr(m, "bias", None) is not None}
    for name, p in module.named_parameters():
        low = id(p) in matmul and not name.startswith(keep)
        # Matmul weights in bf16; norms, tables and the listed small parts in fp32.
        p.data = p.data.to(mode.weights if low else mode.state)
    for b in module.buffers():
        if b.is_floating_point():
            b.data = b.data.to(mode.state)
    for m in module.modules():
        if isinstance(m, (Attention, SwiGLU)):
            m.compute_dtype = mode.compute
        if isinstance(m, Attention):
            # q/k norms belong to the attention: in its dtype, so q, k and v meet SDPA in one dtype.
            m.q_norm.weight.data = m.q_norm.weight.data.to(mode.compute)
            m.k_norm.weight.data = m.k_norm.weight.data.to(mode.compute)
    return module
