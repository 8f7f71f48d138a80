"""Reduced-precision weights on hardware that cannot compute in that precision.

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

import torch
from torch import nn
from torch.nn.utils import parametrize

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
