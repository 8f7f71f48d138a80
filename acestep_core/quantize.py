"""int8 weight-only quantization of any module's nn.Linear layers (per output channel, symmetric).

Each Linear weight W [N, K] becomes int8 codes q [N, K] and one float scale per output row s [N] with
W ~ q * s[:, None], s = max |W[n]| / 127. Activations stay in their float dtype: on CPU the matmul runs
through torch's int8-weight kernel (`aten._weight_int8pack_mm`, dequantizing inside the GEMM), elsewhere
the weight is dequantized just before F.linear. Half the weight memory of bf16, a quarter of fp32.

In a checkpoint a quantized Linear `x` is stored as `x.weight` (int8) and `x.weight_scale` (float32),
plus `x.bias` when it has one; `quantization.json` in our folder names the scheme and the components.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import linear

SCHEMES = ("int8",)
QUANTIZED_COMPONENTS = ("dit", "condition", "text_encoder")  # the large matmul stacks; the VAE is convolutions
SCALE_SUFFIX = ".weight_scale"
_INT8_MAX = 127
INT8_KERNEL_MAX_ROWS = 16  # rows up to which torch's int8-weight CPU kernel is used (see Int8Linear.forward)


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """W [N, K] float -> (codes [N, K] int8, scales [N] float32), symmetric per output row."""
    w = weight.float()  # quantize from full precision whatever the storage (bf16 rounding first would add error)
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / _INT8_MAX  # [N]; an all-zero row keeps a tiny scale
    codes = torch.round(w / scale[:, None]).clamp(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return codes, scale


class Int8Linear(nn.Module):
    """A Linear whose weight is int8 codes and per-row scales (buffers: they are not trained)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device), requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8Linear":
        q = cls(linear.in_features, linear.out_features, linear.bias is not None, device=linear.weight.device)
        if linear.weight.is_meta:  # a meta build for strict loading: shapes only
            return q
        q.weight, q.weight_scale = quantize_weight(linear.weight.detach())
        if linear.bias is not None:
            q.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Computed in x's dtype (bf16 in mixed precision, where attention / MLP cast their input once).
        scale = self.weight_scale.to(x.dtype)
        # The CPU kernel (torch 2.13) gave wrong bf16 results for K = 24 and crashed for K = 7; every K that is
        # a multiple of 32 we tried (32 ... 3072) matched the dequantized matmul, so smaller or odd K go around it.
        # The kernel is built for few rows (token-by-token decoding): on a 2-core EPYC it made a mid-size DiT
        # (~125 rows per matmul) 9x slower than fp32, so from INT8_KERNEL_MAX_ROWS rows on the weight is
        # dequantized (one pass over N x K, small next to the M x N x K matmul) and the float GEMM runs.
        rows = x.numel() // self.in_features
        if (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and self.in_features % 32 == 0
                and rows <= INT8_KERNEL_MAX_ROWS):
            flat = x.reshape(-1, self.in_features)  # [..., K] -> [M, K]
            out = torch.ops.aten._weight_int8pack_mm(flat, self.weight, scale).view(*x.shape[:-1], self.out_features)
        else:
            weight = self.weight.to(x.dtype) * scale[:, None]  # dequantized [N, K] in x's dtype
            out = linear(x, weight)
        # The bias in the output's dtype, so the result keeps x's dtype (q, k and v must share one for SDPA).
        return out if self.bias is None else out + self.bias.to(out.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-row scales"


def quantize_linears(module: nn.Module, scheme: str = "int8") -> nn.Module:
    """Replace every nn.Linear inside `module` (in place) by its int8 version; returns `module`."""
    if scheme not in SCHEMES:
        raise ValueError(f"quantize must be one of {SCHEMES}, got {scheme!r}")
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, Int8Linear.from_linear(child))
    return module


def linear_weight_keys(module: nn.Module) -> list[str]:
    """State-dict keys of the Linear weights inside `module` (what quantize_linears turns into int8)."""
    return [f"{name}.weight" for name, m in module.named_modules() if isinstance(m, nn.Linear)]


def quantize_state_dict(tensors: dict[str, torch.Tensor], weight_keys: list[str]) -> dict[str, torch.Tensor]:
    """A float state dict -> the same with each listed Linear weight as int8 codes plus `.weight_scale`."""
    out = dict(tensors)
    for key in weight_keys:
        codes, scale = quantize_weight(tensors[key])
        out[key] = codes
        out[key[: -len(".weight")] + SCALE_SUFFIX] = scale
    return out
